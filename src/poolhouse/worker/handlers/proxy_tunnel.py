"""WebSocket passthrough for the reverse proxy (ARR forwards WebSockets as it forwards
requests): an upgrade request a rule sends to an ``http(s)://`` upstream.

The handshake goes to the upstream on a connection of its own — never a kept-alive one,
and never given back: after a 101 it is no longer HTTP — with ``Connection: Upgrade``
and the client's ``Upgrade`` kept (they are hop-by-hop headers, dropped otherwise) and
the usual ``X-Forwarded-*``.  The upstream's answer decides:

* 101: its headers, hop-by-hop ones removed, go to the listener with
  ``Stream.open_tunnel`` (the listener writes ``Upgrade``/``Connection`` itself); from
  then on bytes are pumped both ways, the WebSocket protocol (and any extension the two
  ends agreed, permessage-deflate) is theirs.  Back-pressure both ways: the upstream is
  read no faster than the listener's window allows, the client's bytes no faster than
  the upstream drains them.
* anything else: relayed as an ordinary response (the listener closes the client's
  connection after it).

A client that half-closes gets the upstream's write side shut down (over TLS, which
cannot half-close, the upstream has ``HALF_CLOSE_GRACE`` to finish); the upstream's end
of stream ends the tunnel (the listener then closes the client's connection).  A client
gone (CANCEL) resets the stream.  A worker that drains ends its open tunnels at once
(``WorkerProcess.proxy_tunnels``): the clients see the TCP connection close and
reconnect, to the new worker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

import httptools

from ..stream import BadResponseHeader, build_header_block
from .proxy import BAD_RESPONSE, DROPPED, POOL, READ_SIZE, UpstreamError, _read, _relay, _Response, response_headers

if TYPE_CHECKING:
    from ..pipeline import HttpContext
    from ..stream import Stream

log = logging.getLogger("poolhouse.worker")

HALF_CLOSE_GRACE = 5.0


async def pass_through(worker: Any, stream: "Stream", ctx: "HttpContext | None", host: str, port: int,
                       tls: ssl.SSLContext | None, request_head: bytes, timeout: float,
                       upstream_origin: bytes) -> None:
    """Send the handshake ``request_head`` to the upstream and relay what follows; raises
    UpstreamError (the caller answers 502/504) while nothing was sent to the client."""
    conn = await POOL.connect(host, port, timeout, tls)

    def client_event() -> None:
        if stream.cancelled:  # the client left before the upstream answered: stop waiting
            conn.close()
    stream.on_body = client_event
    try:
        if stream.cancelled:  # the client left while the connection was being made
            stream.reset()
            return
        try:
            conn.writer.write(request_head)
            await conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise UpstreamError(502, 3, f"connection to {host}:{port} failed: {exc}", DROPPED) from None
        stream.stage = "ExecuteRequestHandler"
        resp = _Response()
        parser = resp.parser = httptools.HttpResponseParser(resp)
        tail = b""
        while not resp.head_done:
            data = await _read(conn, timeout, host, port)
            if not data:
                raise UpstreamError(502, 3, f"{host}:{port} closed the connection without a response", DROPPED)
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:  # a 101: what follows its head is the tunnel's
                tail = data[exc.args[0]:] if exc.args else b""
            except httptools.HttpParserError as exc:
                raise UpstreamError(502, 3, f"{host}:{port} sent an invalid response: {exc}", BAD_RESPONSE) from None
        if parser.get_status_code() != 101:
            await _relay(worker, stream, conn, parser, resp, b"", timeout, host, port, ctx, upstream_origin)
            return
        try:
            block, _, _ = build_header_block(response_headers(resp.headers, b"", b""))
        except BadResponseHeader as exc:
            raise UpstreamError(502, 3, f"{host}:{port} sent a bad header: {exc}", BAD_RESPONSE) from None
        if stream.cancelled:
            raise ConnectionResetError("the client went away during the handshake")
        stream.open_tunnel(block)
        await Tunnel(worker, stream, conn.reader, conn.writer).run(tail)
    finally:
        stream.on_body = None
        conn.close()


class Tunnel:
    """The two pumps of one passed-through upgrade, and how they end."""

    __slots__ = ("worker", "stream", "reader", "writer", "tasks", "half_closed", "leaving")

    def __init__(self, worker: Any, stream: "Stream", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.worker = worker
        self.stream = stream
        self.reader = reader
        self.writer = writer
        self.tasks: tuple[asyncio.Task[None], ...] = ()
        self.half_closed = False  # the client ended its side; the upstream may still send
        self.leaving = False  # the worker drains

    async def run(self, tail: bytes) -> None:
        loop = asyncio.get_running_loop()
        up = loop.create_task(self._upstream_to_client(tail))
        down = loop.create_task(self._client_to_upstream())
        self.tasks = (up, down)
        self.stream.on_body = self._client_event
        self.worker.proxy_tunnels.add(self)
        if getattr(self.worker, "draining", False):
            self.going_away()  # the upstream agreed after the drain began: nothing would end it
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.half_closed and not up.done() and not self.leaving:
                grace = None if self.writer.can_write_eof() else HALF_CLOSE_GRACE
                await asyncio.wait((up,), timeout=grace)
        finally:
            self._finish()

    def going_away(self) -> None:
        """The worker drains: end the tunnel now (the client sees its connection close)."""
        self.leaving = True
        for task in self.tasks:
            task.cancel()

    def _client_event(self) -> None:
        if self.stream.cancelled:  # the client's connection is gone: stop both pumps
            for task in self.tasks:
                task.cancel()

    async def _upstream_to_client(self, data: bytes) -> None:
        stream = self.stream
        reader = self.reader
        while True:
            if data:
                stream.send_body(data)
            if stream.window <= 0:
                await stream.wait_window()
            if stream.cancelled or stream.ended:
                return
            try:  # never more than the listener's window: a client that stops reading stops the upstream
                data = await reader.read(min(READ_SIZE, stream.window))
            except (ConnectionError, OSError):
                return
            if not data:
                return  # the upstream's end of stream ends the tunnel

    async def _client_to_upstream(self) -> None:
        stream = self.stream
        writer = self.writer
        while True:
            chunk = await stream.read_chunk()
            if chunk is None:
                break
            try:
                writer.write(chunk)
                await writer.drain()  # the client's next bytes wait until the upstream took these
            except (ConnectionError, OSError):
                return  # the upstream is gone: the tunnel ends
        if stream.cancelled:
            return
        self.half_closed = True
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except (ConnectionError, OSError):
                pass

    def _finish(self) -> None:
        stream = self.stream
        for task in self.tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                log.error("WebSocket passthrough failed", exc_info=task.exception())
        self.worker.proxy_tunnels.discard(self)
        stream.on_body = None
        try:
            self.writer.close()
        except Exception:
            pass
        if stream.cancelled:
            stream.reset()
        else:
            stream.send_body(b"", end=True)
