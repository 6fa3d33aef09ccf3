"""Objects a generator yields, as JSON data: the values FastAPI sends, byte-exact events, and no injection.

The reference is FastAPI's own serialisation of a yielded object in ``fastapi.sse`` (``routing.py``,
``_serialize_data`` without an item type): ``jsonable_encoder``, non-finite floats made ``None``, then
``json.dumps``. ssesup must send the same JSON values, written compact.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import json
import math
import re
import subprocess
import sys
import uuid
from collections import deque
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import pytest
from fastapi.encoders import jsonable_encoder
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from ssesup.events import Event, encode_item, json_data

UTC = datetime.UTC


def fastapi_sse_json(obj: Any) -> Any:
    """The JSON value fastapi.sse sends for ``obj`` yielded by a generator without an item type."""

    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list):
            return [finite(item) for item in value]
        return value

    return json.loads(json.dumps(finite(jsonable_encoder(obj))))


class Colour(enum.Enum):
    RED = "red"
    BLUE = (0, 0, 255)


class Point(BaseModel):
    x: float
    label: str = Field(alias="Label")


@dataclasses.dataclass
class Box:
    corner: Point
    size: Decimal
    seen: list[datetime.datetime]
    inner: Box | None = None


FIXED: dict[str, Any] = {
    "decimal-int": Decimal("3"),
    "decimal-fraction": Decimal("1.50"),
    "decimal-nan": Decimal("NaN"),
    "timedelta": datetime.timedelta(days=1, microseconds=5),
    "date": datetime.date(2024, 2, 29),
    "time": datetime.time(23, 59, 1, 5),
    "naive-datetime": datetime.datetime(2024, 1, 1, 8),
    "aware-datetime": datetime.datetime(2024, 1, 1, 8, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "enum": Colour.RED,
    "enum-of-tuple": Colour.BLUE,
    "set": {3},
    "frozenset": frozenset({"a"}),
    "deque": deque([1, 2]),
    "tuple": (1, (2, 3)),
    "bytes-in-list": [b"raw"],
    "pattern": re.compile(r"a+b"),
    "uuid": uuid.UUID(int=255),
    "ipv4": ipaddress.IPv4Address("127.0.0.1"),
    "ipv6-network": ipaddress.IPv6Network("::1/128"),
    "path": PurePosixPath("/srv/x"),
    "model": Point(x=1.5, Label="p"),
    "model-nan": Point(x=float("nan"), Label="p"),
    "dataclass": Box(Point(x=0, Label="o"), Decimal("2.5"), [datetime.datetime(2024, 1, 1, tzinfo=UTC)]),
    "nested-dataclass": Box(Point(x=1, Label="a"), Decimal(1), [], inner=Box(Point(x=-math.inf, Label="b"), 0, [])),
    "infinities": [math.inf, -math.inf, {"deep": [math.nan]}],
    "unicode": {"ключ": "значение ☕", "escape": "\u2028\x00"},
    "none": None,
    "bool": True,
    "int": -(2**70),
    "float": 0.1,
    "empty": [],
}


@pytest.mark.parametrize("obj", FIXED.values(), ids=list(FIXED))
def test_the_json_value_is_the_one_fastapi_sse_sends(obj: Any) -> None:
    assert json.loads(json_data(obj)) == fastapi_sse_json(obj)


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.decimals(allow_nan=False)
    | st.datetimes(timezones=st.none() | st.just(UTC))
    | st.dates()
    | st.timedeltas()
    | st.uuids()
    | st.sampled_from(list(Colour))
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
        | st.builds(Point, x=st.floats(), Label=st.text(max_size=5))
        | st.builds(
            Box, corner=st.builds(Point, x=st.floats(), Label=st.just("c")), size=st.just(Decimal(1)), seen=st.just([])
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(obj=json_values)
def test_any_json_able_value_matches_fastapi_and_is_one_compact_data_line(obj: Any) -> None:
    text = json_data(obj)
    assert json.loads(text) == fastapi_sse_json(obj)
    outside_strings = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    assert " " not in outside_strings and "\n" not in outside_strings  # compact
    if not isinstance(obj, (dict, str)):  # a dict is the fields of an event, a str is text: checked below
        assert encode_item(obj, "\n") == f"data: {text}\n\n".encode()


@pytest.mark.parametrize("sep", ["\r\n", "\n", "\r"])
def test_a_pydantic_model_is_one_data_line_of_its_json_by_alias(sep: str) -> None:
    point = Point(x=2, Label="a\r\n\r\nevent: evil")
    expected = 'data: {"x":2.0,"Label":"a\\r\\n\\r\\nevent: evil"}'
    assert encode_item(point, sep) == f"{expected}{sep}{sep}".encode()


def test_a_dict_is_the_fields_of_one_event_and_its_data_is_json_unless_a_str() -> None:
    item = {"data": {"a": [1, None], "b": "x\n\ndata: injected"}, "event": "e", "id": "7", "retry": 10}
    assert (
        encode_item(item, "\n") == b'event: e\nid: 7\nretry: 10\ndata: {"a":[1,null],"b":"x\\n\\ndata: injected"}\n\n'
    )
    assert encode_item({"data": "a\nb"}, "\n") == b"data: a\ndata: b\n\n"
    assert encode_item({"data": Point(x=1, Label="p"), "id": "1"}, "\n") == b'id: 1\ndata: {"x":1.0,"Label":"p"}\n\n'
    assert encode_item({"data": 0}, "\n") == b"data: 0\n\n"
    assert encode_item({"data": False}, "\n") == b"data: false\n\n"
    assert encode_item({"event": "only"}, "\n") == b"event: only\n\n"


def test_a_dict_with_unknown_keys_is_refused_and_told_how_to_send_json() -> None:
    with pytest.raises(ValueError, match=r"unknown event fields \['message'\].*\{'data': obj\}"):
        encode_item({"message": "hi"}, "\n")
    with pytest.raises(ValueError, match=r"unknown event fields \['bogus'\]"):
        encode_item({"data": {"a": 1}, "bogus": 1}, "\n")


def test_event_json_still_refuses_nan_where_yielded_data_sends_null() -> None:
    with pytest.raises(ValueError):
        Event.json({"x": math.nan})
    assert encode_item({"data": {"x": math.nan}}, "\n") == b'data: {"x":null}\n\n'
    assert encode_item([math.inf], "\n") == b"data: [null]\n\n"


class Opaque:
    def __repr__(self) -> str:
        return "Opaque(secret)"


@pytest.mark.parametrize(
    "item, named",
    [
        (Opaque(), "yielded Opaque; "),
        ([1, Opaque()], "yielded list; "),
        (Box(Point(x=0, Label="l"), Decimal(0), [Opaque()]), "yielded Box; "),  # type: ignore[list-item]
    ],
    ids=["object", "in-a-list", "in-a-dataclass"],
)
def test_what_is_not_json_able_is_a_type_error_naming_both_types(item: Any, named: str) -> None:
    with pytest.raises(TypeError) as info:
        encode_item(item, "\n")
    message = str(info.value)
    assert named in message and "Opaque is not JSON-able" in message
    assert "secret" not in message
    for accepted in ("Event", "str", "bytes", "memoryview", "dict", "pydantic model", "dataclass"):
        assert accepted in message


def test_dict_data_that_is_not_json_able_names_its_type() -> None:
    with pytest.raises(TypeError, match="Opaque is not JSON-able"):
        encode_item({"data": {"x": Opaque()}}, "\n")


def test_a_circular_structure_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        encode_item(loop, "\n")


def test_loading_ssesup_imports_neither_pydantic_nor_fastapi() -> None:
    # What ssesup's own code imports: its dependencies' imports come first (structlog imports rich's
    # console, and rich decimal, where rich is installed), then whatever importing ssesup adds.
    code = (
        "import sys, anyio, starlette.responses, structlog, prometheus_client; before = set(sys.modules);"
        "import ssesup, ssesup.events;"
        "added = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(added & {'pydantic', 'pydantic_core', 'fastapi', 'decimal'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "item, data",
    [
        (None, b"null"),
        (1, b"1"),
        (1.5, b"1.5"),
        (True, b"true"),
        (["data"], b'["data"]'),
        (("data",), b'["data"]'),
        ({"data"}, b'["data"]'),
    ],
    ids=["None", "int", "float", "bool", "list", "tuple", "set"],
)
def test_json_able_values_once_refused_are_now_sent_as_json_data(item: Any, data: bytes) -> None:
    assert encode_item(item, "\r\n") == b"data: " + data + b"\r\n\r\n"
