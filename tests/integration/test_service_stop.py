"""Stopping the way service managers stop: a signal to the whole process group (``kill
-TERM -- -PGID``, ``timeout``, a terminal's Ctrl-C, systemd's KillMode=control-group)
drains exactly as a signal to the activation service alone does.  The workers and the
listener get the signal too; they must not act on it by themselves (the listener would
drop every connection, the workers would leave their queue), but wait for the service
to drain them: a request in flight finishes and gets its 200."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from .conftest import Server, apphost, free_port
from .test_process_model import WSGI_WEBCONFIG

APP = """\
import os, signal, time

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 0.5))
        body = b"slow done"
    elif path == "/handlers":
        # what a worker does with the stop signals, as application code sees it
        body = " ".join(str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)).encode()
    else:
        body = b"hello " + path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

CONFIG = apphost(
    sites="""
    <site name="Main" id="1">
      <application path="/" applicationPool="AppPool">
        <virtualDirectory path="/" physicalPath="{root}/app" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="AppPool"><processModel shutdownTimeLimit="00:00:05" /></add>',
)


class GroupServer(Server):
    """The server in a session (and process group) of its own, as a service manager or
    a shell's job control starts it, so the test can signal the whole group."""

    prefix: list[str] = []  # a command that runs the server, as ``timeout`` does

    def start(self, wait: bool = True) -> None:
        self.state_dir.mkdir(exist_ok=True)
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "poolhouse.admin.cli", "--state-dir", str(self.state_dir),
             "serve", "-c", str(self.config)],
            stdout=self._stderr, stderr=self._stderr, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if wait:
            self.wait_ready()


@pytest.fixture
def group_server(tmp_path: Path) -> Iterator[Callable[[], GroupServer]]:
    started: list[GroupServer] = []

    def start(files: dict[str, str] | None = None, prefix: list[str] | None = None) -> GroupServer:
        root = tmp_path / f"srv{len(started)}"
        (root / "app").mkdir(parents=True)
        for rel, text in (files or {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG}).items():
            (root / rel).write_text(textwrap.dedent(text))
        port = free_port()
        cfg = root / "applicationHost.config"
        cfg.write_text(CONFIG.replace("{root}", str(root)).replace("{port}", str(port)))
        server = GroupServer(root, cfg, port, [port])
        server.prefix = prefix or []
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        assert server.proc is not None
        if server.proc.poll() is None:
            try:
                os.killpg(server.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.proc.wait(10)
        for pid in server.leftover():
            os.kill(pid, signal.SIGKILL)


def _stop_with_request_in_flight(server: GroupServer, send: Callable[[], None]) -> tuple[httpx.Response, float]:
    """A 3 s request in flight, then ``send``; returns the request's response and how long
    the server took to exit after the signal."""
    assert httpx.get(server.url("/pid"), timeout=30).status_code == 200  # a worker runs
    server.remember_descendants()
    assert len(server.descendants) >= 2  # the listener and the worker
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, server.url("/slow?3"), timeout=30)
        server.wait_for(lambda: any(r.get("url") == "/slow?3" for r in server.api("list", what="requests")),
                        timeout=10)
        signalled = time.monotonic()
        send()
        response = slow.result()
    assert server.proc is not None
    server.proc.wait(30)
    return response, time.monotonic() - signalled


def _check_clean_stop(server: GroupServer, response: httpx.Response, took: float) -> None:
    assert response.status_code == 200 and response.text == "slow done", response.text
    assert server.proc is not None and server.proc.returncode == 0
    # the request ends ~3 s after the signal; the stop follows it at once (the old
    # behaviour waited out the 10 s kill timer): 5 s and a margin for a loaded machine
    assert took < 8.0, f"the stop took {took:.1f} s"
    assert server.leftover() == []
    err = server.stderr()
    assert "Executor shutdown has been called" not in err
    assert "Traceback" not in err
    events = server.events()
    exits = [e for e in events if e["event"] == "worker_exited"]
    assert exits and all(e["reason"] == "stopped" for e in exits), exits
    # the worker was drained by the service: Ready -> Draining -> Dead
    states = [(e["old"], e["new"]) for e in events if e["event"] == "worker_state"]
    assert ("Ready", "Draining") in states and ("Draining", "Dead") in states, states
    assert not any(e["event"] == "listener_exited" for e in events)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_drains(group_server, sig: signal.Signals) -> None:
    server = group_server()
    assert server.proc is not None
    response, took = _stop_with_request_in_flight(server, lambda: os.killpg(server.proc.pid, sig))
    _check_clean_stop(server, response, took)


