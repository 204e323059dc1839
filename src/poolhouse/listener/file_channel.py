"""The listener's end of a worker's *file channel*: descriptors of files the listener is
to send for the worker (``q.RESPONSE_FILE``; the sending is file_send.py).

The channel is a SOCK_SEQPACKET socket the activation service creates with the worker's
queue socket at spawn.  Each record is the stream id (``q.FILE_RECORD``) and one
descriptor (``SCM_RIGHTS``), sent by the worker before the frame that uses it.  It is a
second socket because the queue socket is read through a uvloop transport, which cannot
receive ancillary data: this one is read with ``recvmsg`` from an ``add_reader``
callback, only when a worker passes a file.  A worker runs application code, so every
record is checked and anything forged is closed at once, refused and logged (boundedly).
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
from collections.abc import Callable

from ..ipc import queue as q

log = logging.getLogger("poolhouse.listener")

MAX_FDS_PER_RECORD = 8     # room for this many in one read: more is a forgery (and the
                           # kernel closes any that do not fit)
RECORDS_PER_TURN = 64      # file channel records read per loop wake-up
RECORDS_PER_TAKE = 1024    # at most read looking for the descriptor of a RESPONSE_FILE
LOGGED_FORGERIES = 20      # per worker; after that one line per LOG_EVERY
LOG_EVERY = 1000


class FileRefused(Exception):
    """The worker's RESPONSE_FILE cannot be honoured: no descriptor, a forged one, or a
    descriptor that is not a readable regular file holding the range."""


class FileChannel:
    """The listener's end of one worker's file channel: descriptors tagged with a stream
    id, kept until that stream's RESPONSE_FILE takes them.  ``owns(sid)`` says whether the
    stream is the worker's and in flight; every descriptor that is not taken is closed
    (stream ended, forgery, worker gone), and at most one waits per stream, so a worker
    cannot make the listener hold more descriptors than it has requests."""

    def __init__(self, sock: socket.socket, worker: str, owns: Callable[[int], bool]) -> None:
        self.sock = sock
        self.worker = worker
        self.owns = owns
        self.pending: dict[int, int | str] = {}  # stream -> descriptor, or why it was refused
        self.forgeries = 0
        self.closed = False
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    def take(self, sid: int) -> int:
        """The descriptor passed for ``sid`` (the caller closes it); FileRefused if none
        or a forged one was.  The worker sends the descriptor before the frame, so one
        not yet read is already queued: the channel is read now."""
        fd = self.pending.pop(sid, None)
        if fd is None and not self.closed:
            self._read(RECORDS_PER_TAKE, sid)
            fd = self.pending.pop(sid, None)
        if fd is None:
            reason = "RESPONSE_FILE without a descriptor" if not self.closed else \
                "RESPONSE_FILE after the file channel closed"
            self._forgery(reason, sid)
            raise FileRefused(reason)
        if isinstance(fd, str):
            raise FileRefused(fd)
        return fd

    def drop(self, sid: int) -> None:
        """The stream ended without using the descriptor passed for it."""
        fd = self.pending.pop(sid, None)
        if isinstance(fd, int):
            os.close(fd)
            self._forgery("a descriptor its stream never used", sid)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass
        self.sock.close()  # descriptors still queued in it are released by the kernel
        pending, self.pending = self.pending, {}
        for fd in pending.values():
            if isinstance(fd, int):
                os.close(fd)

    # ---- reading --------------------------------------------------------------------

    def _readable(self) -> None:
        self._read(RECORDS_PER_TURN)

    def _read(self, limit: int, want: int = -1) -> None:
        """Read up to ``limit`` records (stopping early once one for stream ``want`` is
        in): bounded, so a worker writing records without pause cannot hold the loop."""
        sock = self.sock
        space = socket.CMSG_SPACE(4 * MAX_FDS_PER_RECORD)
        for _ in range(limit):
            if self.closed or want in self.pending:
                return
            try:
                data, ancdata, flags, _ = sock.recvmsg(16, space, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("worker %s: file channel failed: %s", self.worker, exc)
                self.close()
                return
            fds: list[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                    fds.extend(arr)
            if not data and not fds:
                if not flags & socket.MSG_CTRUNC:
                    self.close()  # the worker's end is closed (it exited)
                    return
            self._record(data, fds, flags)

    def _record(self, data: bytes, fds: list[int], flags: int) -> None:
        try:
            sid = q.decode_file_record(data) if not flags & socket.MSG_TRUNC else -1
        except ValueError:
            sid = -1
        reason = ""
        if sid < 0:
            reason = f"a malformed file channel record ({len(data)} bytes)"
        elif flags & socket.MSG_CTRUNC or len(fds) > 1:
            reason = f"several descriptors at once ({len(fds)}{' and more' if flags & socket.MSG_CTRUNC else ''})"
        elif not fds:
            reason = "a file channel record without a descriptor"
        elif not self.owns(sid):
            reason = "a descriptor for a stream it does not own"
        elif sid in self.pending:
            reason = "a second descriptor for one stream"
        if not reason:
            self.pending[sid] = fds[0]
            return
        for fd in fds:
            os.close(fd)
        self._forgery(reason, sid)
        if sid >= 0 and self.owns(sid):  # the stream's file response fails too
            old = self.pending.get(sid)
            if isinstance(old, int):
                os.close(old)
            self.pending[sid] = f"the worker passed {reason}"

    def _forgery(self, reason: str, sid: int) -> None:
        self.forgeries += 1
        n = self.forgeries
        if n <= LOGGED_FORGERIES or n % LOG_EVERY == 0:
            log.error("worker %s sent %s (stream %d); nothing is sent for it%s", self.worker, reason,
                      sid, f" ({n} such refusals so far)" if n > 1 else "")
            if n == LOGGED_FORGERIES:
                log.error("worker %s: further refusals of its file channel are logged once per %d",
                          self.worker, LOG_EVERY)
