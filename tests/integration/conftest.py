"""A real Poolhouse started from a configuration string on free loopback ports.

``poolhouse_server(config_xml, files={...})`` writes the files, starts ``poolhouse serve``
as a real process, waits until it listens, and hands back a ``Server``.  At teardown the
server gets SIGTERM; the fixture checks it exited 0 and left no process behind, and
prints its stderr, event log and HTTPERR log when a test failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from poolhouse.admin.cli import call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path, config: Path, port: int, ports: list[int]) -> None:
        self.root = root
        self.config = config
        self.port = port
        self.ports = ports
        self.state_dir = root / "state"
        self.stderr_path = root / "server.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.descendants: set[int] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self, wait: bool = True) -> None:
        self.state_dir.mkdir(exist_ok=True)
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poolhouse.admin.cli", "--state-dir", str(self.state_dir),
             "serve", "-c", str(self.config)],
            stdout=self._stderr, stderr=self._stderr, stdin=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                call(str(self.state_dir), {"op": "list", "what": "apppools"}, timeout=2)
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.stderr()}")

    def api(self, op: str, **fields: Any) -> Any:
        return call(str(self.state_dir), {"op": op, **fields})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "poolhouse.admin.cli", "--state-dir", str(self.state_dir), *args],
            capture_output=True, text=True, timeout=60,
        )

    def workers(self, pool: str | None = None) -> list[dict[str, Any]]:
        wps = self.api("list", what="wp")
        return [w for w in wps if pool is None or w["apppool"] == pool]

    def remember_descendants(self) -> None:
        if self.proc is None:
            return
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.add(child.pid)
        except psutil.NoSuchProcess:
            pass

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.remember_descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._stderr.close()
        return code

    def leftover(self) -> list[int]:
        alive = []
        for pid in self.descendants:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        path = self.state_dir / "logs" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def httperr(self) -> str:
        d = self.state_dir / "logs" / "HTTPERR"
        if not d.exists():
            return ""
        return "".join(p.read_text() for p in sorted(d.glob("httperr*.log")))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError("condition not met in time")


def apphost(sites: str, pools: str = '<add name="DefaultAppPool" />', extra: str = "") -> str:
    """An applicationHost.config with these pools and sites (and ``extra`` sections)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<configuration>\n"
        "  <system.applicationHost>\n"
        f"    <applicationPools>\n      {pools}\n    </applicationPools>\n"
        f"    <sites>\n{sites}\n    </sites>\n"
        "  </system.applicationHost>\n"
        f"  {extra}\n"
        "</configuration>\n"
    )


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def _searchable_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ph-it-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def searchable_tmp(_searchable_base: Path) -> Callable[[str], Path]:
    """``tmp_path_factory.mktemp`` for module-scoped servers, in a folder other users may
    search (see ``tmp_path``)."""
    def mktemp(name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name[:20] + "-", dir=_searchable_base))
        path.chmod(0o711)
        return path
    return mktemp


@pytest.fixture
def tmp_path(_searchable_base: Path, request: pytest.FixtureRequest) -> Path:
    """A test's folder that other users may search (not list): as root the workers run
    as their pools' users, who must reach the sites the tests write.  pytest's own
    /tmp/pytest-of-root is 0700 and every pytest session that starts re-applies that
    mode, which would cut the search access the service grants a pool on it (an ACL
    entry is limited by the mode's group bits) under a test running beside it."""
    name = re.sub(r"\W", "_", request.node.name)[:20]
    path = Path(tempfile.mkdtemp(prefix=name + "-", dir=_searchable_base))
    path.chmod(0o711)
    return path


@pytest.fixture
def poolhouse_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(config: str | Callable[[int], str], files: dict[str, str] | None = None,
              wait: bool = True, extra_ports: int = 0, writable: tuple[str, ...] = ()) -> Server:
        """``writable``: folders (relative to the server's root) the test's applications
        write into; as root the workers run as their pool's user, so these are opened
        to every user (what an administrator grants a pool on a data folder)."""
        root = tmp_path / f"srv{len(servers)}"
        root.mkdir()
        port = free_port()
        ports = [port] + [free_port() for _ in range(extra_ports)]
        for rel, content in (files or {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(content))
        for rel in writable:
            (root / rel).mkdir(parents=True, exist_ok=True)
            (root / rel).chmod(0o1777)
        text = config(port) if callable(config) else config
        text = text.replace("{root}", str(root)).replace("{port}", str(port))
        for i, p in enumerate(ports):
            text = text.replace("{port%d}" % i, str(p))
        cfg = root / "applicationHost.config"
        cfg.write_text(text)
        server = Server(root, cfg, port, ports)
        servers.append(server)
        server.start(wait=wait)
        return server

    yield start

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for server in servers:
        if server.proc is None:
            continue
        code = server.stop()
        if code != 0 and server.proc.returncode is not None and not getattr(server, "expect_exit", False):
            problems.append(f"server exited with {code}")
        left = server.leftover()
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            problems.append(f"processes left behind: {left}")
        if failed or problems:
            print(f"\n----- server stderr ({server.root}) -----\n{server.stderr()[-20000:]}")
            print(f"----- HTTPERR -----\n{server.httperr()[-5000:]}")
    if problems and not failed:
        pytest.fail("; ".join(problems))
