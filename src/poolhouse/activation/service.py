"""The activation service (WAS): reads the configuration, owns the listening sockets,
starts and supervises the listener, starts workers on demand, notices their deaths,
replaces and recycles them, and serves the management API.

Signal handlers only enqueue; the service's loop does the work (SIGTERM: drain and stop,
SIGHUP: reload the configuration).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from ..config import ConfigError, load_server_config
from ..config.server import web_fingerprints
from ..config.model import ServerConfig
from ..ipc import exit_codes
from ..ipc.control import ControlProtocol, Message, fd_pair, open_control, send_fd
from ..listener.routing import RoutingTable
from .config_watch import ConfigWatch
from .events import RAPID_FAIL as RAPID_FAIL_EVENT
from .events import RECYCLE_ADMIN, RECYCLE_CONFIG, STARTUP_TIMEOUT, WORKER_CRASHED, EventLog
from .management import ManagementServer
from .pools import RAPID_FAIL, STARTED, STOPPED, PoolRuntime
from .sockets import open_listening_socket
from .workers import DEAD, DRAINING, READY, WorkerHandle

log = logging.getLogger("poolhouse.activation")

LISTENER_RESTART_DELAY = 0.5


class ActivationService:
    def __init__(self, config_path: str | None, state_dir: str, log_level: str = "INFO") -> None:
        self.config_path = config_path
        self.state_dir = os.path.abspath(state_dir)
        self.log_level = log_level
        self.loop = asyncio.get_running_loop()
        for sub in ("config", "logs", "run", "temp"):
            os.makedirs(os.path.join(self.state_dir, sub), exist_ok=True)
        self.events = EventLog(os.path.join(self.state_dir, "logs"))
        self.config = ServerConfig()
        self.pools: dict[str, PoolRuntime] = {}
        self.site_states: dict[int, str] = {}
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.listener_proc: asyncio.subprocess.Process | None = None
        self.listener_control: ControlProtocol | None = None
        self.fd_channel: socket.socket | None = None
        self.listener_ready = asyncio.Event()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.management: ManagementServer | None = None
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        self.started_at = time.time()
        self.listener_started = 0.0
        self.listener_restarts = 0

    # ---- start-up -----------------------------------------------------------------

    async def start(self) -> None:
        config = load_server_config(self.config_path)  # ConfigError stops start-up
        for warning in config.warnings:
            log.warning("%s", warning)
        self.apply_sockets(config)
        self.config = config
        for name, pool in config.pools.items():
            self.pools[name] = PoolRuntime(pool, self.events)
        self.site_states = {s.id: STARTED if s.server_auto_start else STOPPED for s in config.sites}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        await self.start_listener()
        self.management = ManagementServer(self, os.path.join(self.state_dir, "run", "control.sock"))
        await self.management.start()
        self.config_watch = ConfigWatch(self)  # applicationHost.config changes -> reload()
        self.config_watch.start()
        self.loop.create_task(self._signal_loop())
        self.loop.create_task(self._health_loop())
        for pool in self.pools.values():
            if pool.state == STARTED and pool.config.start_mode == "AlwaysRunning":
                self.loop.create_task(self.spawn_worker(pool))
        self.events.emit("service_started", pid=os.getpid(), config=self.config_path or "<embedded>",
                         endpoints=[f"{ip}:{port}" for ip, port in self.sockets])

    def apply_sockets(self, config: ServerConfig) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """Open the sockets the configuration's bindings need, close the ones it no
        longer does; returns (added, removed).  Raises OSError (with nothing changed)
        if one cannot be opened."""
        wanted = RoutingTable(config).listen_addresses()
        opened: dict[tuple[str, int], socket.socket] = {}
        try:
            for key in wanted:
                if key not in self.sockets:
                    opened[key] = open_listening_socket(*key)
        except OSError:
            for sock in opened.values():
                sock.close()
            raise
        removed = [key for key in self.sockets if key not in wanted]
        for key in removed:
            self.sockets.pop(key).close()
        self.sockets.update(opened)
        return list(opened), removed

    def socket_protocol(self, port: int) -> str:
        """"https" if the port's bindings are https (the listener wraps it in TLS)."""
        return "https" if any(b.protocol == "https" and b.port == port
                              for site in self.config.sites for b in site.bindings) else "http"

    async def start_listener(self) -> None:
        control_ours, control_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd_ours, fd_theirs = fd_pair()
        specs = [{"fd": s.fileno(), "ip": ip, "port": port, "protocol": self.socket_protocol(port)}
                 for (ip, port), s in self.sockets.items()]
        self.listener_ready.clear()
        self.listener_started = time.monotonic()
        try:
            self.listener_proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "poolhouse.listener",
                "--control-fd", str(control_theirs.fileno()),
                "--fd-channel", str(fd_theirs.fileno()),
                "--state-dir", self.state_dir,
                "--sockets", json.dumps(specs),
                "--log-level", self.log_level,
                pass_fds=[control_theirs.fileno(), fd_theirs.fileno(), *(s.fileno() for s in self.sockets.values())],
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            control_theirs.close()
            fd_theirs.close()
        fd_ours.settimeout(5.0)
        if self.fd_channel is not None:
            self.fd_channel.close()
        self.fd_channel = fd_ours
        self.listener_control = await open_control(control_ours, self.on_listener_message, self._listener_lost)
        self.program_listener()
        self.loop.create_task(self._watch_listener(self.listener_proc))
        try:
            await asyncio.wait_for(self.listener_ready.wait(), 30)
        except asyncio.TimeoutError:
            log.error("the listener did not report ready within 30 s")

    def program_listener(self) -> None:
        if self.listener_control is None:
            return
        self.listener_control.send({
            "op": "configure",
            "config": self.config.to_dict(),
            "pool_states": {name: p.state for name, p in self.pools.items()},
            "site_states": {str(k): v for k, v in self.site_states.items()},
        })

    async def _watch_listener(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.stopping:
            return
        self.events.emit("listener_exited", logging.ERROR, pid=proc.pid, reason=exit_codes.describe(code))
        # Workers lose their queue with the listener and exit; start a new listener on
        # the same sockets (their backlog kept every waiting connection).  A listener
        # that keeps dying young is restarted ever more slowly.
        lived = time.monotonic() - self.listener_started
        self.listener_restarts = self.listener_restarts + 1 if lived < 10 else 0
        await asyncio.sleep(min(30.0, LISTENER_RESTART_DELAY * (2 ** min(self.listener_restarts, 6))))
        if not self.stopping:
            for pool in self.pools.values():
                pool.demand = False
            await self.start_listener()

    def _listener_lost(self, exc: Exception | None) -> None:
        if self.listener_proc is not None and self.listener_proc.returncode is None and not self.stopping:
            try:
                self.listener_proc.kill()
            except ProcessLookupError:
                pass

    # ---- the listener's requests --------------------------------------------------

    def on_listener_message(self, msg: Message) -> None:
        op = msg["op"]
        if op == "listener_ready":
            self.listener_ready.set()
            self.events.emit("listener_ready", pid=msg.get("pid"))
        elif op == "need_worker":
            pool = self.pools.get(msg["pool"])
            if pool is not None:
                self.on_demand(pool)
        elif op == "worker_gone":
            pass  # the process exit tells us why
        else:
            log.warning("unknown op %r from the listener", op)

    def on_demand(self, pool: PoolRuntime) -> None:
        if pool.state != STARTED or self.stopping:
            self.demand_done(pool, False)
            return
        pool.demand = True
        if pool.spawning:
            return  # its readiness will answer
        if len(pool.live_workers) < max(1, pool.config.max_processes):
            self.loop.create_task(self.spawn_worker(pool))
        else:
            self.demand_done(pool, True)

    def demand_done(self, pool: PoolRuntime, at_capacity: bool) -> None:
        pool.demand = False
        pool.answered_at_capacity = at_capacity
        if self.listener_control is not None:
            self.listener_control.send({"op": "demand_done", "pool": pool.name, "at_capacity": at_capacity})

    # ---- workers ------------------------------------------------------------------

    def worker_env(self, pool: PoolRuntime) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["APP_POOL_ID"] = pool.name
        env["POOLHOUSE_STATE_DIR"] = self.state_dir
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    async def spawn_worker(self, pool: PoolRuntime) -> WorkerHandle | None:
        if pool.state != STARTED or self.stopping or self.fd_channel is None:
            return None
        pool.spawning += 1
        try:
            delay = pool.respawn_delay()
            if delay:
                await asyncio.sleep(delay)
                if pool.state != STARTED or self.stopping:
                    return None
            worker = WorkerHandle(pool.config, self.on_worker_exit, self.on_worker_message)
            pool.workers.append(worker)
            init = {"op": "init", "config": self.config.to_dict()}
            try:
                await worker.spawn(self.fd_channel, init, self.worker_env(pool), self.log_level)
            except OSError as exc:
                self.events.emit("worker_spawn_failed", logging.ERROR, apppool=pool.name, reason=str(exc))
                pool.workers.remove(worker)
                self.demand_done(pool, False)
                return None
            self.events.emit("worker_started", apppool=pool.name, worker=worker.id, pid=worker.pid)
            try:
                await asyncio.wait_for(asyncio.shield(worker.ready), pool.config.startup_time_limit)
            except asyncio.TimeoutError:
                self.events.emit("worker_startup_timeout", logging.ERROR, STARTUP_TIMEOUT, apppool=pool.name,
                                 worker=worker.id, pid=worker.pid, limit=pool.config.startup_time_limit)
                worker.kill()
                return None
            except ChildProcessError:
                return None  # on_worker_exit has dealt with it
            pool.consecutive_failures = 0
            return worker
        finally:
            pool.spawning -= 1
            self.loop.call_soon(self._maybe_respawn, pool)

    def _maybe_respawn(self, pool: PoolRuntime) -> None:
        """Requests are waiting and nothing is starting: start a worker (again)."""
        if (pool.demand and not pool.spawning and pool.state == STARTED and not self.stopping
                and self.pools.get(pool.name) is pool
                and len(pool.live_workers) < max(1, pool.config.max_processes)):
            self.loop.create_task(self.spawn_worker(pool))

    def on_worker_message(self, worker: WorkerHandle, msg: Message) -> None:
        if msg["op"] == "ready":
            self.events.emit("worker_ready", apppool=worker.pool_name, worker=worker.id, pid=worker.pid,
                             startup_seconds=round(worker.ready_at - worker.started_at, 3))
            pool = self.pools.get(worker.pool_name)
            if pool is not None and worker.state == READY:
                at_capacity = len(pool.live_workers) >= max(1, pool.config.max_processes)
                self.demand_done(pool, at_capacity)
                self._retire_replaced(pool, worker)

    def _retire_replaced(self, pool: PoolRuntime, new: WorkerHandle) -> None:
        """Overlapped recycling: once the replacement is ready, the old one drains."""
        for old in pool.workers:
            if old is not new and old.recycle_reason and old.state == READY:
                old.drain(pool.config.shutdown_time_limit)
                return

    def on_worker_exit(self, worker: WorkerHandle, code: int) -> None:
        pool = self.pools.get(worker.pool_name)
        reason = exit_codes.describe(code)
        clean = code in exit_codes.CLEAN
        if worker in (pool.workers if pool else []):
            pool.workers.remove(worker)  # type: ignore[union-attr]
        self.events.emit("worker_exited", logging.INFO if clean else logging.ERROR,
                         None if clean else WORKER_CRASHED, apppool=worker.pool_name,
                         worker=worker.id, pid=worker.pid, exit_code=code, reason=reason)
        if pool is None or self.stopping:
            return
        if not clean and worker.state != DRAINING and code != exit_codes.QUEUE_LOST:
            if pool.record_crash() and pool.state == STARTED:
                pool.set_state(RAPID_FAIL, f"{len(pool.crashes)} failures within "
                               f"{pool.config.rapid_fail_protection_interval:.0f} s", RAPID_FAIL_EVENT)
                self.send_pool_state(pool)
                self.demand_done(pool, False)
                for other in list(pool.workers):
                    other.drain(pool.config.shutdown_time_limit)
                return
        if pool.state != STARTED:
            return
        if pool.demand:
            self.loop.call_soon(self._maybe_respawn, pool)
        elif pool.answered_at_capacity:
            self.demand_done(pool, False)  # the listener may ask again
        if pool.config.start_mode == "AlwaysRunning" and not pool.live_workers and not pool.spawning:
            self.loop.create_task(self.spawn_worker(pool))

    def send_pool_state(self, pool: PoolRuntime) -> None:
        if self.listener_control is not None:
            self.listener_control.send({"op": "pool_state", "pool": pool.name, "state": pool.state})

    # ---- administration -----------------------------------------------------------

    async def recycle_pool(self, pool: PoolRuntime, reason: str, event_id: int = RECYCLE_ADMIN) -> int:
        """Overlapped recycle: start a replacement for each ready worker, which retire as
        the replacements become ready (or stop-then-start with disallowOverlappingRotation)."""
        targets = [w for w in pool.workers if w.state == READY]
        for w in targets:
            w.recycle_reason = reason
            self.events.emit("worker_recycle", apppool=pool.name, worker=w.id, pid=w.pid, reason=reason,
                             event_id=event_id)
        if pool.state != STARTED:
            return 0
        if pool.config.disallow_overlapping_rotation:
            for w in targets:
                w.drain(pool.config.shutdown_time_limit)
            for _ in targets:
                self.loop.create_task(self.spawn_worker(pool))
            return len(targets)
        for _ in targets:
            self.loop.create_task(self.spawn_worker(pool))
        return len(targets)

    def start_pool(self, pool: PoolRuntime) -> None:
        if pool.state in (STARTED,):
            return
        pool.crashes.clear()
        pool.consecutive_failures = 0
        pool.set_state(STARTED, "administrator")
        self.send_pool_state(pool)
        if pool.config.start_mode == "AlwaysRunning":
            self.loop.create_task(self.spawn_worker(pool))

    def stop_pool(self, pool: PoolRuntime) -> None:
        if pool.state == STOPPED:
            return
        pool.set_state(STOPPED, "administrator")
        self.send_pool_state(pool)
        for w in list(pool.workers):
            w.drain(pool.config.shutdown_time_limit)

    def set_site_state(self, site_id: int, state: str) -> None:
        self.site_states[site_id] = state
        self.events.emit("site_state", site_id=site_id, state=state)
        if self.listener_control is not None:
            self.listener_control.send({"op": "site_state", "site_id": site_id, "state": state})

    async def reload(self) -> None:
        """Re-read the configuration (SIGHUP, the watcher, ``poolhouse reload``): one
        reload at a time, so a change arriving during one is applied after it."""
        lock = self.__dict__.setdefault("_reload_lock", asyncio.Lock())
        async with lock:
            await self._reload()

    async def _reload(self) -> None:
        """Build and validate the whole new configuration, then swap it in.  Pools that
        gain applications get workers with the new configuration before the listener's
        routing moves, so no request reaches a worker that does not host its
        application; then the listener is reprogrammed (new bindings serve, removed ones
        stop, queued requests stay queued) and the other pools whose effective
        configuration changed are recycled with overlap.  A refused file changes
        nothing: the running configuration keeps serving."""
        try:
            config = load_server_config(self.config_path)
            added, removed = self.apply_sockets(config)
        except (ConfigError, OSError) as exc:
            self.events.emit("config_refused", logging.ERROR, reason=str(exc))
            self.config_watch.refused(exc)
            return
        old = self.config
        self.config = config
        recycle: dict[str, PoolRuntime] = {}  # pools to recycle after the routing moved
        for name, pool_cfg in config.pools.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = PoolRuntime(pool_cfg, self.events)
            elif pool.config != pool_cfg:
                pool.config = pool_cfg
                if not pool_cfg.disallow_rotation_on_config_change:
                    recycle[name] = pool
        for name in list(self.pools):
            if name not in config.pools:
                pool = self.pools.pop(name)
                for w in list(pool.workers):
                    w.drain(pool.config.shutdown_time_limit)
        for site in config.sites:
            self.site_states.setdefault(site.id, STARTED if site.server_auto_start else STOPPED)
        # workers load their applications, and merge the server-level system.webServer
        # configuration, when they start: pools whose applications changed must recycle,
        # and (unless disallowRotationOnConfigChange) pools whose sites' server-level
        # web configuration changed
        gaining: list[PoolRuntime] = []
        before, after = web_fingerprints(old) if old.config_text else {}, web_fingerprints(config)
        for pool in self.pools.values():
            old_apps, new_apps = _pool_apps(old, pool.name), _pool_apps(config, pool.name)
            if old_apps != new_apps:
                if any(a not in old_apps for a in new_apps):
                    gaining.append(pool)
                recycle[pool.name] = pool
            elif not pool.config.disallow_rotation_on_config_change and any(
                    before.get(s.name.lower()) != after.get(s.name.lower())
                    for s in config.sites if any(a.pool == pool.name for a in s.applications)):
                recycle[pool.name] = pool
        for pool in gaining:
            await self.recycle_pool(pool, "configuration change", RECYCLE_CONFIG)
        deadline = time.monotonic() + max([p.config.startup_time_limit for p in gaining] or [0.0])
        while time.monotonic() < deadline and not self.stopping and any(
                w.recycle_reason and w.state == READY for p in gaining for w in p.workers):
            await asyncio.sleep(0.05)
        self.program_listener()
        # the running listener takes new sockets over the descriptor channel
        if self.listener_control is not None and self.fd_channel is not None:
            for ip, port in removed:
                self.listener_control.send({"op": "unlisten", "ip": ip, "port": port})
            for ip, port in added:
                send_fd(self.fd_channel, {"op": "listen", "ip": ip, "port": port,
                                          "protocol": self.socket_protocol(port)},
                        self.sockets[(ip, port)].fileno())
        for name, pool in recycle.items():
            if self.pools.get(name) is pool and pool not in gaining:
                await self.recycle_pool(pool, "configuration change", RECYCLE_CONFIG)
        self.events.emit("config_applied", config=self.config_path or "<embedded>",
                         listening_added=[f"{ip}:{port}" for ip, port in added],
                         listening_removed=[f"{ip}:{port}" for ip, port in removed],
                         recycled=sorted(recycle))
        self.config_watch.accepted(old, config)

    # ---- loops --------------------------------------------------------------------

    async def _signal_loop(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.create_task(self.stop())
                return
            if sig == signal.SIGHUP:
                await self.reload()

    async def _health_loop(self) -> None:
        """Ping every ready worker each pingInterval; one that does not answer within
        pingResponseTime is killed (and replaced on demand)."""
        last_ping: dict[str, float] = {}
        while not self.stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for pool in self.pools.values():
                cfg = pool.config
                if not cfg.ping_enabled:
                    continue
                for w in pool.ready_workers:
                    if now - last_ping.get(w.id, w.ready_at and now) < cfg.ping_interval:
                        continue
                    last_ping[w.id] = now
                    self.loop.create_task(self._ping(pool, w))

    async def _ping(self, pool: PoolRuntime, worker: WorkerHandle) -> None:
        if await worker.ping(pool.config.ping_response_time):
            return
        if worker.state == READY:
            from .events import PING_FAILED

            self.events.emit("worker_ping_failed", logging.ERROR, PING_FAILED, apppool=pool.name,
                             worker=worker.id, pid=worker.pid)
            worker.terminate(grace=1.0)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.events.emit("service_stopping")
        if getattr(self, "config_watch", None) is not None:
            await self.config_watch.stop()
        limit = max([p.config.shutdown_time_limit for p in self.pools.values()] or [90.0])
        for pool in self.pools.values():
            if not pool.ready_workers and self.listener_control is not None:
                # nothing will serve what waits in this pool's queue: refuse it now
                self.listener_control.send({"op": "pool_state", "pool": pool.name, "state": STOPPED})
        if self.listener_control is not None and not self.listener_control.closed:
            try:
                await asyncio.wait_for(self.listener_control.request({"op": "drain", "timeout": limit}), limit + 5)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        workers = [w for p in self.pools.values() for w in p.workers if w.state != DEAD]
        for w in workers:
            w.drain(w.pool.shutdown_time_limit)
        deadline = time.monotonic() + limit + 2
        while any(w.state != DEAD for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.listener_control is not None:
            self.listener_control.send({"op": "exit"})
        if self.listener_proc is not None:
            try:
                await asyncio.wait_for(self.listener_proc.wait(), 5)
            except asyncio.TimeoutError:
                self.listener_proc.kill()
                await self.listener_proc.wait()
        if self.management is not None:
            await self.management.stop()
        for sock in self.sockets.values():
            sock.close()
        self.events.emit("service_stopped")
        self.events.close()
        self.stopped.set()

    # ---- views for the management API ----------------------------------------------

    async def list_workers(self) -> list[dict[str, Any]]:
        stats: dict[str, Any] = {}
        if self.listener_control is not None and not self.listener_control.closed:
            try:
                reply = await asyncio.wait_for(self.listener_control.request({"op": "stats"}), 2)
                stats = reply.get("result", {})
            except (asyncio.TimeoutError, ConnectionError):
                pass
        out = []
        for pool in self.pools.values():
            for w in pool.workers:
                d = w.describe()
                ws = stats.get("workers", {}).get(w.id, {})
                d["requests"] = ws.get("requests", 0)
                d["in_flight"] = ws.get("in_flight", 0)
                try:
                    import psutil

                    d["private_memory_kb"] = psutil.Process(w.pid).memory_full_info().uss // 1024 if w.pid else 0
                except Exception:
                    d["private_memory_kb"] = None
                out.append(d)
        return out

    async def listener_stats(self) -> dict[str, Any]:
        if self.listener_control is None or self.listener_control.closed:
            return {}
        try:
            reply = await asyncio.wait_for(self.listener_control.request({"op": "stats"}), 2)
            return dict(reply.get("result", {}))
        except (asyncio.TimeoutError, ConnectionError):
            return {}


def _pool_apps(config: ServerConfig, pool: str) -> list[Any]:
    return [(s.id, a) for s in config.sites for a in s.applications if a.pool == pool]


async def serve(config_path: str | None, state_dir: str, log_level: str = "INFO") -> int:
    service = ActivationService(config_path, state_dir, log_level)
    try:
        await service.start()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        print(f"poolhouse: configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    except OSError as exc:
        log.error("%s", exc)
        print(f"poolhouse: {exc}", file=sys.stderr)
        return 71  # EX_OSERR
    await service.stopped.wait()
    return 0
