"""The reverse proxy (ARR's behaviour): a request a URL Rewrite rule sent to an absolute
``http://`` or ``https://`` URL, or an httpPlatform application's requests, forwarded
from the worker.

* Streaming both ways: the request body is sent to the upstream as it arrives from the
  listener (Content-Length kept, else chunked); the upstream's response is handed to the
  listener piece by piece under the stream's window.  Neither is held whole.
* Headers: hop-by-hop ones (``Connection`` and those it names, ``Keep-Alive``,
  ``Transfer-Encoding``, ``TE``, ``Trailer``, ``Upgrade``, ``Proxy-*``) are dropped both
  ways; ``X-Forwarded-For`` (appended), ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
  are set; ``Host`` is the upstream's (the client's is in ``X-Forwarded-Host``); request
  server variables a rule set as ``HTTP_X_…`` become request headers; a ``Location``
  pointing at the upstream is turned back to the client's host (ARR's
  reverseRewriteHostInResponseHeaders).
* Upstream connections are kept alive and reused (per host, port and TLS settings).
* ``https://`` upstreams: TLS with the certificate verified against the system's CAs
  and the URL's host (also the SNI); a rule can trust a CA file or turn verification
  off (``upstream_tls.py``).  An untrusted certificate -> 502.3.
* Errors: the upstream refuses or breaks the connection -> 502.3, it does not answer in
  time -> 504.0 (502.3 and 504.0 are ARR's codes; the time: ``DEFAULT_TIMEOUT``, an
  httpPlatform application's requestTimeout, or a rule's ``POOLHOUSE_PROXY_TIMEOUT``),
  each with an error log line and an HTTPERR line the listener writes (the reason
  travels in the RESPONSE head: ``Stream.httperr_reason``); after the response head was
  sent, the stream is reset.
* The response passes through the pipeline's SendResponse hooks (outbound rules,
  custom headers, compression) like any handler's.
* An upgrade request (WebSocket) is passed through on a connection of its own
  (``proxy_tunnel.py``).

Every relayed response is marked ``X-Poolhouse-Upstream`` (an upstream or application
cannot set it): the listener's response cache stores, freshens and invalidates these
under RFC 9111's shared-cache rules (listener/shared_cache.py) and strips the mark.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httptools

from ..stream import BadResponseHeader, build_header_block
from .upstream_tls import TlsConfigError, context_for, describe_failure, settings_from

if TYPE_CHECKING:
    from ..pipeline import HttpContext
    from ..stream import Stream

log = logging.getLogger("poolhouse.worker")

CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
IDLE_KEEP = 256  # idle upstream connections kept per (host, port): one per concurrent request
IDLE_TTL = 30.0
READ_SIZE = 256 * 1024

_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                  b"proxy-connection", b"proxy-authenticate", b"proxy-authorization"))
UPSTREAM_MARK = b"X-Poolhouse-Upstream: 1\r\n"
_SKIP_REQUEST = _HOP | {b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                        b"x-forwarded-host"}


# HTTPERR reasons of the proxy's own errors (docs/listener.md, "HTTPERR reasons")
REFUSED = "Connection_Refused_By_Upstream"      # 502.3: the TCP connection could not be made
DROPPED = "Connection_Dropped_By_Upstream"      # 502.3: closed or reset before the response head
BAD_RESPONSE = "BadResponse_From_Upstream"      # 502.3: not an HTTP/1.x response, or a bad header
TLS_FAILURE = "TLS_Failure_With_Upstream"       # 502.3: handshake, certificate, or CA file failure
BAD_URL = "Upstream_URL_Invalid"                # 502.3: the rule's URL cannot be proxied to
CONNECT_TIMER = "Timer_UpstreamConnect"         # 504.0: connecting (and the TLS handshake) timed out
RESPONSE_TIMER = "Timer_UpstreamResponse"       # 504.0: the upstream stayed silent too long
INTERNAL = "Internal"                           # 502.3: an unexpected failure of the proxy itself
TIMEOUT_VARIABLE = "POOLHOUSE_PROXY_TIMEOUT"


class UpstreamError(Exception):
    def __init__(self, status: int, substatus: int, detail: str, reason: str = DROPPED) -> None:
        super().__init__(detail)
        self.status = status
        self.substatus = substatus
        self.detail = detail
        self.reason = reason


class UpstreamUnreached(UpstreamError):
    """The upstream did not take the request: the TCP connection could not be made, or
    a new connection broke before a byte of an answer to a request that is safe to send
    again (idempotent, without a body: the listener's rule for replaying a request after
    a worker crash).  The request may go to another upstream (httpPlatform's processes)."""


_REPLAYABLE = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


UpstreamKey = tuple[str, int, Any]  # host, port, TLS settings (None: plain http)


class ConnectionPool:
    """Idle keep-alive connections to upstreams, per (host, port, TLS settings)."""

    def __init__(self) -> None:
        self.idle: dict[UpstreamKey, deque[_Conn]] = {}

    def take(self, key: UpstreamKey) -> _Conn | None:
        q = self.idle.get(key)
        now = time.monotonic()
        while q:
            conn = q.pop()
            if now - conn.idle_since < IDLE_TTL and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def give(self, key: UpstreamKey, conn: _Conn) -> None:
        q = self.idle.setdefault(key, deque())
        if len(q) >= IDLE_KEEP:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        q.append(conn)

    async def connect(self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None) -> _Conn:
        """A new connection; with ``tls``, the handshake is done (SNI and the name
        checked: ``host``) within the same connect timeout."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=READ_SIZE, ssl=tls,
                                        server_hostname=host if tls is not None else None),
                min(timeout, CONNECT_TIMEOUT))
        except asyncio.TimeoutError:
            raise UpstreamError(504, 0, f"connecting to {host}:{port} timed out", CONNECT_TIMER) from None
        except ssl.SSLError as exc:
            raise UpstreamError(502, 3, describe_failure(exc, host, port), TLS_FAILURE) from None
        except OSError as exc:
            raise UpstreamUnreached(502, 3, f"cannot connect to {host}:{port}: {exc.strerror or exc}", REFUSED) from None
        return _Conn(reader, writer)


POOL = ConnectionPool()


class _Response:
    """httptools callbacks collecting one upstream response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.status = 0
        self.keep_alive = False
        self.parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        # httptools answers should_keep_alive() only until the message completes
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


@functools.lru_cache(maxsize=1024)
def _header_name(var: str) -> bytes:
    """``HTTP_X_FORWARDED_PROTO`` -> ``X-Forwarded-Proto``."""
    return "-".join(p.capitalize() for p in var[5:].split("_")).encode("latin-1")


def _header(headers: tuple[bytes, ...], name: bytes) -> bytes:
    for i in range(0, len(headers), 2):
        if headers[i] == name:
            return headers[i + 1]
    return b""


def timeout_from(variables: dict[str, str], default: float) -> float:
    """A rule's ``POOLHOUSE_PROXY_TIMEOUT`` (seconds, or a timespan ``hh:mm:ss`` as ARR's
    proxy/@timeout is written): how long the upstream may stay silent.  Anything else
    keeps ``default``."""
    for name, value in variables.items():
        if name.upper() == TIMEOUT_VARIABLE:
            try:
                seconds = float(value) if ":" not in value else sum(
                    float(part) * 60 ** i for i, part in enumerate(reversed(value.strip().split(":"))))
            except ValueError:
                log.warning("%s %r is not a number of seconds nor hh:mm:ss; %.0f s used", TIMEOUT_VARIABLE,
                            value, default)
                return default
            return seconds if seconds > 0 else default
    return default


def build_request(ctx_headers: tuple[bytes, ...], method: str, path: str, host_header: str,
                  client_addr: str, scheme: str, body_length: int, extra: dict[str, str] | None,
                  upgrade: bytes = b"") -> tuple[bytes, bool]:
    """The upstream request head, and whether the body is sent chunked.  ``upgrade``: the
    client's Upgrade header, kept (with ``Connection: Upgrade``) for a passed-through
    handshake."""
    original_host = b""
    forwarded_for = b""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")]
    connection_tokens: set[bytes] = set()
    for i in range(0, len(ctx_headers), 2):
        if ctx_headers[i] == b"connection":
            connection_tokens |= {t.strip().lower() for t in ctx_headers[i + 1].split(b",")}
    overridden = {_header_name(k).lower() for k in (extra or {}) if k.startswith("HTTP_")}
    for i in range(0, len(ctx_headers), 2):
        name, value = ctx_headers[i], ctx_headers[i + 1]
        if name == b"host":
            original_host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
        if name in _SKIP_REQUEST or name in connection_tokens or name in overridden:
            continue
        lines.append(name + b": " + value + b"\r\n")
    xff = (forwarded_for + b", " if forwarded_for else b"") + client_addr.encode("latin-1")
    lines.append(b"X-Forwarded-For: " + xff + b"\r\n")
    lines.append(b"X-Forwarded-Proto: " + scheme.encode("latin-1") + b"\r\n")
    if original_host:
        lines.append(b"X-Forwarded-Host: " + original_host + b"\r\n")
    for k, v in (extra or {}).items():
        if k.startswith("HTTP_"):
            lines.append(_header_name(k) + b": " + v.encode("latin-1", "replace") + b"\r\n")
    if upgrade:
        lines.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n")
    chunked = False
    if body_length > 0:
        lines.append(b"Content-Length: %d\r\n" % body_length)
    elif body_length < 0:
        lines.append(b"Transfer-Encoding: chunked\r\n")
        chunked = True
    elif method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: 0\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), chunked