def test_stop_by_timeout_drains(group_server) -> None:
    """``timeout`` (coreutils) passes a SIGTERM it gets on to its whole process group."""
    timeout = shutil.which("timeout")
    if timeout is None:
        pytest.skip("no timeout command")
    server = group_server(prefix=[timeout, "600"])
    assert server.proc is not None
    response, took = _stop_with_request_in_flight(server, lambda: server.proc.send_signal(signal.SIGTERM))
    assert response.status_code == 200 and response.text == "slow done", response.text
    assert took < 8.0, f"the stop took {took:.1f} s"
    assert server.leftover() == []
    assert not any(e["event"] == "listener_exited" for e in server.events())
    exits = [e for e in server.events() if e["event"] == "worker_exited"]
    assert exits and all(e["reason"] == "stopped" for e in exits), exits


def test_sigterm_to_the_service_alone_still_drains(group_server) -> None:
    server = group_server()
    assert server.proc is not None
    response, took = _stop_with_request_in_flight(server, lambda: server.proc.send_signal(signal.SIGTERM))
    _check_clean_stop(server, response, took)


def test_group_signal_with_no_request_in_flight_stops_quickly(group_server) -> None:
    server = group_server()
    assert server.proc is not None
    assert httpx.get(server.url("/pid"), timeout=30).status_code == 200
    server.remember_descendants()
    started = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 6.0
    assert server.leftover() == []


def test_sigterm_to_one_worker_alone_recycles_it(group_server) -> None:
    """A SIGTERM meant for one worker (an administrator's ``kill``, wfastcgi's
    WSGI_RESTART_FILE_REGEX) is reported to the service, which, not stopping itself,
    recycles that worker: a replacement serves, the old one drains."""
    server = group_server()
    old = int(httpx.get(server.url("/pid"), timeout=30).text)
    # application code sees Poolhouse's handlers, not SIG_IGN (children started by the
    # application get the default dispositions back at exec)
    handlers = httpx.get(server.url("/handlers"), timeout=30).text
    assert "Handlers.SIG_IGN" not in handlers and "Handlers.SIG_DFL" not in handlers, handlers
    os.kill(old, signal.SIGTERM)
    server.wait_for(lambda: int(httpx.get(server.url("/pid"), timeout=30).text) != old, timeout=30, interval=0.2)
    server.wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE,
                    timeout=30)
    events = server.events()
    assert any(e["event"] == "worker_signalled" and e["pid"] == old for e in events)
    exits = [e for e in events if e["event"] == "worker_exited" and e["pid"] == old]
    assert exits and exits[0]["reason"] == "stopped"


# a backend with the default SIGTERM disposition (it dies at once, in-flight request and all)
PLATFORM_APP = """\
import http.server, os, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow?3":
            time.sleep(3)
        body = b"slow done" if self.path.startswith("/slow") else b"1"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["HTTP_PLATFORM_PORT"])), Handler).serve_forever()
"""

PLATFORM_WEB = f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <system.webServer>
    <handlers>
      <add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" resourceType="Unspecified" />
    </handlers>
    <httpPlatform processPath="{sys.executable}" arguments="main.py" startupTimeLimit="20" />
  </system.webServer>
</configuration>"""


def test_group_signal_spares_the_http_platform_process(group_server) -> None:
    """An httpPlatform process belongs to its worker: it is in a process group of its
    own, so a signal to the server's group does not cut the request it is answering; the
    worker stops it when the service has drained the worker."""
    server = group_server({"app/main.py": PLATFORM_APP, "app/web.config": PLATFORM_WEB})
    assert server.proc is not None
    response, took = _stop_with_request_in_flight(server, lambda: os.killpg(server.proc.pid, signal.SIGTERM))
    assert response.status_code == 200 and response.text == "slow done", response.text
    assert server.proc.returncode == 0 and took < 10.0
    server.wait_for(lambda: server.leftover() == [], timeout=10)
