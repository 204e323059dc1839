"""The listener's end of one worker's queue socket.

Frames going to the worker are collected during a loop turn and written with one
``writelines`` call; frames coming back are dispatched by type to the exchange that owns
their stream.  The link takes a credit back on every stream's terminal frame
(END_STREAM or RESET), whatever became of the exchange meanwhile.

The link believes nothing a worker says about itself: its pid is the one the
activation service gave with the socket (``attach_worker``), and files come only as
descriptors the worker passed on its file channel (file_channel.py), never as paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, cast

from ..ipc import queue as q
from ..ipc.frames import FrameDecoder, FrameError, encode
from .file_channel import FileChannel, FileRefused

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .exchange import Exchange
    from .request_queue import PoolQueue
    from .server import Listener

log = logging.getLogger("poolhouse.listener")

STALL_HOLD = 1 << 30  # credits taken from a stalled worker, so that it is never picked
# What the listener lets pile up for a worker that does not read its socket: past
# WRITE_HIGH the worker is given no new request and the clients whose bodies go to it
# are paused, until the buffer is down to WRITE_LOW.  A worker's own word (its credits,
# a STALLED that gives requests back to be sent again) cannot grow it further.
WRITE_HIGH = 4 << 20
WRITE_LOW = 1 << 20


class WorkerLink(asyncio.Protocol):
    def __init__(self, listener: "Listener", pool: "PoolQueue", worker_id: str, pid: int,
                 files: socket.socket | None = None) -> None:
        """``pid``: from the activation service, which spawned the worker; ``files``: the
        listener's end of the worker's file channel (None: file responses are refused)."""
        self.listener = listener
        self.pool = pool
        self.worker_id = worker_id
        self.pid = pid
        self.credits = 0
        self.ready = False
        self.draining = False
        self.streams: dict[int, Exchange] = {}
        self.tunnels: set[int] = set()  # streams that became tunnels (their credit is back)
        self.files = (FileChannel(files, worker_id, lambda sid: sid in self.streams)
                      if files is not None else None)
        self.requests = 0
        self.stalled = False  # its event loop is stuck (q.STALLED) and it has not run since
        self._next_stream = 1
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False  # the worker is not reading: nothing more is sent it
        self.held_clients: set[HttpConnection] = set()  # paused until it reads again

    # ---- asyncio ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_clients()
        if self.credits > 0 and not self.draining and not self.closed:
            self.pool.worker_free(self)

    def hold_client(self, conn: "HttpConnection") -> None:
        """``conn`` sends a body to this worker, which is not reading: pause it."""
        conn.pause_for(self)
        self.held_clients.add(conn)

    def _release_clients(self) -> None:
        held, self.held_clients = self.held_clients, set()
        for conn in held:
            conn.unpause_for(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            log.error("worker %s (pid %d) broke the queue protocol: %s", self.worker_id, self.pid, exc)
            self.close()
            return
        streams = self.streams
        for ftype, flags, sid, payload in frames:
            if ftype == q.RESPONSE:
                exch = streams.get(sid)
                try:
                    head = q.decode_response(payload)
                except ValueError as exc:
                    log.error("worker %s: %s on stream %d", self.worker_id, exc, sid)
                    self._terminal(sid)
                    if exch is not None:
                        exch.reset()
                    continue
                if flags & q.END_STREAM:
                    self._terminal(sid)
                elif head[0] == 101 and sid in streams:
                    self._tunnel(sid)
                if exch is not None:
                    exch.response(head, flags)
            elif ftype == q.RESPONSE_BODY:
                exch = streams.get(sid)
                if flags & q.END_STREAM:
                    self._terminal(sid)
                if exch is not None:
                    exch.response_body(payload, flags)
            elif ftype == q.RESPONSE_FILE:
                self._response_file(sid, flags, payload)
            elif ftype == q.WINDOW:
                exch = streams.get(sid)
                if exch is not None:
                    exch.request_window(q.decode_window(payload))
            elif ftype == q.RESET:
                exch = streams.get(sid)
                self._terminal(sid)
                if exch is not None:
                    exch.reset()
            elif ftype == q.READY:
                try:
                    credits = q.decode_ready(payload)
                except ValueError as exc:
                    log.error("worker %s (pid %d): %s; ignored", self.worker_id, self.pid, exc)
                    continue
                if self.ready:
                    log.error("worker %s (pid %d) sent READY again; ignored", self.worker_id, self.pid)
                    continue
                self.credits = credits
                self.ready = True
                self.pool.worker_ready(self)
            elif ftype == q.CREDIT:
                self.credits += q.decode_credit(payload)
                if self.stalled:  # its loop runs again: it was slow, not hung
                    self.stalled = False
                    self.credits += STALL_HOLD
                    for exch in self.streams.values():
                        exch.hung = False
                if self.credits > 0 and not self.draining:
                    self.pool.worker_free(self)
            elif ftype == q.STALLED:
                try:
                    started = q.decode_stalled(payload)
                except ValueError as exc:
                    log.error("worker %s (pid %d): %s", self.worker_id, self.pid, exc)
                    self.close()
                    return
                self._stalled(sid, started)
            elif ftype == q.DRAINING:
                self.draining = True
                self.pool.remove_worker(self)
            elif ftype == q.PING:
                self.send(encode(q.PONG, 0, sid))
            elif ftype == q.PONG:
                pass
            else:
                log.error("worker %s sent unknown frame type %d", self.worker_id, ftype)

    def _response_file(self, sid: int, flags: int, payload: bytes) -> None:
        """RESPONSE_FILE: the descriptor passed for the stream, checked and sent by the
        exchange; refused (the response fails, nothing is sent) without one."""
        exch = self.streams.get(sid)
        fd = -1
        try:
            if self.files is None:
                log.error("worker %s sent RESPONSE_FILE without a file channel (stream %d)", self.worker_id, sid)
                raise FileRefused("RESPONSE_FILE from a worker without a file channel")
            fd = self.files.take(sid)  # refusals are logged there (bounded)
            if not flags & q.END_STREAM:
                raise ValueError("a file reference must end its stream")
            ref = q.decode_file(payload)
        except (ValueError, FileRefused) as exc:
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, ValueError):
                log.error("worker %s: %s on stream %d", self.worker_id, exc, sid)
            self._terminal(sid)
            if exch is not None:
                exch.file_failed(str(exc))
            return
        self._terminal(sid)
        if exch is not None:
            exch.response_file(fd, ref)
        else:
            os.close(fd)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release_clients()
        if self.files is not None:
            self.files.close()
        self.pool.remove_worker(self)
        streams, self.streams = self.streams, {}
        for exch in streams.values():
            exch.worker_lost()
        self.listener.worker_gone(self)

    def _stalled(self, stuck: int, started: frozenset[int]) -> None:
        """The worker's loop is stuck in stream ``stuck`` (0: in none the worker could
        name): the streams it has not started go back to the pool's queue (for another
        worker, or this one's replacement), the ones it has started are marked so that
        none is replayed should the worker be killed for hanging, and the worker gets
        nothing more until its loop runs again (its next CREDIT frame)."""
        if not self.stalled:
            self.stalled = True
            self.credits -= STALL_HOLD
        back: list[Exchange] = []
        for sid, exch in list(self.streams.items()):
            if sid in started:
                exch.hung = True
                continue
            del self.streams[sid]
            self.credits += 1
            if exch.retries:
                self.listener.replay_held(self, -1)
            if exch.given_back():
                back.append(exch)
            else:
                exch.reset()  # its body went to the worker and is not here any more: 502
        self.send(encode(q.STALLED_ACK, 0, 0))
        hung = self.streams.get(stuck)
        log.warning("worker %s (pid %d) is stuck in %s: %d request(s) it had not started go back to the queue",
                    self.worker_id, self.pid, hung.target[:200].decode("latin-1") if hung else "?", len(back))
        if back:
            self.pool.give_back(back)

    # ---- used by the pool and exchanges -------------------------------------------

    def _tunnel(self, sid: int) -> None:
        """A stream became a tunnel (WebSocket): it may live for hours, so its credit is
        given back now rather than at its end — a worker's credits bound the requests it
        works on, not the sockets it holds open."""
        if sid not in self.tunnels:
            self.tunnels.add(sid)
            self.credits += 1
            if not self.draining:
                self.pool.worker_free(self)

    def _terminal(self, sid: int) -> None:
        files = self.files
        if files is not None and files.pending:
            files.drop(sid)  # a descriptor its stream did not use
        if self.tunnels and sid in self.tunnels:
            self.tunnels.discard(sid)
            exch = self.streams.pop(sid, None)
            if exch is not None:
                self.requests += 1
                self.pool.requests += 1
                if exch.retries:
                    self.listener.replay_held(self, -1)
            return
        exch = self.streams.pop(sid, None)
        if exch is not None:
            if exch.retries:
                self.listener.replay_held(self, -1)
            self.credits += 1
            self.requests += 1
            self.pool.requests += 1
            if not self.draining:
                self.pool.worker_free(self)

    def assign(self, exch: "Exchange") -> None:
        sid = self._next_stream
        self._next_stream = sid + 1 if sid < 0xFFFFFFFF else 1
        self.credits -= 1
        self.streams[sid] = exch
        if exch.retries:
            self.listener.replay_held(self, 1)
        exch.dispatched(self, sid)

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send_parts(self, *parts: bytes) -> None:
        self._out.extend(parts)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.closed:
            self.transport.writelines(out)

    def cancel(self, sid: int) -> None:
        if sid in self.streams:
            self.send(encode(q.CANCEL, 0, sid))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
