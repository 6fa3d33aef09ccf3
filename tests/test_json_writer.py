"""Event.json's writer: orjson where installed, the standard library otherwise; both accept, refuse and
mean the same."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ssesup.events as events
from ssesup import Event

WRITERS = {"orjson": events._fast_json(), "stdlib": events._stdlib_json}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def test_orjson_is_the_fast_writer_here():
    assert WRITERS["orjson"] is not events._stdlib_json  # orjson is in the test extra


@given(json_values)
def test_both_writers_write_the_same_values_compactly(value):
    written = {name: write(value) for name, write in WRITERS.items()}
    for text in written.values():
        assert json.loads(text) == value or (isinstance(value, float) and math.isclose(json.loads(text), value))
        assert "\n" not in text
    assert json.loads(written["orjson"]) == json.loads(written["stdlib"])


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), [1.0, float("-inf")], {"a": {"b": float("nan")}}],
    ids=["nan", "inf", "list-inf", "nested-nan"],
)
def test_nan_and_infinities_are_refused_by_both(name, value):
    with pytest.raises(ValueError):
        WRITERS[name](value)


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize(
    "value",
    [datetime.datetime(2026, 1, 1), Point(1), object(), {1, 2}],
    ids=["datetime", "dataclass", "object", "set"],
)
def test_what_the_standard_library_refuses_both_refuse(name, value):
    with pytest.raises(TypeError):
        WRITERS[name](value)


@pytest.mark.parametrize("name", list(WRITERS))
def test_what_orjson_would_write_differently_is_written_as_the_standard_library_does(name):
    write = WRITERS[name]
    assert write({1: "int key"}) == '{"1":"int key"}'
    assert write(2**80) == str(2**80)
    assert write({"null": None, "text": "null"}) == '{"null":null,"text":"null"}'
    assert write(Colour.RED.value) == '"red"'
    assert write("héllo ✓") == '"héllo ✓"'  # not escaped to ASCII


def test_event_json_uses_the_writer():
    assert Event.json({"a": [1, 2]}, id="1").encode() == b'id: 1\r\ndata: {"a":[1,2]}\r\n\r\n'


def _objects() -> list:
    import decimal
    import uuid

    return [
        {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "point": Point(3), "colour": Colour.RED},
        [float("nan"), float("inf"), 1.5, -0.0],
        {"tags": {"a"}, "amount": decimal.Decimal("1.50"), "id": uuid.UUID(int=7)},
        {1: "int key", "big": 2**80},
        "plain text",
    ]


@pytest.mark.parametrize("value", _objects(), ids=["datetime-dataclass-enum", "nan", "set-decimal-uuid", "keys", "str"])
def test_yielded_objects_mean_the_same_with_and_without_orjson(value, monkeypatch):
    with_orjson = events.json_data(value)
    monkeypatch.setattr(events, "_orjson_data_writer", None)
    without = events.json_data(value)
    assert json.loads(with_orjson) == json.loads(without)
    assert "NaN" not in with_orjson and "Infinity" not in with_orjson


def test_an_object_neither_writer_takes_is_refused_naming_it(monkeypatch):
    with pytest.raises(TypeError, match="object is not JSON-able"):
        events.json_data({"x": object()})
    monkeypatch.setattr(events, "_orjson_data_writer", None)
    with pytest.raises(TypeError, match="object is not JSON-able"):
        events.json_data({"x": object()})