def response_headers(headers: list[tuple[bytes, bytes]], upstream_origin: bytes, client_origin: bytes) -> list[tuple[bytes, bytes]]:
    connection_tokens: set[bytes] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            connection_tokens |= {t.strip().lower() for t in v.split(b",")}
    out = []
    for k, v in headers:
        low = k.lower()
        if low in _HOP or low in connection_tokens:
            continue
        if low == b"location" and upstream_origin and v.lower().startswith(upstream_origin):
            v = client_origin + v[len(upstream_origin):]
        out.append((k, v))
    return out


async def proxy_request(worker: Any, stream: "Stream", url: str, ctx: "HttpContext | None",
                        timeout: float = DEFAULT_TIMEOUT, failover: bool = False) -> None:
    """Forward the stream's request to ``url`` (absolute http://) and relay the answer.
    ``failover``: an upstream that did not take the request raises ``UpstreamUnreached``
    (nothing answered) instead of answering 502.3, so the caller can send the request
    to another upstream."""
    try:
        await _proxy(worker, stream, url, ctx, timeout)
    except Exception as exc:
        if stream.cancelled:
            stream.reset()  # the client went away: nothing to report
            return
        if failover and isinstance(exc, UpstreamUnreached) and not stream.head_sent:
            raise
        if isinstance(exc, UpstreamError):
            status, substatus, detail, reason = exc.status, exc.substatus, exc.detail, exc.reason
            log.error("reverse proxy %s %s -> %s: %s (%d.%d)", stream.head.method,
                      stream.head.target[:200].decode("latin-1"), url, detail, status, substatus)
        else:
            status, substatus, reason = 502, 3, INTERNAL
            detail = f"reverse proxy failure: {type(exc).__name__}: {exc}"
            log.exception("reverse proxy to %s failed", url)
        if stream.head_sent:
            stream.reset()
        else:
            stream.httperr_reason = reason  # the listener logs it in HTTPERR, as ARR's failures are
            worker.error_response(stream, status, substatus, detail, detail_local=True)


