"""ssesup.compat's events encode byte for byte as sse-starlette 3.7's, checked against sse-starlette
itself; and the few inputs refused on purpose (CR/LF in id or event, NUL in id, a negative retry)."""

from __future__ import annotations

import inspect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compat_support import LIBRARIES, library

compat = library("ssesup.compat")
reference = library("sse_starlette")

SEPS = st.sampled_from(["\r\n", "\n", "\r"])
texty = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogates: not UTF-8
single_line = texty.filter(lambda s: "\r" not in s and "\n" not in s)
ids = single_line.filter(lambda s: "\0" not in s)
data_values = st.one_of(
    st.none(),
    texty,
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(texty, st.integers(), max_size=3),
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "data": data_values,
        "event": single_line,
        "id": ids,
        "retry": st.integers(min_value=0, max_value=10**12),
        "comment": st.one_of(texty, st.integers()),
        "sep": SEPS,
    },
)


@settings(max_examples=400, deadline=None)
@given(fields)
def test_server_sent_event_encodes_byte_for_byte_as_sse_starlette(values):
    assert compat.ServerSentEvent(**values).encode() == reference.ServerSentEvent(**values).encode()


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), texty),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texty, inner, max_size=3)),
        max_leaves=8,
    ),
    st.fixed_dictionaries({}, optional={"event": single_line, "id": ids, "sep": SEPS}),
)
def test_json_server_sent_event_encodes_as_sse_starlette(data, extra):
    values = {"data": data, **extra}
    assert compat.JSONServerSentEvent(**values).encode() == reference.JSONServerSentEvent(**values).encode()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(),
        texty,
        st.integers(),
        fields.map(lambda d: {k: v for k, v in d.items() if k != "sep"}),
    ),
    SEPS,
)
def test_ensure_bytes_is_sse_starlettes(item, sep):
    assert compat.ensure_bytes(item, sep) == reference.ensure_bytes(item, sep)


@pytest.mark.parametrize("name", LIBRARIES)
def test_events_of_every_kind_ensure_bytes_the_same(name):
    lib = library(name)
    ev = lib.ServerSentEvent("x", id="1", sep="\n")
    assert lib.ensure_bytes(ev, "\r\n") == b"id: 1\ndata: x\n\n"  # an event keeps its own separator
    assert lib.ensure_bytes(memoryview(b"as is"), "\n") == b"as is"
    assert lib.ensure_bytes({"data": "d", "sep": "\r"}, "\n") == b"data: d\n\n"  # the stream's sep wins
    assert lib.ensure_bytes(None, "\n") == b"data: None\n\n"
    assert lib.ensure_bytes(lib.ServerSentEvent(), "\n") == b"\r\n"
    with pytest.raises(TypeError):
        lib.ensure_bytes({"data": "d", "unknown": 1}, "\n")


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_server_sent_event_is_editable_and_checked_when_encoded(name):
    lib = library(name)
    ev = lib.ServerSentEvent("first")
    ev.data = "second\nthird"
    ev.event = "changed"
    ev.retry = 300
    assert ev.encode() == b"event: changed\r\ndata: second\r\ndata: third\r\nretry: 300\r\n\r\n"
    ev.retry = "300"
    with pytest.raises(TypeError, match="retry argument must be int"):
        ev.encode()
    ev.retry, ev.id = None, 7
    with pytest.raises(TypeError):
        ev.encode()
    with pytest.raises(ValueError):
        lib.JSONServerSentEvent(math.nan).encode()
    with pytest.raises(TypeError):
        lib.JSONServerSentEvent({"a": 1}, "positional")


@pytest.mark.parametrize(
    ("values", "stripped_by_sse_starlette"),
    [
        ({"data": "d", "id": "1\r\ndata: injected"}, b"id: 1data: injected\r\ndata: d\r\n\r\n"),
        ({"data": "d", "event": "a\nb"}, b"event: ab\r\ndata: d\r\n\r\n"),
        ({"data": "d", "id": "a\rb"}, b"id: ab\r\ndata: d\r\n\r\n"),
    ],
)
def test_cr_or_lf_in_id_or_event_is_refused_where_sse_starlette_strips_it(values, stripped_by_sse_starlette):
    assert reference.ServerSentEvent(**values).encode() == stripped_by_sse_starlette
    with pytest.raises(ValueError, match="CR or LF"):
        compat.ServerSentEvent(**values).encode()


def test_nul_in_id_and_a_negative_or_bool_retry_are_refused():
    assert reference.ServerSentEvent(id="a\0b").encode() == b"id: a\0b\r\n\r\n"
    assert reference.ServerSentEvent(retry=-1).encode() == b"retry: -1\r\n\r\n"
    assert reference.ServerSentEvent(retry=True).encode() == b"retry: True\r\n\r\n"
    with pytest.raises(ValueError, match="NUL"):
        compat.ServerSentEvent(id="a\0b").encode()
    with pytest.raises(ValueError, match="non-negative"):
        compat.ServerSentEvent(retry=-1).encode()
    with pytest.raises(TypeError, match="retry argument must be int"):
        compat.ServerSentEvent(retry=True).encode()


def test_str_and_int_subclasses_cannot_change_what_is_written():
    class Sneaky(str):
        def __radd__(self, other):
            return other + "x\r\ndata: injected"

    class Retry(int):
        def __format__(self, spec):
            return "1\r\ndata: injected"

        __str__ = __repr__ = lambda self: "1\r\ndata: injected"

    assert compat.ServerSentEvent("d", id=Sneaky("x")).encode() == b"id: x\r\ndata: d\r\n\r\n"
    assert compat.ServerSentEvent(retry=Retry(5)).encode() == b"retry: 5\r\n\r\n"


def test_the_public_signatures_are_sse_starlettes():
    for name in ("EventSourceResponse", "ServerSentEvent", "JSONServerSentEvent", "ensure_bytes"):
        ours, theirs = inspect.signature(getattr(compat, name)), inspect.signature(getattr(reference, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name
    for attribute in ("DEFAULT_PING_INTERVAL", "DEFAULT_SEPARATOR", "DEFAULT_CLEANUP_TIMEOUT"):
        assert getattr(compat.EventSourceResponse, attribute) == getattr(reference.EventSourceResponse, attribute)
    assert compat.ServerSentEvent.DEFAULT_SEPARATOR == reference.ServerSentEvent.DEFAULT_SEPARATOR
    assert issubclass(compat.SendTimeoutError, TimeoutError)
