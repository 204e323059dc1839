"""The activation service (WAS): reads the configuration, owns the listening sockets,
starts and supervises the listener, starts workers on demand, notices their deaths,
replaces and recycles them, and serves the management API.

Signal handlers only enqueue; the service's loop does the work (SIGTERM or SIGINT: drain
and stop, SIGHUP: reload the configuration).  The listener and the workers do not stop by
themselves on SIGTERM/SIGINT, which a service manager or a shell may send to the whole
process group: they are drained from here, in order.  A worker that reports such a
signal while the service got none was signalled alone, and is recycled.

Under systemd (``Type=notify``) the service reports READY/RELOADING/STOPPING, a STATUS
line and watchdog pings (``sd_notify``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
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
from .events import (
    ORPHAN_ACTION_FAILED, RECYCLE_ADMIN, RECYCLE_CONFIG, RECYCLE_REASONS, STARTUP_TIMEOUT, WORKER_CRASHED,
    EventLog,
)
from ..config.isolation import pool_view, users_files
from . import acl
from .grants import IUSRS, IUSRS_GID, Grants
from .identity import Identity, IdentityAllocator, IdentityError, lock_down_state_dir, prepare_pool_dirs
from .interpreter import InterpreterCheck, InterpreterError
from .limits import CgroupManager, memory_kb
from .management import ManagementServer
from .monitor import Monitor
from .pools import RAPID_FAIL, STARTED, STOPPED, PoolRuntime
from .sd_notify import Notifier
from .sockets import open_listening_socket
from .states import ORPHANED, SUSPENDED
from .workers import DEAD, DRAINING, INITIALIZING, READY, WorkerHandle

log = logging.getLogger("poolhouse.activation")

LISTENER_RESTART_DELAY = 0.5
# A worker's report of SIGTERM/SIGINT is acted on only if the service has not been told to
# stop within this time: a signal to the process group reaches every process at once,
# and the worker's report may arrive before the service's own signal is dispatched.
SIGNAL_GRACE = 2.0
# A worker that lost its queue while the listener lives (the listener closed it) is
# drained after this long unless a new listener's attach reached it meanwhile.
QUEUE_LOST_GRACE = 2.0
STATUS_INTERVAL = 10.0  # seconds between STATUS= updates to the service manager


# the service's environment variables that a worker inherits (see worker_env)
_WORKER_ENV = frozenset(("PATH", "LANG", "LANGUAGE", "TZ", "TZDIR", "SSL_CERT_FILE", "SSL_CERT_DIR"))
_WORKER_ENV_PREFIXES = ("LC_", "PYTHON")


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
        self._config_dict: tuple[ServerConfig, dict[str, Any]] | None = None
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
        self.listener_generation = 0  # counts the listeners started; workers know theirs
        self.listener_restarting = False  # from a listener's death to its workers' re-attach
        self.notifier = Notifier.from_environment()  # before any child inherits $NOTIFY_SOCKET
        self.identities = IdentityAllocator(self.state_dir)
        self.grants = Grants(self.state_dir)
        self._pool_views: dict[str, tuple[ServerConfig, dict[str, Any]]] = {}
        self.cgroups = CgroupManager()
        self.interpreters = InterpreterCheck()
        self._identity_warned: set[str] = set()
        self.monitor = Monitor(self)

    # ---- start-up -----------------------------------------------------------------

    async def start(self) -> None:
        config = load_server_config(self.config_path)  # ConfigError stops start-up
        for warning in config.warnings:
            log.warning("%s", warning)
        self.apply_sockets(config)
        self.config = config
        lock_down_state_dir(self.state_dir)
        self.open_runtime()
        self.check_config_mode()
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
        self.loop.create_task(self.monitor.run())
        for runtime in self.pools.values():
            if runtime.state == STARTED and runtime.config.start_mode == "AlwaysRunning":
                self.start_worker(runtime)
        self.events.emit("service_started", pid=os.getpid(), config=self.config_path or "<embedded>",
                         endpoints=[f"{ip}:{port}" for ip, port in self.sockets],
                         identities="per-pool users" if self.identities.is_root else
                         f"not root: every worker runs as uid {os.geteuid()}",
                         limits=self.cgroups.describe())
        if self.notifier.enabled:
            self.notifier.ready(self.status_line())
            self.loop.create_task(self._notify_loop())

    def status_line(self) -> str:
        """One line for ``systemctl status``: pools and workers."""
        started = sum(1 for p in self.pools.values() if p.state == STARTED)
        ready = sum(1 for p in self.pools.values() for w in p.workers if w.state == READY)
        others = sum(1 for p in self.pools.values() for w in p.workers if w.state not in (READY, DEAD))
        listener = (f"listener pid {self.listener_proc.pid}" if self.listener_proc is not None
                    and self.listener_proc.returncode is None else "listener restarting")
        return (f"{started}/{len(self.pools)} application pools started, {ready} worker(s) ready"
                + (f", {others} starting/draining" if others else "") + f", {listener}")

    async def _notify_loop(self) -> None:
        """WATCHDOG=1 every half WatchdogSec (from this loop: a service whose loop hangs
        stops pinging, and systemd restarts it), and STATUS= when it changed."""
        interval = min(self.notifier.watchdog or STATUS_INTERVAL, STATUS_INTERVAL)
        last_status = ""
        next_status = 0.0
        while not self.stopping:
            if self.notifier.watchdog:
                self.notifier.ping()
            now = time.monotonic()
            if now >= next_status:
                status = self.status_line()
                if status != last_status:
                    self.notifier.status(status)
                    last_status = status
                next_status = now + STATUS_INTERVAL
            await asyncio.sleep(interval)

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
        self.listener_generation += 1
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
        generation = self.listener_generation
        self.listener_control = await open_control(control_ours, self.on_listener_message,
                                                   lambda exc: self._listener_lost(exc, generation))
        self.program_listener()
        self.loop.create_task(self._watch_listener(self.listener_proc))
        try:
            await asyncio.wait_for(self.listener_ready.wait(), 30)
        except asyncio.TimeoutError:
            log.error("the listener did not report ready within 30 s")

    def config_dict(self) -> dict[str, Any]:
        """The configuration as the listener and every worker receive it, made once per
        configuration (with 1,000 sites it takes a fifth of a second, on the service's
        event loop, and a spawn needs it each time)."""
        cached = self._config_dict
        if cached is None or cached[0] is not self.config:
            cached = self._config_dict = (self.config, self.config.to_dict())
        return cached[1]

    def program_listener(self) -> None:
        if self.listener_control is None:
            return
        self.listener_control.send(self._configure_message())

    def _configure_message(self) -> dict[str, Any]:
        return {
            "op": "configure",
            "config": self.config_dict(),
            "pool_states": {name: p.state for name, p in self.pools.items()},
            "site_states": {str(k): v for k, v in self.site_states.items()},
        }

    async def reprogram_listener(self, recycling: list[str]) -> None:
        """``program_listener``, waiting until the listener has taken the configuration
        (and flushed its response cache with it), so that nothing reports a change
        applied while the cache could still answer by the old one.  ``recycling``: the
        pools whose current workers run the replaced configuration (the cache stores
        nothing they answer)."""
        control = self.listener_control
        if control is None or control.closed:
            return
        try:
            await asyncio.wait_for(control.request({**self._configure_message(), "recycling": recycling}), 30)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.error("the listener did not confirm the new configuration: %s", exc or "timed out")

    async def flush_cache_path(self, site_name: str, url: str) -> None:
        """Flush the listener's response cache at and below a configuration path (a
        web.config changed there), and wait until it is done."""
        site = self.config.site_by_name(site_name)
        control = self.listener_control
        if site is None or control is None or control.closed:
            return
        try:
            await asyncio.wait_for(control.request(
                {"op": "cache", "action": "flush", "site_id": site.id, "path": url}), 30)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.error("the listener did not confirm flushing %s%s from its cache: %s",
                      site_name, url, exc or "timed out")

    async def _watch_listener(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.stopping:
            return
        self.events.emit("listener_exited", logging.ERROR, pid=proc.pid, reason=exit_codes.describe(code))
        # The requests it held are lost with its connections.  Start a new listener on
        # the same sockets (their backlog kept every waiting connection) and re-attach the
        # running workers to it, warm.  A listener that keeps dying young is restarted
        # ever more slowly.
        self.listener_restarting = True
        try:
            lived = time.monotonic() - self.listener_started
            self.listener_restarts = self.listener_restarts + 1 if lived < 10 else 0
            await asyncio.sleep(min(30.0, LISTENER_RESTART_DELAY * (2 ** min(self.listener_restarts, 6))))
            if self.stopping:
                return
            for pool in self.pools.values():
                pool.demand = False
            await self.start_listener()
            await self.reattach_workers()
        finally:
            self.listener_restarting = False
        for pool in self.pools.values():
            # requests the new listener asked a worker for while the others were being
            # re-attached, and AlwaysRunning pools whose worker could not be kept
            if (pool.state == STARTED and pool.config.start_mode == "AlwaysRunning"
                    and not pool.live_workers and not pool.spawning):
                self.start_worker(pool)
            else:
                self._maybe_respawn(pool)

    async def reattach_workers(self) -> None:
        """Give every running worker a queue to the new listener (new socket pairs: the
        worker's ends over its descriptor channel, the listener's over the listener's),
        once the listener has taken its configuration.  A worker that cannot be reached
        is stopped; its pool starts another on demand."""
        control, channel = self.listener_control, self.fd_channel
        if control is None or channel is None or control.closed:
            return
        try:
            # answered after the "configure" sent before it: the pools' queues exist
            await asyncio.wait_for(control.request({"op": "stats"}), 30)
        except (asyncio.TimeoutError, ConnectionError):
            log.error("the new listener does not answer; its workers are not re-attached")
            return
        for pool in self.pools.values():
            for w in list(pool.workers):
                if w.state == SUSPENDED:
                    w.resume()  # the new listener has no record of the suspension
                if w.state not in (READY, INITIALIZING) or w.listener_generation == self.listener_generation:
                    continue
                if w.reattach(channel, self.listener_generation):
                    self.events.emit("worker_reattached", apppool=pool.name, worker=w.id, pid=w.pid,
                                     listener=self.listener_proc.pid if self.listener_proc else None)
                else:
                    w.drain(pool.config.shutdown_time_limit, "could not be re-attached to the new listener")

    def _listener_lost(self, exc: Exception | None, generation: int) -> None:
        if generation != self.listener_generation or self.stopping:
            return  # an older listener's channel, or the end of a stop
        # its channel closes as it dies: its workers' reports of a lost queue, which may
        # come before its exit is reaped, are about this death
        self.listener_restarting = True
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
        elif op == "replay_held":
            worker = next((w for p in self.pools.values() for w in p.workers if w.id == msg.get("worker_id")), None)
            if worker is not None:
                worker.replays_held = max(0, worker.replays_held + int(msg.get("change", 0)))
        elif op == "request_timeout":
            self.on_request_timeout(msg)
        else:
            log.warning("unknown op %r from the listener", op)

    def on_demand(self, pool: PoolRuntime) -> None:
        """The listener has requests for ``pool`` and no free credit: resume a suspended
        worker, or start one more (up to maxProcesses), or say the pool is at capacity."""
        if pool.state != STARTED or self.stopping:
            self.demand_done(pool, False)
            return
        suspended = [w for w in pool.workers if w.state == SUSPENDED]
        if suspended:
            for w in suspended:
                self.resume_worker(pool, w)
            return
        pool.demand = True
        if pool.spawning:
            return  # its readiness will answer
        wait = pool.cpu_blocked_until - time.monotonic()
        if wait > 0:  # cpu/@action="KillW3wp": the pool stays down until resetInterval ends
            self.loop.call_later(wait, self._maybe_respawn, pool)
            return
        if pool.slots_used < pool.max_processes:
            self.start_worker(pool)
        else:
            self.demand_done(pool, True)

    def demand_done(self, pool: PoolRuntime, at_capacity: bool) -> None:
        pool.demand = False
        pool.answered_at_capacity = at_capacity
        if self.listener_control is not None:
            self.listener_control.send({"op": "demand_done", "pool": pool.name, "at_capacity": at_capacity})

    # ---- workers ------------------------------------------------------------------

    def worker_env(self, pool: PoolRuntime, temp_dir: str, identity: Identity | None = None) -> dict[str, str]:
        """A worker's environment: what any process needs to run (``PATH``, the locale,
        the time zone, the interpreter's own ``PYTHON*`` settings, where the trusted
        certificates are), the pool's ``environmentVariables`` and ours — never the rest
        of the service's own environment (an administrator's shell, the unit's
        ``Environment=``: passwords, tokens, the sudo user), which a pool's code would
        read as its own.  IIS gives w3wp the machine's environment and the pool's
        variables, not WAS's process environment."""
        env = {k: v for k, v in os.environ.items() if k in _WORKER_ENV or k.startswith(_WORKER_ENV_PREFIXES)}
        env.update(pool.config.environment_variables)
        env["PYTHONUNBUFFERED"] = "1"
        env["APP_POOL_ID"] = pool.name
        env["POOLHOUSE_STATE_DIR"] = self.state_dir
        env["TMPDIR"] = temp_dir
        if identity is not None and identity.switch:
            env["HOME"] = temp_dir  # the service's home is not the pool user's
            env["PYTHONDONTWRITEBYTECODE"] = "1"  # the identity cannot write beside the sources
        elif "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]  # the same user: its home
        if pool.config.python_executable in ("", sys.executable):
            # our own interpreter: the package as this service runs it.  A pool with its
            # own Python has the worker runtime installed there; the folder holding our
            # package (site-packages, for an installed Poolhouse) must not shadow its
            # environment's packages.
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start_worker(self, pool: PoolRuntime, recycle: bool = False) -> None:
        """Start one worker of ``pool`` in the background.  It counts as starting (and
        against maxProcesses) from this moment, so two decisions in one loop turn (a
        worker's exit and the listener's demand) cannot both start one."""
        if pool.state != STARTED or self.stopping or self.fd_channel is None or self.listener_restarting:
            return  # (after a listener restart, AlwaysRunning pools and demand start them)
        pool.spawning += 1
        pool.pre_spawn += 1
        self.loop.create_task(self._start_worker(pool, recycle))

    async def _start_worker(self, pool: PoolRuntime, recycle: bool) -> None:
        worker = await self.spawn_worker(pool, recycle)
        if worker is None and recycle and pool.state == STARTED and not self.stopping:
            # IIS 5093: the overlapped recycle failed; the old worker keeps serving (and
            # can be recycled again by its next trigger)
            old = next((w for w in pool.workers if w.state == READY and w.recycle_reason), None)
            if old is not None:
                self.events.emit("worker_recycle_failed", logging.ERROR, 5093, apppool=pool.name, worker=old.id,
                                 pid=old.pid, reason=f"its replacement did not become ready ({old.recycle_reason} "
                                 "recycle abandoned; it keeps serving)")
                old.recycle_reason = ""

    async def spawn_worker(self, pool: PoolRuntime, recycle: bool = False) -> WorkerHandle | None:
        """The body of ``start_worker``; ``recycle``: the worker replaces a recycled one
        (its applications' initialization pages are requested before it takes traffic)."""
        counted = True  # still in pool.pre_spawn: no WorkerHandle yet
        try:
            if pool.state != STARTED or self.stopping or self.fd_channel is None:
                return None
            delay = pool.respawn_delay()
            if delay:
                await asyncio.sleep(delay)
                if pool.state != STARTED or self.stopping:
                    return None
            try:
                identity = self.worker_identity(pool)
                temp_dir = prepare_pool_dirs(self.state_dir, pool.name, identity)
            except (IdentityError, OSError) as exc:
                # IIS 5057: a pool whose identity is invalid is disabled at once
                self.events.emit("apppool_identity_invalid", logging.ERROR, 5057, apppool=pool.name, reason=str(exc))
                pool.set_state(RAPID_FAIL, f"identity invalid: {exc}", 5057)
                self.send_pool_state(pool)
                self.demand_done(pool, False)
                return None
            env = self.worker_env(pool, temp_dir, identity)
            try:
                folders = self.open_pool_content(pool, identity)
                await self.interpreters.check(pool.config.python_executable, env, identity, folders)
            except (InterpreterError, acl.AclError, OSError) as exc:
                # IIS 5059: the worker could not be started; as an invalid identity, no
                # worker can start until the administrator fixes it and starts the pool
                self.cannot_start(pool, identity, exc)
                return None
            try:
                init_config = self.pool_config(pool)
            except Exception as exc:  # ConfigError, or a bug: the pool must not hang on it
                # IIS 5189: the application pool's configuration could not be generated
                self.events.emit("apppool_config_failed", logging.ERROR, 5189, apppool=pool.name, reason=str(exc))
                pool.set_state(RAPID_FAIL, f"its configuration could not be generated: {exc}", 5189)
                self.send_pool_state(pool)
                self.demand_done(pool, False)
                return None
            if pool.state != STARTED or self.stopping:
                return None
            worker = WorkerHandle(pool.config, self.events, self.on_worker_exit, self.on_worker_message, identity)
            worker.listener_generation = self.listener_generation
            pool.workers.append(worker)
            pool.pre_spawn -= 1
            counted = False
            init = {"op": "init", "config": init_config, "recycle": recycle,
                    "recycle_after_requests": worker.recycle_after_requests}
            try:
                await worker.spawn(self.fd_channel, init, env, self.log_level)
            except Exception as exc:  # OSError, or a bad argument: the pool must not hang on it
                self.events.emit("worker_spawn_failed", logging.ERROR, apppool=pool.name, reason=str(exc))
                pool.workers.remove(worker)
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.kill()
                if isinstance(exc, PermissionError) and identity.switch:
                    # the identity lost access since it was checked: as the check would
                    # have said (5059), not a retry on every request
                    python = pool.config.python_executable or sys.executable
                    blocked = acl.blocking(python, identity.uid, identity.gids, acl.X)
                    self.cannot_start(pool, identity, InterpreterError(
                        f"{identity.name} (uid {identity.uid}) cannot start {python}: {exc}", blocked))
                    return None
                self.demand_done(pool, False)
                return None
            self.cgroups.place_worker(self.pool_cgroup(pool), pool.name, worker.pid, identity.uid, identity.gid)
            self.events.emit("worker_started", apppool=pool.name, worker=worker.id, pid=worker.pid,
                             user=identity.name, replaces_recycled=recycle)
            try:
                await asyncio.wait_for(asyncio.shield(worker.ready), pool.config.startup_time_limit)
            except asyncio.TimeoutError:
                # killed, and its exit counts as a failure for rapid-fail protection
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
            if counted:
                pool.pre_spawn -= 1
            self.loop.call_soon(self._maybe_respawn, pool)

    def _maybe_respawn(self, pool: PoolRuntime) -> None:
        """Requests are waiting and nothing is starting: start a worker (again)."""
        if (pool.demand and not pool.spawning and pool.state == STARTED and not self.stopping
                and self.pools.get(pool.name) is pool and pool.cpu_blocked_until <= time.monotonic()
                and pool.slots_used < pool.max_processes):
            self.start_worker(pool)

    def on_worker_message(self, worker: WorkerHandle, msg: Message) -> None:
        op = msg["op"]
        pool = self.pools.get(worker.pool_name)
        if op == "ready":
            self.events.emit("worker_ready", apppool=worker.pool_name, worker=worker.id, pid=worker.pid,
                             startup_seconds=round(worker.ready_at - worker.started_at, 3),
                             initialization_pages=msg.get("warmup", 0))
            if pool is not None and worker.state == READY:
                at_capacity = pool.slots_used >= pool.max_processes
                self.demand_done(pool, at_capacity)
                self._retire_replaced(pool, worker)
        elif op == "recycle_me" and pool is not None:
            if msg.get("reason") == "requests":
                self.recycle_worker(pool, worker, "requests", requests=msg.get("requests"))
        elif op == "signalled" and pool is not None:
            self.loop.call_later(SIGNAL_GRACE, self._worker_signalled, pool, worker, str(msg.get("signal"))[:16])
        elif op == "queue_lost" and pool is not None:
            self.loop.call_later(QUEUE_LOST_GRACE, self._worker_queue_lost, pool, worker,
                                 worker.listener_generation)

    def _worker_signalled(self, pool: PoolRuntime, worker: WorkerHandle, signame: str) -> None:
        """SIGTERM/SIGINT reached the worker and, SIGNAL_GRACE later, not the service: it
        was meant for that worker (an administrator's kill, an application asking to be
        restarted).  The worker is recycled (overlapped), or drained if it cannot be."""
        if self.stopping or worker.state not in (READY, INITIALIZING):
            return
        self.events.emit("worker_signalled", logging.WARNING, apppool=pool.name, worker=worker.id,
                         pid=worker.pid, signal=signame)
        if not (worker.state == READY and self.recycle_worker(pool, worker, "signal", signal=signame)):
            worker.drain(pool.config.shutdown_time_limit, f"{signame} to the worker")

    def _worker_queue_lost(self, pool: PoolRuntime, worker: WorkerHandle, generation: int) -> None:
        """The worker's queue closed.  With the listener dead, its replacement re-attaches
        the worker; otherwise the running listener closed it (the worker broke the queue
        protocol), and the worker is drained."""
        if (self.stopping or self.listener_restarting or worker.listener_generation != generation
                or generation != self.listener_generation or worker.state not in (READY, INITIALIZING)):
            return
        if self.listener_proc is None or self.listener_proc.returncode is not None:
            return  # its death is being handled: the restart re-attaches
        worker.drain(pool.config.shutdown_time_limit, "its queue connection was closed by the listener")

    def _retire_replaced(self, pool: PoolRuntime, new: WorkerHandle) -> None:
        """Overlapped recycling: once the replacement is ready (and warmed up), the old
        one stops taking requests and finishes the ones in flight."""
        for old in pool.workers:
            if old is not new and old.recycle_reason and old.state == READY:
                old.drain(pool.config.shutdown_time_limit, f"recycled ({old.recycle_reason}), "
                          f"replaced by {new.id}", RECYCLE_REASONS.get(old.recycle_reason, (None, ""))[0])
                return

    def on_worker_exit(self, worker: WorkerHandle, code: int) -> None:
        pool = self.pools.get(worker.pool_name)
        reason = exit_codes.describe(code)
        clean = code in exit_codes.CLEAN
        if worker in (pool.workers if pool else []):
            pool.workers.remove(worker)  # type: ignore[union-attr]
        self.cgroups.release_worker(worker.pid)
        self.events.emit("worker_exited", logging.INFO if clean else logging.ERROR,
                         None if clean else WORKER_CRASHED, apppool=worker.pool_name,
                         worker=worker.id, pid=worker.pid, exit_code=code, reason=reason)
        if pool is None or self.stopping:
            return
        # the state it died in: DRAINING and ORPHANED exits were decided here, not failures
        died_in = worker.state_before_death
        if not clean and died_in not in (DRAINING, ORPHANED) and code != exit_codes.QUEUE_LOST:
            if worker.replays_held:
                # it died holding a request replayed after killing another worker: that
                # request's failure was counted then, and one bad request counts once
                self.events.emit("worker_failure_not_counted", logging.WARNING, None, apppool=pool.name,
                                 worker=worker.id, pid=worker.pid,
                                 reason=f"died with {worker.replays_held} replayed request(s) in flight")
            elif self.count_failure(pool):
                return
        if pool.state != STARTED:
            return
        if pool.demand:
            self.loop.call_soon(self._maybe_respawn, pool)
        elif pool.answered_at_capacity:
            self.demand_done(pool, False)  # the listener may ask again
        if pool.config.start_mode == "AlwaysRunning" and not pool.live_workers and not pool.spawning:
            self.start_worker(pool)

    def count_failure(self, pool: PoolRuntime) -> bool:
        """A worker failure (crash, failed start, failed ping) for rapid-fail protection;
        True if the pool was stopped by it (event 5002)."""
        if pool.record_crash() and pool.state == STARTED:
            pool.set_state(RAPID_FAIL, f"{len(pool.crashes)} failures within "
                           f"{pool.config.rapid_fail_protection_interval:.0f} s", RAPID_FAIL_EVENT)
            self.send_pool_state(pool)
            self.demand_done(pool, False)
            for other in list(pool.workers):
                other.drain(pool.config.shutdown_time_limit, "application pool disabled by rapid-fail protection")
            return True
        return False

    def run_program(self, pool: PoolRuntime, command: tuple[str, str] | None, what: str, pid: int = 0) -> None:
        """orphanActionExe / autoShutdownExe with their parameters (``%1%`` = the pid)."""
        if command is None or not command[0]:
            return
        exe, params = command
        argv = [exe] + shlex.split(params.replace("%1%", str(pid)))

        async def run() -> None:
            try:
                proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
                code = await proc.wait()
                self.events.emit("program_run", apppool=pool.name, what=what, argv=argv, exit_code=code)
            except OSError as exc:
                self.events.emit("program_failed", logging.ERROR, ORPHAN_ACTION_FAILED if what.startswith("orphan")
                                 else None, apppool=pool.name, what=what, argv=argv, reason=str(exc))

        self.loop.create_task(run())

    def send_pool_state(self, pool: PoolRuntime) -> None:
        if self.listener_control is not None:
            self.listener_control.send({"op": "pool_state", "pool": pool.name, "state": pool.state})

    # ---- administration -----------------------------------------------------------

    async def recycle_pool(self, pool: PoolRuntime, reason: str, event_id: int = RECYCLE_ADMIN) -> int:
        """Recycle every ready worker of ``pool`` (administrator: 5079, configuration
        change: 5080); returns how many."""
        if pool.state != STARTED:
            return 0
        key = "configuration change" if event_id == RECYCLE_CONFIG else (
            reason if reason in RECYCLE_REASONS else "administrator")
        count = 0
        for w in list(pool.workers):
            if w.state == READY and self.recycle_worker(pool, w, key):
                count += 1
        return count

    def recycle_worker(self, pool: PoolRuntime, worker: WorkerHandle, reason: str, **details: Any) -> bool:
        """Recycle one worker for ``reason`` (a key of RECYCLE_REASONS).  Overlapped: a
        replacement is started, and the old worker drains once it is ready (and warmed
        up).  With disallowOverlappingRotation: the old worker drains first and the
        replacement starts when it has gone (requests wait in the queue meanwhile)."""
        if worker.state != READY or worker.recycle_reason or pool.state != STARTED or self.stopping:
            return False
        worker.recycle_reason = reason
        event_id, flag = RECYCLE_REASONS.get(reason, (None, ""))
        if flag and flag.lower() not in pool.config.log_event_on_recycle:
            # logEventOnRecycle leaves this reason out of the event log (the log line stays)
            log.info("worker_recycle apppool=%s worker=%s pid=%s reason=%s (not in logEventOnRecycle)",
                     pool.name, worker.id, worker.pid, reason)
        else:
            self.events.emit("worker_recycle", logging.INFO, event_id, apppool=pool.name, worker=worker.id,
                             pid=worker.pid, reason=reason,
                             overlapped=not pool.config.disallow_overlapping_rotation, **details)
        if pool.config.disallow_overlapping_rotation:
            worker.drain(pool.config.shutdown_time_limit, f"recycled ({reason}), not overlapped", event_id)
        else:
            self.start_worker(pool, recycle=True)
        return True

    def worker_unhealthy(self, pool: PoolRuntime, worker: WorkerHandle, why: str, event_id: int) -> None:
        """A failed health check: the worker is killed (SIGTERM, then SIGKILL) or, with
        orphanWorkerProcess, left running detached from the queue; either way it counts
        as a failure and a replacement starts when requests need one."""
        if worker.condemned:
            return  # already being killed: a second failed ping says nothing new
        worker.condemned = True
        self.events.emit("worker_unhealthy", logging.ERROR, event_id, apppool=pool.name, worker=worker.id,
                         pid=worker.pid, reason=why, orphan=pool.config.orphan_worker_process)
        if pool.config.orphan_worker_process:
            worker.orphan(why, event_id)
            if self.listener_control is not None:
                self.listener_control.send({"op": "detach_worker", "worker_id": worker.id})
            self.run_program(pool, (pool.config.orphan_action_exe, pool.config.orphan_action_params),
                             "orphanActionExe", worker.pid)
            if not self.count_failure(pool):
                pool.demand = True
                self._maybe_respawn(pool)
            return
        worker.terminate(grace=1.0)  # a hung worker will not handle SIGTERM anyway

    async def suspend_worker(self, pool: PoolRuntime, worker: WorkerHandle) -> None:
        """idleTimeoutAction="Suspend": detach the worker from the queue (the listener
        refuses if a request reached it meanwhile), then SIGSTOP it.  The next request
        for the pool finds no credit, so the listener asks for a worker: on_demand resumes it."""
        if self.listener_control is None or self.listener_control.closed:
            return
        try:
            reply = await asyncio.wait_for(self.listener_control.request(
                {"op": "suspend_worker", "worker_id": worker.id}), 2)
        except (asyncio.TimeoutError, ConnectionError):
            return
        if not reply.get("suspended") or worker.state != READY:
            if reply.get("suspended"):
                self.listener_control.send({"op": "resume_worker", "worker_id": worker.id})
            return
        worker.suspend()
        self.events.emit("worker_suspended", apppool=pool.name, worker=worker.id, pid=worker.pid,
                         idle_timeout_minutes=pool.config.idle_timeout / 60)

    def resume_worker(self, pool: PoolRuntime, worker: WorkerHandle) -> None:
        worker.resume()
        if self.listener_control is not None:
            self.listener_control.send({"op": "resume_worker", "worker_id": worker.id})

    def on_request_timeout(self, msg: Message) -> None:
        """The listener ended a request that ran past <python requestTimeout>.  If the
        worker still holds a request that old a little later, it has not recovered: it
        is recycled (overlapped, so the queue keeps moving)."""
        pool = self.pools.get(str(msg.get("pool")))
        worker = next((w for w in pool.workers if w.id == msg.get("worker_id")), None) if pool else None
        if pool is None or worker is None:
            return
        worker.timed_out_requests += 1
        timeout = pool.config.python_request_timeout
        self.events.emit("request_timeout", logging.WARNING, None, apppool=pool.name, worker=worker.id,
                         pid=worker.pid, url=msg.get("url"), elapsed=msg.get("elapsed"), limit=timeout)

        async def check() -> None:
            await asyncio.sleep(min(5.0, max(1.0, timeout / 2)))
            if worker.state != READY or worker.recycle_reason:
                return
            reply = await worker.request({"op": "requests"}, min(5.0, pool.config.ping_response_time))
            stuck = reply is None or any(r.get("elapsed", 0) > timeout for r in reply.get("result", []))
            if stuck:
                self.recycle_worker(pool, worker, "requestTimeout")

        self.loop.create_task(check())

    def worker_identity(self, pool: PoolRuntime) -> Identity:
        """The identity of the pool's next worker: never the service's own unless the
        pool says LocalSystem (then once a warning, as running as root is a choice to
        see); whether it can start a worker is checked next (``open_pool_content``,
        ``InterpreterCheck``), and if it cannot the pool does not start."""
        identity = self.identities.for_pool(pool.config)
        if identity.kind == "LocalSystem" and self.identities.is_root and pool.name not in self._identity_warned:
            self._identity_warned.add(pool.name)
            self.events.emit("apppool_identity_local_system", logging.WARNING, None, apppool=pool.name,
                             user="root", reason="processModel/@identityType is LocalSystem: the pool's workers "
                             "and its applications run as root, with no isolation from the server")
        return identity

    def open_runtime(self) -> None:
        """As root: lets the IIS_IUSRS group (every worker's) search the folders above
        Poolhouse's own runtime that it cannot (a checkout or an interpreter under a
        0700 home folder), as IIS's setup grants IIS_IUSRS its files.  Recorded in
        grants.json; ``poolhouse grants --revoke`` takes it back."""
        if not self.identities.is_root:
            return
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = {package, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
                 *[p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]}
        changed: list[str] = []
        for path in sorted(paths):
            try:
                changed += self.grants.open_path(path, "group", IUSRS_GID, IUSRS_GID, (IUSRS_GID,), IUSRS)
            except (OSError, acl.AclError) as exc:
                log.warning("cannot open %s to the pool identities: %s", path, exc)
        if changed:
            self.events.emit("runtime_access_granted", logging.INFO, None, group=f"{IUSRS} (gid {IUSRS_GID})",
                             folders=changed, access="search (--x)",
                             revoke=f"poolhouse --state-dir {self.state_dir} grants --revoke")

    def check_config_mode(self) -> None:
        """A warning when pool identities could read the master configuration itself
        (its workers get their own pool's part over their channel: 0600 is enough)."""
        path = self.config_path
        if not path or not self.identities.is_root:
            return
        try:
            st = os.stat(path)
            entries = acl.effective(path, st)
        except (OSError, acl.AclError):
            return
        if acl.permits(entries, st.st_uid, st.st_gid, 2 ** 31, (2 ** 31,), acl.R) or acl.permits(
                entries, st.st_uid, st.st_gid, 2 ** 31, (IUSRS_GID,), acl.R):
            self.events.emit("config_readable_by_pools", logging.WARNING, None, config=path,
                             reason="every application pool can read the master applicationHost.config",
                             action=f"chmod 600 {shlex.quote(path)}")

    def open_pool_content(self, pool: PoolRuntime, identity: Identity) -> tuple[str, ...]:
        """The folders and files the pool's identity must read (its applications'
        physical folders, the users files applicationHost.config gives them); for an
        ApplicationPoolIdentity (a virtual account the service made) the access is
        granted where missing, as an administrator grants ``IIS AppPool\\<pool>``."""
        if not identity.switch:
            return ()
        folders: list[str] = []
        for site in self.config.sites:
            for app in site.applications:
                if app.pool != pool.name:
                    continue
                for vdir in app.virtual_directories or []:
                    if vdir.physical_path and vdir.physical_path not in folders:
                        folders.append(vdir.physical_path)
                if app.physical_path and app.physical_path not in folders:
                    folders.append(app.physical_path)
        users = [u for u in users_files(self.config, pool.name) if os.path.exists(u)]
        changed: list[str] = []
        for site in self.config.sites:
            freb = site.trace_failed_requests
            if any(a.pool == pool.name for a in site.applications):
                # Failed Request Tracing: the worker writes its site's traces itself
                # (its rules may come from any web.config)
                folder = os.path.join(freb.directory or os.path.join(self.state_dir, "logs", "FailedReqLogFiles"),
                                      f"W3SVC{site.id}")
                os.makedirs(folder, mode=0o700, exist_ok=True)
                changed += self.grants.open_path(folder, "user", identity.uid, identity.uid, identity.gids, pool.name)
                for which in ("access", "default"):
                    if self.grants.add(folder, "user", identity.uid, acl.R | acl.W | acl.X, pool.name, which):
                        changed.append(folder)
        if identity.kind == "ApplicationPoolIdentity":
            for path in folders + users:
                if not os.path.exists(path):
                    continue
                changed += self.grants.open_path(path, "user", identity.uid, identity.uid, identity.gids, pool.name)
                if path in users:
                    if self.grants.open_file(path, identity.uid, identity.gids, pool.name):
                        changed.append(path)
                else:
                    changed += self.grants.open_tree(path, identity.uid, identity.gids, pool.name)
        if changed:
            self.events.emit("apppool_access_granted", logging.INFO, None, apppool=pool.name,
                             user=identity.name, uid=identity.uid, paths=sorted(set(changed)),
                             revoke=f"poolhouse --state-dir {self.state_dir} grants --revoke --apppool "
                                    f"{shlex.quote(pool.name)}")
        return tuple(p for p in folders + users if os.path.exists(p))

    def cannot_start(self, pool: PoolRuntime, identity: Identity, exc: Exception) -> None:
        """IIS 5059: the pool is disabled; the event names the identity, the path that
        stops it and what to run."""
        blocked = getattr(exc, "blocked", None)
        fields: dict[str, Any] = {"apppool": pool.name, "reason": str(exc)}
        if identity.switch:
            fields.update(user=identity.name, uid=identity.uid)
        if blocked:
            fields["path"] = blocked
            folder = os.path.isdir(blocked)
            fields["action"] = (f"grant uid {identity.uid} access: setfacl -m u:{identity.uid}:{'rX' if folder else 'r'} "
                                f"{shlex.quote(blocked)} (or chmod o+{'x' if folder else 'r'}), then start the "
                                f"pool: poolhouse start apppool {shlex.quote(pool.name)}")
        name = "apppool_worker_start_failed" if identity.switch and blocked else "apppool_python_invalid"
        if name == "apppool_python_invalid":
            fields["executable"] = pool.config.python_executable or sys.executable
        self.events.emit(name, logging.ERROR, 5059, **fields)
        if pool.state == STARTED:
            pool.set_state(RAPID_FAIL, f"cannot start a worker: {exc}", 5059)
            self.send_pool_state(pool)
        self.demand_done(pool, False)

    def pool_config(self, pool: PoolRuntime) -> dict[str, Any]:
        """The configuration one worker of ``pool`` receives: its own pool's part only
        (``config.isolation``), made once per configuration and pool."""
        cached = self._pool_views.get(pool.name)
        if cached is None or cached[0] is not self.config:
            cached = self._pool_views[pool.name] = (self.config, pool_view(self.config, pool.name))
        return cached[1]

    def pool_cgroup(self, pool: PoolRuntime) -> str | None:
        cfg = pool.config
        throttle = cfg.cpu_limit > 0 and cfg.cpu_action in ("Throttle", "ThrottleUnderLoad")
        memory_max = cfg.periodic_restart_private_memory_kb * 1024 * 2 * pool.max_processes
        if not throttle and not memory_max:
            return None
        return self.cgroups.pool_group(pool.name, cfg.cpu_limit, throttle, memory_max)

    def start_pool(self, pool: PoolRuntime) -> None:
        if pool.state in (STARTED,):
            return
        pool.crashes.clear()
        pool.consecutive_failures = 0
        pool.cpu_blocked_until = 0.0
        pool.set_state(STARTED, "administrator")
        self.send_pool_state(pool)
        if pool.config.start_mode == "AlwaysRunning":
            self.start_worker(pool)

    def stop_pool(self, pool: PoolRuntime) -> None:
        if pool.state == STOPPED:
            return
        pool.set_state(STOPPED, "administrator")
        self.send_pool_state(pool)
        for w in list(pool.workers):
            w.drain(pool.config.shutdown_time_limit, "application pool stopped by an administrator")

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
                pool.next_schedule = None  # recomputed from the new periodicRestart/schedule
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
        # (the response cache is flushed before this returns)
        # (pools that gained applications were recycled above: their workers are new)
        await self.reprogram_listener(sorted(n for n, p in recycle.items() if p not in gaining))
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
        for pool in self.pools.values():
            # a pool added, or turned AlwaysRunning, by this change runs a worker now
            if (pool.state == STARTED and pool.config.start_mode == "AlwaysRunning"
                    and not pool.live_workers and not pool.spawning):
                self.start_worker(pool)
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
                self.events.emit("service_signalled", signal=signal.Signals(sig).name)
                self.loop.create_task(self.stop())
                return
            if sig == signal.SIGHUP:
                self.notifier.reloading()
                await self.reload()
                self.notifier.ready(self.status_line())

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.events.emit("service_stopping")
        self.notifier.stopping("draining: " + self.status_line())
        if getattr(self, "config_watch", None) is not None:
            await self.config_watch.stop()
        # the whole stop is bounded by the longest shutdownTimeLimit (plus a few seconds
        # for processes to exit): the packaged unit's TimeoutStopSec allows for that
        limit = max([p.config.shutdown_time_limit for p in self.pools.values()] or [90.0])
        deadline = time.monotonic() + limit
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
            if w.state == ORPHANED:
                w.kill()  # kept for debugging while we ran; nothing is left behind
            else:
                # what the listener's drain left in flight has the rest of its pool's
                # shutdownTimeLimit, not a second one
                left = w.pool.shutdown_time_limit - (time.monotonic() - (deadline - limit))
                w.drain(max(1.0, left), "service stopping")
        deadline = max(deadline, time.monotonic() + 1.0) + 2
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
        self.notifier.close()
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
                mem = memory_kb(w.pid) if w.pid and w.state != DEAD else None
                d["private_memory_kb"] = mem[1] if mem else None
                d["virtual_memory_kb"] = mem[0] if mem else None
                d["recycle_after_requests"] = w.recycle_after_requests or None
                out.append(d)
        return out

    async def list_requests(self, min_elapsed: float = 0.0) -> list[dict[str, Any]]:
        """The requests in flight (and waiting in queues): URL, pool, worker, elapsed
        time from the listener, and the pipeline stage from each worker."""
        if self.listener_control is None or self.listener_control.closed:
            return []
        try:
            reply = await asyncio.wait_for(self.listener_control.request(
                {"op": "requests", "min_elapsed": min_elapsed}), 2)
        except (asyncio.TimeoutError, ConnectionError):
            return []
        rows: list[dict[str, Any]] = list(reply.get("result", []))
        by_id = {w.id: w for p in self.pools.values() for w in p.workers}
        wanted = {r["worker"] for r in rows if r.get("worker") in by_id}
        stages: dict[str, dict[int, str]] = {}

        async def ask(wid: str) -> None:
            answer = await by_id[wid].request({"op": "requests"}, 1.0)
            if answer is not None:
                stages[wid] = {int(r["sid"]): str(r["stage"]) for r in answer.get("result", [])}

        await asyncio.gather(*(ask(wid) for wid in wanted))
        for r in rows:
            wid = r.get("worker")
            if not wid:
                r["stage"] = r.get("stage") or "Queued"  # (or ReadingEntityBody: the listener's read-ahead)
            elif wid in stages:
                r["stage"] = stages[wid].get(int(r.get("stream", 0)), "Sent to worker")
            else:
                r["stage"] = "unknown (the worker does not answer)"
        return rows

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


def raise_nofile_limit() -> None:
    """The listener holds a descriptor per client connection (10,000 idle keep-alive
    connections are normal): raise the soft RLIMIT_NOFILE to the hard limit, for this
    process and the listener and workers it starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)


async def serve(config_path: str | None, state_dir: str, log_level: str = "INFO") -> int:
    raise_nofile_limit()
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
