"""The WSGI handler (PEP 3333).

Two modes, chosen per pool by ``<python threads="N"/>``:

* ``threads="0"`` (the default, the fast path): one request at a time, the application
  called inline on the worker's event loop.  The listener holds the queue and buffers
  slow clients, so the worker never waits on a socket.  A request body is spooled (to
  disk past 1 MB) before the application is called, since the loop cannot block in
  ``wsgi.input.read``; the response iterable is pulled on the loop under the window.
* ``threads="N"``: N requests at once on a thread pool; ``wsgi.input`` streams the body
  as it arrives and a thread waits for window when the client is slow.  For
  applications that block (database calls, outbound HTTP).
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...urlpath import host_name, wsgi_str
from ...ipc.queue import FileRange, RequestHead
from ..stream import BadResponseHeader, Stream, build_header_block

log = logging.getLogger("poolhouse.worker")

SPOOL_LIMIT = 1024 * 1024

_get_running_loop = asyncio.events._get_running_loop
_set_running_loop = asyncio.events._set_running_loop


def call_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """Call synchronous application code from the worker's event loop as what it is:
    code with no running loop.  Frameworks that refuse blocking work inside an async
    context (Django's SynchronousOnlyOperation) then behave as under any WSGI server."""
    loop = _get_running_loop()
    _set_running_loop(None)
    try:
        return fn(*args)
    finally:
        _set_running_loop(loop)
_STATUS_CACHE: dict[str, int] = {}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WsgiInput(io.RawIOBase):
    """``wsgi.input`` for threaded mode: reads block until the listener sends more."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._buf:
            chunk = self._stream.read_chunk_blocking()
            if chunk is None:
                return 0
            self._buf = chunk
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class StartResponse:
    __slots__ = ("status", "headers", "exc_info", "head_sent", "written")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.head_sent = False
        self.written: list[bytes] | None = None  # what the legacy write() callable was given

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.headers is not None:
            raise AssertionError("start_response called twice without exc_info")
        code = _STATUS_CACHE.get(status)
        if code is None:
            if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
                raise ValueError(f"invalid WSGI status {status!r}")
            code = int(status[:3])
            if code < 200:
                # an interim (1xx) status cannot be the answer: the client would wait for
                # the final one, and the next response on the connection would pass for it
                raise ValueError(f"WSGI status {status!r} is not a final status (200-999)")
            if len(_STATUS_CACHE) < 1000:
                _STATUS_CACHE[status] = code
        self.status = code
        try:
            self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        except (UnicodeEncodeError, AttributeError) as exc:
            raise ValueError(f"WSGI headers must be latin-1 str pairs: {exc}") from None
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's legacy write() callable: the data goes out before the returned
        iterable's, in order (collected until the application returns)."""
        if self.headers is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, bytes):
            raise TypeError("write() takes bytes")
        if self.written is None:
            self.written = []
        self.written.append(data)


class _WrittenFirst:
    """The write() data, then the application's iterable (whose close() is kept)."""

    def __init__(self, written: list[bytes], result: Iterable[bytes]) -> None:
        self.written = written
        self.result = result

    def __iter__(self) -> Iterator[bytes]:
        yield from self.written
        yield from self.result

    def close(self) -> None:
        _close(self.result)


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333): iterates a file in blocks, and — when it wraps a
    regular file the worker can name — lets the handler hand the rest of the file to the
    listener, which sends it with sendfile."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def file_range(self, content_length: int) -> tuple[int, FileRange] | None:
        """The wrapped file's descriptor and its range from the current position (at most
        ``content_length`` bytes when that is >= 0), or None when it is not a regular file
        opened for reading in binary mode.  The descriptor is passed to the listener,
        which sends the range (the file need not have a name any more)."""
        try:
            if isinstance(self.filelike, io.TextIOBase):
                return None
            fd = self.filelike.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                return None
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        length = max(st.st_size - offset, 0)
        if content_length >= 0:
            length = min(length, content_length)
        return fd, FileRange(offset, length, st.st_size, st.st_mtime_ns)


