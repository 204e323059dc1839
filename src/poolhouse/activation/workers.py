"""Spawning and watching one worker process.

A worker is a fresh interpreter (``python -m poolhouse.worker``), never a fork of the
service.  It inherits its end of each socket to the listener (``LISTENER_SOCKETS``: the
queue socket and the file channel, which carries the descriptors of files the listener
sends for it, ipc/queue.py; the other ends go to the listener over the listener's
descriptor channel, so the worker can only ever reach its own pool's queue), its end of a
control socket to us, and a descriptor channel from us.  We learn of its death at once
from the process exit (``proc.wait``) and from the control socket closing.

When the listener dies and a new one starts, a running worker is re-attached rather than
replaced (``reattach``): new pairs of the same sockets, the worker's ends over its
descriptor channel, the listener's ends to the new listener.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config.model import Pool
from ..ipc.control import ControlProtocol, Message, open_control, send_fds
from .events import SHUTDOWN_TIMEOUT, EventLog
from .states import (
    DEAD, DRAINING, INITIALIZING, ORPHANED, READY, SPAWNING, SUSPENDED, WORKER_TRANSITIONS, check,
)

if TYPE_CHECKING:
    from .identity import Identity

log = logging.getLogger("poolhouse.activation")

_ids = itertools.count(1)

# Recycling thresholds (periodicRestart/@time and @requests) are lowered by a random
# fraction of up to this much per worker, so a web garden does not recycle all at once.
JITTER = 0.05

__all__ = ["SPAWNING", "INITIALIZING", "READY", "SUSPENDED", "ORPHANED", "DRAINING", "DEAD",
           "WorkerHandle", "jittered"]


# The sockets between a worker and the listener, by name: each is a pair made at spawn and
# made again when a new listener replaces a dead one.  The worker gets one end (inherited
# at spawn, over its descriptor channel at a re-attach), the listener the other, labelled
# {"op": "attach_worker", "socket": name, ...}.  A new kind of socket is one more entry.
LISTENER_SOCKETS: dict[str, socket.SocketKind] = {"queue": socket.SOCK_STREAM, "files": socket.SOCK_SEQPACKET}


def listener_socket_pairs() -> dict[str, tuple[socket.socket, socket.socket]]:
    """(the listener's end, the worker's end) of each of ``LISTENER_SOCKETS``."""
    pairs: dict[str, tuple[socket.socket, socket.socket]] = {}
    try:
        for name, kind in LISTENER_SOCKETS.items():
            pairs[name] = socket.socketpair(socket.AF_UNIX, kind)
    except OSError:
        _close_pairs(pairs)
        raise
    return pairs


def _close_pairs(pairs: dict[str, tuple[socket.socket, socket.socket]]) -> None:
    for ours, theirs in pairs.values():
        ours.close()
        theirs.close()


def jittered(value: float) -> float:
    return value * (1.0 - random.uniform(0.0, JITTER)) if value > 0 else 0.0


class WorkerHandle:
    def __init__(self, pool: Pool, events: EventLog, on_exit: Callable[["WorkerHandle", int], None],
                 on_message: Callable[["WorkerHandle", Message], None],
                 identity: "Identity | None" = None) -> None:
        self.id = f"{pool.name}#{next(_ids)}"
        self.pool_name = pool.name
        self.pool = pool
        self.events = events
        self.identity = identity
        self.state = SPAWNING
        self.proc: asyncio.subprocess.Process | None = None
        self.control: ControlProtocol | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.repeated_ready = 0  # "ready" messages after the first (ignored)
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.ready_at = 0.0
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.recycle_reason = ""
        self.credits = 0
        # per-worker thresholds, jittered once at start
        self.recycle_after_requests = int(jittered(pool.periodic_restart_requests))
        if pool.periodic_restart_requests and self.recycle_after_requests < 1:
            self.recycle_after_requests = 1
        self.recycle_after_seconds = jittered(pool.periodic_restart_time)
        # idle accounting, from the worker's statistics
        self.requests_seen = 0
        self.in_flight_seen = 0
        self.last_activity = time.monotonic()
        self.last_ping = 0.0
        self.last_idle_poll = 0.0  # when the monitor last asked it how long it has been idle
        self.cpu_last = 0.0  # CPU seconds at the last measurement (cpu/@limit)
        self.timed_out_requests = 0
        self.condemned = False  # failed its health check: being killed (or orphaned)
        self.replays_held = 0  # replayed requests the listener has in flight on it
        self.state_before_death = ""  # requests the listener ended by requestTimeout
        self._on_exit = on_exit
        self._on_message = on_message
        self._kill_timer: asyncio.TimerHandle | None = None
        self.fd_out: socket.socket | None = None  # our end of the worker's descriptor channel
        self.listener_generation = 0  # which listener it is attached to (ActivationService)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def set_state(self, new: str, reason: str, event_id: int | None = None, level: int = logging.INFO) -> None:
        """Every change of a worker's state goes through the table and is logged."""
        old = self.state
        if new == old:
            return
        check(WORKER_TRANSITIONS, f"worker {self.id}", old, new)
        self.state = new
        self.events.emit("worker_state", level, event_id, apppool=self.pool_name, worker=self.id,
                         pid=self.pid, old=old, new=new, reason=reason)

    async def spawn(self, fd_channel: socket.socket, init: Message, env: dict[str, str], log_level: str) -> None:
        pairs = listener_socket_pairs()
        queue_worker, files_worker = pairs["queue"][1], pairs["files"][1]
        control_ours, control_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd_ours, fd_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd_ours.shutdown(socket.SHUT_RD)  # it only carries descriptors to the worker
        fd_ours.setblocking(False)  # a worker that does not read it is not re-attached, never waited for
        self.fd_out = fd_ours
        python = self.pool.python_executable or sys.executable
        ident: dict[str, Any] = {}
        if self.identity is not None and self.identity.switch:
            # the pool's identity and its groups (IIS_IUSRS, and a named user's own):
            # uvloop's subprocess_exec has no user/group arguments, the child switches
            # before exec
            uid, gid, groups = self.identity.uid, self.identity.gid, list(self.identity.groups)

            def switch_identity() -> None:
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)

            ident = {"preexec_fn": switch_identity}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                python, "-m", "poolhouse.worker",
                "--pool", self.pool.name, "--worker-id", self.id,
                "--queue-fd", str(queue_worker.fileno()),
                "--control-fd", str(control_worker.fileno()),
                "--files-fd", str(files_worker.fileno()),
                "--fd-channel", str(fd_worker.fileno()),
                "--log-level", log_level,
                pass_fds=(*(theirs.fileno() for _, theirs in pairs.values()), control_worker.fileno(),
                          fd_worker.fileno()),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=False,
                **ident,
            )
        except BaseException:
            for ours, _ in pairs.values():
                ours.close()
            control_ours.close()
            fd_ours.close()
            self.fd_out = None
            raise
        finally:
            for _, theirs in pairs.values():
                theirs.close()
            control_worker.close()
            fd_worker.close()
        try:
            self.hand_to_listener(fd_channel, {name: ours for name, (ours, _) in pairs.items()})
        finally:
            for ours, _ in pairs.values():
                ours.close()
        self.set_state(INITIALIZING, "process started")
        self.control = await open_control(control_ours, self._message, self._control_lost)
        self.control.send(init)
        asyncio.get_running_loop().create_task(self._watch())

    def hand_to_listener(self, fd_channel: socket.socket, ends: dict[str, socket.socket]) -> None:
        """The listener's ends of this worker's sockets, over the listener's descriptor
        channel (the pid is the one we spawned, never one the worker claims)."""
        send_fds(fd_channel, {"op": "attach_worker", "sockets": list(ends), "pool": self.pool.name,
                              "worker_id": self.id, "pid": self.pid}, [sock.fileno() for sock in ends.values()])

    def reattach(self, fd_channel: socket.socket, generation: int) -> bool:
        """Attach this running worker to a new listener: fresh pairs of its listener
        sockets, the worker's ends over its descriptor channel, the listener's over
        ``fd_channel``.  False if the worker or the listener cannot be reached (an end
        that did arrive finds its peer closed); the caller then drains the worker."""
        if self.fd_out is None or self.proc is None or self.proc.returncode is not None:
            return False
        try:
            pairs = listener_socket_pairs()
        except OSError as exc:
            log.error("cannot make the sockets to re-attach worker %s: %s", self.id, exc)
            return False
        try:
            send_fds(self.fd_out, {"op": "attach", "sockets": list(pairs)},
                     [theirs.fileno() for _, theirs in pairs.values()])
            self.hand_to_listener(fd_channel, {name: ours for name, (ours, _) in pairs.items()})
        except OSError as exc:
            log.error("cannot re-attach worker %s: %s", self.id, exc)
            return False
        finally:
            _close_pairs(pairs)
        self.listener_generation = generation
        return True

    async def _watch(self) -> None:
        from ..ipc import exit_codes

        assert self.proc is not None
        code = await self.proc.wait()
        self.exit_code = code
        self.exit_reason = exit_codes.describe(code)
        self.state_before_death = self.state
        self.set_state(DEAD, self.exit_reason, level=logging.INFO if code == 0 else logging.WARNING)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ChildProcessError(code))
            self.ready.exception()  # retrieved: nobody may be waiting
        if self.control is not None:
            self.control.close()
        if self.fd_out is not None:
            self.fd_out.close()
            self.fd_out = None
        self._on_exit(self, code)

    def _message(self, msg: Message) -> None:
        """A message from the worker, which runs application code: nothing in it is
        taken on trust beyond the worker's own pool, numbers are numbers, and a worker
        announces itself once (a repeated "ready" would be an event, and a log line,
        each time: the event log is every pool's)."""
        if msg["op"] in ("queue_attached", "ready"):
            try:
                msg = {**msg, "credits": int(msg.get("credits", 1)), "warmup": int(msg.get("warmup") or 0)}
            except (TypeError, ValueError, OverflowError):
                log.error("worker %s (pid %s) sent a malformed %r message; ignored", self.id, self.pid, msg["op"])
                return
        if msg["op"] == "queue_attached":
            self.credits = msg["credits"]
            self.last_activity = time.monotonic()
        if msg["op"] == "ready":
            if self.ready.done():
                if not self.repeated_ready:
                    log.error("worker %s (pid %s) announced itself ready again; ignored (and from now on "
                              "without a log line)", self.id, self.pid)
                self.repeated_ready += 1
                return
            self.credits = msg["credits"]
            self.ready_at = time.time()
            self.last_activity = time.monotonic()
            if self.state == INITIALIZING:
                self.set_state(READY, "registered with its queue" + (
                    f" after {msg['warmup']} initialization page(s)" if msg.get("warmup") else ""))
            if not self.ready.done():
                self.ready.set_result(None)
        self._on_message(self, msg)

    def _control_lost(self, exc: Exception | None) -> None:
        # The process exit is what counts; make sure it comes.
        if (self.proc is not None and self.proc.returncode is None
                and self.state not in (DRAINING, ORPHANED, SUSPENDED)):
            self.kill(grace=1.0)

    async def request(self, msg: Message, timeout: float) -> Message | None:
        """A control request; None if the worker does not answer in time."""
        if self.control is None or self.control.closed:
            return None
        try:
            return await asyncio.wait_for(self.control.request(msg), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            return None

    async def ping(self, timeout: float) -> bool:
        reply = await self.request({"op": "ping"}, timeout)
        if reply is None:
            return False
        self.note_activity(reply)
        return True

    def note_activity(self, reply: Message) -> None:
        """Idle accounting from a ping or stats answer (requests served, in flight)."""
        requests = int(reply.get("requests", self.requests_seen))
        in_flight = int(reply.get("in_flight", 0))
        if requests != self.requests_seen or in_flight:
            self.last_activity = time.monotonic()
        self.requests_seen = requests
        self.in_flight_seen = in_flight

    async def stats(self, timeout: float = 1.0) -> dict[str, Any]:
        if self.state not in (READY, DRAINING):
            return {}
        reply = await self.request({"op": "stats"}, timeout)
        if reply is None:
            return {}
        result = dict(reply.get("result", {}))
        self.note_activity(result)
        return result

    def drain(self, time_limit: float, reason: str = "stopped", event_id: int | None = None) -> None:
        """Stop taking requests, finish the ones in flight, exit; killed after
        ``time_limit`` (the pool's shutdownTimeLimit)."""
        if self.state in (DEAD, DRAINING):
            return
        if self.state == SUSPENDED:
            self._signal(signal.SIGCONT)
        if self.state == ORPHANED:
            return  # left alone on purpose; killed when the service stops
        self.set_state(DRAINING, reason, event_id)
        if self.control is not None:
            self.control.send({"op": "drain"})
        self.kill(grace=time_limit)

    def kill(self, grace: float = 0.0) -> None:
        """SIGKILL now, or once ``grace`` has passed."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if grace <= 0:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            return
        if self._kill_timer is None:
            self._kill_timer = asyncio.get_running_loop().call_later(grace, self._deadline, grace)

    def _deadline(self, grace: float) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.state == DRAINING:
            self.events.emit("worker_shutdown_timeout", logging.WARNING, SHUTDOWN_TIMEOUT, apppool=self.pool_name,
                             worker=self.id, pid=self.pid, limit=grace)
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)

    def terminate(self, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace``."""
        self._signal(signal.SIGTERM)
        self.kill(grace)

    def suspend(self) -> None:
        """idleTimeoutAction="Suspend": the process is stopped, its memory kept."""
        self.set_state(SUSPENDED, "idle timeout (Suspend)")
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.last_activity = time.monotonic()
        self.set_state(READY, "request for a suspended worker")

    def orphan(self, reason: str, event_id: int | None = None) -> None:
        """failure/@orphanWorkerProcess: left running, detached, for debugging."""
        self.set_state(ORPHANED, reason, event_id, logging.ERROR)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "apppool": self.pool_name,
            "state": self.state,
            "started": self.started_at,
            "uptime": round(time.time() - self.started_at, 3),
            "recycle_reason": self.recycle_reason or None,
            "user": self.identity.name if self.identity is not None else None,
        }
