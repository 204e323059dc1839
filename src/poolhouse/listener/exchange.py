"""One request in flight: the link between a client connection and a worker stream.

The exchange buffers the request body while the request waits in its pool's queue
(pausing the client past one window), forwards it to the worker under the body window
once dispatched, and turns the worker's response frames into HTTP/1.x on the client's
transport, returning window to the worker as the client drains it.

A request with a body does not even join its pool's queue until the body has arrived or
``serverRuntime/@uploadReadAheadSize`` bytes of it have (HTTP.sys's read-ahead): a client
that trickles its body holds a connection and a little memory, never a worker's slot.
A body that arrived whole with its request (up to ``KEEP_BODY``) is kept until the worker
answers, so a request the worker gives back unstarted (q.STALLED) can be queued again,
body and all.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from marshal import dumps as _dumps

from ..ipc import queue as q
from ..ipc.frames import encode as encode_frame
from .file_channel import FileRefused
from .file_send import FileChanged, FileSender, check_descriptor
from .response_cache import FILE_MARKER, MARKER, PROFILED, UPSTREAM_MARKER, strip_file_marker
from .responses import DATE, STATUS_LINE_11, status_line

_encode_frame = encode_frame
log = logging.getLogger("poolhouse.listener")

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .request_queue import PoolQueue
    from .response_cache import Entry
    from .routing import Route
    from .worker_link import WorkerLink

# a whole body up to this size is kept until the worker answers, so that a request the
# worker gives back unstarted can be queued again (a larger one then gets 502)
KEEP_BODY = 64 * 1024
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_WHOLE = q.END_STREAM | q.PER_CLIENT  # a whole response, whether per client or not
_NO_BODY_STATUS = frozenset((204, 304))


class Exchange:
    """No ``__slots__`` on purpose: most of the state starts at a class-level default, so
    creating an exchange (once per request) assigns only what the request brings."""

    route: "Route | None" = None
    pool: "PoolQueue | None" = None
    worker: "WorkerLink | None" = None
    stream = 0
    body_buf: list[bytes] | None = None
    body_buf_size = 0
    body_received = 0
    window = q.BODY_WINDOW
    started = False
    status = 0
    substatus = 0
    username = ""
    log_fields: tuple[tuple[str, str], ...] = ()  # custom W3C log fields the worker computed
    httperr_reason = ""  # the worker asked for an HTTPERR line with this reason (proxy 502/504)
    response_started = False
    chunked = False
    done = False
    from_listener = False  # answered by the listener itself (HTTPERR, not the W3C log)
    cache_hit = False
    bytes_sent = 0
    retries = 0
    owed_window = 0
    unacked = 0  # response body bytes the worker sent that no WINDOW frame has returned yet
    queued_at = 0.0
    finished_at = 0.0
    revalidating: "Entry | None" = None  # the stale cache entry this request revalidates (RFC 9111 §4.3)
    client_headers: tuple[bytes, ...] = ()  # the request's own headers, when revalidating
    body_limit = 1 << 62  # maxAllowedContentLength for a chunked body, set by request filtering
    upgrade = b""  # the Upgrade header of a WebSocket handshake
    tunnel = False  # the worker answered 101: the stream carries raw bytes both ways
    held_for: "PoolQueue | None" = None  # the queue this request joins once its body is read ahead
    read_ahead = 0  # uploadReadAheadSize for this request's URL, while held
    continued = False  # "100 Continue" was sent
    sent_body: list[bytes] | None = None  # the whole body, as dispatched (for a requeue)
    hung = False  # in flight on a worker that reported its loop stuck (q.STALLED)

    def __init__(
        self,
        conn: "HttpConnection",
        method: str,
        target: bytes,
        http_minor: int,
        headers: tuple[bytes, ...],
        body_length: int,
        keep_alive: bool,
        expect_continue: bool,
        host: bytes,
        started_at: float,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.http_minor = http_minor
        self.headers = headers
        self.body_length = body_length
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.host = host
        self.started_at = started_at
        self.body_done = body_length == 0

    def _head_fields(self) -> tuple[object, ...]:
        """The request head's fields in ``RequestHead`` order, as a plain tuple (what the
        REQUEST frame marshals)."""
        conn = self.conn
        client = conn.client
        server = conn.server
        return (self.route.app_key if self.route is not None else "", self.method, self.target,
                max(self.http_minor, 0), self.headers, client[0], client[1], server[0], server[1],
                conn.scheme, self.body_length)

    @property
    def head(self) -> q.RequestHead:
        """The request head as the worker receives it."""
        return q.RequestHead(*self._head_fields())  # type: ignore[arg-type]

    # ---- request side -------------------------------------------------------------

    def dispatched(self, worker: "WorkerLink", stream: int) -> None:
        """Called by the pool when a worker takes this request."""
        self.worker = worker
        self.stream = stream
        worker.send(_encode_frame(
            q.REQUEST, (q.END_STREAM if self.body_done and not self.body_buf else 0)
            | (q.UPGRADE if self.upgrade else 0), stream,
            _dumps(self._head_fields(), 4),
        ))
        if self.body_buf:
            buf, self.body_buf = self.body_buf, None
            if self.body_done and self.body_buf_size <= KEEP_BODY:
                self.sent_body = buf  # kept until the worker answers: it may give it back
            last = len(buf) - 1
            for i, chunk in enumerate(buf):
                self._send_body(chunk, self.body_done and i == last)
            self.body_buf_size = 0
            if self.window > 0:
                self.conn.unpause_for(self)
        elif not self.body_done and self.expect_continue and self.body_received == 0:
            self.send_continue()

    def send_continue(self) -> None:
        if not self.continued:
            self.continued = True
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.conn.last_activity = time.monotonic()  # the body timer starts now

    def hold_for_body(self, queue: "PoolQueue", read_ahead: int) -> None:
        """Keep this request out of ``queue`` until its body has arrived or ``read_ahead``
        bytes of it have (then ``Listener.enqueue``).  A client waiting for ``100
        Continue`` gets it now: the listener has checked what it checks before a body."""
        self.held_for = queue
        self.read_ahead = min(read_ahead, q.BODY_WINDOW)  # past a window the client is paused
        if self.expect_continue and self.body_received == 0:
            self.send_continue()

    def _release_hold(self) -> None:
        queue, self.held_for = self.held_for, None
        if queue is not None and not self.done and not self.conn.closed:
            self.conn.listener.enqueue(self, queue)

    def given_back(self) -> bool:
        """The worker gave this request back without starting it (q.STALLED): True if it
        can be queued again — nothing of it was answered, and its body (if any) is still
        here whole."""
        self.worker = None
        self.stream = 0
        if self.done or self.response_started or self.conn.closed:
            return False
        if self.body_length == 0:
            return True
        if not self.body_done or self.sent_body is None:
            return False
        self.body_buf, self.sent_body = self.sent_body, None
        self.body_buf_size = sum(map(len, self.body_buf))
        self.window = q.BODY_WINDOW
        return True

    def _send_body(self, chunk: bytes, end: bool) -> None:
        worker = self.worker
        assert worker is not None
        worker.send_parts(
            q.body_header(q.REQUEST_BODY, self.stream, len(chunk), end), chunk
        )
        self.window -= len(chunk)
        if self.window <= 0:
            self.conn.pause_for(self)
        if worker.write_paused and not end:
            worker.hold_client(self.conn)  # the worker is not reading its socket

    def body(self, chunk: bytes) -> None:
        self.body_received += len(chunk)
        if self.done:
            return  # the response is complete; the rest of the body is discarded
        if self.body_received > self.body_limit and self.conn.listener.body_over_limit(self):
            return  # refused by request filtering (listener/request_filtering.py)
        if self.worker is not None:
            self._send_body(chunk, False)
        else:
            if self.body_buf is None:
                self.body_buf = []
            self.body_buf.append(chunk)
            self.body_buf_size += len(chunk)
            if self.body_buf_size >= q.BODY_WINDOW:
                self.conn.pause_for(self)
            if self.held_for is not None and self.body_buf_size >= self.read_ahead:
                self._release_hold()  # read ahead: the rest streams to the worker

    def body_complete(self) -> None:
        if self.body_done:
            return  # no body: the REQUEST frame carried END_STREAM already
        self.body_done = True
        if self.done:
            return
        if self.worker is not None:
            self.worker.send(encode_frame(q.REQUEST_BODY, q.END_STREAM, self.stream))
        elif self.held_for is not None:
            self._release_hold()

    def request_window(self, increment: int) -> None:
        """The worker consumed ``increment`` bytes of the body.  It returns window only
        for bytes it was sent, so the window never exceeds ``BODY_WINDOW``: more is a
        forgery (a worker that grants gigabytes and then reads nothing would have the
        listener take the whole upload into its memory), and is not honoured."""
        window = self.window + increment
        if window > q.BODY_WINDOW:
            if self.worker is not None:
                log.error("worker %s returned %d bytes of request body window on stream %d, more than it "
                          "was sent; the window stays at %d", self.worker.worker_id, increment, self.stream,
                          q.BODY_WINDOW)
            window = q.BODY_WINDOW
        self.window = window
        if window > 0:
            self.conn.unpause_for(self)

    @property
    def replayable(self) -> bool:
        """May this request be sent to another worker after its worker died?  Not one
        in flight while the worker was stuck (a request that hangs its worker would hang
        the next one too), and not twice."""
        return (
            not self.response_started
            and self.retries == 0
            and not self.hung
            and self.method in IDEMPOTENT
            and self.body_length == 0
        )

    # ---- response side ------------------------------------------------------------

    def response(self, head: q.ResponseHead, flags: int) -> None:
        """``head`` is a decoded RESPONSE head: (status, header block, content length,
        body[, substatus, user name])."""
        if self.done or self.conn.closed:
            return
        self.response_started = True
        self.sent_body = None
        status = head[0]
        self.status = status
        if len(head) > 4:
            self.substatus = head[4]
            self.username = head[5]
            if len(head) > 6:
                self.log_fields = head[6]
                if len(head) > 7:
                    self.httperr_reason = head[7]
        if ((flags | q.PER_CLIENT) == _WHOLE and self.keep_alive and self.http_minor == 1
                and self.method != "HEAD" and 200 <= status != 204 and status != 304):
            # the common case: a whole response on a keep-alive HTTP/1.1 connection
            body = head[3]
            block = head[1]
            if MARKER in block or flags != q.END_STREAM or (
                    status == 200 and (b"-maxage" in block or (PROFILED and self.cache_profiled))):
                block = self._cacheable(block, body, status, True, flags)
            data = b"".join((
                STATUS_LINE_11.get(status) or status_line(status, 1), DATE.for_block(block), block,
                b"Content-Length: %d\r\n\r\n" % len(body), body,
            ))
            self.bytes_sent = len(data)
            self.conn.write(data)
            self.finish()
            return
        if status == 101:
            self._switch_protocols(head[1], flags)
            return
        if flags & q.CLOSE:
            self.keep_alive = False
        http_minor = self.http_minor
        block = head[1]
        if MARKER in block or flags & q.PER_CLIENT:
            block = self._cacheable(block, head[3], status, bool(flags & q.END_STREAM), flags)
            if self.done:
                return  # answered from a revalidated cache entry
        elif status == 200 and flags & q.END_STREAM and (b"-maxage" in block or self.cache_profiled):
            block = self._cacheable(block, head[3])
        parts = [status_line(status, http_minor), DATE.for_block(block), block]
        no_body = self.method == "HEAD" or status < 200 or status in _NO_BODY_STATUS
        end = flags & q.END_STREAM
        if status >= 200 and status != 204 and status != 304:
            if end and self.method != "HEAD":
                parts.append(b"Content-Length: %d\r\n" % len(head[3]))
            elif head[2] >= 0:
                parts.append(b"Content-Length: %d\r\n" % head[2])
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
        body = head[3]
        if end:
            if not no_body:
                parts.append(body)
            data = b"".join(parts)
            self.bytes_sent += len(data)
            self.conn.write(data)
            self.finish()
        else:
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
                self.unacked += len(body)
                self._ack(len(body))

    def _switch_protocols(self, block: bytes, flags: int) -> None:
        """101: the worker accepted the upgrade.  The listener writes the hop-by-hop
        headers itself (a worker cannot set them) and turns the connection into a tunnel."""
        if not self.upgrade or flags & q.END_STREAM:
            if self.worker is not None:
                self.worker.cancel(self.stream)
            self.status = 502
            self.reset()
            return
        data = b"".join((b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", self.upgrade,
                         b"\r\nConnection: Upgrade\r\n", block, b"\r\n"))
        self.bytes_sent += len(data)
        self.conn.write(data)
        self.tunnel = True
        self.body_done = False  # the client's side of the tunnel is open until it closes
        self.conn.open_tunnel(self)

    @property
    def cache_profiled(self) -> bool:
        route = self.route
        return route is not None and route.app_key in self.conn.listener.cache.profiled

    def _cacheable(self, block: bytes, body: bytes, status: int = 200, end: bool = True,
                   flags: int = 0) -> bytes:
        """Offer a response to the response cache; returns the header block to send
        (without the worker's markers; b"" when the cache answered the client itself).
        A response the worker marked per client (q.PER_CLIENT) is never stored, and
        what the cache holds for its URL goes."""
        cache = self.conn.listener.cache
        per_client = bool(flags & q.PER_CLIENT)
        if per_client:
            cache.per_client(self)
        if UPSTREAM_MARKER in block:
            return cache.upstream_response(self, status, block, body, end, per_client)
        file = ""
        if FILE_MARKER in block:
            block, file = strip_file_marker(block)
        if self.method == "GET" and status == 200 and end and not per_client:
            cache.consider(self, block, body, file)
        return block

    def response_body(self, data: bytes, flags: int) -> None:
        if self.done or self.conn.closed:
            return
        if data and not flags & q.END_STREAM and self.unacked >= q.BODY_WINDOW:
            self._past_window(len(data))
            return
        self.unacked += len(data)
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

    def _past_window(self, n: int) -> None:
        """The worker sent body while the whole window was out (a worker sends only
        while its window is open, and then at most one frame): forged, and the listener
        would hold it for a client that does not read.  The response fails."""
        log.error("worker %s sent %d bytes of response body on stream %d past its window (%d bytes "
                  "not acknowledged): the response is cut off",
                  self.worker.worker_id if self.worker is not None else "?", n, self.stream, self.unacked)
        if self.worker is not None:
            self.worker.cancel(self.stream)
        self.release_worker()
        self.done = True
        self.conn.abort_exchange(self, "Connection_Abandoned_By_AppPool")

    def response_file(self, fd: int, ref: q.FileRange) -> None:
        """The rest of the body is a file range (q.RESPONSE_FILE, always the stream's last
        frame) of the descriptor ``fd`` the worker passed: the listener checks it and
        sends it itself (file_send.py).  Takes ownership of ``fd`` (closed on every path)."""
        if self.done or self.conn.closed:
            os.close(fd)
            return
        try:
            check_descriptor(fd, ref)
        except (FileChanged, FileRefused, OSError) as exc:
            os.close(fd)
            self.file_failed(str(exc))
            return
        if self.method == "HEAD":
            os.close(fd)
            self.response_body(b"", q.END_STREAM)
            return
        FileSender(self, fd, ref, self.chunked).pump()

    def file_sent(self) -> None:
        """The file range went out: the response is complete."""
        self.response_body(b"", q.END_STREAM)

    def file_failed(self, reason: str) -> None:
        """The file cannot follow its head: the connection is closed (a 502 if no head
        went out)."""
        if self.done:
            return
        log.error("cannot send %s's file: %s", self.target[:200].decode("latin-1"), reason)
        if self.worker is not None:
            self.worker.cancel(self.stream)
        self.release_worker()
        if not self.response_started:
            self.conn.send_error(self, 502, "File_Not_Sendable")
            return
        self.done = True
        self.conn.abort_exchange(self, "File_Not_Sendable")

    def _ack(self, n: int) -> None:
        """Give the worker back ``n`` bytes of response window, now if the client is
        draining, else once it does — and no sooner than the site's and the server's
        bandwidth limits allow (maxBandwidth, maxGlobalBandwidth: the worker can only be
        one window ahead, so holding the window back throttles the response)."""
        route = self.route
        listener = self.conn.listener
        if route is not None and listener.throttles:
            delay = listener.throttle_delay(route.site_id, n)
            if delay > 0:
                listener.loop.call_later(delay, self._ack_now, n)
                return
        self._ack_now(n)

    def _ack_now(self, n: int) -> None:
        if self.done or self.worker is None:
            return
        if self.conn.write_paused:
            self.owed_window += n
        elif self.worker is not None:
            self.unacked -= n
            self.worker.send(q.encode_window(self.stream, n))

    def return_owed_window(self) -> None:
        if self.owed_window and self.worker is not None and not self.done:
            self.unacked -= self.owed_window
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
        self.held_for = None
        if self.worker is not None:
            self.worker.cancel(self.stream)
        elif self.pool is not None:
            self.pool.forget(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.queued_at if self.queued_at else 0.0
