"""ASGI WebSocket (the ``websocket`` scope) over the queue protocol.

The listener forwards a handshake like any request, flagged ``q.UPGRADE``, and holds the
client's further bytes.  Accepting answers 101 (``Stream.open_tunnel``): from then on the
stream is a byte tunnel, the client's bytes arriving as body chunks and ours leaving as
body frames, under the same windows as any body — so a client that stops reading stops a
sending application, and one that floods is not read faster than the application takes
its messages.  The WebSocket protocol itself (framing, masking, fragmentation, UTF-8
checks, ping/pong, the close handshake, permessage-deflate) is wsproto's, run here: the
listener only moves bytes, which is also what lets the reverse proxy pass WebSockets
through.

Configuration: ``system.webServer/webSocket`` — ``enabled`` (off: the handshake reaches
the application as a plain ``http`` request), ``receiveBufferLimit`` (the largest message
taken; a bigger one closes with 1009) and ``pingInterval`` (server pings, 0 = none).
A recycle closes open sockets with 1012 (Service Restart) so clients reconnect to the
new worker.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError, generate_accept_token, split_comma_header

from ...config import values as V
from ..stream import BadResponseHeader, Stream, build_header_block

if TYPE_CHECKING:
    from ..process import WorkerProcess

log = logging.getLogger("poolhouse.worker")

SECTION = "system.webServer/webSocket"
CLOSE_TIMEOUT = 5.0  # how long a close we started waits for the client's close frame
INBOX_HIGH = 1 << 20  # received, not yet taken by the application: stop reading above this
SEND_PIECE = 1 << 20  # a large outgoing message leaves in pieces of this size

CONNECTING, OPEN, CLOSED = "connecting", "open", "closed"


class ClientDisconnected(OSError):
    """``websocket.send`` after the connection closed (an OSError, as servers raise)."""


def settings(web: Any) -> tuple[bool, int, float]:
    """(enabled, receiveBufferLimit, pingInterval seconds) of the effective webSocket section."""
    section = (web.sections.get(SECTION) if web is not None else None) or {}
    ping = section.get("pingInterval", 0)
    if isinstance(ping, str):
        ping = V.parse_timespan(ping)
    return (bool(section.get("enabled", True)), int(section.get("receiveBufferLimit", 4194304)),
            float(ping or 0))


def wants_websocket(stream: Stream) -> bool:
    headers = stream.head.headers
    for i in range(0, len(headers), 2):
        if headers[i] == b"upgrade":
            return headers[i + 1].strip().lower() == b"websocket"
    return False


def websocket_scope(http_scope: dict[str, Any]) -> dict[str, Any]:
    """The ``websocket`` scope from the ``http`` one the handler built."""
    scope = dict(http_scope)
    scope.pop("method", None)
    scope["type"] = "websocket"
    scope["asgi"] = {"version": "3.0", "spec_version": "2.4"}
    scope["scheme"] = "wss" if http_scope["scheme"] == "https" else "ws"
    protocols: list[str] = []
    for name, value in scope["headers"]:
        if name == b"sec-websocket-protocol":
            protocols.extend(split_comma_header(value))
    scope["subprotocols"] = protocols
    extensions = dict(scope.get("extensions") or {})
    extensions["websocket.http.response"] = {}
    scope["extensions"] = extensions
    return scope


class WebSocketSession:
    """One ``websocket`` scope: the application's receive/send, and a reader task that
    feeds wsproto from the tunnel, answers pings at once and queues messages."""

    def __init__(self, worker: "WorkerProcess", stream: Stream, scope: dict[str, Any],
                 max_message: int, ping_interval: float) -> None:
        self.worker = worker
        self.stream = stream
        self.scope = scope
        self.max_message = max_message
        self.ping_interval = ping_interval
        self.state = CONNECTING
        self.conn: Connection | None = None
        self.inbox: deque[dict[str, Any]] = deque()
        self.inbox_bytes = 0
        self.wakeup = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.connect_given = False
        self.code = 1006
        self.reason = ""
        self.denial: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.write_lock = asyncio.Lock()
        self.ended = False
        stream.on_body = self.wakeup.set  # a cancel while connecting wakes receive()

    # ---- the application's side ---------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_given:
            self.connect_given = True
            return {"type": "websocket.connect"}
        while not self.inbox:
            if self.state == CLOSED or self.stream.cancelled or self.ended:
                return {"type": "websocket.disconnect", "code": self.code, "reason": self.reason}
            self.wakeup.clear()
            await self.wakeup.wait()
        message = self.inbox.popleft()
        self.inbox_bytes -= len(message.get("bytes") or message.get("text") or "")
        if self.inbox_bytes < INBOX_HIGH:
            self.room.set()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.state == CONNECTING:
                raise RuntimeError("websocket.send before websocket.accept")
            conn = self.conn
            if self.state != OPEN or conn is None or conn.state != ConnectionState.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                data = conn.send(TextMessage(data=str(text)))
            else:
                data = conn.send(BytesMessage(data=bytes(message.get("bytes") or b"")))
            await self._write(data)
        elif kind == "websocket.accept":
            if self.state != CONNECTING or self.denial is not None:
                raise RuntimeError("websocket.accept in the wrong state")
            self._accept(message)
        elif kind == "websocket.close":
            if self.state == CONNECTING and self.denial is None:
                # ASGI: closing before accepting refuses the handshake with 403
                self.state = CLOSED
                self.worker.error_response(self.stream, 403, 0, "The application refused the WebSocket.")
                self.ended = True
            elif self.state == OPEN:
                await self.close(int(message.get("code") or 1000), str(message.get("reason") or ""))
        elif kind == "websocket.http.response.start":
            if self.state != CONNECTING or self.denial is not None:
                raise RuntimeError("websocket.http.response.start in the wrong state")
            self.denial = (int(message["status"]),
                           [(bytes(k), bytes(v)) for k, v in message.get("headers", ())], [])
        elif kind == "websocket.http.response.body":
            if self.denial is None or self.state != CONNECTING:
                raise RuntimeError("websocket.http.response.body without a started denial response")
            self.denial[2].append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                status, headers, parts = self.denial
                block, _, close = build_header_block(headers)
                body = b"".join(parts)
                self.state = CLOSED
                self.ended = True
                self.stream.respond(status, block, len(body), body, True, close)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    # ---- the protocol -------------------------------------------------------------

    def _accept(self, message: dict[str, Any]) -> None:
        headers = self.scope["headers"]
        key = b""
        offers: list[bytes] = []
        for name, value in headers:
            if name == b"sec-websocket-key":
                key = value.strip()
            elif name == b"sec-websocket-extensions":
                offers.append(value)
        lines = [b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n"]
        deflate = PerMessageDeflate()
        agreed = server_extensions_handshake(split_comma_header(b", ".join(offers)), [deflate]) if offers else None
        if agreed:
            lines.append(b"Sec-WebSocket-Extensions: " + agreed + b"\r\n")
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines.append(b"Sec-WebSocket-Protocol: " + str(subprotocol).encode("latin-1") + b"\r\n")
        extra = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        block, _, _ = build_header_block(extra)  # raises BadResponseHeader
        self.conn = Connection(ConnectionType.SERVER, extensions=[deflate] if agreed else None)
        self.stream.open_tunnel(b"".join(lines) + block)
        self.state = OPEN
        loop = self.worker.loop
        self.tasks.append(loop.create_task(self._read()))
        if self.ping_interval > 0:
            self.tasks.append(loop.create_task(self._ping()))
        self.worker.websockets.add(self)

    async def _write(self, data: bytes) -> None:
        """Frames to the client, under the window.  One writer at a time: a large frame
        leaves in pieces, and another task's frame must not land between them."""
        stream = self.stream
        async with self.write_lock:
            for start in range(0, max(len(data), 1), SEND_PIECE):
                if stream.window <= 0:
                    await stream.wait_window()
                if stream.cancelled or stream.ended:
                    raise ClientDisconnected("the client went away")
                stream.send_body(data[start:start + SEND_PIECE])

    async def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake; the tunnel ends when the client answers, or after
        CLOSE_TIMEOUT if it does not."""
        conn = self.conn
        if conn is None or conn.state != ConnectionState.OPEN or self.ended:
            return
        try:
            await self._write(conn.send(CloseConnection(code=code, reason=reason)))
        except (ClientDisconnected, LocalProtocolError):
            self._closed(1006, "")
            self.finish()
            return
        self.code, self.reason = code, reason
        self.worker.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        if not self.ended:
            self._closed(self.code, self.reason)
            self.finish()

    def going_away(self) -> None:
        """The worker is recycled: 1012 tells clients to come back (to the new worker)."""
        if self.state == OPEN:
            self.worker.loop.create_task(self.close(1012, "Service Restart"))

    async def _read(self) -> None:
        stream = self.stream
        conn = self.conn
        assert conn is not None
        parts: list[Any] = []
        size = 0
        try:
            while not self.ended:
                if not self.room.is_set():
                    await self.room.wait()
                chunk = await stream.read_chunk()
                if chunk is None:  # the client closed the TCP connection, or went away
                    self._closed(1006, "")
                    self.finish()
                    return
                conn.receive_data(chunk)
                for event in conn.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        parts.append(event.data)
                        size += len(event.data)
                        if size > self.max_message:
                            log.warning("WebSocket message over receiveBufferLimit (%d bytes) on %s",
                                        self.max_message, self.scope["path"])
                            await self.close(1009, "Message too big")
                            parts, size = [], 0
                            continue
                        if event.message_finished:
                            if isinstance(event, TextMessage):
                                self._deliver({"type": "websocket.receive", "text": "".join(parts)})
                            else:
                                self._deliver({"type": "websocket.receive", "bytes": b"".join(parts)})
                            parts, size = [], 0
                    elif isinstance(event, Ping):
                        if conn.state == ConnectionState.OPEN:
                            await self._write(conn.send(event.response()))
                    elif isinstance(event, Pong):
                        pass
                    elif isinstance(event, CloseConnection):
                        if conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.OPEN):
                            # the client closed (REMOTE_CLOSING), or broke the protocol
                            # (OPEN: wsproto reports it as a close with 1002/1007): answer
                            await self._write(conn.send(event.response()))
                        self._closed(event.code, event.reason or "")
                        self.finish()
                        return
        except ClientDisconnected:
            self._closed(1006, "")
            self.finish()
        except Exception:
            log.error("WebSocket reader failed on %s:\n%s", self.scope["path"], traceback.format_exc())
            self._closed(1011, "")
            self.finish()

    async def _ping(self) -> None:
        while self.state == OPEN and not self.ended:
            await asyncio.sleep(self.ping_interval)
            conn = self.conn
            if conn is None or conn.state != ConnectionState.OPEN or self.ended:
                return
            try:
                await self._write(conn.send(Ping(payload=b"poolhouse")))
            except (ClientDisconnected, LocalProtocolError):
                return

    def _deliver(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)
        self.inbox_bytes += len(message.get("bytes") or message.get("text") or "")
        if self.inbox_bytes >= INBOX_HIGH:
            self.room.clear()  # the application is behind: stop reading the client
        self.wakeup.set()

    def _closed(self, code: int, reason: str) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.code, self.reason = code, reason
        self.wakeup.set()
        self.room.set()

    def finish(self) -> None:
        """End the tunnel (the listener then closes the client's connection)."""
        if self.ended:
            return
        self.ended = True
        self.worker.websockets.discard(self)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        stream = self.stream
        if stream.cancelled:
            stream.reset()
        else:
            stream.send_body(b"", end=True)


def _bad_handshake(stream: Stream) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """RFC 6455 §4.2.1: a handshake without a key, or of another version, is refused."""
    headers = stream.head.headers
    key = version = b""
    for i in range(0, len(headers), 2):
        if headers[i] == b"sec-websocket-key":
            key = headers[i + 1].strip()
        elif headers[i] == b"sec-websocket-version":
            version = headers[i + 1].strip()
    if version != b"13":
        return 426, "WebSocket version 13 is required.", [(b"Sec-WebSocket-Version", b"13")]
    if len(key) != 24:
        return 400, "The Sec-WebSocket-Key header is missing or malformed.", []
    return None


async def run_websocket(worker: "WorkerProcess", app: Any, http_scope: dict[str, Any], stream: Stream,
                        web: Any) -> None:
    bad = _bad_handshake(stream)
    if bad is not None:
        worker.error_response(stream, bad[0], 0, bad[1], extra_headers=bad[2])
        return
    _, max_message, ping_interval = settings(web)
    try:
        scope = websocket_scope(http_scope)
    except UnicodeDecodeError:  # a non-ASCII Sec-WebSocket-Protocol
        worker.error_response(stream, 400, 0, "The Sec-WebSocket-Protocol header is malformed.")
        return
    session = WebSocketSession(worker, stream, scope, max_message, ping_interval)
    stream.stage = "ExecuteRequestHandler"
    failed = False
    try:
        await app(scope, session.receive, session.send)
    except BadResponseHeader as exc:
        log.error("ASGI application sent a bad header for %s: %s", scope["path"], exc)
        failed = True
    except Exception:
        if not (stream.cancelled or session.state == CLOSED):
            log.error("ASGI WebSocket application raised for %s:\n%s", scope["path"], traceback.format_exc())
        failed = True
    if session.state == CONNECTING:  # no handshake answer (or an unfinished denial response)
        if not failed:
            log.error("ASGI application returned without accepting the WebSocket on %s", scope["path"])
        worker.error_response(stream, 500, 0)
    elif session.state == OPEN:
        await session.close(*((1011, "Internal Error") if failed else (1000, "")))
    elif not session.ended and not stream.ended:
        session.finish()
