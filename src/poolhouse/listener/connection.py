"""A client connection: httptools parsing on an asyncio Protocol (no streams on the hot
path), keep-alive and pipelining (responses in request order), back-pressure both ways.

Requests on one connection are served one at a time in order; the ones pipelined behind
are parsed and held (their bodies buffered up to one window) until their turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from .exchange import Exchange
from .file_send import FileSender
from .responses import error_response

if TYPE_CHECKING:
    from .server import Listener

log = logging.getLogger("poolhouse.listener")

MAX_PIPELINE = 16
# HTTP.sys's defaults: MaxFieldLength (one header line, or the URL) and MaxRequestBytes
# (request line and headers together).
MAX_FIELD_LENGTH = 16 * 1024
MAX_REQUEST_BYTES = 16 * 1024
_HTTP_MINOR = {"1.1": 1, "1.0": 0}

# (status, HTTPERR reason, detail) for the heads the listener refuses to parse further
_URL_TOO_LONG = (414, "URL_Length", "The request URL is too long.")
_FIELD_TOO_LONG = (400, "FieldLength", "A request header field is too long.")
_HEAD_TOO_LONG = (400, "RequestLength", "The size of the request headers is too long.")
_BAD_REQUEST = (400, "BadRequest", "")
_BAD_HOST = (400, "Hostname", "The request hostname is invalid.")
_BAD_URL = (400, "URL", "The request URL is invalid.")
_BAD_CODING = (501, "N/I", "The request's Transfer-Encoding is not implemented.")
# A request line's bytes besides the method and the target: " ", " HTTP/1.1", CRLF, and
# the CRLF that ends the head.
_LINE_OVERHEAD = 13
_AUTHORITY = re.compile(
    rb"(?:[A-Za-z0-9._~!$&'()*+,;=%:-]*@)?(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")


_dropped_noted = False  # the first dropped header is logged, the others counted


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past HTTP.sys's limits."""


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "listener", "transport", "parser", "client", "server", "scheme", "pipeline",
        "parsing", "closed", "write_paused", "read_paused_by", "last_activity",
        "headers", "url", "header_bytes", "requests", "parser_busy", "head_error", "head_raw",
        "deferred_error", "site_id", "bytes_written", "drain_mark", "tunnel", "tunnel_held",
        "sender", "memo_raw", "dropped", "body_mark",
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
        self.header_bytes = 0  # raw bytes of the header lines dropped from the current head
        self.dropped = 0  # header lines dropped from the current head (names with "_")
        self.requests = 0
        self.parser_busy = 0.0  # when the current request's head began (0: not in a head)
        self.head_error: tuple[int, str, str] | None = None
        self.head_raw = 0  # bytes of reads that fell wholly inside the current head
        self.deferred_error = b""  # the 400 to send once the requests before it are answered
        self.site_id: int | None = None  # the site this connection counts against (maxConnections)
        self.bytes_written = 0  # for minBytesPerSecond
        self.drain_mark: tuple[float, int] | None = None
        # An upgrade request (WebSocket): the exchange whose stream carries the connection's
        # bytes from now on, and what the client sent before the worker agreed (101).
        self.tunnel: Exchange | None = None
        self.tunnel_held: list[bytes] | None = None
        self.sender: FileSender | None = None  # a file range being sent (file_send.py)
        self.memo_raw: bytes | None = None  # the read that began the request in progress
        # (time, body bytes then, exchange): minBytesPerSecond for a request body (server.py)
        self.body_mark: tuple[float, int, Exchange] | None = None

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
        if self.sender is not None:
            self.sender.stop()
        self.listener.connections.discard(self)
        if self.site_id is not None:
            self.listener.connection_closed(self)
        for exch in self.pipeline:
            if not exch.done:
                reason = "Connection_Dropped" if exch.worker is not None or exch.response_started else "Client_Reset"
                self.listener.log_error(reason, self, exch)
                exch.cancel()
        self.pipeline.clear()
        self.parsing = None

    def data_received(self, data: bytes) -> None:
        if self.deferred_error or self.closed:
            return  # past a parse error nothing is HTTP any more (reads already under way)
        self.last_activity = time.monotonic()
        if self.tunnel_held is not None:
            self._hold(data)
            return
        if self.tunnel is not None:
            self.tunnel.body(data)
            return
        in_head = self.parser_busy
        if not in_head and not self.pipeline:
            # the response cache's fast path: a read that is exactly a request answered
            # from the cache before (same bytes) is answered again without parsing
            listener = self.listener
            if listener.memo:
                key = (self.server, data)
                hit = listener.memo.get(key)
                if hit is not None and listener.memo_hit(self, key, hit):
                    return
            self.memo_raw = data  # whether it is one whole request is checked only on a hit
        elif self.memo_raw is not None:
            self.memo_raw = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:] if exc.args else b"")
            return
        except httptools.HttpParserError:
            self.bad_request(*(self.head_error or _BAD_REQUEST))
            return
        if in_head and self.parser_busy == in_head:
            # The same head is still arriving, in pieces.  The exact limits are checked
            # as its lines complete; this only bounds what the parser may buffer of a line
            # that never does.
            self.head_raw += len(data)
            if self.head_raw > 2 * MAX_REQUEST_BYTES:
                self.bad_request(*_HEAD_TOO_LONG)

    def _upgrade(self, tail: bytes) -> None:
        """The request just parsed asked to switch protocols.  Nothing after it is HTTP:
        for a WebSocket handshake the bytes are held until the worker answers (101 opens
        the tunnel, anything else closes the connection); other upgrades (h2c, CONNECT)
        are answered as ordinary requests, then the connection closes."""
        if self.parsing is not None and not self.parsing.body_done:
            self.on_message_complete()
        exch = self.pipeline[-1] if self.pipeline else None
        if exch is None or not exch.upgrade:
            if exch is not None:
                exch.keep_alive = False
            self.pause_for(self.parser)
            return
        self.tunnel_held = []
        if tail:
            self._hold(tail)

    def _hold(self, data: bytes) -> None:
        held = self.tunnel_held
        assert held is not None
        held.append(data)
        if sum(map(len, held)) >= 65536:
            self.pause_for(self.parser)  # until the worker answers the handshake

    def open_tunnel(self, exch: Exchange) -> None:
        """The worker accepted the upgrade: from now on the client's bytes go to it."""
        held, self.tunnel_held = self.tunnel_held or [], None
        self.tunnel = exch
        for data in held:
            exch.body(data)
        self.unpause_for(self.parser)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sender is not None:
            self.sender.pump()  # the transport's buffer is empty: sendfile may go on
        for exch in self.pipeline:
            exch.return_owed_window()

    def eof_received(self) -> bool | None:
        # The client half-closed: finish what it asked for, then close.  A request still
        # being received can never complete: that is a client gone (connection_lost logs it).
        if self.tunnel is not None:
            self.tunnel.body_complete()  # the worker ends its side (WebSocket: close frame)
            return True
        if self.pipeline and self.parsing is None and not self.parser_busy:
            self.pipeline[-1].keep_alive = False
            return True
        return None

    # ---- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.url = b""
        self.header_bytes = 0
        self.dropped = 0
        self.head_raw = 0
        self.parser_busy = self.last_activity

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_FIELD_LENGTH:
            self.head_error = _URL_TOO_LONG
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete (one C-level sum): while it
        # arrives, ``head_raw`` bounds what can pile up.
        if b"_" in name:
            # As nginx, gunicorn and mod_wsgi do: "X_Forwarded_For" would become the same
            # CGI/WSGI variable as "X-Forwarded-For" (and "Content_Length" would pass for
            # a header no proxy in front of us checked), so it never reaches a worker.
            if len(name) + len(value) > MAX_FIELD_LENGTH:
                self.head_error = _FIELD_TOO_LONG
                raise HeadTooLarge
            self.dropped += 1
            self.header_bytes += len(name) + len(value) + 4
            if self.dropped == 1:
                self._note_dropped(name)
            return
        headers = self.headers
        headers.append(name.lower())
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")  # trailing OWS is not part of the value (RFC 9110 §5.5)
        headers.append(value)

    def on_headers_complete(self) -> None:
        self.parser_busy = 0.0
        parser = self.parser
        headers = self.headers
        raw_method = parser.get_method()
        # MaxRequestBytes counts the head as sent: each header line with its ": " and
        # CRLF (a run of 2,000 tiny headers is 2,000 lines of overhead, not nothing)
        if (len(raw_method) + len(self.url) + sum(map(len, headers)) + 2 * len(headers) + self.header_bytes
                + _LINE_OVERHEAD > MAX_REQUEST_BYTES):
            self._head_too_large()
        method = raw_method.decode("ascii", "replace")
        url = self.url
        authority = None
        if url[:1] != b"/" or b"#" in url:
            url, authority = self._odd_target(url, method)
        body_length = 0
        expect_continue = False
        names = headers[::2]
        hosts = names.count(b"host")
        if hosts == 1:
            at = names.index(b"host") * 2 + 1
            if authority is not None:
                # RFC 9112 §3.2.2: the target's authority replaces Host, for routing and
                # for the application alike
                headers[at] = authority
            host = headers[at]
        elif hosts or parser.get_http_version() == "1.1":
            self.head_error = _BAD_HOST  # RFC 9112 §3.2: exactly one Host (HTTP.sys answers both alike)
            raise HeadTooLarge
        elif authority is not None:  # HTTP/1.0 without Host: the target names it
            host = authority
            headers += (b"host", authority)
            names.append(b"host")
        else:
            host = b""
        if self.dropped:
            self._count_dropped()
        if b"content-length" in names or b"transfer-encoding" in names or b"expect" in names:
            chunked = False
            for i in range(0, len(headers), 2):
                name = headers[i]
                if name == b"content-length":
                    body_length = int(headers[i + 1])
                elif name == b"transfer-encoding":
                    chunked = True
                    value = headers[i + 1]
                    if value != b"chunked" and any(
                            c.strip() not in (b"chunked", b"") for c in value.lower().split(b",")):
                        # RFC 9112 §6.1: a coding the server does not understand (the
                        # parser has made sure chunked comes last)
                        self.head_error = _BAD_CODING
                        raise HeadTooLarge
                elif name == b"expect":
                    if headers[i + 1].lower() == b"100-continue":
                        expect_continue = True
            if chunked:
                if parser.get_http_version() != "1.1":
                    self.head_error = _BAD_REQUEST  # RFC 9112 §6.1: no chunked framing in 1.0
                    raise HeadTooLarge
                body_length = -1
        version = parser.get_http_version()
        http_minor = 1 if version == "1.1" else _HTTP_MINOR.get(version, -1)
        exch = Exchange(self, method, url, http_minor, tuple(headers), body_length,
                        bool(parser.should_keep_alive()), expect_continue, host, self.last_activity)
        if b"upgrade" in names and parser.should_upgrade():
            exch.keep_alive = False  # whatever the answer, nothing after it is HTTP/1.1
            if method == "GET" and http_minor == 1 and not body_length:
                exch.upgrade = headers[names.index(b"upgrade") * 2 + 1]
        if http_minor < 0:
            exch.keep_alive = False
            exch.status = 505  # answered when its turn comes
        self.requests += 1
        self.parsing = exch
        pipeline = self.pipeline
        pipeline.append(exch)
        if len(pipeline) == 1:
            self.listener.start(self, exch)
        elif len(pipeline) > MAX_PIPELINE:
            self.pause_for(self)

    def _odd_target(self, url: bytes, method: str) -> tuple[bytes, bytes | None]:
        """Request-targets other than origin-form (RFC 9112 §3.2): ``*`` only for OPTIONS,
        absolute-form with an http(s) authority; a fragment is dropped.  Absolute-form
        becomes origin-form and its authority (without user info) is returned: it
        replaces Host."""
        url = url.split(b"#", 1)[0]
        if url[:1] == b"/":
            return url, None
        if url == b"*":
            if method == "OPTIONS":
                return url, None
        elif method == "CONNECT":
            if _AUTHORITY.fullmatch(url) and b"@" not in url:
                return url, None
        elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            rest = url.split(b"//", 1)[1]
            end = len(rest)
            for sep in (b"/", b"?"):
                at = rest.find(sep)
                if at != -1 and at < end:
                    end = at
            authority = rest[:end]
            if authority and _AUTHORITY.fullmatch(authority):
                target = rest[end:]
                if target[:1] != b"/":
                    target = b"/" + target
                return target, authority.rpartition(b"@")[2]
        self.head_error = _BAD_URL
        raise HeadTooLarge

    def _note_dropped(self, name: bytes) -> None:
        global _dropped_noted
        if not _dropped_noted:
            _dropped_noted = True
            log.info("a request header with '_' in its name (%r) was dropped; such headers never reach "
                     "applications (further ones are only counted: counters 'headers_dropped')",
                     name[:64].decode("latin-1"))
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("dropped request header %r", name[:64].decode("latin-1"))

    def _count_dropped(self) -> None:
        counters = self.listener.counters
        counters["headers_dropped"] = counters.get("headers_dropped", 0) + self.dropped

    def _head_too_large(self) -> None:
        headers = self.headers
        for i in range(0, len(headers), 2):
            if len(headers[i]) + len(headers[i + 1]) > MAX_FIELD_LENGTH:
                self.head_error = _FIELD_TOO_LONG
                raise HeadTooLarge
        self.head_error = _HEAD_TOO_LONG
        raise HeadTooLarge

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
            self.bytes_written += len(data)
            self.transport.write(data)

    def sendfile_fd(self) -> int:
        """The socket's descriptor for os.sendfile, or -1 where the bytes must pass
        through the transport (TLS)."""
        if self.scheme != "http":
            return -1
        sock = self.transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else -1

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
        self.last_activity = exch.finished_at = time.monotonic()
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
        elif self.deferred_error:
            self._send_deferred_error()
            return
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
        exch.from_listener = True
        data = error_response(status, max(exch.http_minor, 0), exch.method == "HEAD", close, detail)
        exch.bytes_sent += len(data)
        exch.response_started = True
        self.write(data)
        exch.finish()

    def abort_exchange(self, exch: Exchange, reason: str) -> None:
        self.listener.log_error(reason, self, exch, exch.status)
        self.abort()

    def bad_request(self, status: int, reason: str, detail: str) -> None:
        """The bytes on this connection stopped being HTTP: nothing more is read, the
        requests before the bad one are answered, then the error, then the connection
        closes (as HTTP.sys does)."""
        exch = self.parsing  # set when the error is in this request's body
        self.parsing = None
        self.parser_busy = 0.0
        self.listener.log_error(reason, self, exch, status)
        self.pause_for(self.parser)
        if exch is not None:
            if exch.response_started:  # too late for an error status
                exch.cancel()
                self.abort()
                return
            exch.cancel()
            self.pipeline.remove(exch)  # the request being parsed is the last one
        self.deferred_error = error_response(status, 1, False, True, detail)
        if not self.pipeline:
            self._send_deferred_error()

    def _send_deferred_error(self) -> None:
        self.write(self.deferred_error)
        self.deferred_error = b""
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()
