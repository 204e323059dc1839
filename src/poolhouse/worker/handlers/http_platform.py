"""httpPlatformHandler (HttpPlatformHandler v1.2): the worker starts the application's
own HTTP server as a child process and proxies its requests to it.

    <handlers>
      <add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" />
    </handlers>
    <httpPlatform processPath="/srv/venv/bin/python"
                  arguments="-m uvicorn app:app --port %HTTP_PLATFORM_PORT%" ... />

* The process is started on the first request (concurrent requests wait for it) with
  the application's folder as its working directory, ``HTTP_PLATFORM_PORT`` in its
  environment and in place of ``%HTTP_PLATFORM_PORT%`` in ``arguments`` and
  ``environmentVariables`` (other ``%VAR%`` are expanded from the environment), and
  must accept connections on that port within ``startupTimeLimit``; it is tried
  ``startupRetryCount`` times, then the request gets 502.5.
* It is a child of the worker and dies with it (``PR_SET_PDEATHSIG``), so the pool's
  recycling, health monitoring and rapid-fail protection cover it.  A process that
  exits is started again on the next request, at most ``rapidFailsPerMinute`` times a
  minute (then 502.5 until the minute is over).
* ``stdoutLogEnabled``: stdout and stderr go to ``<stdoutLogFile>_<yyyymmddhhmmss>_<pid>.log``
  (relative paths from the application's folder), else nowhere.
* ``requestTimeout``: how long the process may stay silent on a request (504 after).
* Requests are forwarded with the reverse proxy of ``handlers/proxy.py``.
* ``processesPerApplication`` = N: N processes, each on its own port, started together
  on the first request; requests go round-robin to the running ones.  One that exits is
  started again (``startupRetryCount`` attempts) when its turn comes, in the background
  while others run, so the others keep serving; ``rapidFailsPerMinute`` counts the
  exits of all N.  A request a process did not take (connection refused, or broken
  before an answer to an idempotent bodiless request) goes to another process; one
  whose port refuses is left out until it has exited, then started again.

Not supported: ``recycleOnFileChange``, ``forwardWindowsAuthToken`` (accepted, no
effect).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .proxy import REFUSED, UpstreamUnreached, proxy_request

if TYPE_CHECKING:
    from ..apps import Selection, WorkerApplication
    from ..pipeline import HttpContext
    from ..stream import Stream

log = logging.getLogger("poolhouse.worker")

SECTION = "system.webServer/httpPlatform"
_VAR = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")
PR_SET_PDEATHSIG = 1
REFUSING_EXIT_WAIT = 5.0  # how long a process that refused a connection is watched for its exit


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expand(text: str, env: dict[str, str]) -> str:
    """``%NAME%`` from ``env`` (unknown names are left as they are, as Windows does)."""
    return _VAR.sub(lambda m: env.get(m.group(1), env.get(m.group(1).upper(), m.group(0))), text)


class PlatformProcess:
    """One process of an application: started, watched and restarted on demand.
    ``failures`` (exit times) is shared by the application's processes."""

    def __init__(self, settings: dict[str, Any], folder: str, name: str, failures: list[float] | None = None,
                 log_suffix: str = "") -> None:
        self.settings = settings
        self.folder = folder
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starting: asyncio.Future[None] | None = None
        self.failures: list[float] = failures if failures is not None else []
        self.log_suffix = log_suffix
        # its port refused a connection while the process had not yet been seen to exit
        # (SIGKILLed, still being torn down): no request is routed to it meanwhile
        self.refusing = False

    @property
    def running(self) -> bool:
        return (self.proc is not None and self.starting is None and not self.refusing
                and self.proc.poll() is None)

    @property
    def request_timeout(self) -> float:
        return float(self.settings.get("requestTimeout", 120.0) or 120.0)

    async def ready(self) -> int:
        """The port of a running process, starting it if needed; raises RuntimeError."""
        if self.proc is not None and self.proc.poll() is None and self.starting is None:
            return self.port
        if self.starting is None:
            self.starting = asyncio.get_running_loop().create_future()
            try:
                await self._start()
                self.starting.set_result(None)
            except Exception as exc:
                self.starting.set_exception(exc)
                self.starting.exception()  # retrieved: waiting requests re-raise it
                raise
            finally:
                self.starting = None
            return self.port
        await asyncio.shield(self.starting)
        return self.port

    async def _start(self) -> None:
        now = time.monotonic()
        if self.proc is not None:
            code = self.proc.poll()
            log.error("%s: the httpPlatform process %d exited with %s; starting it again", self.name,
                      self.proc.pid, code)
            self.failures[:] = [t for t in self.failures if now - t < 60] + [now]
            self.proc = None
        limit = int(self.settings.get("rapidFailsPerMinute", 10))
        if len([t for t in self.failures if now - t < 60]) > limit:
            raise RuntimeError(f"the process failed more than {limit} times in a minute (rapidFailsPerMinute)")
        tries = max(1, int(self.settings.get("startupRetryCount", 10)))
        last = ""
        for attempt in range(tries):
            try:
                await self._spawn_once()
                return
            except RuntimeError as exc:
                last = str(exc)
                log.error("%s: httpPlatform start attempt %d/%d failed: %s", self.name, attempt + 1, tries, last)
        raise RuntimeError(last)

    async def _spawn_once(self) -> None:
        s = self.settings
        port = _free_port()
        env = dict(os.environ)
        env["HTTP_PLATFORM_PORT"] = str(port)
        for item in s.get("environmentVariables", {}).get("items", []):
            env[str(item["name"])] = expand(str(item.get("value", "")), env)
        path = expand(str(s.get("processPath", "")), env)
        if not path:
            raise RuntimeError("httpPlatform/@processPath is empty")
        if re.match(r"^([A-Za-z]:[\\/]|\\\\)", path):
            raise RuntimeError(f"processPath {path!r} is a Windows path")
        if not os.path.isabs(path) and ("/" in path or "\\" in path):
            path = os.path.join(self.folder, path.replace("\\", "/"))
        args = [path] + shlex.split(expand(str(s.get("arguments", "")), env))
        out: Any = subprocess.DEVNULL
        if s.get("stdoutLogEnabled"):
            prefix = str(s.get("stdoutLogFile") or "httpplatform-stdout").replace("\\", "/")
            prefix = os.path.normpath(os.path.join(self.folder, prefix))
            os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
            name = f"{prefix}_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}{self.log_suffix}.log"
            out = open(name, "ab")
        try:
            proc = subprocess.Popen(args, cwd=self.folder or None, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT if out is not subprocess.DEVNULL else out,
                                    preexec_fn=_die_with_parent,
                                    # its own process group: a stop signalled to the server's
                                    # group is the service's to carry out; the worker stops
                                    # this process when it exits (stop_all)
                                    start_new_session=True)
        except OSError as exc:
            raise RuntimeError(f"cannot start {args[0]}: {exc}") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the process has its own copy
        deadline = time.monotonic() + float(s.get("startupTimeLimit", 10))
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode} before listening on port {port}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
                writer.close()
                self.proc, self.port = proc, port
                log.info("%s: httpPlatform process %d listening on port %d", self.name, proc.pid, port)
                return
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{args[0]} did not listen on port {port} within startupTimeLimit")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class PlatformGroup:
    """An application's ``processesPerApplication`` processes, requests spread
    round-robin over the running ones."""

    def __init__(self, settings: dict[str, Any], folder: str, name: str) -> None:
        count = max(1, int(settings.get("processesPerApplication", 1) or 1))
        failures: list[float] = []
        self.name = name
        self.slots = [PlatformProcess(settings, folder, name if count == 1 else f"{name} [{i + 1}/{count}]",
                                      failures, "" if count == 1 else f"_{i + 1}") for i in range(count)]
        self._next = 0
        self._started = False
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def request_timeout(self) -> float:
        return self.slots[0].request_timeout

    async def ready(self, refused: frozenset[int] | set[int] = frozenset()) -> int:
        """The port of the process whose turn it is, (re)starting processes as needed;
        ``refused``: ports that refused this request's connection, tried last.  Raises
        RuntimeError when none can serve."""
        count = len(self.slots)
        if count == 1:
            return await self.slots[0].ready()
        if not self._started:  # the first request brings them all up together
            self._started = True
            for slot in self.slots:
                self._start_in_background(slot)
        first = self._next
        self._next = (first + 1) % count
        turn = [self.slots[(first + k) % count] for k in range(count)]
        for slot in turn:
            if slot.running and slot.port not in refused:
                return slot.port
            if not slot.refusing:
                self._start_in_background(slot)  # exited: started again, the others serve meanwhile
        # none is running yet: wait for the first that comes up
        turn.sort(key=lambda slot: slot.refusing or slot.port in refused)
        error: Exception | None = None
        for slot in turn:
            try:
                return await slot.ready()
            except RuntimeError as exc:
                error = exc
        raise error or RuntimeError("no process could be started")

    def _start_in_background(self, slot: PlatformProcess) -> None:
        if slot.starting is not None or slot.running:
            return
        task = asyncio.ensure_future(slot.ready())
        self._background.add(task)
        task.add_done_callback(self._started_one)

    def _started_one(self, task: "asyncio.Future[Any]") -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # logged by the attempt; a request waiting on it gets it too

    def refused(self, port: int) -> None:
        """A connection to ``port`` was refused: its process is gone or going (a SIGKILLed
        process stops accepting before the worker can reap it).  No request goes to it
        until it has exited and been started again, in the background."""
        slot = next((s for s in self.slots if s.port == port and s.proc is not None), None)
        if slot is None or slot.starting is not None or slot.refusing:
            return
        slot.refusing = True
        task = asyncio.ensure_future(self._restart_refusing(slot))
        self._background.add(task)
        task.add_done_callback(self._started_one)

    async def _restart_refusing(self, slot: PlatformProcess) -> None:
        proc = slot.proc
        assert proc is not None
        deadline = time.monotonic() + REFUSING_EXIT_WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        slot.refusing = False
        if proc.poll() is None:
            log.warning("%s: httpPlatform process %d refuses connections on port %d but has not exited",
                        slot.name, proc.pid, slot.port)
            return
        self._start_in_background(slot)

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()


