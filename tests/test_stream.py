"""SupervisedStream end to end: a real uvicorn, real sockets, a parser we did not write (httpx-sse)."""

from __future__ import annotations

import json
import socket
import time

import httpx
from httpx_sse import connect_sse

from servers import raw_request, read_response, recv_until, wait_until


def sse_events(url: str, **params):
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", url, params=params) as source:
        return source.response, list(source.iter_sse())


def test_every_kind_of_item_arrives_as_the_events_it_stands_for(core_server):
    response, events = sse_events(core_server.url + "/mixed")
    assert response.status_code == 200
    got = [(e.event, e.id, e.data, e.retry) for e in events]
    assert got == [
        ("first", "1", "one", None),
        ("message", "1", "two\nlines", None),
        ("message", "1", "three", None),
        ("message", "1", "four", None),
        ("dict", "5", "five", 1500),
        ("json", "5", '{"six":[6,null]}', None),
    ]


def test_headers_are_those_of_an_unbuffered_event_stream(core_server):
    response, _ = sse_events(core_server.url + "/count")
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers


def test_status_and_headers_can_be_set_like_a_streaming_response(core_server):
    response, events = sse_events(core_server.url + "/custom")
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-extra"] == "yes"
    assert [e.data for e in events] == ["created"]


def test_a_sync_generator_runs_in_a_worker_thread_and_is_closed(core_server):
    _, events = sse_events(core_server.url + "/sync")
    assert [e.data for e in events] == ["sync 0", "sync 1", "sync 2"]
    wait_until(lambda: "sync" in core_server.recorder.finally_ran)


def test_a_finished_generator_closes_the_stream_completed_and_runs_the_background_task(core_server):
    before = len(core_server.recorder.reasons("/count"))
    _, events = sse_events(core_server.url + "/count", n="5")
    assert [e.id for e in events] == ["0", "1", "2", "3", "4"]
    wait_until(lambda: len(core_server.recorder.reasons("/count")) > before)
    assert core_server.recorder.reasons("/count")[-1] == "completed"
    wait_until(lambda: "count" in core_server.recorder.background_ran)


def test_the_body_ends_with_a_proper_chunked_terminator(core_server):
    with raw_request(core_server.port, "/count?n=2") as sock:
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"id: 0\r\ndata: 0:\r\n\r\nid: 1\r\ndata: 1:\r\n\r\n"


def test_a_generator_that_raises_closes_with_error_and_the_client_sees_a_clean_end(core_server):
    with raw_request(core_server.port, "/fail") as sock:
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"data: before the error\r\n\r\n"
    assert b"secret" not in body and b"RuntimeError" not in body
    wait_until(lambda: "error" in core_server.recorder.reasons("/fail"))
    assert "fail" in core_server.recorder.finally_ran


def test_an_item_of_the_wrong_type_closes_with_error_without_leaking_the_type_error(core_server):
    with raw_request(core_server.port, "/bad-item") as sock:
        _, body = read_response(sock)
    assert body == b"data: fine\r\n\r\n"
    wait_until(lambda: "error" in core_server.recorder.reasons("/bad-item"))


def test_a_disconnect_is_seen_while_the_generator_waits_and_stops_it(core_server):
    recorder = core_server.recorder
    before = recorder.finally_ran.count("wait")
    with raw_request(core_server.port, "/wait") as sock:
        recv_until(sock, b"data: waiting")
        started = time.monotonic()
    # The generator waits forever: only the listener can see the client leave.
    wait_until(lambda: recorder.finally_ran.count("wait") > before, timeout=5)
    assert time.monotonic() - started < 3.0  # without the listener: 15 s (the ping)
    assert recorder.reasons("/wait")[-1] == "client_disconnect"


def test_an_idle_stream_is_pinged_with_a_comment(core_server):
    with raw_request(core_server.port, "/wait?ping=0.2") as sock:
        sock.settimeout(5)
        received = b""
        deadline = time.monotonic() + 3
        while received.count(b": ping\r\n\r\n") < 2 and time.monotonic() < deadline:
            received += sock.recv(65536)
    assert received.count(b": ping\r\n\r\n") >= 2


def test_a_ping_factory_sends_its_event_instead(core_server):
    with (
        httpx.Client(timeout=5) as client,
        connect_sse(client, "GET", core_server.url + "/wait", params={"ping": "0.1", "ping_event": "1"}) as source,
    ):
        events = source.iter_sse()
        assert next(events).data == "waiting"
        ping = next(events)
    assert (ping.event, ping.data) == ("ping", "keep-alive")


def test_a_stream_that_keeps_sending_is_not_pinged(core_server):
    with raw_request(core_server.port, "/busy?n=20&every=0.05&ping=0.2") as sock:
        _, body = read_response(sock)
    assert body.count(b"data: ") == 20
    assert b": ping" not in body


def test_ping_zero_disables_pings(core_server):
    with raw_request(core_server.port, "/wait?ping=0") as sock:
        sock.settimeout(0.6)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    assert b"data: waiting" in received
    assert b"ping" not in received


