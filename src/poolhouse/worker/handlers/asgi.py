"""The ASGI 3 handler: ``http`` requests as tasks on the worker's event loop, and the
``lifespan`` protocol run once per application when the worker starts and stops."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ...ipc.queue import RequestHead
from ..stream import BadResponseHeader, Stream, build_header_block

log = logging.getLogger("poolhouse.worker")

AsgiApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class LifespanError(Exception):
    pass


class Lifespan:
    """Drives one application's lifespan protocol.  ``startup`` raises LifespanError if
    the application reports ``lifespan.startup.failed``; an application that does not
    support lifespan (raises at once) is accepted, as uvicorn's ``auto`` mode does."""

    def __init__(self, app: AsgiApp, name: str) -> None:
        self.app = app
        self.name = name
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._startup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._shutdown: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            _settle(self._startup, None)
        elif kind == "lifespan.startup.failed":
            _settle(self._startup, LifespanError(message.get("message", "startup failed")))
        elif kind == "lifespan.shutdown.complete":
            _settle(self._shutdown, None)
        elif kind == "lifespan.shutdown.failed":
            _settle(self._shutdown, LifespanError(message.get("message", "shutdown failed")))

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if not self._startup.done():
                self.supported = False
                log.info("%s does not support ASGI lifespan (%s: %s)", self.name, type(exc).__name__, exc)
                _settle(self._startup, None)
            else:
                log.error("%s: lifespan task failed:\n%s", self.name, traceback.format_exc())
        finally:
            _settle(self._startup, None)
            _settle(self._shutdown, None)

    async def startup(self, timeout: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await asyncio.wait_for(asyncio.shield(self._startup), timeout)
        exc = self._startup.exception()
        if exc is not None:
            raise exc

    async def shutdown(self, timeout: float) -> None:
        if self._task is None or not self.supported:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self._shutdown), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: lifespan shutdown did not complete in %.0f s", self.name, timeout)
            self._task.cancel()


def _settle(fut: asyncio.Future[None], exc: Exception | None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


def build_scope(head: RequestHead, root_path: str, path: str, raw_path: bytes, query: str,
                state: dict[str, Any]) -> dict[str, Any]:
    headers = head.headers
    if not path.isascii():
        # the ASGI spec: UTF-8 decoded text; bytes that are not UTF-8 become U+FFFD here
        # (``raw_path`` keeps them), never surrogates an application cannot encode
        path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "1.1" if head.http_minor else "1.0",
        "method": head.method,
        "scheme": head.scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query.encode("latin-1"),
        "root_path": root_path,
        "headers": [(headers[i], headers[i + 1]) for i in range(0, len(headers), 2)],
        "client": (head.client_addr, head.client_port),
        "server": (head.server_addr, head.server_port),
        "state": dict(state),
    }


class AsgiRequest:
    """One ``http`` scope's receive/send pair over a queue-protocol stream."""

    __slots__ = ("stream", "status", "headers", "head_sent", "pending", "finished", "method")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.head_sent = False
        self.finished = False
        self.pending = False  # True once the last http.request message was given
        self.method = stream.head.method

    async def receive(self) -> dict[str, Any]:
        stream = self.stream
        if self.finished or stream.cancelled or self.pending:
            # after the whole body (or the response), block until the client goes away,
            # like uvicorn: Starlette's StreamingResponse listens for http.disconnect in
            # a loop, which must not spin on the event loop
            while not stream.cancelled and not stream.ended:
                if stream.body_event is None:
                    stream.body_event = asyncio.Event()
                stream.body_event.clear()
                try:
                    await asyncio.wait_for(stream.body_event.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            return {"type": "http.disconnect"}
        chunk = await stream.read_chunk()
        if chunk is None:
            if stream.cancelled:
                return {"type": "http.disconnect"}
            self.pending = True  # the whole body was given
            return {"type": "http.request", "body": b"", "more_body": False}
        more = bool(stream.body_chunks) or not stream.body_done
        if not more:
            self.pending = True
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        stream = self.stream
        kind = message["type"]
        if kind == "http.response.start":
            if self.headers is not None:
                raise RuntimeError("http.response.start sent twice")
            status = int(message["status"])
            if not 200 <= status <= 999:
                # an interim (1xx) status cannot be the answer: the client would wait for
                # the final one, and the next response on the connection would pass for it
                raise BadResponseHeader(f"status {status} is not a final status (200-999)")
            self.status = status
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind == "http.response.body":
            if self.headers is None:
                raise RuntimeError("http.response.body before http.response.start")
            if self.finished:
                raise RuntimeError("http.response.body after the response completed")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if stream.cancelled:
                raise OSError("client disconnected")
            if not self.head_sent:
                self.head_sent = True
                status, headers = self.status, self.headers
                ctx = stream.ctx
                if ctx is not None and ctx.pipeline.has_send:
                    out = ctx.send_response(status, 0, headers, body, not more)
                    if out.generated:
                        stream.worker.error_response(stream, out.status, out.substatus, out.detail)
                        self.finished = True
                        return
                    changed = out.body is not body or out.end == more
                    status, headers, body, more = out.status, out.headers, out.body, not out.end
                    if out.body_filter is not None:
                        stream.body_filter = out.body_filter
                    block, length, close = build_header_block(headers)
                    if changed or stream.body_filter is not None:
                        length = len(body) if not more else -1
                else:
                    block, length, close = build_header_block(headers)
                if self.method == "HEAD":
                    if length < 0 and not more:
                        length = len(body)
                    stream.respond(status, block, length, b"", True, close)
                    self.finished = True
                    return
                stream.respond(status, block, length, body, not more, close)
                if not more:
                    self.finished = True
                return
            elif self.method != "HEAD":
                if stream.window <= 0:
                    await stream.wait_window()
                    if stream.cancelled:
                        raise OSError("client disconnected")
                stream.send_body(body, end=not more)
            if not more:
                self.finished = True
            return
        raise RuntimeError(f"unexpected ASGI message type {kind!r}")


async def run_asgi(app: AsgiApp, scope: dict[str, Any], stream: Stream) -> None:
    req = AsgiRequest(stream)
    stream.stage = "ExecuteRequestHandler"
    try:
        await app(scope, req.receive, req.send)
    except BadResponseHeader as exc:
        log.error("ASGI application sent a bad response head for %s: %s", scope["path"], exc)
        if not req.head_sent:
            stream.worker.error_response(stream, 500, 0)
        else:
            stream.reset()
        return
    except Exception:
        if stream.cancelled:
            stream.reset()
            return
        log.error("ASGI application raised for %s %s:\n%s", scope["method"], scope["path"], traceback.format_exc())
        if not req.head_sent:
            stream.worker.error_response(stream, 500, 0)
        else:
            stream.reset()
        return
    if not req.finished:
        if req.head_sent:
            stream.reset()
        else:
            log.error("ASGI application returned without a response for %s", scope["path"])
            stream.worker.error_response(stream, 500, 0)
