"""Internal channels: ssesup's own control messages between processes travel on channels no client can name."""

import anyio
import pytest

from ssesup import Event, Hub
from ssesup.hub import InvalidChannel


def test_internal_channels_are_apart_from_what_clients_can_name():
    async def main():
        hub = Hub(metrics=False)
        async with hub.subscribe_internal("control") as sub:
            assert (await anext(sub)).id  # where it starts
            await hub.publish_internal("control", Event("revoke u1", event="revoke"))
            got = await anext(sub)
            assert (got.event, got.data) == ("revoke", "revoke u1")
        with pytest.raises(InvalidChannel):
            hub.subscribe("!control")
        with pytest.raises(InvalidChannel):
            await hub.publish("!control", "x")

    anyio.run(main)