async def _proxy(worker: Any, stream: "Stream", url: str, ctx: "HttpContext | None", timeout: float) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UpstreamError(502, 3, f"{parts.scheme}:// upstreams are not supported (http:// and https:// only)",
                            BAD_URL)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise UpstreamError(502, 3, f"bad upstream URL {url!r}: {exc}", BAD_URL) from None
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    head = stream.head
    host_header = parts.netloc
    extra = ctx.extra_environ if ctx is not None else None
    if extra:
        timeout = timeout_from(extra, timeout)
    tls: ssl.SSLContext | None = None
    tls_settings = None
    if scheme == "https":
        tls_settings = settings_from(extra)
        try:
            tls = context_for(tls_settings, host, port)
        except TlsConfigError as exc:
            raise UpstreamError(502, 3, str(exc), TLS_FAILURE) from None
    if stream.upgrade:
        from .proxy_tunnel import pass_through
        request_head, _ = build_request(head.headers, head.method, target, host_header, head.client_addr,
                                        head.scheme, 0, extra, _header(head.headers, b"upgrade"))
        await pass_through(worker, stream, ctx, host, port, tls, request_head, timeout,
                           f"{scheme}://{parts.netloc}".encode("latin-1"))
        return
    request_head, chunked = build_request(head.headers, head.method, target, host_header, head.client_addr,
                                          head.scheme, head.body_length, extra)
    key = (host, port, tls_settings)
    has_body = head.body_length != 0 and not (stream.body_done and not stream.body_chunks)
    conn = POOL.take(key) if not has_body else None
    reused = conn is not None
    replayable = not has_body and head.method in _REPLAYABLE
    stream.stage = "ExecuteRequestHandler"
    deadline = timeout
    while True:
        if conn is None:
            conn = await POOL.connect(host, port, timeout, tls)
            reused = False
        try:
            conn.writer.write(request_head)
            if has_body:
                await _send_body(stream, conn, chunked)
            await conn.writer.drain()
            resp = _Response()
            parser = resp.parser = httptools.HttpResponseParser(resp)
            data = await _read(conn, deadline, host, port)
            if not data and (reused or replayable):
                raise ConnectionResetError("closed by the upstream without a response")
            break
        except (ConnectionError, OSError) as exc:
            conn.close()
            if reused:  # a kept-alive connection the upstream had closed: once more, fresh
                conn = None
                continue
            error = UpstreamUnreached if replayable else UpstreamError
            raise error(502, 3, f"connection to {host}:{port} failed: {exc}", DROPPED) from None
    try:
        await _relay(worker, stream, conn, parser, resp, data, deadline, host, port, ctx,
                     f"{scheme}://{parts.netloc}".encode("latin-1"))
    except BaseException:
        conn.close()
        raise
    if resp.complete and resp.keep_alive:
        POOL.give(key, conn)
    else:
        conn.close()


