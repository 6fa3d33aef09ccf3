"""The hub against what clients and apps may send it: hostile resume ids (both engines: a gap, never an
error), channel names outside the grammar, channel lists an app takes from a request, and every Hub
setting checked when the hub is made."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procs import free_port, serve, uvicorn_argv
from ssesup import Event, Hub
from ssesup.hub import MAX_CHANNEL_LENGTH, InvalidChannel, check_channels
from ssesup.hub.ids import MAX_PART, channels_digest, parse_token, position_token
from ssesup.testing import EventStreamParser

GAP_REASONS = {"malformed", "unknown", "expired", "too_long", "epoch"}
tokens = st.from_regex(r"[0-9a-z]{1,13}(-[0-9a-z]{1,13})?", fullmatch=True)
near_the_top = st.integers(MAX_PART - 3, MAX_PART + 3) | st.integers(0, 2**70)


async def first_and_next(hub: Hub, channel: str, last_event_id: str) -> tuple[Event, Event]:
    """The first event of a subscription resuming after ``last_event_id``, and the next one published."""
    async with hub.subscribe(channel, last_event_id=last_event_id) as subscription:
        first = await asyncio.wait_for(subscription.__anext__(), 10)
        await hub.publish(channel, "after")
        while True:
            following = await asyncio.wait_for(subscription.__anext__(), 10)
            if following.data == "after":
                return first, following


def check_resume(hub: Hub, raw: str, allowed: set[str | None]) -> None:
    async def main() -> tuple[Event, Event]:
        try:
            return await first_and_next(hub, "c", raw)
        finally:
            await hub.aclose()

    first, following = asyncio.run(main())
    reason = json.loads(first.data)["reason"] if first.event == "gap" else None
    assert reason in allowed, (raw, first)
    if reason is not None:
        assert json.loads(first.data)["requested"] == raw[:256]
    assert following.id is not None


def prepared(url: str | None) -> tuple[Hub, str]:
    """A hub whose channel ``c`` has three events, and the prefix of ids of ``c`` (epoch and digest)."""
    hub = Hub(url, metrics=False)

    async def main() -> str:
        for n in range(3):
            await hub.publish("c", str(n))
        epoch = await hub.backend.epoch()
        await hub.aclose()
        return f"{epoch}.{channels_digest(('c',))}"

    return hub, asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def engine(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(max_size=300) | st.from_regex(r"[0-9a-z.\-]{1,80}", fullmatch=True))
def test_an_arbitrary_id_gets_a_gap_or_resumes_and_the_stream_goes_on(engine, raw):
    hub, _ = prepared(engine)
    allowed = GAP_REASONS | ({None} if not raw else set())
    check_resume(hub, raw, allowed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=tokens, major=near_the_top, minor=near_the_top, which=st.sampled_from(["token", "numbers"]))
def test_an_id_of_the_right_epoch_and_channels_at_any_position_is_honoured_or_gets_malformed_or_unknown(
    engine, token, major, minor, which
):
    """Positions at or above 2**64 (which Redis refuses in XRANGE) are ``malformed``; a position after
    the channel's last is ``unknown``; one at or before it resumes. Never an error."""
    hub, prefix = prepared(engine)
    if which == "numbers":
        token = f"{_base36(major)}-{_base36(minor)}" if len(_base36(major)) <= 13 >= len(_base36(minor)) else token
    raw = f"{prefix}.{token}"
    major_part, _, minor_part = token.partition("-")
    position = int(major_part, 36), int(minor_part or "0", 36)
    if max(position) > MAX_PART:
        allowed: set[str | None] = {"malformed"}
    else:
        allowed = {None, "unknown", "expired"}
    check_resume(hub, raw, allowed)


def _base36(number: int) -> str:
    return position_token((number, 0))


def test_positions_at_or_above_2_64_are_not_positions():
    assert parse_token(position_token((MAX_PART, MAX_PART))) == (MAX_PART, MAX_PART)
    for token in ("zzzzzzzzzzzzz", "1-zzzzzzzzzzzzz", position_token((MAX_PART + 1, 0))):
        with pytest.raises(ValueError):
            parse_token(token)


def test_hostile_ids_over_http_on_redis_get_a_malformed_gap_and_the_stream_goes_on(redis_url, tmp_path):
    """Through a real uvicorn on Redis: ``<epoch>.<digest>.zzzzzzzzzzzzz`` and ``...1-zzzzzzzzzzzzz``
    made XRANGE fail ("Invalid stream ID"): an error close, a 3 KB traceback and an empty 200. Now each
    gets a ``malformed`` gap, then the events published after it; nothing is logged as failed."""
    port = free_port()
    argv = uvicorn_argv("apps.hub_app:app", port, "--log-level", "warning")
    with serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": redis_url}) as server:
        first = httpx.post(f"{server.url}/publish", params={"start": 0}, timeout=10).json()["ids"][0]
        prefix = first.rsplit(".", 1)[0]
        for hostile in (f"{prefix}.zzzzzzzzzzzzz", f"{prefix}.1-zzzzzzzzzzzzz"):
            events = []
            parser = EventStreamParser()
            headers = {"Last-Event-ID": hostile}
            with httpx.stream("GET", f"{server.url}/events", headers=headers, timeout=10) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    for event in parser.feed(chunk):
                        events.append(event)
                        if event.event == "gap":
                            httpx.post(f"{server.url}/publish", params={"start": 1}, timeout=10)
                    if any(event.event == "number" for event in events):
                        break
            gap = json.loads(events[0].data)
            assert (events[0].event, gap["reason"], gap["requested"]) == ("gap", "malformed", hostile)
            assert [event.json()["n"] for event in events if event.event == "number"] == [1]
        assert "generator_failed" not in server.log()


