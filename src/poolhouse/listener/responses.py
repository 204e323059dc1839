"""Bytes prepared ahead for the hot path: status lines, the Date header, and the small
error pages the listener answers with itself (as HTTP.sys does)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

SERVER = b"Poolhouse"
SERVER_FIRST = b"Server: "  # a worker's header block that starts so has its own Server header

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
STATUS_LINE_11: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()
}
STATUS_LINE_10: dict[int, bytes] = {
    code: b"HTTP/1.0 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()
}


def status_line(status: int, http_minor: int) -> bytes:
    table = STATUS_LINE_11 if http_minor else STATUS_LINE_10
    line = table.get(status)
    if line is None:
        line = b"HTTP/1.%d %d Unknown\r\n" % (http_minor, status)
    return line


class DateHeader:
    """``Date: …\\r\\nServer: …\\r\\n``, recomputed at most once a second.

    A response that has a ``Server`` header of its own (an upstream's, passed through by
    the reverse proxy as ARR does, or an application's) keeps it and gets no second one:
    the worker puts it first in the header block (``SERVER_FIRST``), and ``for_block``
    then gives the Date line alone — as IIS, where a response's own Server header
    replaces ``Microsoft-IIS/10.0`` and HTTP.sys adds its own only when there is none."""

    __slots__ = ("_second", "_value", "_date")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""
        self._date = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
            self._value = self._date + b"Server: %s\r\n" % SERVER
        return self._value

    def for_block(self, block: bytes) -> bytes:
        """The lines to write before ``block``: Date, and Server unless it has one."""
        value = self.get()
        return self._date if block.startswith(SERVER_FIRST) else value


DATE = DateHeader()

# HTTP.sys-style titles for the errors the listener generates itself.
_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    411: "Length Required",
    413: "Request Entity Too Large",
    414: "Request URL Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_MESSAGES = {
    400: "The request is badly formed.",
    404: "The requested resource is not found.",
    502: "The application's worker process ended before it completed the request.",
    503: "The service is unavailable.",
    504: "The application did not respond in time.",
}


def error_body(status: int, detail: str = "", substatus: int = 0) -> bytes:
    title = _TITLES.get(status, REASONS.get(status, b"Error").decode())
    message = detail or _MESSAGES.get(status, title + ".")
    code = f"{status}.{substatus}" if substatus else str(status)
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
        f"<HTML><HEAD><TITLE>{title}</TITLE>\r\n"
        '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
        f"<BODY><h2>{title}</h2>\r\n<hr><p>HTTP Error {code}. {message}</p>\r\n</BODY></HTML>\r\n"
    ).encode()


def error_response(status: int, http_minor: int, head_only: bool, close: bool, detail: str = "",
                   substatus: int = 0) -> bytes:
    body = error_body(status, detail, substatus)
    out = [
        status_line(status, http_minor),
        DATE.get(),
        b"Content-Type: text/html; charset=us-ascii\r\nContent-Length: %d\r\n" % len(body),
    ]
    if close:
        out.append(b"Connection: close\r\n")
    elif http_minor == 0:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    if not head_only:
        out.append(body)
    return b"".join(out)
