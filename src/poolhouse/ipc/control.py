"""Control channels: activation service <-> listener, activation service <-> worker.

Low-volume traffic (configuration, "pool X needs a worker", pings, statistics), so each
message is one frame of type MESSAGE whose payload is a JSON object with an ``op`` key.
Requests that want an answer carry an ``id``; the answer is ``{"op": "reply", "id": …}``.

File descriptors (a worker's ends of its queue socket and of its file channel, handed to
the listener; listening sockets) travel on a separate SOCK_SEQPACKET pair, one record per
handover with a small JSON label and its descriptors (at most ``MAX_FDS``), because
asyncio transports cannot carry ancillary data.  ``send_fds``/``FdReceiver`` do that.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from .frames import FrameDecoder, FrameError, encode

MESSAGE = 1
MAX_CONTROL_PAYLOAD = 32 * 1024 * 1024

log = logging.getLogger("poolhouse.ipc")

Message = dict[str, Any]


def encode_message(msg: Message) -> bytes:
    return encode(MESSAGE, 0, 0, json.dumps(msg, separators=(",", ":")).encode())


class MessageDecoder:
    """Pure: bytes in, JSON messages out."""

    def __init__(self) -> None:
        self._frames = FrameDecoder(MAX_CONTROL_PAYLOAD)

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        for frame in self._frames.feed(data):
            if frame.type != MESSAGE:
                raise FrameError(f"unexpected control frame type {frame.type}")
            try:
                msg = json.loads(frame.payload)
            except ValueError as exc:
                raise FrameError(f"bad control message: {exc}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                raise FrameError("control message without op")
            out.append(msg)
        return out


class ControlProtocol(asyncio.Protocol):
    """The asyncio shell around ``MessageDecoder``: calls ``on_message(msg)`` for each
    message and ``on_lost(exc)`` once when the peer goes away.  ``request`` sends a message
    and returns a future for its reply."""

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_lost: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._decoder = MessageDecoder()
        self._transport: asyncio.Transport | None = None
        self._next_id = 1
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except FrameError as exc:
            log.error("control channel: %s; closing it", exc)
            if self._transport is not None:
                self._transport.close()
            return
        for msg in messages:
            if msg["op"] == "reply":
                fut = self._waiting.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            try:
                self._on_message(msg)
            except Exception:  # a handler bug must not kill the channel
                log.exception("control message %r failed", msg.get("op"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("control channel closed"))
        self._waiting.clear()
        if self._on_lost is not None:
            self._on_lost(exc)

    def send(self, msg: Message) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(encode_message(msg))

    def reply(self, request: Message, **fields: Any) -> None:
        self.send({"op": "reply", "id": request.get("id"), **fields})

    def request(self, msg: Message) -> "asyncio.Future[Message]":
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self.closed or self._transport is None:
            fut.set_exception(ConnectionError("control channel closed"))
            return fut
        msg_id = self._next_id
        self._next_id += 1
        self._waiting[msg_id] = fut
        self.send({**msg, "id": msg_id})
        return fut

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_control(
    sock: socket.socket,
    on_message: Callable[[Message], None],
    on_lost: Callable[[Exception | None], None] | None = None,
) -> ControlProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.connect_accepted_socket(
        lambda: ControlProtocol(on_message, on_lost), sock=sock
    )
    return proto


def fd_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


MAX_FDS = 4


def send_fd(sock: socket.socket, label: Message, fd: int) -> None:
    """Send one descriptor with its label (see ``send_fds``)."""
    send_fds(sock, label, [fd])


def send_fds(sock: socket.socket, label: Message, fds: list[int]) -> None:
    """Send descriptors (1 to ``MAX_FDS``) with their label in one record.  The socket is
    blocking on the sender's side (records are tiny and the receiver drains them at once)."""
    if not 1 <= len(fds) <= MAX_FDS:
        raise ValueError(f"a record carries 1 to {MAX_FDS} descriptors, not {len(fds)}")
    data = json.dumps(label).encode()
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


class FdReceiver:
    """Reads labelled descriptors from a SOCK_SEQPACKET socket on the event loop:
    ``on_fd(label, fds)`` with the record's descriptors in the order sent (the callee
    owns them)."""

    def __init__(self, sock: socket.socket, on_fd: Callable[[Message, list[int]], None]) -> None:
        self._sock = sock
        self._on_fd = on_fd
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(65536, socket.CMSG_SPACE(4 * 16),
                                                                   socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("fd channel: %s", exc)
                self.close()
                return
            if not data and not ancdata:
                self.close()
                return
            fds: list[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                    fds.extend(arr)
            try:
                label = json.loads(data)
            except ValueError:
                label = {}
            if not 1 <= len(fds) <= MAX_FDS or not isinstance(label, dict):
                log.error("fd channel: record with %d descriptors and label %r dropped", len(fds), data[:80])
                for fd in fds:
                    socket.close(fd)
                continue
            self._on_fd(label, fds)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        except (RuntimeError, ValueError):
            pass
        self._sock.close()
