"""The listener process: owns every client connection and every pool's request queue.

It is programmed by the activation service over the control channel (routing table,
pool and site states), receives each worker's queue socket over the descriptor channel,
and tells the activation service when a pool needs a worker or a worker went away.
No application code runs here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from ..config.model import ServerConfig
from ..ipc.control import ControlProtocol, FdReceiver, Message, open_control
from ..urlpath import BadPath, normalize, split_target
from .connection import HttpConnection
from .exchange import Exchange
from .httperr_log import HttpErrLog
from .request_queue import STARTED, STOPPED_REASONS, PoolQueue
from . import request_filtering
from .response_cache import AppCachePolicy, FileWatcher, ResponseCache
from .response_cache import Entry as CacheEntry
from .responses import DATE, SERVER, error_response, status_line
from .routing import Route, RoutingTable, app_key
from .tls import TlsStore
from .w3c_log import W3CLogs
from .worker_link import WorkerLink

log = logging.getLogger("poolhouse.listener")

DEFAULT_HEADER_WAIT = 120.0
_STATUS_200 = status_line(200, 1)
# request headers that make a hit conditional (RFC 9110 §13.1)
_CONDITIONALS = frozenset((b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since"))
MEMO_LIMIT = 4096  # raw requests remembered by the cache's fast path
_SERVER = b"Server: %s\r\n" % SERVER
ROUTE_CACHE_SIZE = 8192
MIN_RATE_WINDOW = 5.0  # (local address, Host, target) -> route; cleared when full
READ_AHEAD = 49152  # serverRuntime/@uploadReadAheadSize's default


class SiteCounters:
    __slots__ = ("requests", "bytes_sent", "bytes_received", "rejected", "requests_per_second", "rate_mark")

    def __init__(self) -> None:
        self.requests_per_second = 0.0
        self.rate_mark = 0
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rejected: dict[str, int] = {}


class Listener:
    def __init__(self, state_dir: str, sockets: list[dict[str, Any]]) -> None:
        self.state_dir = state_dir
        self.socket_specs = sockets
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.pools: dict[str, PoolQueue] = {}
        self.site_states: dict[int, str] = {}
        self.routing = RoutingTable(ServerConfig())
        self.config = ServerConfig()
        self.workers: dict[str, WorkerLink] = {}
        self.httperr = HttpErrLog(os.path.join(state_dir, "logs", "HTTPERR"))
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.control: ControlProtocol | None = None
        self.fd_receiver: FdReceiver | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self.counters: dict[str, int] = {"requests": 0, "connections": 0}
        self.site_stats: dict[int, SiteCounters] = {}
        self.route_cache: dict[tuple[tuple[str, int], bytes, bytes], tuple[int | None, Route | None]] = {}
        # (server address, raw request) -> what answers it from the cache (memo_hit)
        self.memo: dict[tuple[Any, bytes], tuple[Any, ...]] = {}
        # (wall-clock time, exchange) of the requests answered since the last tick; the
        # W3C log's writer thread formats and writes them
        self.w3c_pending: list[tuple[float, Exchange]] = []
        self.w3c_sites: set[int] = set()  # the sites whose access log is on
        self.site_timeouts: dict[int, float] = {}
        self.throttles: dict[int, list[float]] = {}
        self.rate_mark = time.monotonic()
        self.rate_total = 0
        self.requests_per_second = 0.0
        self.site_max_connections: dict[int, int] = {}
        self.site_connections: dict[int, int] = {}
        self.w3c = W3CLogs(os.path.join(state_dir, "logs"))
        self.tls = TlsStore()
        self.cache = ResponseCache()
        try:
            self.cache.watcher = FileWatcher(self.loop, self.cache.file_changed)
        except OSError as exc:  # no inotify: static files are then not cached
            log.warning("response cache: no file change notification (%s)", exc)
        self.request_timeouts: dict[str, float] = {}  # pool -> <python requestTimeout> seconds
        # app key -> requestFiltering/requestLimits checked before queueing (none: not checked)
        self.request_limits: dict[str, request_filtering.AppLimits] = {}
        # app key -> serverRuntime/@uploadReadAheadSize at the application's root
        self.read_ahead: dict[str, int] = {}

    # ---- start-up -----------------------------------------------------------------

    async def boot(self, control_sock: socket.socket, fd_sock: socket.socket) -> None:
        self.control = await open_control(control_sock, self.on_control, self.on_control_lost)
        self.fd_receiver = FdReceiver(fd_sock, self.on_fd)
        for spec in self.socket_specs:
            await self._listen(socket.socket(fileno=spec["fd"]), spec["ip"], int(spec["port"]),
                               spec.get("protocol", "http"))
        self.loop.call_later(1.0, self._tick)
        self.control.send({"op": "listener_ready", "pid": os.getpid()})

    async def _listen(self, sock: socket.socket, ip: str, port: int, scheme: str) -> None:
        server = await self.loop.create_server(
            lambda: HttpConnection(self, scheme), sock=sock, backlog=65535,
            ssl=self.tls.server_context(port) if scheme == "https" else None,
            ssl_handshake_timeout=(self.config.web_limits.header_wait_timeout or DEFAULT_HEADER_WAIT)
            if scheme == "https" else None,
        )
        old = self.servers.pop((ip, port), None)
        if old is not None:
            old.close()
        self.servers[(ip, port)] = server

    def ctl_unlisten(self, msg: Message) -> None:
        server = self.servers.pop((msg["ip"], int(msg["port"])), None)
        if server is not None:
            server.close()

    def on_control_lost(self, exc: Exception | None) -> None:
        # The activation service is gone: nobody can start workers or program us.
        log.error("control channel to the activation service lost; listener exiting")
        self.stopped.set()

    # ---- control messages ---------------------------------------------------------

    def on_control(self, msg: Message) -> None:
        op = msg["op"]
        handler = getattr(self, "ctl_" + op, None)
        if handler is None:
            log.error("unknown control op %r", op)
            return
        handler(msg)

    def ctl_configure(self, msg: Message) -> None:
        config = ServerConfig.from_dict(msg["config"])
        self.config = config
        self.routing = RoutingTable(config)
        self.route_cache = {}
        self.memo = {}
        self.w3c.configure(config.sites)
        # both the site's and webLimits' connectionTimeout apply: the shorter wins
        # bandwidth throttles: site id (0: the whole server) -> [bytes/s, next free time]
        unlimited = 4294967295
        self.throttles = {s.id: [float(s.limits.max_bandwidth), 0.0] for s in config.sites
                          if s.limits.max_bandwidth < unlimited}
        if config.web_limits.max_global_bandwidth < unlimited:
            self.throttles[0] = [float(config.web_limits.max_global_bandwidth), 0.0]
        self.site_timeouts = {s.id: min(s.limits.connection_timeout, config.web_limits.connection_timeout)
                              for s in config.sites}
        self.site_max_connections = {s.id: s.limits.max_connections for s in config.sites
                                     if s.limits.max_connections < 4294967295}
        self.w3c_sites = {s.id for s in config.sites if s.log_file.enabled and s.log_file.log_format.upper() == "W3C"}
        self.tls.configure(config.sites)
        self._configure_cache(config)
        recycling = set(msg.get("recycling") or ())
        if recycling:
            # their workers still run the replaced configuration until their successors
            # take over: what they answer meanwhile is not stored
            self.cache.stale_workers.update(link for link in self.workers.values() if link.pool.name in recycling)
        self.request_limits = request_filtering.build(config)
        for name, pool in config.pools.items():
            queue = self.pools.get(name)
            if queue is None:
                queue = self.pools[name] = PoolQueue(name, pool.queue_length, self.demand)
            queue.limit = pool.queue_length
            queue.load_balancer_capabilities = pool.load_balancer_capabilities
        for name, state in msg.get("pool_states", {}).items():
            self._set_pool_state(name, state)
        self.site_states = {int(k): v for k, v in msg.get("site_states", {}).items()}
        self.request_timeouts = {name: pool.python_request_timeout for name, pool in config.pools.items()
                                 if pool.python_request_timeout > 0}
        if "id" in msg and self.control is not None:
            # the service waits for this before it reports the configuration applied: the
            # response cache has been flushed by then (cache.configure)
            self.control.reply(msg, result={"configured": True})

    def _configure_cache(self, config: ServerConfig) -> None:
        """Each application's effective caching/serverRuntime settings, resolved once here
        (web.config files included) rather than per response."""
        from ..config import WebConfigResolver

        policies: dict[str, AppCachePolicy] = {}
        resolvers: dict[str, Any] = {}
        read_ahead: dict[str, int] = {}
        self.read_ahead = read_ahead
        max_mb = 0
        for site in config.sites:
            for app in site.applications:
                try:
                    resolver = WebConfigResolver(config, site.name, app.path)
                    resolvers[app_key(site, app)] = _sections_at(resolver)
                    sections = resolver.for_path(app.path).sections
                except Exception as exc:  # a broken web.config: the worker reports it; no caching here
                    log.warning("response cache off for %s%s: %s", site.name, app.path, exc)
                    policies[app_key(site, app)] = AppCachePolicy(enabled=False)
                    continue
                policies[app_key(site, app)] = AppCachePolicy.from_sections(sections)
                runtime = sections.get("system.webServer/serverRuntime") or {}
                read_ahead[app_key(site, app)] = int(runtime.get("uploadReadAheadSize", READ_AHEAD))
                max_mb = max(max_mb, int((sections.get("system.webServer/caching") or {}).get("maxCacheSize", 0) or 0))
        self.cache.configure(policies, max_mb * 1024 * 1024, resolvers)

    def ctl_cache(self, msg: Message) -> None:
        """``{"op": "cache", "action": "list" | "flush", "site_id"?, "url"?, "path"?}``:
        ``path`` flushes a configuration path (a URL path and everything below it; the
        activation service sends it when a web.config changes, and waits for the reply
        before it reports the change applied)."""
        assert self.control is not None
        if msg.get("action") == "flush":
            site_id = msg.get("site_id")
            path = msg.get("path")
            removed = self.cache.flush(int(site_id) if site_id is not None else None, msg.get("url") or None,
                                       str(path) if path else None)
            self.control.reply(msg, result={"flushed": removed, **self.cache.stats()})
        else:
            self.control.reply(msg, result={"entries": self.cache.listing(), **self.cache.stats()})

    def ctl_pool_state(self, msg: Message) -> None:
        self._set_pool_state(msg["pool"], msg["state"])

    def _set_pool_state(self, name: str, state: str) -> None:
        queue = self.pools.get(name)
        if queue is None:
            return
        for exch in queue.set_state(state):
            self.refuse(exch, queue)

    def ctl_site_state(self, msg: Message) -> None:
        self.site_states[int(msg["site_id"])] = msg["state"]

    def ctl_demand_done(self, msg: Message) -> None:
        queue = self.pools.get(msg["pool"])
        if queue is not None:
            starting = any(link.pool is queue and not link.ready and not link.closed
                           for link in self.workers.values())
            queue.demand_done(bool(msg.get("at_capacity")), starting)

    def ctl_suspend_worker(self, msg: Message) -> None:
        """idleTimeoutAction="Suspend": take an idle worker off its pool's queue (refused if
        a request reached it meanwhile); a request that then finds no credit asks for a
        worker, and the activation service resumes this one."""
        assert self.control is not None
        link = self.workers.get(msg["worker_id"])
        ok = link is not None and not link.streams and not link.draining and link in link.pool.workers
        if ok:
            assert link is not None
            link.pool.remove_worker(link)  # no longer "at capacity": a request asks for a worker
        self.control.reply(msg, suspended=ok)

    def ctl_resume_worker(self, msg: Message) -> None:
        link = self.workers.get(msg["worker_id"])
        if link is not None and not link.closed:
            link.pool.worker_ready(link)

    def ctl_detach_worker(self, msg: Message) -> None:
        """orphanWorkerProcess: the worker stays alive but leaves the queue; its requests
        in flight are replayed or answered 502 as for a crash."""
        link = self.workers.get(msg["worker_id"])
        if link is not None:
            link.close()

    def ctl_requests(self, msg: Message) -> None:
        """Requests in flight and waiting, for ``poolhouse list requests``."""
        assert self.control is not None
        now = time.monotonic()
        least = float(msg.get("min_elapsed", 0.0))
        rows: list[dict[str, Any]] = []

        def row(exch: Exchange, link: WorkerLink | None, sid: int, pool: str) -> None:
            elapsed = now - exch.queued_at if exch.queued_at else 0.0
            if exch.done or elapsed < least:
                return
            rows.append({"url": exch.target.decode("latin-1")[:4096], "method": exch.method,
                         "apppool": pool, "site_id": exch.route.site_id if exch.route else None,
                         "worker": link.worker_id if link else None, "pid": link.pid if link else None,
                         "stream": sid, "elapsed_ms": round(elapsed * 1000),
                         "client": f"{exch.conn.client[0]}:{exch.conn.client[1]}" if exch.conn.client else ""})

        for link in list(self.workers.values()):
            for sid, exch in list(link.streams.items()):
                row(exch, link, sid, link.pool.name)
        for name, queue in self.pools.items():
            for exch in list(queue.waiting):
                row(exch, None, 0, name)
        for conn in list(self.connections):  # held for their bodies (read-ahead)
            exch = conn.parsing
            if exch is not None and exch.held_for is not None and not exch.done:
                elapsed = now - exch.started_at
                if elapsed >= least:
                    rows.append({"url": exch.target.decode("latin-1")[:4096], "method": exch.method,
                                 "apppool": exch.held_for.name,
                                 "site_id": exch.route.site_id if exch.route else None,
                                 "worker": None, "pid": None, "stream": 0, "elapsed_ms": round(elapsed * 1000),
                                 "client": f"{conn.client[0]}:{conn.client[1]}", "stage": "ReadingEntityBody"})
        self.control.reply(msg, result=rows)

    def _expire_requests(self, now: float) -> None:
        """<python requestTimeout>: a request still waiting in its queue after the limit
        gets 503 (Timer_AppPool); one a worker holds gets 504 (Timer_Response) — or its
        connection is closed if the response had begun — the worker is told to cancel it,
        and the activation service decides whether the worker has to be recycled."""
        for name, limit in self.request_timeouts.items():
            queue = self.pools.get(name)
            if queue is None:
                continue
            for exch in [e for e in queue.waiting if e.queued_at and now - e.queued_at > limit]:
                queue.forget(exch)
                exch.conn.send_error(exch, 503, "Timer_AppPool")
            for link in list(self.workers.values()):
                if link.pool is not queue:
                    continue
                for sid, exch in list(link.streams.items()):
                    if exch.done or exch.tunnel or not exch.queued_at or now - exch.queued_at <= limit:
                        continue
                    elapsed = now - exch.queued_at
                    if exch.response_started:
                        exch.done = True
                        exch.release_worker()
                        exch.conn.abort_exchange(exch, "Timer_Response")
                    else:
                        exch.conn.send_error(exch, 504, "Timer_Response")
                    link.cancel(sid)
                    if self.control is not None:
                        self.control.send({"op": "request_timeout", "pool": name, "worker_id": link.worker_id,
                                           "url": exch.target.decode("latin-1")[:4096],
                                           "elapsed": round(elapsed, 3)})

    def ctl_stats(self, msg: Message) -> None:
        assert self.control is not None
        self.control.reply(msg, result=self.stats())

    def ctl_drain(self, msg: Message) -> None:
        """Stop accepting; answer once every connection has finished its requests or
        ``timeout`` passed."""
        self.draining = True
        for server in self.servers.values():
            server.close()
        self.loop.create_task(self._drain(msg, float(msg.get("timeout", 90.0))))

    async def _drain(self, msg: Message, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for conn in list(self.connections):
                if not conn.pipeline:
                    conn.close()
            # tunnels (WebSockets) do not finish by themselves: their workers end them
            # (1012) when they drain, which comes after this answer
            if not any(conn.tunnel is None for conn in self.connections):
                break
            await asyncio.sleep(0.05)
        self.httperr.flush()
        self.flush_access_log()
        if self.stopped.is_set():
            return  # shutting down (the channel is gone): shutdown() closes the logs
        await self.loop.run_in_executor(None, self.w3c.sync)
        assert self.control is not None
        self.control.reply(msg, result={"open_connections": len(self.connections)})

    def ctl_exit(self, msg: Message) -> None:
        self.stopped.set()

    def on_fd(self, label: Message, fds: list[int]) -> None:
        fd, extra = fds[0], fds[1:]
        if label.get("op") == "listen":
            for other in extra:
                os.close(other)
            self.loop.create_task(self._listen(socket.socket(fileno=fd), label["ip"], int(label["port"]),
                                               label.get("protocol", "http")))
            return
        names = label.get("sockets", ["queue"]) if label.get("op") == "attach_worker" else None
        pool = self.pools.get(label.get("pool", "")) if isinstance(names, list) else None
        ends = dict(zip(names, fds)) if pool is not None and names is not None else {}
        if (pool is None or len(ends) != len(fds) or "queue" not in ends
                or not set(ends) <= {"queue", "files"}):
            log.error("descriptor record %r with %d descriptor(s) refused", label, len(fds))
            for each in fds:
                os.close(each)
            return
        # the pid is the activation service's, who spawned the worker, never the worker's word
        sock = socket.socket(fileno=ends["queue"])
        files = socket.socket(fileno=ends["files"]) if "files" in ends else None
        self.loop.create_task(self._attach(sock, pool, label["worker_id"], int(label["pid"]), files))

    async def _attach(self, sock: socket.socket, pool: PoolQueue, worker_id: str, pid: int,
                      files: socket.socket | None = None) -> None:
        if files is None:
            log.warning("worker %s came without a file channel: its file responses will fail", worker_id)
        _, link = await self.loop.connect_accepted_socket(
            lambda: WorkerLink(self, pool, worker_id, pid, files), sock=sock
        )
        self.workers[worker_id] = link

    # ---- used by connections, exchanges and links ---------------------------------

    def demand(self, pool: str) -> None:
        if self.control is not None:
            self.control.send({"op": "need_worker", "pool": pool})

    def replay_held(self, link: WorkerLink, change: int) -> None:
        """A replayed request (its first worker died with it) went to ``link``'s worker
        (+1) or left it (-1): should that worker die meanwhile, the activation service
        does not count it toward rapid-fail protection a second time."""
        if self.control is not None:
            self.control.send({"op": "replay_held", "worker_id": link.worker_id, "change": change})

    def worker_gone(self, link: WorkerLink) -> None:
        self.workers.pop(link.worker_id, None)
        if self.control is not None:
            self.control.send({"op": "worker_gone", "worker_id": link.worker_id})

    def start(self, conn: HttpConnection, exch: Exchange) -> None:
        """Route ``exch`` (now at the head of its connection's pipeline) to its pool."""
        exch.started = True
        key = (conn.server, exch.host, exch.target)
        hit = self.route_cache.get(key)
        if hit is None:
            hit = self._resolve(key)
        route = hit[1]
        if route is None or exch.http_minor < 0:
            self._unrouted(conn, exch, hit)
            return
        exch.route = route
        if self.site_states.get(route.site_id, STARTED) != STARTED:
            conn.send_error(exch, 503, "Disabled")
            return
        if conn.site_id != route.site_id and not self._join_site(conn, route.site_id):
            exch.keep_alive = False
            conn.send_error(exch, 503, "ConnLimit")
            return
        if exch.method == "GET" or exch.method == "HEAD":
            cache = self.cache
            if cache.slots:
                entry = cache.lookup(route.site_id, exch)
                if entry is not None and self.serve_cached(conn, exch, entry):
                    return  # answered here, whatever the pool's state
            else:
                cache.misses += 1
            if b"cache-control" in exch.headers and cache.only_if_cached(exch):
                self._not_cached(conn, exch)
                return
        limits = self.request_limits.get(route.app_key)
        if limits is not None and (len(exch.target) > limits.short_target
                                   or not 0 <= exch.body_length <= limits.max_content):
            if request_filtering.check(conn, exch, limits):
                return
        queue = self.pools.get(route.pool)
        if queue is None:
            conn.send_error(exch, 503, "N/A", "The application pool does not exist.")
            return
        if not exch.body_done and exch.body_length > 0 and not exch.upgrade:
            # HTTP.sys's read-ahead: the body (up to uploadReadAheadSize of it) arrives
            # before the request may take a worker's slot.  Not a chunked body: that is
            # a stream its client may want answered as it goes (an interactive CGI
            # program); it is delivered as it comes, and the body timers and the
            # worker's credit lending keep it from holding a slot.
            read_ahead = self.read_ahead.get(route.app_key, READ_AHEAD)
            if read_ahead > exch.body_buf_size and queue.state == STARTED:
                exch.hold_for_body(queue, read_ahead)
                return
        exch.queued_at = conn.last_activity
        reason = queue.submit(exch)
        if reason is not None:
            self.refuse(exch, queue, reason)

    def enqueue(self, exch: Exchange, queue: PoolQueue) -> None:
        """A request held for its body has read ahead enough: it joins its pool's queue."""
        exch.queued_at = time.monotonic()
        reason = queue.submit(exch)
        if reason is not None:
            self.refuse(exch, queue, reason)

    def body_over_limit(self, exch: Exchange) -> bool:
        """A chunked body passed its URL's maxAllowedContentLength (counted by the
        exchange): refused (413.1); True."""
        return request_filtering.body_over_limit(exch.conn, exch)

    def throttle_delay(self, site_id: int, n: int) -> float:
        """Account ``n`` response bytes to the site's and the server's bandwidth; how long
        to wait before letting more through (0: no wait)."""
        now = time.monotonic()
        delay = 0.0
        for key in (site_id, 0):
            bucket = self.throttles.get(key)
            if bucket is not None:
                rate, free = bucket
                free = max(free, now - 1.0)  # at most one second of unused budget is saved
                free += n / rate
                bucket[1] = free
                delay = max(delay, free - now)
        return delay

    def _join_site(self, conn: HttpConnection, site_id: int) -> bool:
        """Count ``conn`` against its site's maxConnections (from its first request to a
        site on); False if the site has no room (503, HTTPERR ConnLimit)."""
        counts = self.site_connections
        limit = self.site_max_connections.get(site_id)
        if limit is not None and counts.get(site_id, 0) >= limit:
            return False
        if conn.site_id is not None:
            counts[conn.site_id] -= 1
        counts[site_id] = counts.get(site_id, 0) + 1
        conn.site_id = site_id
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        if conn.site_id is not None:
            self.site_connections[conn.site_id] -= 1
            conn.site_id = None

    def _not_cached(self, conn: HttpConnection, exch: Exchange) -> None:
        """RFC 9111 §5.2.1.7: ``only-if-cached`` and nothing usable stored: 504, from the
        cache, without asking the application (not an HTTPERR case: nothing failed)."""
        exch.status = 504
        exch.cache_hit = True
        exch.response_started = True
        data = error_response(504, max(exch.http_minor, 0), exch.method == "HEAD", not exch.keep_alive,
                              "The request asked for a cached response only (only-if-cached) and none is stored.")
        exch.bytes_sent = len(data)
        conn.write(data)
        exch.finish()

    def serve_cached(self, conn: HttpConnection, exch: Exchange, entry: CacheEntry) -> bool:
        """Answer ``exch`` from ``entry``; False when the cache cannot (a precondition
        fails: the worker answers the 412, with its error page) and the request goes on
        to its pool."""
        headers = exch.headers
        conditional = not _CONDITIONALS.isdisjoint(headers)
        status = 200
        if conditional and entry.rfc is None:
            status = self.cache.precondition(entry, exch) or 200
            if status == 412:
                cache = self.cache
                cache.hits -= 1
                cache.misses += 1
                entry.hits -= 1
                return False
        exch.cache_hit = True
        exch.response_started = True
        if (exch.keep_alive and exch.http_minor == 1 and exch.method == "GET" and not entry.shared_age
                and not conditional):
            # the common hit: everything but the Date line was prepared when it was stored
            exch.status = 200
            data = b"".join((_STATUS_200, DATE.for_block(entry.tail), entry.tail))
            exch.bytes_sent = len(data)
            conn.write(data)
            raw = conn.memo_raw
            if raw is not None and not exch.body_length and not self.throttles and conn.pipeline \
                    and conn.pipeline[0] is exch and len(conn.pipeline) == 1:
                self._memoize(conn, raw, exch, entry)
            exch.finish()
            return True
        if entry.rfc is not None:  # (shared_age is set for these: never the common hit above)
            self._serve_stored(conn, exch, entry)
            return True
        minor = max(exch.http_minor, 0)
        exch.status = status
        parts = [status_line(status, minor), DATE.for_block(entry.block), entry.block]
        if entry.shared_age:
            parts.append(b"Age: %d\r\n" % int(time.monotonic() - entry.stored))
        self._send_entry(conn, exch, parts, entry, status == 200)
        return True

    # ---- the response cache's fast path ------------------------------------------
    #
    # HTTP.sys answers a kernel-cache hit before any user-mode code runs.  The closest
    # Poolhouse gets: a read that holds exactly one request whose bytes were answered from
    # the cache before is answered again without parsing, routing or looking up — the same
    # bytes mean the same method, URL, host and headers (so the same Vary variant and no
    # conditional), and the entry itself is re-checked (still stored, still fresh) along
    # with the site's state.  Anything else takes the normal path.

    def _memoize(self, conn: HttpConnection, raw: bytes, exch: Exchange, entry: CacheEntry) -> None:
        if raw[-4:] != b"\r\n\r\n" or raw.find(b"\r\n\r\n") != len(raw) - 4:
            return  # the read held more (or less) than this one bodiless request
        memo = self.memo
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[(conn.server, raw)] = (entry, exch.route, exch.method, exch.target, exch.headers, exch.host)

    def memo_hit(self, conn: HttpConnection, key: tuple[Any, bytes], hit: tuple[Any, ...]) -> bool:
        entry, route = hit[0], hit[1]
        cache = self.cache
        now = conn.last_activity
        if cache.lru.get(id(entry)) is not entry or (entry.expires and now >= entry.expires):
            del self.memo[key]  # the entry went (changed, flushed, evicted, expired)
            return False
        if conn.site_id != route.site_id or self.site_states.get(route.site_id, STARTED) != STARTED:
            return False  # a connection not yet counted in the site, or a stopped site
        entry.hits += 1
        cache.hits += 1
        cache.fast_hits += 1
        cache.lru.move_to_end(id(entry))
        exch = Exchange(conn, hit[2], hit[3], 1, hit[4], 0, True, False, hit[5], now)
        exch.route = route
        exch.started = exch.cache_hit = exch.response_started = exch.done = True
        exch.status = 200
        data = b"".join((_STATUS_200, DATE.for_block(entry.tail), entry.tail))
        exch.bytes_sent = len(data)
        conn.requests += 1
        conn.write(data)
        exch.finished_at = now
        self.request_done(conn, exch)
        return True

    def _serve_stored(self, conn: HttpConnection, exch: Exchange, entry: CacheEntry) -> None:
        """An upstream's stored response (RFC 9111 §4): its own status and header fields
        (the origin's ``Date`` included: a cache does not update it) and ``Age``."""
        assert entry.rfc is not None
        minor = max(exch.http_minor, 0)
        status = entry.status
        if status == 200 and self.cache.stored_not_modified(entry, exch.headers):
            status = 304
        exch.status = status
        age = entry.rfc.age(entry, time.monotonic())
        # the origin's Server header, if it sent one, rather than a second one (DateHeader)
        own_server = b"" if any(n == b"server" for n, _ in entry.rfc.lines) else _SERVER
        parts = [status_line(status, minor), own_server, entry.block, b"Age: %d\r\n" % min(int(age), 2147483648)]
        self._send_entry(conn, exch, parts, entry, status != 304 and status != 204 and not 100 <= status < 200)

    @staticmethod
    def _send_entry(conn: HttpConnection, exch: Exchange, parts: list[bytes], entry: CacheEntry,
                    has_body: bool) -> None:
        """The end of a response from the cache: ``parts`` (status line and header
        lines so far), then the framing, the body (not for HEAD), written."""
        if has_body:
            parts.append(b"Content-Length: %d\r\n" % len(entry.body))
        if not exch.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif exch.http_minor <= 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if has_body and exch.method == "GET":
            parts.append(entry.body)
        data = b"".join(parts)
        exch.bytes_sent = len(data)
        conn.write(data)
        exch.finish()

    def _resolve(self, key: tuple[tuple[str, int], bytes, bytes]) -> tuple[int | None, Route | None]:
        """Routing of one (local address, Host header, request target), remembered: the
        table answers the same way until the next ``configure``."""
        (ip, port), host, target = key
        path, _query = split_target(target)
        try:
            path = normalize(path)
        except BadPath:
            result: tuple[int | None, Route | None] = (-1, None)
        else:
            result = self.routing.route(ip, port, host.decode("latin-1"), path)
        cache = self.route_cache
        if len(cache) >= ROUTE_CACHE_SIZE:
            cache.clear()
        cache[key] = result
        return result

    def _unrouted(self, conn: HttpConnection, exch: Exchange, hit: tuple[int | None, Route | None]) -> None:
        if exch.http_minor < 0:
            conn.send_error(exch, 505, "Version_N/S")
        elif hit[0] == -1:
            conn.send_error(exch, 400, "URL")
        elif hit[0] is None:
            conn.send_error(exch, 400, "Hostname", "The request hostname is invalid.")
        else:
            conn.send_error(exch, 404, "N/A")

    def refuse(self, exch: Exchange, queue: PoolQueue, reason: str | None = None) -> None:
        if reason is None:
            reason = STOPPED_REASONS.get(queue.state, "Disabled")
        if queue.load_balancer_capabilities == "TcpLevel" and reason in ("AppOffline", "QueueFull"):
            self.log_error(reason, exch.conn, exch, None)
            exch.done = True
            exch.conn.abort()
            return
        exch.conn.send_error(exch, 503, reason)

    def request_done(self, conn: HttpConnection, exch: Exchange) -> None:
        self.counters["requests"] += 1
        route = exch.route
        if route is not None:
            stats = self._site_counters(route.site_id)
            stats.requests += 1
            stats.bytes_sent += exch.bytes_sent
            stats.bytes_received += exch.body_received
            if not exch.from_listener and route.site_id in self.w3c_sites:
                self.w3c_pending.append((time.time(), exch))
        if exch.httperr_reason:  # a worker's error the listener logs as its own (proxy 502/504)
            self.log_error(exch.httperr_reason, conn, exch, exch.status)

    def log_error(self, reason: str, conn: HttpConnection, exch: Exchange | None, status: int | None = None) -> None:
        route = exch.route if exch is not None else None
        self.httperr.write(
            reason,
            client=conn.client,
            server=conn.server,
            # HTTP.sys logs a version it does not speak as HTTP/?.?
            version=("" if exch is None else f"HTTP/1.{exch.http_minor}" if exch.http_minor >= 0 else "HTTP/?.?"),
            method=exch.method if exch is not None else "",
            uri=exch.target if exch is not None else "",
            status=status,
            site_id=route.site_id if route is not None else None,
            queue=route.pool if route is not None else "",
        )
        if route is not None:
            stats = self._site_counters(route.site_id)
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1

    def _site_counters(self, site_id: int) -> "SiteCounters":
        stats = self.site_stats.get(site_id)
        if stats is None:
            stats = self.site_stats[site_id] = SiteCounters()
        return stats

    # ---- housekeeping -------------------------------------------------------------

    def _tick(self) -> None:
        """Once a second: flush the logs and expire idle, slow and long-queued work."""
        try:
            now = time.monotonic()
            limits = self.config.web_limits
            header_wait = limits.header_wait_timeout or DEFAULT_HEADER_WAIT
            min_rate = limits.min_bytes_per_second
            site_timeouts = self.site_timeouts
            for conn in list(self.connections):
                # a connection known to a site has the site's connectionTimeout
                idle = site_timeouts.get(conn.site_id, limits.connection_timeout)
                age = now - conn.last_activity
                if conn.pipeline:
                    exch = conn.parsing
                    if exch is not None and not exch.body_done and not exch.tunnel:
                        if conn.read_paused_by or (exch.expect_continue and not exch.continued):
                            conn.body_mark = None  # we hold the body back, or owe 100 Continue
                        elif age > idle:
                            # HTTP.sys's EntityBody timer: a body the client stopped sending
                            self._drop_body(conn, exch, "Timer_EntityBody")
                            continue
                        elif min_rate and self._body_too_slow(conn, exch, now, min_rate):
                            self._drop_body(conn, exch, "Timer_MinBytesPerSecond")
                            continue
                    if min_rate and self._too_slow(conn, now, min_rate):
                        self.log_error("Timer_MinBytesPerSecond", conn, conn.pipeline[0])
                        for exch in conn.pipeline:
                            exch.cancel()
                        conn.abort()
                    continue
                conn.drain_mark = None
                if age > idle:
                    self.log_error("Timer_ConnectionIdle", conn, None)
                    conn.close()
                elif conn.parser_busy and now - conn.parser_busy > header_wait:
                    self.log_error("Timer_HeaderWait", conn, None)
                    conn.close()
            self._expire_queued(now)
            self._rates(now)
            if self.request_timeouts:
                self._expire_requests(now)
            self.httperr.flush()
            self.flush_access_log()
            self.tls.refresh()  # certificate files replaced on disk: new connections get them
        except Exception:
            log.exception("listener housekeeping failed")
        if not self.stopped.is_set():
            self.loop.call_later(1.0, self._tick)

    def _rates(self, now: float) -> None:
        """Requests per second over the last tick, per site and in all."""
        elapsed = now - self.rate_mark
        if elapsed <= 0:
            return
        self.rate_mark = now
        total = self.counters["requests"]
        self.requests_per_second = round((total - self.rate_total) / elapsed, 1)
        self.rate_total = total
        for stats in self.site_stats.values():
            stats.requests_per_second = round((stats.requests - stats.rate_mark) / elapsed, 1)
            stats.rate_mark = stats.requests

    def _drop_body(self, conn: HttpConnection, exch: Exchange, reason: str) -> None:
        """A request body that stopped arriving, or arrives too slowly: the connection
        is closed (HTTP.sys sends nothing) and its requests are cancelled."""
        self.log_error(reason, conn, exch)
        for pending in list(conn.pipeline):
            pending.cancel()
        conn.abort()

    @staticmethod
    def _body_too_slow(conn: HttpConnection, exch: Exchange, now: float, min_rate: int) -> bool:
        """minBytesPerSecond applied to a request body while the client is the one to
        send (HTTP.sys applies it to responses only; Kestrel's MinRequestBodyDataRate has
        the same 240 bytes/s default): judged over MIN_RATE_WINDOW seconds, so one slow
        moment is forgiven, and never while the listener itself holds the body back."""
        mark = conn.body_mark
        if mark is None or mark[2] is not exch:
            conn.body_mark = (now, exch.body_received, exch)
            return False
        elapsed = now - mark[0]
        if elapsed < MIN_RATE_WINDOW:
            return False
        if (exch.body_received - mark[1]) / elapsed < min_rate:
            return True
        conn.body_mark = (now, exch.body_received, exch)
        return False

    def _too_slow(self, conn: HttpConnection, now: float, min_rate: int) -> bool:
        """HTTP.sys's MinBytesPerSecond: while a response waits in the send buffer, the
        client must take at least ``min_rate`` bytes a second (judged over a window of
        MIN_RATE_WINDOW seconds, so one slow moment is forgiven)."""
        try:
            pending = conn.transport.get_write_buffer_size()
        except Exception:
            return False
        if not pending:
            conn.drain_mark = None
            return False
        drained = conn.bytes_written - pending
        mark = conn.drain_mark
        if mark is None:
            conn.drain_mark = (now, drained)
            return False
        elapsed = now - mark[0]
        if elapsed < MIN_RATE_WINDOW:
            return False
        if (drained - mark[1]) / elapsed < min_rate:
            return True
        conn.drain_mark = (now, drained)
        return False

    def _expire_queued(self, now: float) -> None:
        """Timer_AppPool: a request that waited in its pool's queue longer than
        connectionTimeout is dropped (the connection closed, as HTTP.sys does)."""
        limit = self.config.web_limits.connection_timeout
        for queue in self.pools.values():
            waiting = queue.waiting
            while waiting and now - waiting[0].queued_at > limit:
                exch = waiting.popleft()
                queue.rejected["Timer_AppPool"] = queue.rejected.get("Timer_AppPool", 0) + 1
                self.log_error("Timer_AppPool", exch.conn, exch)
                exch.done = True
                exch.conn.abort()

    def flush_access_log(self) -> None:
        if self.w3c_pending:
            pending, self.w3c_pending = self.w3c_pending, []
            self.w3c.submit(pending)

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "connections": len(self.connections),
            "requests": self.counters["requests"],
            "requests_per_second": self.requests_per_second,
            "headers_dropped": self.counters.get("headers_dropped", 0),  # names with "_"
            "pools": {
                name: {
                    "state": q.state,
                    "requests": q.requests,
                    "queue_length": len(q.waiting),
                    "in_flight": q.in_flight,
                    "workers": len(q.workers),
                    "rejected": dict(q.rejected),
                }
                for name, q in self.pools.items()
            },
            "workers": {
                wid: {
                    "pid": link.pid,
                    "pool": link.pool.name,
                    "requests": link.requests,
                    "in_flight": len(link.streams),
                    "credits": link.credits,
                    "ready": link.ready,
                    "draining": link.draining,
                }
                for wid, link in self.workers.items()
            },
            "cache": self.cache.stats(),
            "sites": {
                str(k): {"connections": self.site_connections.get(k, 0), "requests": v.requests,
                         "requests_per_second": v.requests_per_second, "bytes_sent": v.bytes_sent,
                         "bytes_received": v.bytes_received, "rejected": dict(v.rejected)}
                for k, v in self.site_stats.items()
            },
        }

    async def shutdown(self) -> None:
        for server in self.servers.values():
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for link in list(self.workers.values()):
            link.close()
        self.httperr.flush()
        self.flush_access_log()
        await self.loop.run_in_executor(None, self.w3c.close)


def _sections_at(resolver: Any) -> Any:
    """url path -> the sections in effect there (for the response cache's per-path
    settings; raises ConfigError for a broken web.config)."""
    def sections(url: str) -> dict[str, Any]:
        return resolver.for_path(url).sections  # type: ignore[no-any-return]
    return sections
