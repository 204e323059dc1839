"""Request-head validation in the connection core, fed bytes (whole, byte by byte, in
random pieces): header names with "_" never reach a worker, HTTP/1.1 needs one Host,
only the chunked transfer coding is implemented, the head's size is counted as sent,
and an absolute-form target's authority replaces Host."""

from __future__ import annotations

import pytest

from tests.unit.test_listener_connection import HOW, answer, feed, make


@pytest.mark.parametrize("how", HOW)
def test_header_names_with_underscores_are_dropped(how: str) -> None:
    conn, listener, _ = make()
    feed(conn, b"POST / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1\r\n"
               b"Content_Length: 99\r\nContent-Length: 2\r\n\r\nok", how)
    (exch,) = listener.started
    assert exch.headers == (b"host", b"x", b"x-forwarded-for", b"10.0.0.1", b"content-length", b"2")
    assert exch.body_length == 2 and exch.body_done
    assert listener.counters["headers_dropped"] == 2
    assert listener.errors == []


def test_dropped_headers_are_counted_per_request_on_one_connection() -> None:
    conn, listener, _ = make()
    conn.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\nA_B: 1\r\n\r\n")
    answer(listener.started[0], b"one")
    conn.data_received(b"GET /2 HTTP/1.1\r\nHost: x\r\nX-Ok: 1\r\n\r\n")
    answer(listener.started[1], b"two")
    conn.data_received(b"GET /3 HTTP/1.1\r\nHost: x\r\nC_D: 1\r\nE_F: 2\r\n\r\n")
    assert listener.counters["headers_dropped"] == 3
    assert listener.started[1].headers == (b"host", b"x", b"x-ok", b"1")
    assert listener.started[2].headers == (b"host", b"x")


@pytest.mark.parametrize("how", HOW)
def test_http11_without_host_is_400_hostname(how: str) -> None:
    conn, listener, transport = make()
    feed(conn, b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", how)
    assert listener.started == []
    assert listener.errors == [("Hostname", 400)]
    assert transport.out.startswith(b"HTTP/1.1 400 ") and transport.closed


@pytest.mark.parametrize("how", HOW)
def test_http10_without_host_is_served(how: str) -> None:
    conn, listener, _ = make()
    feed(conn, b"GET / HTTP/1.0\r\n\r\n", how)
    (exch,) = listener.started
    assert exch.host == b"" and listener.errors == []


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"x-custom , chunked"])
@pytest.mark.parametrize("how", HOW)
def test_transfer_codings_other_than_chunked_are_501(coding: bytes, how: str) -> None:
    conn, listener, transport = make()
    feed(conn, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n", how)
    assert listener.started == []
    assert listener.errors == [("N/I", 501)]
    assert transport.out.startswith(b"HTTP/1.1 501 Not Implemented\r\n") and transport.closed


@pytest.mark.parametrize("how", HOW)
def test_chunked_alone_is_still_accepted(how: str) -> None:
    conn, listener, _ = make()
    feed(conn, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", how)
    (exch,) = listener.started
    assert exch.body_length == -1 and b"".join(exch.body_buf) == b"hello"


def _many_headers(n: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(n)) + b"\r\n"


@pytest.mark.parametrize("how", ["whole", "random"])
def test_head_size_counts_every_line_as_sent(how: str) -> None:
    data = _many_headers(2000)
    assert 16 * 1024 < len(data) < 24 * 1024  # 2,000 small headers: about 22 KB
    conn, listener, transport = make()
    feed(conn, data, how)
    assert listener.started == []
    assert listener.errors == [("RequestLength", 400)]
    assert transport.out.startswith(b"HTTP/1.1 400 ")


def test_head_size_counts_dropped_headers_too() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"H_%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    conn, listener, _ = make()
    feed(conn, data, "whole")
    assert listener.errors == [("RequestLength", 400)]


def test_many_small_headers_under_the_limit_are_accepted() -> None:
    data = _many_headers(1400)
    assert len(data) < 16 * 1024 - 100
    conn, listener, _ = make()
    feed(conn, data, "random")
    assert listener.errors == [] and len(listener.started) == 1


@pytest.mark.parametrize("target, host, origin", [
    (b"http://other.example:8080/p/q?x=1", b"other.example:8080", b"/p/q?x=1"),
    (b"https://Other.Example", b"Other.Example", b"/"),
    (b"http://h.example?x=1", b"h.example", b"/?x=1"),
    (b"http://user:pw@h.example/a", b"h.example", b"/a"),
    (b"http://[::1]:81/a#frag", b"[::1]:81", b"/a"),
])
@pytest.mark.parametrize("how", HOW)
def test_absolute_form_authority_replaces_host(target: bytes, host: bytes, origin: bytes, how: str) -> None:
    conn, listener, _ = make()
    feed(conn, b"GET " + target + b" HTTP/1.1\r\nHost: ignored.example\r\n\r\n", how)
    (exch,) = listener.started
    assert exch.host == host
    assert exch.target == origin
    assert exch.headers == (b"host", host)


def test_absolute_form_names_the_host_of_an_http10_request() -> None:
    conn, listener, _ = make()
    conn.data_received(b"GET http://h.example/a HTTP/1.0\r\n\r\n")
    (exch,) = listener.started
    assert exch.host == b"h.example" and exch.target == b"/a"
    assert exch.headers == (b"host", b"h.example")


def test_absolute_form_still_needs_host_in_http11() -> None:
    conn, listener, _ = make()
    conn.data_received(b"GET http://h.example/a HTTP/1.1\r\n\r\n")
    assert listener.errors == [("Hostname", 400)]
