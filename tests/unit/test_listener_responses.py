"""Prepared status lines, the Date header and the listener's own error responses."""

from __future__ import annotations

import re

import pytest

from poolhouse.listener import responses
from poolhouse.listener.responses import DateHeader, error_body, error_response, status_line


@pytest.mark.parametrize("status,minor,line", [
    (200, 1, b"HTTP/1.1 200 OK\r\n"),
    (200, 0, b"HTTP/1.0 200 OK\r\n"),
    (404, 1, b"HTTP/1.1 404 Not Found\r\n"),
    (503, 0, b"HTTP/1.0 503 Service Unavailable\r\n"),
    (418, 1, b"HTTP/1.1 418 I'm a Teapot\r\n"),
    (299, 1, b"HTTP/1.1 299 Unknown\r\n"),
    (799, 0, b"HTTP/1.0 799 Unknown\r\n"),
])
def test_status_line(status: int, minor: int, line: bytes) -> None:
    assert status_line(status, minor) == line


def test_date_header_is_cached_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.2]
    monkeypatch.setattr(responses.time, "time", lambda: now[0])
    date = DateHeader()
    first = date.get()
    assert first == b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\nServer: Poolhouse\r\n"
    now[0] += 0.5
    assert date.get() is first
    now[0] += 1
    assert date.get() == b"Date: Tue, 14 Nov 2023 22:13:21 GMT\r\nServer: Poolhouse\r\n"


def test_a_block_with_its_own_server_header_gets_the_date_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses.time, "time", lambda: 1_700_000_000.0)
    date = DateHeader()
    own = b"Server: Upstream/1.0\r\nContent-Type: text/plain\r\n"
    assert date.for_block(own) == b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
    for block in (b"Content-Type: text/plain\r\n", b"", b"X-Server: no\r\n"):
        assert date.for_block(block) == b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\nServer: Poolhouse\r\n"


def _parse(data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    return lines[0], headers, body


@pytest.mark.parametrize("close", [True, False])
@pytest.mark.parametrize("minor", [0, 1])
def test_error_response_framing(close: bool, minor: int) -> None:
    first, headers, body = _parse(error_response(503, minor, False, close))
    assert first == b"HTTP/1.%d 503 Service Unavailable" % minor
    assert int(headers[b"Content-Length"]) == len(body)
    assert headers[b"Content-Type"] == b"text/html; charset=us-ascii"
    if close:
        assert headers[b"Connection"] == b"close"
    elif minor == 0:
        assert headers[b"Connection"] == b"keep-alive"
    else:
        assert b"Connection" not in headers


def test_error_response_to_head_has_length_but_no_body() -> None:
    first, headers, body = _parse(error_response(400, 1, True, True))
    assert body == b""
    assert int(headers[b"Content-Length"]) == len(error_body(400))


@pytest.mark.parametrize("status,title,message", [
    (400, "Bad Request", "The request is badly formed."),
    (503, "Service Unavailable", "The service is unavailable."),
    (414, "Request URL Too Long", "Request URL Too Long."),
    (418, "I'm a Teapot", "I'm a Teapot."),
])
def test_error_body_is_http_sys_style(status: int, title: str, message: str) -> None:
    body = error_body(status).decode()
    assert f"<TITLE>{title}</TITLE>" in body
    assert f"<h2>{title}</h2>" in body
    assert f"HTTP Error {status}. {message}" in body
    assert body.isascii()


def test_error_body_detail_replaces_the_message() -> None:
    body = error_body(400, "The request hostname is invalid.").decode()
    assert "HTTP Error 400. The request hostname is invalid." in body
    assert re.search(r"badly formed", body) is None
