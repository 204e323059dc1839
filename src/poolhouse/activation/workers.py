"""Spawning and watching one worker process.

A worker is a fresh interpreter (``python -m poolhouse.worker``), never a fork of the
service.  It inherits two sockets: its end of the queue socket (the other end goes to the
listener over the descriptor channel, so the worker can only ever reach its own pool's
queue) and its end of a control socket to us.  We learn of its death at once from the
process exit (``proc.wait``) and from the control socket closing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..config.model import Pool
from ..ipc.control import ControlProtocol, Message, open_control, send_fd

log = logging.getLogger("poolhouse.activation")

_ids = itertools.count(1)

# worker states (the table of allowed transitions is in pools.py)
SPAWNING = "Spawning"
INITIALIZING = "Initializing"
READY = "Ready"
DRAINING = "Draining"
DEAD = "Dead"


class WorkerHandle:
    def __init__(self, pool: Pool, on_exit: Callable[["WorkerHandle", int], None],
                 on_message: Callable[["WorkerHandle", Message], None]) -> None:
        self.id = f"{pool.name}#{next(_ids)}"
        self.pool_name = pool.name
        self.pool = pool
        self.state = SPAWNING
        self.proc: asyncio.subprocess.Process | None = None
        self.control: ControlProtocol | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.started_at = time.time()
        self.ready_at = 0.0
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.recycle_reason = ""
        self.credits = 0
        self._on_exit = on_exit
        self._on_message = on_message
        self._kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def spawn(self, fd_channel: socket.socket, init: Message, env: dict[str, str], log_level: str) -> None:
        queue_listener, queue_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control_ours, control_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        python = self.pool.python_executable or sys.executable
        try:
            self.proc = await asyncio.create_subprocess_exec(
                python, "-m", "poolhouse.worker",
                "--pool", self.pool.name, "--worker-id", self.id,
                "--queue-fd", str(queue_worker.fileno()),
                "--control-fd", str(control_worker.fileno()),
                "--log-level", log_level,
                pass_fds=(queue_worker.fileno(), control_worker.fileno()),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=False,
            )
        finally:
            queue_worker.close()
            control_worker.close()
        try:
            send_fd(fd_channel, {"op": "attach_worker", "pool": self.pool.name,
                                 "worker_id": self.id, "pid": self.proc.pid}, queue_listener.fileno())
        finally:
            queue_listener.close()
        self.state = INITIALIZING
        self.control = await open_control(control_ours, self._message, self._control_lost)
        self.control.send(init)
        asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        self.exit_code = code
        self.state = DEAD
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ChildProcessError(code))
            self.ready.exception()  # retrieved: nobody may be waiting
        if self.control is not None:
            self.control.close()
        self._on_exit(self, code)

    def _message(self, msg: Message) -> None:
        if msg["op"] == "ready":
            self.credits = int(msg.get("credits", 1))
            self.ready_at = time.time()
            if self.state == INITIALIZING:
                self.state = READY
            if not self.ready.done():
                self.ready.set_result(None)
        self._on_message(self, msg)

    def _control_lost(self, exc: Exception | None) -> None:
        # The process exit is what counts; make sure it comes.
        if self.proc is not None and self.proc.returncode is None and self.state != DRAINING:
            self.kill(grace=1.0)

    async def ping(self, timeout: float) -> bool:
        if self.control is None or self.control.closed:
            return False
        try:
            await asyncio.wait_for(self.control.request({"op": "ping"}), timeout)
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    async def stats(self, timeout: float = 1.0) -> dict[str, Any]:
        if self.control is None or self.control.closed or self.state not in (READY, DRAINING):
            return {}
        try:
            reply = await asyncio.wait_for(self.control.request({"op": "stats"}), timeout)
            return dict(reply.get("result", {}))
        except (asyncio.TimeoutError, ConnectionError):
            return {}

    def drain(self, time_limit: float) -> None:
        """Stop taking requests, finish the ones in flight, exit; killed after
        ``time_limit`` (the pool's shutdownTimeLimit)."""
        if self.state == DEAD:
            return
        self.state = DRAINING
        if self.control is not None:
            self.control.send({"op": "drain"})
        self.kill(grace=time_limit)

    def kill(self, grace: float = 0.0) -> None:
        """SIGTERM now (when there is grace) and SIGKILL once ``grace`` has passed."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if grace <= 0:
            self._signal(signal.SIGKILL)
            return
        if self._kill_timer is None:
            self._kill_timer = asyncio.get_running_loop().call_later(grace, self._signal, signal.SIGKILL)

    def terminate(self, grace: float) -> None:
        self._signal(signal.SIGTERM)
        self.kill(grace)

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
        }