# -- channel names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("with space", "made of A-Z a-z 0-9"),
        ("new\nline", "made of A-Z a-z 0-9"),
        ("x" * 10_000, f"at most {MAX_CHANNEL_LENGTH} characters, not 10000"),
        ("", "not empty"),
        ("caf\u00e9", "made of A-Z a-z 0-9"),
    ],
)
def test_a_channel_name_outside_the_grammar_is_refused_with_a_clear_error(name, message):
    hub = Hub(metrics=False)
    with pytest.raises(InvalidChannel, match=message) as refused:
        asyncio.run(hub.publish(name, "x"))
    assert len(str(refused.value)) < 200  # repeats at most the start of the name
    with pytest.raises(InvalidChannel, match=message):
        hub.subscribe("ok", name)


def test_the_longest_channel_name_and_every_allowed_character_are_accepted():
    hub = Hub(metrics=False)
    names = ["a" * MAX_CHANNEL_LENGTH, "user:42@example.com/orders_1-2.x+y=z#~"]

    async def main() -> list[str]:
        got = []
        for name in names:
            async with hub.subscribe(name) as subscription:
                await subscription.__anext__()
                await hub.publish(name, name)
                got.append((await subscription.__anext__()).data)
        return got

    assert asyncio.run(main()) == names


def test_publishing_to_a_channel_that_is_not_a_str_raises_type_error():
    hub = Hub(metrics=False)
    with pytest.raises(TypeError, match="a channel name is a str, not int"):
        asyncio.run(hub.publish(123, "x"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ([f"c{n}" for n in range(17)], "at most 16 channels"),
        (["a", "b", "a"], "channel 'a' appears twice"),
        ([], "at least one channel"),
        (["a", ""], "not empty"),
    ],
)
def test_channel_lists_from_a_request_are_checked_by_check_channels(channels, message):
    """What an app calls on a channel list from a request before ``hub.stream`` (which raises the same,
    a 500): an ``InvalidChannel`` (a ValueError) whose message it can answer with (400)."""
    with pytest.raises(InvalidChannel, match=message):
        check_channels(channels)
    with pytest.raises(InvalidChannel, match=message):
        Hub(metrics=False).subscribe(*channels)
    assert check_channels(["a", "b"]) == ("a", "b")


def test_publish_takes_a_dict_of_event_fields_as_a_generator_may_yield():
    hub = Hub(metrics=False)

    async def main() -> list[Event]:
        async with hub.subscribe("c") as subscription:
            await subscription.__anext__()
            await hub.publish("c", {"data": {"a": 1}, "event": "order"})
            await hub.publish("c", {"data": "plain", "comment": "note"})
            with pytest.raises(ValueError, match="unknown event fields"):
                await hub.publish("c", {"a": 1})
            with pytest.raises(ValueError, match="sets event ids"):
                await hub.publish("c", {"data": "x", "id": "7"})
            return [await subscription.__anext__(), await subscription.__anext__()]

    order, plain = asyncio.run(main())
    assert (order.data, order.event) == ('{"a":1}', "order")
    assert (plain.data, plain.comment) == ("plain", "note")


# -- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"overflow": "drop"}, ValueError, "overflow must be one of 'disconnect', 'drop_oldest', not 'drop'"),
        (
            {"channel_overflow": {"c": "drop"}},
            ValueError,
            r"channel_overflow\['c'\] must be one of 'disconnect', 'drop_oldest'",
        ),
        ({"channel_overflow": {"a b": "drop_oldest"}}, ValueError, "made of A-Z"),
        ({"channel_overflow": ["c"]}, TypeError, "channel_overflow must be a Mapping of channel names to policies"),
        ({"url": "redis://"}, ValueError, "names a host"),
        ({"url": "redis://:secret@/0"}, ValueError, "names a host"),
        ({"url": "redis:///0?password=secret"}, ValueError, "names a host"),
        (
            {"url": "http://u:secret@localhost/?password=secret"},
            ValueError,
            "memory://, redis://, rediss:// or unix://",
        ),
        ({"url": "unix://"}, ValueError, "names a socket's path"),
        ({"url": "http://localhost"}, ValueError, "memory://, redis://, rediss:// or unix://"),
        ({"url": 6379}, ValueError, "a hub URL is a str"),
        ({"history_size": 0}, ValueError, "history_size must be a whole number >= 1"),
        ({"history_size": 1.5}, ValueError, "history_size must be a whole number >= 1"),
        ({"history_ttl": 0}, ValueError, "history_ttl must be a number of seconds > 0 and < 1e"),
        ({"history_ttl": float("nan")}, ValueError, "history_ttl must be a number of seconds > 0"),
        ({"history_ttl": float("inf")}, ValueError, "history_ttl must be a number of seconds > 0 and < 1e"),
        ({"mailbox_events": True}, ValueError, "mailbox_events must be a whole number >= 1"),
        ({"mailbox_bytes": 0}, ValueError, "mailbox_bytes must be a whole number >= 1"),
        ({"redis_connections": 0}, ValueError, "redis_connections must be a whole number >= 1"),
        ({"gap_event": 3}, TypeError, r"gap_event must be a str \(an event name\)"),
        ({"gap_event": "a\nb"}, ValueError, "event"),
        ({"metrics_channels": "yes"}, TypeError, "metrics_channels must be True or False"),
        ({"redis_prefix": None}, TypeError, "redis_prefix must be a str"),
        ({"backend": object()}, TypeError, r"backend must be a Backend \(ssesup.hub.Backend\) or None"),
    ],
)
def test_every_hub_setting_is_checked_when_the_hub_is_made(options, error, message):
    url = options.pop("url", None)
    with pytest.raises(error, match=message) as refused:
        Hub(url, metrics=False, **options)
    assert "secret" not in str(refused.value)