PROCESSES: dict[tuple[str, str], PlatformGroup] = {}


def process_for(app: "WorkerApplication", settings: dict[str, Any]) -> PlatformGroup:
    key = (app.key, repr(sorted((k, repr(v)) for k, v in settings.items())))
    group = PROCESSES.get(key)
    if group is None:
        group = PROCESSES[key] = PlatformGroup(settings, app.app.physical_path, f"{app.site.name}{app.app.path}")
    return group


def stop_all() -> None:
    for group in PROCESSES.values():
        group.stop()


async def run_http_platform(worker: Any, stream: "Stream", app: "WorkerApplication", sel: "Selection",
                            path: str, query: str, ctx: "HttpContext | None") -> None:
    """Proxy the request to a process of the application.  With several processes, a
    request one of them did not take (its connection refused, or broken before an
    answer to an idempotent bodiless request) goes to another: clients see no error
    while any process is up."""
    settings = (sel.web.sections.get(SECTION) if sel.web is not None else None) or {}
    group = process_for(app, settings)
    raw = ctx.raw_path if ctx is not None else stream.head.target.decode("latin-1").split("?", 1)[0]
    refused: set[int] = set()
    while True:
        try:
            port = await group.ready(refused)
        except Exception as exc:
            log.error("%s: httpPlatform process unavailable: %s", group.name, exc)
            worker.error_response(stream, 502, 5, f"httpPlatform process failure: {exc}", detail_local=True)
            return
        url = f"http://127.0.0.1:{port}{raw}" + (f"?{query}" if query else "")
        failover = port not in refused and len(refused) < len(group.slots) - 1
        try:
            await proxy_request(worker, stream, url, ctx, group.request_timeout, failover)
            return
        except UpstreamUnreached as exc:
            log.warning("%s: %s; the request goes to another process", group.name, exc.detail)
            refused.add(port)
            if exc.reason == REFUSED:  # (a broken connection alone may be one request's doing)
                group.refused(port)
