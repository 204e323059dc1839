"""One request on the worker's side of the queue protocol.

A ``Stream`` owns the request body as it arrives (in order, under the window the worker
returns as it consumes), the response window granted by the listener, and the rule that
every stream ends with exactly one terminal frame (END_STREAM or RESET), so the
listener's credit accounting stays exact whatever the application does.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..ipc import queue as q
from ..ipc.frames import encode

if TYPE_CHECKING:
    from .process import WorkerProcess

_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                         b"proxy-connection", b"te", b"trailer",
                         # the listener's response-cache marker: only the static handler sets it,
                         # an application must not be able to pin a response to a file
                         b"x-poolhouse-file", b"x-poolhouse-upstream"))
LEND_AFTER = 0.2  # seconds a handler waits for body bytes before its credit is lent back
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class BadResponseHeader(ValueError):
    pass


_NAMES: dict[bytes, bytes] = {}  # header name -> lower-case, for names already validated


def _checked_name(name: bytes) -> bytes:
    lname = _NAMES.get(name)
    if lname is None:
        if not name or not set(name) <= _TOKEN:
            raise BadResponseHeader(f"invalid header name {name!r}")
        lname = name.lower()
        if len(_NAMES) < 4096:
            _NAMES[name] = lname
    return lname


def build_header_block(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int, bool]:
    """Validate application headers and prepare them for the listener: returns the header
    block, the Content-Length (-1 if absent) and whether the app asked to close.  A
    ``Server`` header (an upstream's, an application's) comes first, spelt ``Server: ``:
    the listener then writes no Server header of its own (listener/responses.py)."""
    out: list[bytes] = []
    server = b""
    content_length = -1
    close = False
    for name, value in headers:
        lname = _checked_name(name)
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise BadResponseHeader(f"invalid value for header {name!r}")
        if lname == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                raise BadResponseHeader(f"invalid Content-Length {value!r}") from None
            if content_length < 0:
                raise BadResponseHeader(f"invalid Content-Length {value!r}")
            continue
        if lname in _HOP_BY_HOP:
            if lname == b"connection" and b"close" in value.lower():
                close = True
            continue
        if lname == b"server":
            if not server:  # (one Server header: a repeated one is dropped)
                server = b"Server: %s\r\n" % value
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if server:
        out.insert(0, server)
    return b"".join(out), content_length, close


class Stream:
    """Request state shared by the handlers.  Methods named ``*_threadsafe`` may be called
    from a handler thread; everything else runs on the worker's event loop."""

    __slots__ = (
        "worker", "sid", "head", "body_chunks", "body_done", "body_event", "cancelled",
        "window", "window_event", "ended", "head_sent", "on_body", "_tlock", "_tcond",
        "app", "started_at", "stage", "ctx", "body_filter", "upgrade", "httperr_reason",
        "lent", "lend_timer",
    )

    def __init__(self, worker: "WorkerProcess", sid: int, head: q.RequestHead, body_done: bool) -> None:
        self.worker = worker
        self.sid = sid
        self.head = head
        self.body_chunks: deque[bytes] = deque()
        self.body_done = body_done
        self.body_event: asyncio.Event | None = None
        self.cancelled = False
        self.window = q.BODY_WINDOW
        self.window_event: asyncio.Event | None = None
        self.ended = False
        self.head_sent = False
        self.on_body: Callable[[], None] | None = None
        self._tlock: threading.Lock | None = None
        self._tcond: threading.Condition | None = None
        self.app: object = None
        self.started_at = 0.0
        self.stage = "queued"
        self.ctx: Any = None  # the pipeline's HttpContext, when the URL has module hooks
        # set by a SendResponse hook (compression): applied to every later body piece
        self.body_filter: Callable[[bytes, bool], bytes] | None = None
        self.upgrade = False  # the client asked to switch protocols (q.UPGRADE)
        # set before answering an error the listener would log in HTTPERR had it produced
        # it (the reverse proxy's 502/504): the reason travels in the RESPONSE head
        self.httperr_reason = ""
        self.lent = False  # this stream's credit is lent back while it waits for its body
        self.lend_timer: asyncio.TimerHandle | None = None

    # ---- waiting for the body (credits.py) ----------------------------------------

    def body_wait_start(self) -> None:
        """The handler waits for body bytes the client has not sent yet: if that lasts
        ``LEND_AFTER`` seconds, the stream's credit is lent back to the listener."""
        if self.lend_timer is None and not self.lent and not self.ended:
            self.lend_timer = self.worker.loop.call_later(LEND_AFTER, self._lend)

    def _lend(self) -> None:
        self.lend_timer = None
        if not self.ended and not self.body_done and not self.lent:
            self.lent = self.worker.lend_credit()

    def body_wait_stop(self) -> None:
        timer = self.lend_timer
        if timer is not None:
            self.lend_timer = None
            timer.cancel()
        if self.lent:
            self.lent = False
            self.worker.reclaim_credit()

    # ---- request body (frames from the listener) ----------------------------------

    def feed_body(self, data: bytes, end: bool) -> None:
        if data:
            self.body_chunks.append(data)
        if end:
            self.body_done = True
        if self._tcond is not None:
            with self._tcond:
                self._tcond.notify_all()
        if self.body_event is not None:
            self.body_event.set()
        if self.on_body is not None:
            self.on_body()

    def consumed(self, n: int) -> None:
        """Return ``n`` bytes of request-body window to the listener."""
        if n and not self.ended:
            self.worker.send(q.encode_window(self.sid, n))

    async def read_chunk(self) -> bytes | None:
        """Next body chunk (asyncio handlers); None at the end of the body."""
        while not self.body_chunks:
            if self.body_done or self.cancelled:
                self.body_wait_stop()
                return None
            if self.body_event is None:
                self.body_event = asyncio.Event()
            self.body_event.clear()
            self.body_wait_start()
            await self.body_event.wait()
        self.body_wait_stop()
        chunk = self.body_chunks.popleft()
        self.consumed(len(chunk))
        return chunk

    def enable_threads(self) -> None:
        self._tlock = threading.Lock()
        self._tcond = threading.Condition(self._tlock)

    def read_chunk_blocking(self) -> bytes | None:
        """Next body chunk, from a handler thread; None at the end of the body."""
        assert self._tcond is not None
        waited = False
        with self._tcond:
            while not self.body_chunks:
                if self.body_done or self.cancelled:
                    break
                if not waited:
                    waited = True
                    self.worker.call_threadsafe(self.body_wait_start)
                self._tcond.wait()
            chunk = self.body_chunks.popleft() if self.body_chunks else None
        if waited:
            self.worker.call_threadsafe(self.body_wait_stop)
        if chunk is not None:
            self.worker.call_threadsafe(self.consumed, len(chunk))
        return chunk

    # ---- response (frames to the listener) ----------------------------------------

    def respond(self, status: int, header_block: bytes, content_length: int, body: bytes,
                end: bool, close: bool = False, substatus: int = 0) -> None:
        """``substatus``: for the W3C log when the request has no pipeline context (with
        one, the sub-status of the response the SendResponse hooks saw is logged)."""
        if self.ended:
            return
        flags = (q.END_STREAM if end else 0) | (q.CLOSE if close else 0)
        self.head_sent = True
        username, fields = "", ()
        ctx = self.ctx
        if ctx is not None:  # for the listener's W3C log: sc-substatus, cs-username, custom fields
            username = ctx.user
            resp = ctx.response
            if resp is not None:
                substatus = resp.substatus
            log_values = ctx.pipeline.log_values
            if log_values is not None:
                fields = log_values(ctx, header_block, content_length)
            if ctx.kernel_cache_disabled or ctx.pipeline.per_client:
                flags |= q.PER_CLIENT
        self.worker.send(
            encode(q.RESPONSE, flags, self.sid,
                   q.marshal_response(status, header_block, content_length, body, substatus, username, fields,
                                      self.httperr_reason))
        )
        if end:
            self._end()
        elif body:
            self.window -= len(body)

    def open_tunnel(self, header_block: bytes) -> None:
        """Answer 101: the stream becomes a byte tunnel (q.UPGRADE).  The request side
        opens again: what the client sends next arrives as body chunks."""
        self.respond(101, header_block, -1, b"", False)
        self.body_done = False

    def send_body(self, data: bytes, end: bool = False, account: bool = True) -> None:
        """``account=False``: the window was already taken (``take_window_threadsafe``)."""
        if self.ended:
            return
        transform = self.body_filter
        if transform is not None:
            taken = len(data)
            data = transform(data, end)
            if not account and taken != len(data):
                self.grant_window(taken - len(data))  # the thread took window for the input
            if not data and not end:
                return
        self.worker.send_parts(q.body_header(q.RESPONSE_BODY, self.sid, len(data), end), data)
        if end:
            self._end()
        elif account:
            self.window -= len(data)

    def send_file(self, fd: int, ref: q.FileRange) -> bool:
        """The rest of the body: a range of the open file ``fd``, which the listener sends
        itself (sendfile) from a copy of the descriptor passed on the file channel, so no
        bytes pass through this process and no window is taken.  Ends the stream (with
        RESET when the descriptor cannot be passed; then False).  The caller keeps ``fd``."""
        if self.ended:
            return False
        if not self.worker.pass_file(self.sid, fd):
            self.reset()
            return False
        self.worker.send(q.encode_file(self.sid, ref))
        self._end()
        return True

    def take_window_threadsafe(self, n: int) -> None:
        assert self._tcond is not None
        with self._tcond:
            self.window -= n

    async def wait_window(self) -> None:
        while self.window <= 0 and not self.cancelled and not self.ended:
            if self.window_event is None:
                self.window_event = asyncio.Event()
            self.window_event.clear()
            await self.window_event.wait()

    def wait_window_blocking(self) -> None:
        assert self._tcond is not None
        with self._tcond:
            while self.window <= 0 and not self.cancelled and not self.ended:
                self._tcond.wait()

    def grant_window(self, n: int) -> None:
        if self._tcond is not None:
            with self._tcond:
                self.window += n
                self._tcond.notify_all()
        else:
            self.window += n
        if self.window_event is not None:
            self.window_event.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.feed_body(b"", False)
        self.grant_window(0)

    def reset(self) -> None:
        if not self.ended:
            self.worker.send(encode(q.RESET, 0, self.sid))
            self._end()

    def _end(self) -> None:
        self.ended = True
        if self.lent or self.lend_timer is not None:
            self.body_wait_stop()
        self.worker.stream_ended(self)
