"""The worker process (w3wp): takes requests of one pool from its queue socket, maps each
to its application and handler, and answers through the same socket.

Channels inherited at spawn: the queue socket to the listener (the only queue this worker
can reach), its file channel (descriptors of the files the listener sends for it, opened
here as this worker's user), a control socket to the activation service (configuration,
pings, drain), and a descriptor channel from the service.  Frames to the listener are
coalesced per loop turn into one write.

When the listener dies its queue socket closes: the requests this worker had in flight
are gone with the listener's connections (what the application still writes for them is
dropped), and the worker waits, warm, for the service to hand it the queue socket and
file channel of the new listener over the descriptor channel (``attach``).  Only a
draining worker exits then.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import stat
import sys
import time
from typing import Any, cast

from .. import __version__
from ..config import ConfigError
from ..config.model import ServerConfig
from ..ipc import exit_codes
from ..ipc import queue as q
from ..ipc.control import ControlProtocol, FdReceiver, Message, open_control
from ..ipc.frames import FrameDecoder, FrameError, encode
from ..urlpath import BadPath, normalize, split_target
from .apps import (ASGI, CGI, HTTP_PLATFORM, PROTOCOL, PROXY, STATIC, WSGI, AppLoadError, Selection,
                   WorkerApplication)
from .handlers.asgi import Lifespan, build_scope, run_asgi
from .handlers.static import FileBody, StaticFileHandler, StaticResponse
from .handlers.wsgi import WsgiHandler, build_environ, make_environ_base
from .credits import MAX_LENT, CreditPolicy
from .stall import StallWatch
from .stream import BadResponseHeader, Stream, build_header_block
from .error_pages import error_page
from .pipeline import HttpContext

log = logging.getLogger("poolhouse.worker")

FILE_CHUNK = 256 * 1024
FILES_TIMEOUT = 5.0  # seconds a descriptor may wait to be taken by the listener
APP_INIT = "system.webServer/applicationInitialization"
WARMUP_SID = 0xFFFFFF00  # stream ids of initialization requests (never the listener's)


class QueueProtocol(asyncio.Protocol):
    """One queue connection to one listener.  A worker outlives its listener: frames of a
    connection that is no longer the worker's current one are ignored."""

    def __init__(self, worker: "WorkerProcess") -> None:
        self.worker = worker
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.worker.queue is not self:
            return
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            log.error("listener broke the queue protocol: %s", exc)
            if self.transport is not None:
                self.transport.abort()  # as a lost queue: the service decides what follows
            return
        self.worker.on_frames(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.queue_lost(self)


class WorkerProcess:
    def __init__(self, pool: str, worker_id: str) -> None:
        self.pool_name = pool
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.queue: QueueProtocol | None = None  # the current queue connection
        self.queue_sock: socket.socket | None = None  # the queue socket until boot connects it
        self.booted = False
        self.fd_receiver: FdReceiver | None = None
        self.files: socket.socket | None = None  # the file channel (None: files go as body frames)
        self.control: ControlProtocol | None = None
        self.apps: dict[str, WorkerApplication] = {}
        self.streams: dict[int, Stream] = {}
        self.lifespans: list[Lifespan] = []
        self.lifespan_state: dict[str, dict[str, Any]] = {}
        self.wsgi: WsgiHandler | None = None
        self.static: dict[int, tuple[Any, StaticFileHandler]] = {}
        self.environ_base: dict[str, Any] = {}
        self.draining = False
        self.websockets: set[Any] = set()  # open WebSocketSessions (closed with 1012 on drain)
        self.proxy_tunnels: set[Any] = set()  # open passthrough tunnels of the proxy (ended on drain)
        self.done = asyncio.Event()
        self.exit_code = exit_codes.STOPPED
        self.requests = 0
        self.started = time.time()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.config_event = asyncio.Event()
        self.init_msg: Message | None = None
        self.shutdown_timeout = 90.0
        self.recycle_at = 0  # periodicRestart/@requests (jittered by the service); 0 = off
        self.credit_policy = CreditPolicy(0, False)
        # read by the stall watch (stall.py): a count the loop moves on (each request, each
        # heartbeat), the stream on_request is running, and whether REQUESTs are dropped
        # until the listener's STALLED_ACK
        self.progress = 0
        self.running_sid = 0
        self.disowning = False
        self.stall: StallWatch | None = None

    # ---- boot ---------------------------------------------------------------------

    async def boot(self, queue_sock: socket.socket, control_sock: socket.socket,
                   fd_sock: socket.socket | None = None, files_sock: socket.socket | None = None) -> None:
        self.queue_sock = queue_sock
        if files_sock is not None:
            files_sock.setblocking(False)
            self.files = files_sock
        self.control = await open_control(control_sock, self.on_control, self.control_lost)
        if fd_sock is not None:
            self.fd_receiver = FdReceiver(fd_sock, self.on_fd)
        done = self.loop.create_task(self.done.wait())
        config = self.loop.create_task(self.config_event.wait())
        await asyncio.wait([done, config], return_when=asyncio.FIRST_COMPLETED)
        if self.done.is_set():
            config.cancel()
            return
        assert self.init_msg is not None
        server = ServerConfig.from_dict(self.init_msg["config"])
        pool = server.pools.get(self.pool_name)
        if pool is None:
            raise AppLoadError(f"application pool {self.pool_name!r} is not in the configuration")
        self.shutdown_timeout = pool.shutdown_time_limit
        threads = pool.python_threads
        self.wsgi = WsgiHandler(self.loop, threads, MAX_LENT)
        self.environ_base = make_environ_base(f"Poolhouse/{__version__}", threads > 0)
        has_asgi = False
        for site in server.sites:
            for app in site.applications:
                if app.pool.lower() != self.pool_name.lower():
                    continue
                wapp = WorkerApplication(server, site, app)
                self.apps[wapp.key] = wapp
                try:
                    asgi = wapp.preload()
                except ConfigError as exc:
                    # a broken web.config fails only the requests under it (500.19)
                    log.error("configuration error in %s%s: %s", site.name, app.path, exc)
                    continue
                for name, obj in asgi:
                    has_asgi = True
                    lifespan = Lifespan(obj, f"{site.name}{app.path} {name}")
                    await lifespan.startup(pool.startup_time_limit)
                    self.lifespans.append(lifespan)
                    self.lifespan_state[name] = lifespan.state
        self.credit_policy = CreditPolicy(threads, has_asgi)
        credits = self.credit_policy.credits
        warmed = await self.warm_up(bool(self.init_msg.get("recycle")), pool.startup_time_limit)
        self.recycle_at = int(self.init_msg.get("recycle_after_requests", 0))
        self.booted = True
        # the socket a new listener's attach brought during boot, if one did
        sock, self.queue_sock = self.queue_sock, None
        assert sock is not None
        await self.connect_queue(sock)
        self.stall = StallWatch(self)
        self.stall.start()
        self.control.send({"op": "ready", "pid": os.getpid(), "credits": credits, "warmup": warmed})
        log.info("worker %s of pool %s ready: %d application(s), %d credit(s)",
                 self.worker_id, self.pool_name, len(self.apps), credits)

    async def warm_up(self, recycle: bool, timeout: float) -> int:
        """Application Initialization: request each application's initializationPage
        URLs through the pipeline before the worker takes traffic — when the application
        has preloadEnabled, when this worker replaces a recycled one (overlapped), or
        with doAppInitAfterRestart.  The responses go nowhere (the queue is not connected
        yet) and are not counted; returns how many pages were requested."""
        started = time.monotonic()
        sids: list[int] = []
        served = self.requests
        for wapp in self.apps.values():
            try:
                section = wapp.resolver.for_path(wapp.app.path).sections.get(APP_INIT) or {}
            except ConfigError:
                continue
            pages = section.get("items") or []
            if not pages or not (wapp.app.preload_enabled or recycle or section.get("doAppInitAfterRestart")):
                continue
            for page in pages:
                url = str(page.get("initializationPage", ""))
                if not url:
                    continue
                target = (wapp.base + url if url.startswith("/") else wapp.base + "/" + url).encode()
                host = str(page.get("hostName") or "localhost").encode()
                head = q.RequestHead(wapp.key, "GET", target, 1,
                                     (b"host", host, b"user-agent", b"IIS Application Initialization Warmup"),
                                     "127.0.0.1", 0, "127.0.0.1", 0, "http", 0)
                sid = WARMUP_SID + len(sids)
                sids.append(sid)
                self.on_request(sid, head, True)
        # a stream leaves self.streams when it ends
        while any(sid in self.streams for sid in sids) and time.monotonic() - started < timeout:
            await asyncio.sleep(0.01)
        for sid in sids:
            st = self.streams.pop(sid, None)
            if st is not None:
                log.error("initialization page %s did not finish within %.0f s", st.head.target[:200], timeout)
                st.cancel()
        if sids:
            log.info("application initialization: %d page(s) in %.3f s", len(sids), time.monotonic() - started)
        self.requests = served
        self._out.clear()  # nothing of it goes to the listener
        return len(sids)

    # ---- control channel ----------------------------------------------------------

    def on_control(self, msg: Message) -> None:
        op = msg["op"]
        if op == "init":
            self.init_msg = msg
            self.config_event.set()
            return
        if op == "drain":
            self.drain()
            return
        if self.control is None:
            return
        if op == "ping":
            self.control.reply(msg, pid=os.getpid(), requests=self.requests, in_flight=len(self.streams))
        elif op == "stats":
            self.control.reply(msg, result={"requests": self.requests, "in_flight": len(self.streams),
                                            "pid": os.getpid()})
        elif op == "requests":
            now = time.monotonic()
            self.control.reply(msg, result=[
                {"sid": st.sid, "stage": st.stage, "elapsed": round(now - st.started_at, 3),
                 "url": st.head.target.decode("latin-1")[:4096]}
                for st in list(self.streams.values())])
        else:
            log.warning("unknown control op %r", op)

    def signalled(self, name: str) -> None:
        """SIGTERM or SIGINT reached this worker.  It does not act on it by itself: a
        signal to the whole process group (a service manager's stop, ``timeout``, Ctrl-C)
        also reached the activation service, which drains every worker in order, and a
        worker that left its queue now would lose the requests it holds.  It tells the
        service, which recycles this worker if the signal was meant for it alone."""
        log.info("%s received: the activation service decides (it stops this worker if "
                 "the signal was not also meant for the whole server)", name)
        if self.control is not None:
            self.control.send({"op": "signalled", "signal": name})
        elif not self.done.is_set():
            self.exit(exit_codes.STOPPED)  # not booted far enough to have a service to ask

    def control_lost(self, exc: Exception | None) -> None:
        if not self.done.is_set():
            log.error("activation service went away; worker exiting")
            self.exit(exit_codes.CONTROL_LOST)

    def drain(self) -> None:
        """Take no new requests; exit once the ones in flight are done (the activation
        service kills us if that takes longer than shutdownTimeLimit)."""
        if self.draining:
            return
        self.draining = True
        if self.transport is not None:
            self.send(encode(q.DRAINING, 0, 0))
        for session in list(self.websockets):
            session.going_away()
        for tunnel in list(self.proxy_tunnels):
            tunnel.going_away()
        if not self.streams:
            self.exit(exit_codes.STOPPED)

    # ---- the queue connection (and its replacement when the listener is replaced) ---

    async def connect_queue(self, sock: socket.socket) -> None:
        """Serve the queue on ``sock`` and offer our credits on it."""
        _, proto = await self.loop.connect_accepted_socket(lambda: QueueProtocol(self), sock=sock)
        proto = cast(QueueProtocol, proto)
        if self.done.is_set() or self.draining:
            if proto.transport is not None:
                proto.transport.close()
            return
        if self.queue is not None:  # the old one has not told us it closed yet
            self.detach_queue()
        self.queue, self.transport = proto, proto.transport
        self.send(q.encode_ready(self.credit_policy.credits))

    def on_fd(self, label: Message, fds: list[int]) -> None:
        """Descriptors from the activation service: the worker's ends of the sockets to a
        new listener (``{"op": "attach", "sockets": ["queue", "files"]}``, in that order),
        in one record so that the file channel is in place before the queue offers
        credits."""
        names = label.get("sockets") if label.get("op") == "attach" else None
        ends = dict(zip(names, fds)) if isinstance(names, list) else {}
        if len(ends) != len(fds) or "queue" not in ends or not set(ends) <= {"queue", "files"}:
            log.error("descriptors with label %r from the activation service ignored", label)
            for fd in fds:
                os.close(fd)
            return
        if "files" in ends:
            self.attach_files(socket.socket(fileno=ends["files"]))
        self.attach_queue(socket.socket(fileno=ends["queue"]))

    def attach_files(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        old, self.files = self.files, sock
        if old is not None:
            old.close()

    def attach_queue(self, sock: socket.socket) -> None:
        if self.done.is_set() or self.draining:
            sock.close()
        elif not self.booted:
            # the listener died while we loaded the applications: boot connects this one
            if self.queue_sock is not None:
                self.queue_sock.close()
            self.queue_sock = sock
        else:
            log.info("worker %s attached to a new listener", self.worker_id)
            self.loop.create_task(self._attached(sock))

    async def _attached(self, sock: socket.socket) -> None:
        await self.connect_queue(sock)
        if self.control is not None and self.queue is not None:
            self.control.send({"op": "queue_attached", "pid": os.getpid(), "credits": self.credit_policy.credits})

    def queue_lost(self, proto: QueueProtocol) -> None:
        if proto is not self.queue or self.done.is_set():
            return
        if self.draining:
            self.detach_queue()  # nothing more can be answered; what is left goes nowhere
            self.exit(exit_codes.STOPPED)
            return
        dropped = self.detach_queue()
        log.warning("queue connection to the listener lost (%d request(s) in flight dropped with the "
                    "listener's connections); waiting for the activation service to attach a new one", dropped)
        if self.control is not None:
            self.control.send({"op": "queue_lost", "dropped": dropped})

    def detach_queue(self) -> int:
        """Leave the current queue connection: its streams are ended here (the
        application sees them cancelled, as when a client goes away, and what it still
        writes for them goes nowhere); returns how many there were."""
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.ended = True
            stream.cancel()
        self._out.clear()
        self.credit_policy.lent = 0  # lent credits were the old listener's
        if self.queue is not None and self.queue.transport is not None:
            self.queue.transport.abort()
        self.queue, self.transport = None, None
        return len(streams)

    def exit(self, code: int) -> None:
        self.exit_code = code
        self.done.set()

    async def shutdown(self) -> None:
        if self.stall is not None:
            self.stall.stop()
        self._flush()
        for lifespan in self.lifespans:
            await lifespan.shutdown(self.shutdown_timeout)
        if self.wsgi is not None:
            self.wsgi.close()
        platform = sys.modules.get("poolhouse.worker.handlers.http_platform")
        if platform is not None:
            # the httpPlatform processes are this worker's: SIGTERM, then SIGKILL after 2 s
            await self.loop.run_in_executor(None, platform.stop_all)

    # ---- queue frames -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_parts(self, *parts: bytes) -> None:
        self._out.extend(parts)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        stall = self.stall
        if stall is None:
            self._write_out()
            return
        with stall.lock:  # the stall watch may be writing to the socket (stall.py)
            self._write_out()

    def _write_out(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if transport is not None and out and not transport.is_closing():
            transport.writelines(out)

    def lend_credit(self) -> bool:
        """A stream waits for its body: its credit goes back to the listener meanwhile."""
        if self.draining or not self.credit_policy.lend():
            return False
        self.send(q.encode_credit(1))
        return True

    def reclaim_credit(self) -> None:
        if self.credit_policy.lent <= 0:
            return  # lent to a listener that is gone (detach_queue)
        self.credit_policy.reclaim()
        self.send(q.encode_credit(-1))

    def loop_resumed(self) -> None:
        """The loop runs again after the stall watch reported it stuck: a CREDIT frame
        tells the listener it may send requests again."""
        self.send(q.encode_credit(0))

    def call_threadsafe(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def on_frames(self, frames: list[Any]) -> None:
        streams = self.streams
        for ftype, flags, sid, payload in frames:
            if ftype == q.REQUEST:
                self.on_request(sid, q.decode_request(payload), bool(flags & q.END_STREAM),
                                bool(flags & q.UPGRADE))
            elif ftype == q.REQUEST_BODY:
                stream = streams.get(sid)
                if stream is not None:
                    stream.feed_body(payload, bool(flags & q.END_STREAM))
            elif ftype == q.WINDOW:
                stream = streams.get(sid)
                if stream is not None:
                    stream.grant_window(q.decode_window(payload))
            elif ftype == q.CANCEL:
                stream = streams.get(sid)
                if stream is not None:
                    stream.cancel()
            elif ftype == q.PING:
                self.send(encode(q.PONG, 0, sid))
            elif ftype == q.PONG:
                pass
            elif ftype == q.STALLED_ACK:
                self.disowning = False
            else:
                log.error("unknown frame type %d from the listener", ftype)

    def stream_ended(self, stream: Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        ctx = stream.ctx
        if ctx is not None:
            stream.ctx = None  # no stream <-> context cycle left for the garbage collector
            if ctx.pipeline.post or ctx.trace is not None:
                ctx.on_end()  # ReleaseRequestState .. EndRequest
        self.requests += 1
        policy = self.credit_policy
        if policy.adaptive and not stream.upgrade and stream.sid < WARMUP_SID:
            change = policy.finished(time.monotonic() - stream.started_at)
            if change:
                self.send(q.encode_credit(change))
        if self.requests == self.recycle_at and self.control is not None:
            # periodicRestart/@requests: ask the activation service for an overlapped recycle
            self.control.send({"op": "recycle_me", "reason": "requests", "requests": self.requests})
        if self.draining and not self.streams:
            self.loop.call_soon(self.exit, exit_codes.STOPPED)

    # ---- dispatch -----------------------------------------------------------------

    def on_request(self, sid: int, head: q.RequestHead, end: bool, upgrade: bool = False) -> None:
        self.progress += 1
        if self.disowning and self._disowned(sid):
            return
        stream = Stream(self, sid, head, end)
        if upgrade:
            stream.upgrade = True
        self.streams[sid] = stream
        stream.started_at = time.monotonic()
        self.running_sid = sid
        try:
            self.dispatch(stream)
        except Exception:
            log.exception("dispatch failed for %s", head.target[:200])
            if not stream.ended:
                if stream.head_sent:
                    stream.reset()
                else:
                    self.error_response(stream, 500, 0)
        self.running_sid = 0

    def _disowned(self, sid: int) -> bool:
        """The stall watch gave back the streams not started (q.STALLED): a REQUEST that
        arrives before the listener's STALLED_ACK is one of them."""
        assert self.stall is not None
        with self.stall.lock:  # (the watch may be deciding right now)
            if not self.disowning:
                return False
        log.debug("stream %d was given back to the listener unstarted", sid)
        return True

    def dispatch(self, stream: Stream) -> None:
        head = stream.head
        app = self.apps.get(head.app)
        if app is None:
            self.error_response(stream, 503, 0, "This worker does not host the application.")
            return
        raw_path, query = split_target(head.target)
        try:
            path = normalize(raw_path)
        except BadPath:
            self.error_response(stream, 400, 0)
            return
        stream.stage = "MapRequestHandler"
        sel = app.select(head.method, path)
        pipeline = sel.pipeline
        ctx = None
        if pipeline is not None:
            # the integrated pipeline: BeginRequest .. PreExecuteRequestHandler, unless
            # no module subscribes to any of them (then only SendResponse and later run)
            ctx = stream.ctx = HttpContext(self, stream, app, sel, pipeline, path, raw_path, query)
            if pipeline.pre or not sel.kind or pipeline.traced:
                if ctx.before_handler():
                    return  # a module finished the request
                # a module may have moved the request to another URL (URL Rewrite)
                sel, path, raw_path, query = ctx.selection, ctx.path, ctx.raw_path, ctx.query
                app = ctx.app  # possibly another application of the site, in this pool
        if sel.kind == WSGI:  # the hot path, inline
            assert self.wsgi is not None
            environ = build_environ(self.environ_base, app.environ_base, head, path[len(app.base):], query)
            environ["poolhouse.appsettings"] = sel.web.app_settings if sel.web is not None else {}
            if ctx is not None and (ctx.user or ctx.auth_type or ctx._set_vars):
                environ.update(ctx.extra_environ or ())
            self.wsgi.handle(stream, sel.target, environ)
            return
        self.execute(stream, app, sel, path, raw_path, query, ctx)

    def execute(self, stream: Stream, app: WorkerApplication, sel: Selection, path: str, raw_path: str,
                query: str, ctx: HttpContext | None) -> None:
        """ExecuteRequestHandler: the handler the mappings chose."""
        kind = sel.kind
        head = stream.head
        if kind == WSGI:
            assert self.wsgi is not None
            environ = build_environ(self.environ_base, app.environ_base, head, path[len(app.base):], query)
            environ["poolhouse.appsettings"] = sel.web.app_settings if sel.web is not None else {}
            if ctx is not None:
                extra = ctx.extra_environ
                if extra:
                    environ.update(extra)
            self.wsgi.handle(stream, sel.target, environ)
        elif kind == ASGI:
            scope = build_scope(head, app.base, path, raw_path.encode("latin-1"), query,
                                self.lifespan_state.get(sel.mapping.entry.script_processor, {}))  # type: ignore[union-attr]
            scope["poolhouse.appsettings"] = sel.web.app_settings if sel.web is not None else {}
            if ctx is not None:
                extra = ctx.extra_environ
                if extra:
                    scope["extensions"] = {"poolhouse.server_variables": extra}
            if stream.upgrade:
                from .handlers import websocket
                if websocket.wants_websocket(stream) and websocket.settings(sel.web)[0]:
                    self.loop.create_task(websocket.run_websocket(self, sel.target, scope, stream, sel.web))
                    return
            self.loop.create_task(run_asgi(sel.target, scope, stream))
        elif kind == STATIC:
            self.run_static(stream, app, sel.web, sel.rel, query)
        elif kind == CGI:
            from .handlers.cgi import run_cgi
            self.loop.create_task(run_cgi(self, stream, app, sel, path, query, ctx))
        elif kind == PROTOCOL:
            from .modules.protocol_support import protocol_handler
            protocol_handler(self, stream, sel, ctx)
        elif kind == PROXY:  # URL Rewrite to an absolute http:// URL (ARR)
            from .handlers.proxy import proxy_request
            self.loop.create_task(proxy_request(self, stream, sel.target, ctx))
        elif kind == HTTP_PLATFORM:
            from .handlers.http_platform import run_http_platform
            self.loop.create_task(run_http_platform(self, stream, app, sel, path, query, ctx))
        else:
            self.error_response(stream, sel.status, sel.substatus, sel.detail,
                                detail_local=sel.status == 500)

    def run_static(self, stream: Stream, app: WorkerApplication, web: Any, rel: str, query: str) -> None:
        cached = self.static.get(id(web))
        if cached is None or cached[0] is not web:
            handler = StaticFileHandler(web.mime_maps, web.default_documents, web.default_document_enabled,
                                        web.directory_browse_enabled, web.directory_browse_show_flags)
            if len(self.static) > 256:
                self.static.clear()
            self.static[id(web)] = cached = (web, handler)
        handler = cached[1]
        head = stream.head
        hdrs = head.headers
        headers = {hdrs[i].decode("latin-1"): hdrs[i + 1].decode("latin-1") for i in range(0, len(hdrs), 2)}
        url_path = (app.base + rel) if rel != "/" or not app.base else app.base + "/"
        stream.stage = "ExecuteRequestHandler"
        root, path = app.mapped(rel)
        resp = handler.serve(head.method, url_path, path, headers, query,
                             None if app.site.symlinks_outside_root else root)
        if (resp.status == 200 and head.method == "GET" and type(resp.body) is bytes and not query
                and "\r" not in path and "\n" not in path):
            # the listener's response cache keeps this file until it changes (and strips this)
            resp.headers.append((b"X-Poolhouse-File", os.fsencode(path)))
        self.send_static(stream, resp)

    def send_static(self, stream: Stream, resp: StaticResponse) -> None:
        if resp.status >= 400 and not resp.body:
            self.error_response(stream, resp.status, resp.substatus, extra_headers=resp.headers)
            return
        content_length = -1
        headers = []
        for name, value in resp.headers:
            if name.lower() == b"content-length":
                content_length = int(value)
            else:
                headers.append((name, value))
        status, body = resp.status, resp.body
        ctx = stream.ctx
        if ctx is not None and ctx.pipeline.has_send:
            out = ctx.send_response(status, resp.substatus, headers, body, True)
            if out.body is not body:
                content_length = out.body.length if isinstance(out.body, FileBody) else len(out.body)
            status, headers, body = out.status, out.headers, out.body
            if out.generated:
                self.error_response(stream, status, out.substatus, out.detail, extra_headers=headers)
                return
        block = b"".join(b"%s: %s\r\n" % h for h in headers)
        if isinstance(body, FileBody):
            if stream.head.method == "HEAD":
                stream.respond(status, block, content_length, b"", True)
                return
            fd = self.open_file_body(stream, body)
            if fd >= 0:
                stream.respond(status, block, content_length, b"", False)
                self.send_file_body(stream, body, fd)
            return
        if stream.head.method == "HEAD":
            stream.respond(status, block, content_length, b"", True)
        else:
            stream.respond(status, block, len(body), body, True)

    def send_whole(self, stream: Stream, status: int, headers: list[tuple[bytes, bytes]],
                   body: bytes | FileBody, ctx: HttpContext, substatus: int = 0) -> None:
        """A response a module produced (``ctx.respond``/``redirect``), through SendResponse."""
        if stream.ended:
            return
        out = ctx.send_response(status, substatus, headers, body, True)
        if out.generated:
            self.error_response(stream, out.status, out.substatus, out.detail, extra_headers=out.headers)
            return
        try:
            block, length, close = build_header_block(out.headers)
        except BadResponseHeader as exc:
            log.error("module %s produced a bad header: %s", ctx.module, exc)
            out.headers = []
            self.error_response(stream, 500, 0, str(exc))
            return
        body = out.body
        if isinstance(body, FileBody):
            if stream.head.method == "HEAD":
                stream.respond(out.status, block, body.length, b"", True, close)
            else:
                fd = self.open_file_body(stream, body)
                if fd >= 0:
                    stream.respond(out.status, block, body.length, b"", False, close)
                    self.send_file_body(stream, body, fd)
            return
        if stream.head.method == "HEAD":
            stream.respond(out.status, block, len(body), b"", True, close)
        else:
            stream.respond(out.status, block, len(body), body, True, close)

    def open_file_body(self, stream: Stream, body: FileBody) -> int:
        """Open the file of a response body before its head goes out, as this worker's
        user (the kernel decides whether it may be read): the descriptor, or -1 once the
        request got its error (403 unreadable, 404 gone)."""
        try:
            return os.open(body.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except PermissionError as exc:
            log.warning("cannot open %s: %s", body.path, exc)
            self.error_response(stream, 403, 0)
        except OSError as exc:
            log.warning("cannot open %s: %s", body.path, exc)
            self.error_response(stream, 404, 0)
        return -1

    def send_file_body(self, stream: Stream, body: FileBody, fd: int) -> None:
        """The body of a response whose head is out, from ``fd`` (owned from here): the
        listener sends the file range itself (q.RESPONSE_FILE, the descriptor passed on
        the file channel) unless a SendResponse hook transforms the body (compression),
        which needs the bytes here."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced by something else since its stat
            os.close(fd)
            log.error("sending %s failed: no longer a regular file", body.path)
            stream.reset()
            return
        if stream.body_filter is None and self.can_pass_files and body.offset + body.length <= st.st_size:
            try:
                stream.send_file(fd, q.FileRange(body.offset, body.length, st.st_size, st.st_mtime_ns))
            finally:
                os.close(fd)  # the listener holds its own reference from here on
            return
        self.loop.create_task(self._send_file(stream, body, fd))

    @property
    def can_pass_files(self) -> bool:
        """The listener can send files for us: a file channel, and the queue connected
        (initialization pages run before it is, and their responses go nowhere)."""
        return self.files is not None and self.transport is not None

    def pass_file(self, sid: int, fd: int) -> bool:
        """Hand ``fd`` to the listener for stream ``sid`` on the file channel; it must go
        before the RESPONSE_FILE frame that uses it (this call returns once it is queued)."""
        files = self.files
        if files is None:
            return False
        record = [q.encode_file_record(sid)]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", (fd,)))]
        try:
            try:
                files.sendmsg(record, rights)
            except BlockingIOError:
                # the listener has not read the channel yet: wait for it, boundedly (a
                # record is a few bytes it reads as soon as its loop turns)
                files.settimeout(FILES_TIMEOUT)
                try:
                    files.sendmsg(record, rights)
                finally:
                    files.setblocking(False)
        except OSError as exc:
            log.error("passing a file to the listener failed: %s", exc)
            return False
        return True

    async def _send_file(self, stream: Stream, body: FileBody, fd: int) -> None:
        try:
            with open(fd, "rb") as fh:
                fh.seek(body.offset)
                remaining = body.length
                while remaining > 0:
                    if stream.window <= 0:
                        await stream.wait_window()
                    if stream.cancelled:
                        stream.reset()
                        return
                    chunk = fh.read(min(FILE_CHUNK, remaining))
                    if not chunk:
                        raise OSError("file shrank while being sent")
                    remaining -= len(chunk)
                    stream.send_body(chunk, end=remaining == 0)
        except OSError as exc:
            log.error("sending %s failed: %s", body.path, exc)
            stream.reset()

    def error_response(self, stream: Stream, status: int, substatus: int, detail: str = "",
                       detail_local: bool = False, extra_headers: list[tuple[bytes, bytes]] | None = None,
                       ctx: HttpContext | None = None) -> None:
        """A server-generated error.  Through the pipeline, SendResponse hooks see it
        first (CustomErrorModule renders it); a body nobody provided is the built-in
        page, with the detail for local requests."""
        if stream.ended:
            return
        if stream.head_sent:
            stream.reset()
            return
        headers = [h for h in extra_headers or () if h[0].lower() not in (b"content-length", b"content-type")]
        body: bytes | FileBody = b""
        ctx = stream.ctx
        if ctx is not None:
            if not ctx.error_notification:
                ctx.error_module, ctx.error_notification = ctx.module, ctx.notification or "ExecuteRequestHandler"
            out = ctx.send_response(status, substatus, headers, b"", True, True, detail)
            status, substatus, headers, body = out.status, out.substatus, out.headers, out.body
            if isinstance(body, FileBody):
                self.send_whole(stream, status, headers, body, ctx, substatus)
                return
        if not body:
            local = stream.head.client_addr in ("127.0.0.1", "::1")
            body = error_page(status, substatus, detail if (local or not detail_local) else "")
            headers = [h for h in headers if h[0].lower() != b"content-type"]
            headers.insert(0, (b"Content-Type", b"text/html; charset=utf-8"))
        try:
            block, _, close = build_header_block(headers)
        except BadResponseHeader as exc:
            log.error("bad header on an error response: %s", exc)
            block, close = b"Content-Type: text/html; charset=utf-8\r\n", False
        if stream.head.method == "HEAD":
            stream.respond(status, block, len(body), b"", True, close, substatus)
        else:
            stream.respond(status, block, len(body), body, True, close, substatus)
