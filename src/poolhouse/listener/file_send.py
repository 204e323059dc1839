"""Large static responses sent by the listener itself (``q.RESPONSE_FILE``).

A worker answering with a big file sends the head, then passes the open file on its
*file channel* (file_channel.py: a SOCK_SEQPACKET socket created with its queue socket at
spawn) as an ``SCM_RIGHTS`` descriptor tagged with the stream id, then a RESPONSE_FILE
frame with the range and the size and mtime it built the head from.  The worker opened
the file as its own user, so the kernel has already decided whether it may read it; the
listener never opens a path for a worker and never asks who a worker is.  It only
checks the descriptor (a regular file, opened for reading, the same size and mtime, the
range inside it) and sends the range: with ``os.sendfile`` on plain TCP (no copy through
Python, none through the worker), with reads through the transport on TLS.

The transport owns the socket, so sendfile only writes while the transport's own buffer
is empty (otherwise bytes would overtake each other).  While a file is being sent the
transport's write limits are (0, 0): anything it has to buffer pauses the sender, and
``resume_writing`` — called only once the buffer is empty — resumes it.  When the kernel's
socket buffer is full, one small piece goes through the transport, which makes uvloop
watch the socket for us.  Bursts are bounded so one fast client cannot hold the loop.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import TYPE_CHECKING

from ..ipc.queue import FileRange
from .file_channel import FileRefused

if TYPE_CHECKING:
    from .exchange import Exchange

SENDFILE_CHUNK = 1 << 20   # one sendfile call
BURST = 8 << 20            # bytes sent before yielding to the loop
TLS_CHUNK = 256 * 1024     # one read on a TLS connection
SMALL = 64 * 1024          # what goes through the transport when the socket is full

_READABLE = (os.O_RDONLY, os.O_RDWR)
_O_PATH = getattr(os, "O_PATH", 0o10000000)


class FileChanged(Exception):
    """The file is not the one the worker built the response head for."""


def check_descriptor(fd: int, ref: FileRange) -> None:
    """Raises FileRefused or FileChanged unless ``fd`` is a regular file opened for
    reading, of the size and mtime the head was built from, holding the range."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a socket" if stat.S_ISSOCK(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode)
                else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
        raise FileRefused(f"the descriptor is {kind}, not a regular file")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & _O_PATH or flags & os.O_ACCMODE not in _READABLE:
        raise FileRefused("the descriptor is not open for reading")
    if st.st_size != ref.size or st.st_mtime_ns != ref.mtime_ns:
        raise FileChanged("the file changed after its response head was built")
    if ref.offset + ref.length > st.st_size:
        raise FileRefused(f"the range ({ref.length} bytes at {ref.offset}) is outside the file ({st.st_size})")


class FileSender:
    """Sends ``length`` bytes of ``fd`` from ``offset`` on the exchange's connection,
    then calls ``exch.file_sent()`` (or aborts the connection on failure)."""

    __slots__ = ("exch", "fd", "offset", "remaining", "chunked", "sock_fd", "done", "busy")

    def __init__(self, exch: "Exchange", fd: int, ref: FileRange, chunked: bool) -> None:
        """Takes ownership of ``fd``: ``stop`` closes it, whatever ends the sending."""
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
