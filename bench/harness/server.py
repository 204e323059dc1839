"""One server's life under the benchmark: start, readiness, memory, stop.

The server is started in a session of its own, with a token in its environment, so that
everything it forks can be found again: after the stop, no process may remain that was
seen in its tree while it ran (pid and start time, so a reused pid is not mistaken for
it), that is in its session, or that carries its token (which finds even a daemon that
double-forked and called setsid). Anything left is reported and killed, so one leaking
target cannot skew the ones after it. The runner makes itself a child subreaper, so that
orphans are reparented to it and reaped here rather than left as zombies.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psutil


TOKEN_VARIABLE = "POOLHOUSE_BENCH_TOKEN"
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants of the servers become our children (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_orphans() -> None:
    """Collects the exit status of any finished child, so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class StartError(RuntimeError):
    """The server did not come up: it exited, or never answered correctly in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str],
                 log_path: Path, stop_signal: int = signal.SIGTERM) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.token = uuid.uuid4().hex
        self.env = {**env, TOKEN_VARIABLE: self.token}
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, float] = {}          # pid -> create_time
        self._lock = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(self.argv) + "\n").encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise StartError(f"cannot execute {self.argv[0]}: {exc}") from exc
        self.tree()

    def wait_ready(self, port: int, path: str, expect: bytes, timeout: float) -> float:
        """Polls GET path until it answers 200 with the expected body; returns seconds."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise StartError(f"{self.exit_text()}: {self.log_tail()}")
            try:
                status, body = get(port, path, timeout=5.0)
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200 and body == expect:
                    return time.monotonic() - started
                last = f"HTTP {status}, {len(body)} bytes: {body[:60]!r}"
            time.sleep(0.1)
        raise StartError(f"no correct answer within {timeout:g}s (last: {last}); "
                         f"log: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[1:]
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(empty log)"

    # -- the process tree ----------------------------------------------------------------

    def tree(self) -> list[psutil.Process]:
        """The server and all its descendants now; remembers each for the leak check."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        with self._lock:
            for p in procs:
                try:
                    self._seen.setdefault(p.pid, p.create_time())
                except psutil.NoSuchProcess:
                    pass
        return procs

    def rss(self) -> tuple[int, int]:
        """(total RSS in bytes, number of processes) of the tree."""
        total = count = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
                count += 1
            except psutil.NoSuchProcess:
                pass
        return total, count

    def exit_text(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- stop ----------------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Stops the server; returns a description of every process left behind.

        The stop signal goes to the server's main process only, the way a supervisor
        would stop it; the server must take its children down itself.
        """
        if self.proc is None:
            return []
        self.tree()
        sid = self.proc.pid
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 3.0
        left = self._leftovers(sid)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._leftovers(sid)
        report = []
        for p in left:
            try:
                what = "did not exit" if p.pid == sid else "left behind"
                report.append(f"pid {p.pid} {what} ({' '.join(p.cmdline())[:80] or p.name()})")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        time.sleep(0.05)
        reap_orphans()
        return report

    def _leftovers(self, sid: int) -> list[psutil.Process]:
        left: dict[int, psutil.Process] = {}
        with self._lock:
            seen = dict(self._seen)
        for pid, created in seen.items():
            if pid == sid and self.proc is not None and self.proc.poll() is not None:
                continue                              # our own child, reaped or reapable
            p = _live(pid, created)
            if p is not None:
                left[pid] = p
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid in left or p.pid in (sid, me):
                continue
            try:
                ours = (os.getsid(p.pid) == sid
                        or p.environ().get(TOKEN_VARIABLE) == self.token)
                if ours and _live(p.pid, p.create_time()):
                    left[p.pid] = p
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return list(left.values())


def _live(pid: int, created: float) -> psutil.Process | None:
    """The process if it still runs (same pid and start time, not a zombie)."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - created) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.NoSuchProcess:
        return None


class RssSampler:
    """Samples the tree's RSS in the background while a load runs."""

    def __init__(self, server: ServerProcess, interval: float = 0.25) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total, count = self.server.rss()
            if count:
                self.samples.append((total, count))

    @property
    def peak(self) -> tuple[int, int]:
        """(peak RSS bytes, process count at that sample)."""
        return max(self.samples, default=(0, 0))


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
