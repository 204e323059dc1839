"""A client connection: httptools parsing on an asyncio Protocol (no streams on the hot
path), keep-alive and pipelining (responses in request order), back-pressure both ways.

Requests on one connection are served one at a time in order; the ones pipelined behind
are parsed and held (their bodies buffered up to one window) until their turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ..ipc.queue import RequestHead
from .exchange import Exchange
from .responses import error_response

if TYPE_CHECKING:
    from .server import Listener

MAX_PIPELINE = 16
_HTTP_MINOR = {"1.1": 1, "1.0": 0}


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "listener", "transport", "parser", "client", "server", "scheme", "pipeline",
        "parsing", "closed", "write_paused", "read_paused_by", "last_activity",
        "headers", "url", "header_bytes", "requests", "parser_busy",
    )

    def __init__(self, listener: "Listener", scheme: str = "http") -> None:
        self.listener = listener
        self.scheme = scheme
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] = ("", 0)
        self.server: tuple[str, int] = ("", 0)
        self.pipeline: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.closed = False
        self.write_paused = False
        self.read_paused_by: set[object] = set()
        self.last_activity = time.monotonic()
        self.headers: list[bytes] = []
        self.url = b""
        self.header_bytes = 0
        self.requests = 0
        self.parser_busy = 0.0  # when the current request's head began (0: not in a head)

    # ---- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
        if isinstance(sock, tuple):
            self.server = (sock[0], sock[1])
        self.listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        for exch in self.pipeline:
            if not exch.done:
                reason = "Connection_Dropped" if exch.worker is not None or exch.response_started else "Client_Reset"
                self.listener.log_error(reason, self, exch)
                exch.cancel()
        self.pipeline.clear()
        self.parsing = None

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket) are not served yet: the request is answered normally
            # and the connection closed afterwards.
            if self.parsing is not None:
                self.parsing.keep_alive = False
                if not self.parsing.body_done:
                    self.on_message_complete()
            self.pause_for(self)
        except httptools.HttpParserError as exc:
            self.bad_request(str(exc))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for exch in self.pipeline:
            exch.return_owed_window()

    def eof_received(self) -> bool | None:
        # The client half-closed: finish what it asked for, then close.
        if self.pipeline:
            self.pipeline[-1].keep_alive = False
            return True
        return None

    # ---- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.url = b""
        self.parser_busy = self.last_activity

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(name.lower())
        self.headers.append(value)

    def on_headers_complete(self) -> None:
        self.parser_busy = 0.0
        parser = self.parser
        http_minor = _HTTP_MINOR.get(parser.get_http_version(), -1)
        method = parser.get_method().decode("ascii", "replace")
        headers = self.headers
        body_length = 0
        expect_continue = False
        host = ""
        chunked = False
        for i in range(0, len(headers), 2):
            name = headers[i]
            if name == b"content-length":
                body_length = int(headers[i + 1])
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"host":
                host = headers[i + 1].decode("latin-1")
            elif name == b"expect":
                if headers[i + 1].lower() == b"100-continue":
                    expect_continue = True
        if chunked:
            body_length = -1
        head = RequestHead(
            "", method, self.url, max(http_minor, 0), tuple(headers),
            self.client[0], self.client[1], self.server[0], self.server[1],
            self.scheme, body_length,
        )
        exch = Exchange(self, head, bool(parser.should_keep_alive()), expect_continue)
        if http_minor < 0:
            exch.keep_alive = False
            exch.status = 505  # answered when its turn comes
        self.requests += 1
        self.parsing = exch
        self.pipeline.append(exch)
        exch.host = host
        if len(self.pipeline) == 1:
            self.listener.start(self, exch)
        elif len(self.pipeline) > MAX_PIPELINE:
            self.pause_for(self)

    def on_body(self, body: bytes) -> None:
        exch = self.parsing
        if exch is not None:
            exch.body(body)

    def on_message_complete(self) -> None:
        exch = self.parsing
        if exch is None:
            return
        self.parsing = None
        exch.body_complete()
        if exch.done and self.pipeline and self.pipeline[0] is exch:
            # the response went out before the body was read: now move on
            self._next()

    # ---- used by the exchange and the listener ------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_for(self, who: object) -> None:
        if not self.read_paused_by and not self.closed:
            self.transport.pause_reading()
        self.read_paused_by.add(who)

    def unpause_for(self, who: object) -> None:
        if who in self.read_paused_by:
            self.read_paused_by.discard(who)
            if not self.read_paused_by and not self.closed:
                self.transport.resume_reading()

    def exchange_done(self, exch: Exchange) -> None:
        self.last_activity = time.monotonic()
        self.listener.request_done(self, exch)
        if not exch.keep_alive:
            self.close()
            return
        self.unpause_for(exch)
        if exch.body_done and self.pipeline and self.pipeline[0] is exch:
            self._next()

    def _next(self) -> None:
        self.pipeline.popleft()
        if self.pipeline:
            head = self.pipeline[0]
            if not head.started:
                self.listener.start(self, head)
        if len(self.pipeline) <= MAX_PIPELINE:
            self.unpause_for(self)

    def send_error(self, exch: Exchange, status: int, reason: str, detail: str = "") -> None:
        """Answer ``exch`` (the head of the pipeline) with an error of the listener's own,
        logged to HTTPERR.  The connection is closed unless the request was read whole."""
        if exch.done:
            return
        self.listener.log_error(reason, self, exch, status)
        exch.status = status
        close = not exch.keep_alive or not exch.body_done or status in (400, 505)
        exch.keep_alive = not close
        data = error_response(status, exch.head.http_minor, exch.method == "HEAD", close, detail)
        exch.bytes_sent += len(data)
        exch.response_started = True
        self.write(data)
        exch.finish()

    def abort_exchange(self, exch: Exchange, reason: str) -> None:
        self.listener.log_error(reason, self, exch, exch.status)
        self.abort()

    def bad_request(self, detail: str) -> None:
        exch = self.parsing
        self.listener.log_error("BadRequest", self, exch, 400)
        if not self.pipeline or (exch is not None and self.pipeline[0] is exch):
            self.write(error_response(400, 1, False, True))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()
