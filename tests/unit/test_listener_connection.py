"""The connection protocol fed bytes (whole, byte by byte, in random pieces) with a
stand-in listener and transport: heads, limits, pipelining order, bad input."""

from __future__ import annotations

import random
from typing import Any

import pytest

from poolhouse.ipc.queue import ResponseHead, END_STREAM
from poolhouse.listener.connection import MAX_REQUEST_BYTES, HttpConnection


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else ("127.0.0.1", 80)


class FakeCache:
    slots: dict[Any, Any] = {}  # empty: the cache's fast path stays off


class FakeListener:
    def __init__(self) -> None:
        self.connections: set[HttpConnection] = set()
        self.memo: dict[Any, Any] = {}
        self.cache = FakeCache()
        self.started: list[Any] = []
        self.errors: list[tuple[str, int | None]] = []
        self.counters: dict[str, int] = {}

    def start(self, conn: HttpConnection, exch: Any) -> None:
        exch.started = True
        self.started.append(exch)

    def log_error(self, reason: str, conn: Any, exch: Any, status: int | None = None) -> None:
        self.errors.append((reason, status))

    def request_done(self, conn: Any, exch: Any) -> None:
        pass


def make() -> tuple[HttpConnection, FakeListener, FakeTransport]:
    listener = FakeListener()
    conn = HttpConnection(listener)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, listener, transport


def feed(conn: HttpConnection, data: bytes, how: str) -> None:
    if how == "whole":
        conn.data_received(data)
    elif how == "bytes":
        for i in range(len(data)):
            conn.data_received(data[i:i + 1])
    else:
        rnd = random.Random(len(data))
        i = 0
        while i < len(data):
            n = rnd.randint(1, 50)
            conn.data_received(data[i:i + n])
            i += n


def answer(exch: Any, body: bytes) -> None:
    exch.response(ResponseHead(200, b"", -1, body), END_STREAM)


HOW = ["whole", "bytes", "random"]


@pytest.mark.parametrize("how", HOW)
def test_head_is_parsed_the_same_however_it_arrives(how: str) -> None:
    conn, listener, _ = make()
    feed(conn, b"POST /a%20b?x=1 HTTP/1.1\r\nHost: Example\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc", how)
    (exch,) = listener.started
    head = exch.head
    assert (head.method, head.target, head.http_minor, head.body_length) == ("POST", b"/a%20b?x=1", 1, 3)
    assert head.headers == (b"host", b"Example", b"content-length", b"3", b"x-a", b"1")
    assert exch.host == b"Example" and exch.body_done
    assert b"".join(exch.body_buf) == b"abc"


@pytest.mark.parametrize("how", HOW)
def test_pipelined_requests_are_answered_in_order(how: str) -> None:
    conn, listener, transport = make()
    feed(conn, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", how)
    assert len(listener.started) == 1  # the second waits for its turn
    answer(listener.started[0], b"one")
    assert len(listener.started) == 2
    answer(listener.started[1], b"two")
    assert transport.out.index(b"one") < transport.out.index(b"two")
    assert not transport.closed


@pytest.mark.parametrize("how", HOW)
def test_bad_request_waits_for_the_ones_before_it(how: str) -> None:
    conn, listener, transport = make()
    feed(conn, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nBad Name: v\r\n\r\n", how)
    assert listener.errors == [("BadRequest", 400)]
    assert transport.out == b"" and not transport.closed and transport.paused
    answer(listener.started[0], b"one")
    assert transport.out.startswith(b"HTTP/1.1 200 ")
    assert b"oneHTTP/1.1 400 Bad Request\r\n" in transport.out
    assert transport.closed


@pytest.mark.parametrize("how", HOW)
def test_head_limits(how: str) -> None:
    for data, reason, status in [
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000 + b"\r\n\r\n", "FieldLength", 400),
        (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n", "URL_Length", 414),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"b" * 9000 + b"\r\nY: " + b"b" * 9000 + b"\r\n\r\n",
         "RequestLength", 400),
    ]:
        conn, listener, transport = make()
        feed(conn, data, how)
        assert listener.errors == [(reason, status)], how
        assert transport.out.startswith(b"HTTP/1.1 %d " % status)
        assert transport.closed


def test_dribbled_unfinished_header_line_is_bounded() -> None:
    conn, listener, transport = make()
    conn.data_received(b"GET / HTTP/1.1\r\nX: ")
    for _ in range(2 * MAX_REQUEST_BYTES // 100 + 2):
        if transport.closed:
            break
        conn.data_received(b"c" * 100)
    assert listener.errors == [("RequestLength", 400)]
    assert transport.closed


def test_head_just_under_the_limit_in_pieces_is_accepted() -> None:
    conn, listener, transport = make()
    data = (b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 990) for i in range(15)) + b"\r\n")
    feed(conn, data, "random")
    assert listener.errors == [] and len(listener.started) == 1


def test_client_gone_mid_body_is_not_kept_half_open() -> None:
    conn, listener, transport = make()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert conn.eof_received() is None  # close: the request can never complete


def test_half_close_after_a_whole_request_is_served() -> None:
    conn, listener, transport = make()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.eof_received() is True
    answer(listener.started[0], b"ok")
    assert transport.out.endswith(b"ok") and transport.closed


SMUGGLING = {
    "content-length and transfer-encoding": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "BadRequest"),
    "two content-lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                            "BadRequest"),
    "obsolete line folding": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "BadRequest"),
    "bare LF": (b"GET / HTTP/1.1\nHost: x\n\n", "BadRequest"),
    "bare CR": (b"GET / HTTP/1.1\rHost: x\r\n\r\n", "BadRequest"),
    "space in a header name": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "BadRequest"),
    "control character in a value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", "BadRequest"),
    "chunked not last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "BadRequest"),
    "chunked in HTTP/1.0": (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                            "BadRequest"),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "Hostname"),
    "asterisk with GET": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "URL"),
    "bad absolute-form": (b"GET http://]bad/ HTTP/1.1\r\nHost: x\r\n\r\n", "URL"),
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
@pytest.mark.parametrize("how", HOW)
def test_smuggling_vectors_are_refused_before_any_worker(name: str, how: str) -> None:
    data, reason = SMUGGLING[name]
    conn, listener, transport = make()
    feed(conn, data, how)
    assert listener.errors == [(reason, 400)]
    assert listener.started == []
    assert transport.out.startswith(b"HTTP/1.1 400 ") and transport.closed


def test_fragment_dropped_and_trailing_whitespace_trimmed() -> None:
    conn, listener, _ = make()
    conn.data_received(b"GET /a?b=1#frag HTTP/1.1\r\nHost: x\r\nX-V: abc \t\r\n\r\n")
    (exch,) = listener.started
    assert exch.target == b"/a?b=1" and exch.headers == (b"host", b"x", b"x-v", b"abc")