def test_a_stalled_client_is_closed_with_send_timeout_and_does_not_pin_the_generator(core_server):
    recorder = core_server.recorder
    recorder.pulled.clear()
    before = recorder.finally_ran.count("flood")
    with raw_request(core_server.port, "/flood?send_timeout=0.5&ping=0", rcvbuf=4096) as sock:
        sock.recv(1024)  # the response has started; now the client stops reading
        wait_until(lambda: recorder.finally_ran.count("flood") > before, timeout=5)
        assert recorder.reasons("/flood")[-1] == "send_timeout"
        # Bounded memory: the generator was not pulled much further than the socket buffers and one
        # queued chunk can hold (8 KiB events; kernel buffers on loopback are a few MiB at most).
        assert len(recorder.pulled) < 2000


def test_route_label_is_the_template_not_the_raw_path(core_server):
    _, events = sse_events(core_server.url + "/users/42/events")
    assert [e.data for e in events] == ["hello 42"]
    wait_until(lambda: core_server.recorder.reasons("/users/{user_id}/events") == ["completed"])


def test_every_stream_leaves_exactly_one_closed_transition(core_server):
    recorder = core_server.recorder
    for _ in range(5):
        sse_events(core_server.url + "/count", n="2")
    with recorder.lock:
        closed_ids = [sid for sid, _, to in recorder.transitions if to == "closed"]
    assert len(closed_ids) == len(set(closed_ids))


def test_thousands_of_short_and_aborted_streams_leave_nothing_behind(core_server):
    def stats():
        return json.loads(httpx.get(core_server.url + "/stats").text)

    wait_until(lambda: stats()["streams"] == 0, timeout=10)
    baseline = stats()
    for i in range(1000):
        with raw_request(core_server.port, "/count?n=2") as sock:
            read_response(sock)
        with raw_request(core_server.port, "/wait?ping=0.5&send_timeout=5") as sock:
            recv_until(sock, b"data: waiting")
        if i % 2:
            # Gone before the response started.
            socket.create_connection(("127.0.0.1", core_server.port)).close()
    wait_until(lambda: stats()["streams"] == 0, timeout=20)
    after = stats()
    assert after["timers"] == baseline["timers"] == 0
    assert after["timer_driver"] is False
    wait_until(lambda: stats()["tasks"] <= baseline["tasks"], timeout=10)


def test_events_arrive_as_they_are_made_not_batched_behind_later_ones(core_server):
    with raw_request(core_server.port, "/count?n=3&every=1") as sock:
        first = recv_until(sock, b"data: 0:")
        # The first event is there before the generator has made the second one.
        assert b"data: 1:" not in first


def test_a_stalled_stream_due_for_a_ping_does_not_starve_the_event_loop(core_server):
    """A ping falls due while the sender is stuck and bytes are queued: the timer must not spin."""
    with raw_request(core_server.port, "/flood?send_timeout=0&ping=0.05", rcvbuf=4096) as sock:
        recv_until(sock, b"data: ")  # started; now the client stops reading
        time.sleep(0.5)  # the socket buffers fill, the sender stalls, pings fall due
        for _ in range(5):
            started = time.monotonic()
            assert httpx.get(core_server.url + "/stats", timeout=2).status_code == 200
            assert time.monotonic() - started < 0.5
            time.sleep(0.1)


def test_a_burst_is_coalesced_into_few_sends(core_server):
    recorder = core_server.recorder
    with recorder.lock:
        recorder.body_sends.clear()
    before = recorder.reported("/count")
    with raw_request(core_server.port, "/count?n=5000&size=100") as sock:
        _, body = read_response(sock)
    assert body.count(b"\r\n\r\n") == 5000
    with recorder.lock:
        sends = [nbytes for path, nbytes in recorder.body_sends if path == "/count" and nbytes]
    assert sum(sends) == len(body)
    assert len(sends) < 5000 / 50, "events already made go out joined"

    # The observers hear the same totals, in a few reports rather than one per send.
    def heard() -> tuple[int, ...]:
        return tuple(after - first for after, first in zip(recorder.reported("/count"), before, strict=True))

    wait_until(lambda: heard()[0] >= 5000)
    assert heard() == (5000, 0, len(body))


def test_observers_hear_what_an_open_stream_sent_within_about_a_second(core_server):
    """``sent`` is reported per stream at most a second late (not once per send), not only at its end."""
    recorder = core_server.recorder
    with raw_request(core_server.port, "/busy?n=500&every=0.01") as sock:
        recv_until(sock, b"data: 0\r\n")
        started = time.monotonic()
        wait_until(lambda: recorder.reported("/busy")[0] >= 1, timeout=3)
        heard_after = time.monotonic() - started
        heard = recorder.reported("/busy")[0]
    assert heard_after < 2.5
    assert heard < 500, "the report came while the stream was still sending"