class WsgiHandler:
    """Runs requests for one pool's WSGI applications."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, spare: int = 0) -> None:
        """``spare``: threads beyond ``threads`` for the requests taken while others wait
        for their bodies with their credits lent back (worker/credits.py)."""
        self.loop = loop
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads + spare, thread_name_prefix="wsgi") if threads > 0 else None

    # ---- entry --------------------------------------------------------------------

    def handle(self, stream: Stream, app: WsgiApp, environ: dict[str, Any]) -> None:
        if self.executor is not None:
            stream.enable_threads()
            environ["wsgi.input"] = io.BufferedReader(WsgiInput(stream), 65536)
            self.loop.run_in_executor(self.executor, self._run_threaded, stream, app, environ)
            return
        if stream.body_done and not stream.body_chunks:
            environ["wsgi.input"] = io.BytesIO()
            self._run_inline(stream, app, environ)
            return
        spool = tempfile.SpooledTemporaryFile(SPOOL_LIMIT)

        def on_body() -> None:
            while stream.body_chunks:
                chunk = stream.body_chunks.popleft()
                spool.write(chunk)
                stream.consumed(len(chunk))
            if stream.cancelled:
                stream.on_body = None
                spool.close()
                stream.reset()
            elif stream.body_done:
                stream.on_body = None
                stream.body_wait_stop()
                spool.seek(0)
                environ["wsgi.input"] = spool
                self._run_inline(stream, app, environ)

        stream.on_body = on_body
        stream.body_wait_start()  # (a slow body lends its credit back meanwhile)
        on_body()

    # ---- inline mode --------------------------------------------------------------

    def _run_inline(self, stream: Stream, app: WsgiApp, environ: dict[str, Any]) -> None:
        start = StartResponse()
        stream.stage = "ExecuteRequestHandler"
        try:
            result = call_sync(app, environ, start)
            if start.written is not None:
                result = _WrittenFirst(start.written, result)
        except Exception:
            self._fail(stream, environ, start)
            return
        try:
            if type(result) is list and len(result) == 1 and start.headers is not None:
                self._respond_whole(stream, environ, start, result[0])
                call_sync(_close, result)
                return
            if type(result) is FileWrapper and self._send_wrapped_file(stream, environ, start, result):
                call_sync(_close, result)
                return
            it = iter(result)
            first = call_sync(self._first_chunk, it, start)
        except Exception:
            call_sync(_close, result)
            self._fail(stream, environ, start)
            return
        if first is None:  # empty body
            self._respond_whole(stream, environ, start, b"")
            call_sync(_close, result)
            return
        if not self._send_head(stream, environ, start, first, end=False):
            call_sync(_close, result)
            return
        self.loop.create_task(self._pump_inline(stream, environ, it, result))

    async def _pump_inline(self, stream: Stream, environ: dict[str, Any], it: Iterator[bytes], result: Any) -> None:
        try:
            while True:
                if stream.window <= 0:
                    await stream.wait_window()
                if stream.cancelled:
                    stream.reset()
                    return
                try:
                    chunk = call_sync(next, it)
                except StopIteration:
                    break
                if chunk:
                    stream.send_body(chunk)
            stream.send_body(b"", end=True)
        except Exception:
            log.error("WSGI application failed while streaming %s:\n%s", environ.get("PATH_INFO"), traceback.format_exc())
            stream.reset()
        finally:
            call_sync(_close, result)

    # ---- threaded mode ------------------------------------------------------------

    def _run_threaded(self, stream: Stream, app: WsgiApp, environ: dict[str, Any]) -> None:
        call = self.loop.call_soon_threadsafe
        start = StartResponse()
        result: Any = None
        try:
            result = app(environ, start)
            if start.written is not None:
                result = _WrittenFirst(start.written, result)
            if type(result) is list and len(result) == 1 and start.headers is not None:
                call(self._respond_whole, stream, environ, start, result[0])
                return
            if type(result) is FileWrapper and _run_on_loop(self.loop, self._send_wrapped_file, stream,
                                                            environ, start, result):
                return
            it = iter(result)
            first = self._first_chunk(it, start)
            if first is None:
                call(self._respond_whole, stream, environ, start, b"")
                return
            ok = _run_on_loop(self.loop, self._send_head, stream, environ, start, first, False)
            if not ok:
                return
            for chunk in it:
                if stream.window <= 0:
                    stream.wait_window_blocking()
                if stream.cancelled:
                    call(stream.reset)
                    return
                if chunk:
                    stream.take_window_threadsafe(len(chunk))
                    call(stream.send_body, chunk, False, False)
            call(stream.send_body, b"", True)
        except Exception:
            if start.head_sent:
                log.error("WSGI application failed while streaming %s:\n%s", environ.get("PATH_INFO"), traceback.format_exc())
                call(stream.reset)
            else:
                call(self._fail, stream, environ, start)
        finally:
            if result is not None:
                _close(result)

    # ---- shared -------------------------------------------------------------------

    @staticmethod
    def _first_chunk(it: Iterator[bytes], start: StartResponse) -> bytes | None:
        for chunk in it:
            if chunk:
                return chunk
        if start.headers is None:
            raise AssertionError("the application returned without calling start_response")
        return None

    def _send_wrapped_file(self, stream: Stream, environ: dict[str, Any], start: StartResponse,
                           wrapper: FileWrapper) -> bool:
        """``wsgi.file_wrapper`` around a regular file: the head, then the listener sends
        the file itself.  False when the file must be iterated after all (not nameable,
        or a SendResponse hook such as compression transforms the body)."""
        if start.headers is None or environ["REQUEST_METHOD"] == "HEAD":
            return False
        length = -1
        for name, value in start.headers:
            if name.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return False
        found = wrapper.file_range(length) if stream.worker.can_pass_files else None
        if found is None:
            return False
        fd, ref = found
        if length >= 0 and ref.length != length:
            return False
        ctx = stream.ctx
        if ref.length == 0 or (ctx is not None and ctx.pipeline.has_send and ctx.wants_send(start.status)):
            return False  # a SendResponse hook (compression, say) may need the bytes
        if self._send_head(stream, environ, start, b"", end=False):
            stream.send_file(fd, ref)
        return True

    def _respond_whole(self, stream: Stream, environ: dict[str, Any], start: StartResponse, body: bytes) -> None:
        self._send_head(stream, environ, start, body, end=True)

    def _send_head(self, stream: Stream, environ: dict[str, Any], start: StartResponse, body: bytes, end: bool) -> bool:
        if start.headers is None:
            self._fail(stream, environ, start, "the application did not call start_response")
            return False
        status = start.status
        headers = start.headers
        ctx = stream.ctx
        changed = False
        if ctx is not None and ctx.pipeline.has_send and not ctx.wants_send(status):
            if ctx.pipeline.static_headers:  # no hook would run: just the static headers
                headers = headers + ctx.pipeline.static_headers
        elif ctx is not None and ctx.pipeline.has_send:
            out = ctx.send_response(status, 0, headers, body, end)
            if out.generated:  # a SendResponse hook turned it into a server error
                start.head_sent = True
                stream.worker.error_response(stream, out.status, out.substatus, out.detail)
                return False
            changed = out.body is not body or out.end != end
            status, headers, body, end = out.status, out.headers, out.body, out.end  # type: ignore[assignment]
            if out.body_filter is not None:
                stream.body_filter = out.body_filter
        try:
            block, length, close = build_header_block(headers)
        except BadResponseHeader as exc:
            self._fail(stream, environ, start, str(exc))
            return False
        if changed:
            length = len(body) if end else -1
        elif stream.body_filter is not None:
            length = -1
        start.head_sent = True
        if environ["REQUEST_METHOD"] == "HEAD":
            if end and length < 0:
                length = len(body)
            body = b""
            end = True
        elif end and length >= 0 and length != len(body):
            log.warning("%s: Content-Length %d but %d bytes returned", environ.get("PATH_INFO"), length, len(body))
            length = len(body)
        stream.respond(status, block, length, body, end, close)
        return not stream.ended

    def _fail(self, stream: Stream, environ: dict[str, Any], start: StartResponse, reason: str = "") -> None:
        if reason:
            log.error("WSGI application error for %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), reason)
        else:
            log.error("WSGI application raised for %s %s:\n%s", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"), traceback.format_exc())
        errors = environ.get("wsgi.errors")
        if errors is not None and errors is not sys.stderr:  # the application's own log (WSGI_LOG)
            try:
                errors.write(f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}: "
                             f"{reason or traceback.format_exc()}\n")
            except Exception:
                pass
        stream.worker.error_response(stream, 500, 0)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.error("WSGI iterable close() raised:\n%s", traceback.format_exc())


def _run_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., bool], *args: Any) -> bool:
    return asyncio.run_coroutine_threadsafe(_as_coro(fn, *args), loop).result()


async def _as_coro(fn: Callable[..., bool], *args: Any) -> bool:
    return fn(*args)


def make_environ_base(server_software: str, multithread: bool) -> dict[str, Any]:
    return {
        "SERVER_SOFTWARE": server_software,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }


_HEADER_KEYS: dict[bytes, str] = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def _header_key(name: bytes) -> str:
    key = _HEADER_KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_HEADER_KEYS) < 4096:
            _HEADER_KEYS[name] = key
    return key


def build_environ(base: dict[str, Any], app_base: dict[str, Any], head: RequestHead, path_info: str,
                  query: str) -> dict[str, Any]:
    """PEP 3333 environ: the worker's and the application's constant keys (built once)
    plus the request's."""
    env = base.copy()
    env.update(app_base)
    env["REQUEST_METHOD"] = head.method
    env["PATH_INFO"] = path_info if path_info.isascii() else wsgi_str(path_info)
    env["QUERY_STRING"] = query
    env["SERVER_PROTOCOL"] = "HTTP/1.1" if head.http_minor else "HTTP/1.0"
    env["wsgi.url_scheme"] = head.scheme
    env["REMOTE_ADDR"] = head.client_addr
    env["REMOTE_PORT"] = str(head.client_port)
    env["SERVER_PORT"] = str(head.server_port)
    env["REQUEST_URI"] = head.target.decode("latin-1")
    headers = head.headers
    for i in range(0, len(headers), 2):
        key = _header_key(headers[i])
        value = headers[i + 1].decode("latin-1")
        if key in env and key[0] == "H":
            env[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            env[key] = value
    env["SERVER_NAME"] = host_name(env.get("HTTP_HOST", ""), head.server_addr)
    return env