async def _send_body(stream: "Stream", conn: _Conn, chunked: bool) -> None:
    while True:
        chunk = await stream.read_chunk()
        if chunk is None:
            break
        if chunked:
            conn.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            conn.writer.write(chunk)
        await conn.writer.drain()
    if stream.cancelled:
        raise ConnectionResetError("client went away during the request body")
    if chunked:
        conn.writer.write(b"0\r\n\r\n")


async def _read(conn: _Conn, timeout: float, host: str, port: int) -> bytes:
    """The next bytes from the upstream; ``timeout``: how long it may stay silent."""
    try:
        async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
            return await conn.reader.read(READ_SIZE)
    except TimeoutError:
        raise UpstreamError(504, 0, f"{host}:{port} did not answer in time", RESPONSE_TIMER) from None


async def _relay(worker: Any, stream: "Stream", conn: _Conn, parser: Any, resp: _Response, data: bytes,
                 deadline: float, host: str, port: int, ctx: "HttpContext | None", upstream_origin: bytes) -> None:
    while not resp.head_done:
        if not data:
            raise UpstreamError(502, 3, f"{host}:{port} closed the connection without a response")
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(502, 3, f"{host}:{port} sent an invalid response: {exc}", BAD_RESPONSE) from None
        if resp.head_done:
            break
        data = await _read(conn, deadline, host, port)
    status = parser.get_status_code()
    head = stream.head
    client_host = next((head.headers[i + 1] for i in range(0, len(head.headers), 2) if head.headers[i] == b"host"), b"")
    client_origin = head.scheme.encode() + b"://" + client_host if client_host else b""
    headers = response_headers(resp.headers, upstream_origin, client_origin)
    no_body = head.method == "HEAD" or status in (204, 304) or 100 <= status < 200
    # neither Content-Length nor chunked: the body ends when the upstream closes (HTTP/1.0
    # style); it is relayed with an unknown length (the listener sends it chunked)
    until_close = not no_body and not any(
        k.lower() in (b"content-length", b"transfer-encoding") for k, _ in resp.headers)
    if until_close:
        resp.keep_alive = False
    # a whole small response goes out in one frame
    while not resp.complete and not no_body and sum(map(len, resp.body)) < 65536:
        data = await _read(conn, deadline, host, port)
        if not data:
            resp.complete = until_close
            break
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(502, 3, f"{host}:{port} sent an invalid response body: {exc}", BAD_RESPONSE) from None
    body = b"".join(resp.body)
    resp.body.clear()
    end = resp.complete or no_body
    if ctx is not None and ctx.pipeline.has_send:
        out = ctx.send_response(status, 0, headers, body, end)
        if out.generated:
            worker.error_response(stream, out.status, out.substatus, out.detail)
            return
        changed = out.body is not body or out.end != end
        status, headers, body, end = out.status, out.headers, out.body, out.end  # type: ignore[assignment]
        if out.body_filter is not None:
            stream.body_filter = out.body_filter
    else:
        changed = False
    try:
        block, length, close = build_header_block(headers)
    except BadResponseHeader as exc:
        raise UpstreamError(502, 3, f"{host}:{port} sent a bad header: {exc}", BAD_RESPONSE) from None
    if status >= 200:  # (an interim or 101 head is not the cache's: it would keep the mark)
        block += UPSTREAM_MARK  # the listener's response cache applies RFC 9111 to it (and strips this)
    if no_body:
        if changed and body:  # a module's own body (Replace): the length a GET would get
            length = len(body)
        # otherwise the upstream's Content-Length, or none when it sent none
        stream.respond(status, block, length, b"", True, close)
        return
    if changed or stream.body_filter is not None:
        length = len(body) if end else -1
    if end:
        stream.respond(status, block, len(body) if length < 0 or changed else length, body, True, close)
        return
    stream.respond(status, block, length, body, False, close)
    while True:
        if stream.window <= 0:
            await stream.wait_window()
        if stream.cancelled:
            raise ConnectionResetError("client went away")
        if resp.complete:
            break
        data = await _read(conn, deadline, host, port)
        if not data:
            if until_close:
                break
            raise UpstreamError(502, 3, f"{host}:{port} closed the connection mid-response")
        parser.feed_data(data)
        if resp.body:
            chunk = b"".join(resp.body)
            resp.body.clear()
            stream.send_body(chunk)
    if resp.body:
        chunk = b"".join(resp.body)
        resp.body.clear()
        stream.send_body(chunk, end=True)
    else:
        stream.send_body(b"", end=True)
