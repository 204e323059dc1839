"""Running under systemd: the activation service's sd_notify messages, read from a
$NOTIFY_SOCKET of the test's own, and the shipped unit file, checked by
``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from poolhouse.activation.sd_notify import socket_address

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "poolhouse.service"

APP = """\
import os

def app(environ, start_response):
    body = repr(sorted(k for k in os.environ if k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

CONFIG = apphost(sites="""
    <site name="Main" id="1">
      <application path="/" applicationPool="AppPool">
        <virtualDirectory path="/" physicalPath="{root}/app" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""", pools='<add name="AppPool" />')


class Datagrams:
    """The service manager's end: everything the server notifies, message by message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[dict[str, str]] = []

    def collect(self, until: float) -> None:
        while time.monotonic() < until:
            self.sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.messages:
                if key in msg and (value is None or msg[key] == value):
                    return msg
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {key}={value or '*'} among {self.messages}")
            self.collect(min(deadline, time.monotonic() + 0.2))


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract", "path"])
def test_sd_notify_ready_status_watchdog_stopping(poolhouse_server, monkeypatch, tmp_path, abstract) -> None:
    name = f"@poolhouse-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(socket_address(name))
    manager = Datagrams(sock)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    try:
        server = poolhouse_server(CONFIG, {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG})
        ready = manager.wait_for("READY", "1")
        assert ready.get("MAINPID") == str(server.proc.pid)
        assert re.match(r"\d+/\d+ application pools started, \d+ worker\(s\) ready", ready["STATUS"]), ready
        # the application (and the listener) cannot speak for the service
        assert httpx.get(server.url("/"), timeout=30).text == "[]"
        # at least three pings in two seconds (one each 0.5 s)
        manager.collect(time.monotonic() + 2.0)
        assert sum(1 for m in manager.messages if m.get("WATCHDOG") == "1") >= 3, manager.messages
        server.wait_for(lambda: manager.collect(time.monotonic() + 0.5) or any(
            "1 worker(s) ready" in m.get("STATUS", "") for m in manager.messages), timeout=25)
        # systemctl reload: RELOADING=1, then READY=1 again
        before = len(manager.messages)
        server.proc.send_signal(signal.SIGHUP)
        manager.wait_for("RELOADING", "1")
        manager.collect(time.monotonic() + 1.0)
        assert any(m.get("READY") == "1" for m in manager.messages[before:]), manager.messages[before:]
        assert server.stop() == 0
        stopping = manager.wait_for("STOPPING", "1", timeout=5)
        assert stopping["STATUS"].startswith("draining")
    finally:
        sock.close()


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_declares_what_the_service_does() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert service["Delegate"] == "yes"
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    # the default shutdownTimeLimit (90 s) fits in the stop timeout with room to exit
    assert int(service["TimeoutStopSec"]) >= 90 + 10
    # nothing that would break pool identities or the pools' cgroups
    assert "ProtectControlGroups" not in service
    caps = service["CapabilityBoundingSet"].split()
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_NET_BIND_SERVICE"} <= set(caps)
    assert "/var/lib/poolhouse" in service["ExecStart"] and "/var/lib/poolhouse" in service["ReadWritePaths"]


def test_systemd_analyze_verify_passes(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make system-deps installs it with apt-get)")
    # the unit as installed from this checkout: ExecStart names this environment's poolhouse
    poolhouse = Path(sys.executable).parent / "poolhouse"
    assert poolhouse.exists()
    unit = tmp_path / "poolhouse.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/poolhouse", str(poolhouse)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "poolhouse.service" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
