"""Large static responses sent by the listener itself (``q.RESPONSE_FILE``).

A worker answering with a big file sends the head and a file reference (path, range,
and the size and mtime it built the head from) instead of the bytes.  The listener opens
the file, checks it is the same file and that the worker's identity may read it, and
sends the range: with ``os.sendfile`` on plain TCP (no copy through Python, none through
the worker), with reads through the transport on TLS.

The transport owns the socket, so sendfile only writes while the transport's own buffer
is empty (otherwise bytes would overtake each other).  While a file is being sent the
transport's write limits are (0, 0): anything it has to buffer pauses the sender, and
``resume_writing`` — called only once the buffer is empty — resumes it.  When the kernel's
socket buffer is full, one small piece goes through the transport, which makes uvloop
watch the socket for us.  Bursts are bounded so one fast client cannot hold the loop.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TYPE_CHECKING

from ..ipc.queue import FileRange

if TYPE_CHECKING:
    from .exchange import Exchange

SENDFILE_CHUNK = 1 << 20   # one sendfile call
BURST = 8 << 20            # bytes sent before yielding to the loop
TLS_CHUNK = 256 * 1024     # one read on a TLS connection
SMALL = 64 * 1024          # what goes through the transport when the socket is full

_PERMS_TTL = 2.0


class FileChanged(Exception):
    """The file is not the one the worker built the response head for."""


def process_ids(pid: int) -> tuple[int, frozenset[int]]:
    """The effective uid and every group (effective and supplementary) of a process."""
    uid, gids = -1, set()
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Uid:"):
                uid = int(line.split()[2])
            elif line.startswith("Gid:"):
                gids.add(int(line.split()[2]))
            elif line.startswith("Groups:"):
                gids.update(int(g) for g in line.split()[1:])
    return uid, frozenset(gids)


def _allows(st: os.stat_result, uid: int, gids: frozenset[int], bit: int) -> bool:
    """``bit`` is the "other" permission bit (4 read, 1 search)."""
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


class Reader:
    """What one worker's identity may read: the listener opens files on the worker's
    word, so it checks the worker could have opened them itself (every directory on the
    way searchable, the file readable).  Directory verdicts are kept briefly."""

    def __init__(self, pid: int) -> None:
        try:
            self.uid, self.gids = process_ids(pid)
        except (OSError, ValueError):
            self.uid, self.gids = -1, frozenset()  # unknown: nothing is readable
        self.unrestricted = self.uid == 0 or self.uid == os.geteuid()
        self._dirs: dict[str, tuple[float, bool]] = {}

    def may_read(self, path: str, st: os.stat_result) -> bool:
        if self.unrestricted:
            return True
        if self.uid < 0 or not _allows(st, self.uid, self.gids, 4):
            return False
        now = time.monotonic()
        folder = os.path.dirname(path)
        while True:
            cached = self._dirs.get(folder)
            if cached is not None and cached[0] > now:
                ok = cached[1]
            else:
                try:
                    ok = _allows(os.stat(folder), self.uid, self.gids, 1)
                except OSError:
                    ok = False
                if len(self._dirs) > 4096:
                    self._dirs.clear()
                self._dirs[folder] = (now + _PERMS_TTL, ok)
            if not ok:
                return False
            parent = os.path.dirname(folder)
            if parent == folder:
                return True
            folder = parent


def open_range(ref: FileRange, reader: Reader) -> int:
    """Opens the referenced file for sending; raises FileChanged or OSError."""
    fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChanged(f"{ref.path} is not a regular file")
        if st.st_size != ref.size or st.st_mtime_ns != ref.mtime_ns:
            raise FileChanged(f"{ref.path} changed after its response head was built")
        if not reader.may_read(ref.path, st):
            raise PermissionError(f"the worker's identity may not read {ref.path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileSender:
    """Sends ``length`` bytes of ``fd`` from ``offset`` on the exchange's connection,
    then calls ``exch.file_sent()`` (or aborts the connection on failure)."""

    __slots__ = ("exch", "fd", "offset", "remaining", "chunked", "sock_fd", "done", "busy")

    def __init__(self, exch: "Exchange", fd: int, ref: FileRange, chunked: bool) -> None:
        self.exch = exch
        self.fd = fd
        self.offset = ref.offset
        self.remaining = ref.length
        self.chunked = chunked
        self.done = False
        self.busy = False  # inside pump: a resume_writing from a write in it is not a turn
        conn = exch.conn
        self.sock_fd = conn.sendfile_fd()
        conn.sender = self
        conn.transport.set_write_buffer_limits(0, 0)
        if chunked and self.remaining:
            conn.write(b"%x\r\n" % self.remaining)

    def pump(self) -> None:
        if self.done or self.busy:
            return
        self.busy = True
        try:
            self._pump()
        finally:
            self.busy = False

    def _pump(self) -> None:
        exch = self.exch
        conn = exch.conn
        if conn.closed:
            self.stop()
            return
        transport = conn.transport
        listener = conn.listener
        sent = 0
        try:
            while self.remaining > 0:
                if transport.get_write_buffer_size():
                    return  # resume_writing (buffer empty) calls pump again
                if sent >= BURST:
                    listener.loop.call_soon(self.pump)
                    return
                n = self._send_some(transport)
                if n == 0:
                    raise FileChanged("the file shrank while it was being sent")
                self.offset += n
                self.remaining -= n
                exch.bytes_sent += n
                sent += n
                route = exch.route
                if route is not None and listener.throttles:
                    delay = listener.throttle_delay(route.site_id, n)
                    if delay > 0:
                        listener.loop.call_later(delay, self.pump)
                        return
        except (FileChanged, OSError) as exc:
            self.stop()
            exch.file_failed(str(exc))
            return
        self.stop()
        if self.chunked:
            conn.write(b"\r\n")
        exch.file_sent()

    def _send_some(self, transport: object) -> int:
        count = min(self.remaining, SENDFILE_CHUNK)
        if self.sock_fd >= 0:
            try:
                n = os.sendfile(self.sock_fd, self.fd, self.offset, count)
            except BlockingIOError:
                n = -1
            except OSError as exc:
                if exc.errno in (22, 38, 95):  # EINVAL/ENOSYS/EOPNOTSUPP: no sendfile here
                    self.sock_fd = -1
                    n = -1
                else:
                    raise
            if n >= 0:
                self.exch.conn.bytes_written += n
                return n
            count = min(self.remaining, SMALL)  # socket full: let the transport wait for it
        else:
            count = min(self.remaining, TLS_CHUNK)
        data = os.pread(self.fd, count, self.offset)
        if data:
            self.exch.conn.write(data)
        return len(data)

    def stop(self) -> None:
        if self.done:
            return
        self.done = True
        os.close(self.fd)
        conn = self.exch.conn
        if conn.sender is self:
            conn.sender = None
        if not conn.closed:
            conn.transport.set_write_buffer_limits()
