"""One request in flight: the link between a client connection and a worker stream.

The exchange buffers the request body while the request waits in its pool's queue
(pausing the client past one window), forwards it to the worker under the body window
once dispatched, and turns the worker's response frames into HTTP/1.x on the client's
transport, returning window to the worker as the client drains it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..ipc import queue as q
from ..ipc.frames import encode as encode_frame
from .responses import DATE, status_line

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .request_queue import PoolQueue
    from .routing import Route
    from .worker_link import WorkerLink

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_NO_BODY_STATUS = frozenset((204, 304))


class Exchange:
    __slots__ = (
        "conn", "head", "method", "keep_alive", "expect_continue", "route", "pool",
        "worker", "stream", "body_buf", "body_buf_size", "body_done", "body_received",
        "window", "started", "status", "response_started", "chunked", "done",
        "bytes_sent", "retries", "owed_window", "queued_at", "host",
    )

    def __init__(
        self,
        conn: "HttpConnection",
        head: q.RequestHead,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.conn = conn
        self.head = head
        self.method = head.method
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.route: Route | None = None
        self.pool: PoolQueue | None = None
        self.worker: WorkerLink | None = None
        self.stream = 0
        self.body_buf: list[bytes] = []
        self.body_buf_size = 0
        self.body_done = head.body_length == 0
        self.body_received = 0
        self.window = q.BODY_WINDOW
        self.started = False
        self.status = 0
        self.response_started = False
        self.chunked = False
        self.done = False
        self.bytes_sent = 0
        self.retries = 0
        self.owed_window = 0
        self.queued_at = 0.0
        self.host = ""

    # ---- request side -------------------------------------------------------------

    def dispatched(self, worker: "WorkerLink", stream: int) -> None:
        """Called by the pool when a worker takes this request."""
        self.worker = worker
        self.stream = stream
        end = self.body_done and not self.body_buf
        worker.send(q.encode_request(stream, self.head, end))
        if self.body_buf:
            buf, self.body_buf = self.body_buf, []
            last = len(buf) - 1
            for i, chunk in enumerate(buf):
                self._send_body(chunk, self.body_done and i == last)
            self.body_buf_size = 0
            if self.window > 0:
                self.conn.unpause_for(self)
        elif not self.body_done and self.expect_continue and self.body_received == 0:
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.conn.last_activity = time.monotonic()  # the body timer starts now

    def _send_body(self, chunk: bytes, end: bool) -> None:
        assert self.worker is not None
        self.worker.send_parts(
            q.body_header(q.REQUEST_BODY, self.stream, len(chunk), end), chunk
        )
        self.window -= len(chunk)
        if self.window <= 0:
            self.conn.pause_for(self)

    def body(self, chunk: bytes) -> None:
        self.body_received += len(chunk)
        if self.done:
            return  # the response is complete; the rest of the body is discarded
        if self.worker is not None:
            self._send_body(chunk, False)
        else:
            self.body_buf.append(chunk)
            self.body_buf_size += len(chunk)
            if self.body_buf_size >= q.BODY_WINDOW:
                self.conn.pause_for(self)

    def body_complete(self) -> None:
        self.body_done = True
        if self.done:
            return
        if self.worker is not None:
            self.worker.send(encode_frame(q.REQUEST_BODY, q.END_STREAM, self.stream))

    def request_window(self, increment: int) -> None:
        self.window += increment
        if self.window > 0:
            self.conn.unpause_for(self)

    @property
    def replayable(self) -> bool:
        """May this request be sent to another worker after its worker died?"""
        return (
            not self.response_started
            and self.retries == 0
            and self.method in IDEMPOTENT
            and self.head.body_length == 0
        )

    # ---- response side ------------------------------------------------------------

    def response(self, head: q.ResponseHead, flags: int) -> None:
        if self.done or self.conn.closed:
            return
        self.response_started = True
        status = head.status
        self.status = status
        if flags & q.CLOSE:
            self.keep_alive = False
        http_minor = self.head.http_minor
        parts = [status_line(status, http_minor), DATE.get(), head.header_block]
        no_body = self.method == "HEAD" or status < 200 or status in _NO_BODY_STATUS
        end = flags & q.END_STREAM
        if status >= 200 and status != 204 and status != 304:
            if end and self.method != "HEAD":
                parts.append(b"Content-Length: %d\r\n" % len(head.body))
            elif head.content_length >= 0:
                parts.append(b"Content-Length: %d\r\n" % head.content_length)
            elif not end and not no_body:
                if http_minor:
                    parts.append(b"Transfer-Encoding: chunked\r\n")
                    self.chunked = True
                else:
                    self.keep_alive = False  # the end of the body is the end of the connection
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif http_minor == 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if end:
            if not no_body:
                parts.append(head.body)
            data = b"".join(parts)
            self.bytes_sent += len(data)
            self.conn.write(data)
            self.finish()
        else:
            body = head.body
            if body and not no_body:
                # the first piece of a streamed body travels with the head
                if self.chunked:
                    parts.append(b"%x\r\n%s\r\n" % (len(body), body))
                else:
                    parts.append(body)
            data = b"".join(parts)
            self.bytes_sent += len(data)
            self.conn.write(data)
            if body:
                self._ack(len(body))

    def response_body(self, data: bytes, flags: int) -> None:
        if self.done or self.conn.closed:
            return
        if data and self.method != "HEAD":
            if self.chunked:
                self.conn.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.conn.write(data)
            self.bytes_sent += len(data)
        if flags & q.END_STREAM:
            if self.chunked and self.method != "HEAD":
                self.conn.write(b"0\r\n\r\n")
            self.finish()
        elif data:
            self._ack(len(data))

    def _ack(self, n: int) -> None:
        """Give the worker back ``n`` bytes of response window, now if the client is
        draining, else once it does."""
        if self.conn.write_paused:
            self.owed_window += n
        elif self.worker is not None:
            self.worker.send(q.encode_window(self.stream, n))

    def return_owed_window(self) -> None:
        if self.owed_window and self.worker is not None and not self.done:
            self.worker.send(q.encode_window(self.stream, self.owed_window))
        self.owed_window = 0

    def reset(self) -> None:
        """The worker abandoned the stream: a response already begun cannot be completed,
        so the connection is closed; otherwise the client gets a 502."""
        if self.done:
            return
        self.release_worker()
        if self.response_started:
            self.done = True
            self.conn.abort_exchange(self, "Connection_Abandoned_By_AppPool")
        else:
            self.conn.send_error(self, 502, "Connection_Abandoned_By_AppPool")

    def worker_lost(self) -> None:
        """The worker died with this request in flight."""
        self.worker = None
        if self.done:
            return
        if self.replayable and self.pool is not None and not self.conn.closed:
            self.retries += 1
            self.pool.requeue(self)
            return
        self.reset()

    def release_worker(self) -> None:
        """Forget the worker; the link itself takes its credit back on the terminal frame."""
        self.worker = None

    def finish(self) -> None:
        self.done = True
        self.release_worker()
        self.conn.exchange_done(self)

    def cancel(self) -> None:
        """The client went away."""
        if self.done:
            return
        self.done = True
        if self.worker is not None:
            self.worker.cancel(self.stream)
        elif self.pool is not None:
            self.pool.forget(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.queued_at if self.queued_at else 0.0
