"""The W3C access log the listener writes per site: path, header block, IIS's default
field set and order, values (UTC), logExtFileFlags, disabled logging, and that goaccess
parses it with its W3C format."""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Server, apphost

APP = '''
def app(environ, start_response):
    body = b"hello"
    status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
WEB_CONFIG = ('<configuration><system.webServer><handlers><add name="py" path="*" verb="*" '
              'modules="WsgiModule" scriptProcessor="app:app" /></handlers></system.webServer>'
              '</configuration>')
DEFAULT_FIELDS = ("date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip "
                  "cs(User-Agent) cs(Referer) sc-status sc-substatus sc-win32-status time-taken")


def config(log_file: str = "") -> str:
    return apphost(
        f'<site name="S" id="7"><application path="/" applicationPool="DefaultAppPool">'
        f'<virtualDirectory path="/" physicalPath="{{root}}/www" /></application>'
        f'<bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" /></bindings>'
        f'{log_file}</site>'
    )


FILES = {"www/app.py": APP, "www/web.config": WEB_CONFIG}


def get(server: Server, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def log_lines(directory: Path, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("u_ex*.log"))
        if files:
            lines = files[-1].read_text().splitlines()
            if any(not line.startswith("#") for line in lines):
                return lines
        time.sleep(0.1)
    raise AssertionError(f"no log lines in {directory}")


def test_default_fields_and_values(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=FILES)
    assert get(server, "/a%20b/c?x=1&y=2", {"User-Agent": "tester 1.0", "Referer": "http://r/"}) == 200
    assert get(server, "/missing") == 404
    time.sleep(1.2)
    directory = server.state_dir / "logs" / "W3SVC7"
    lines = log_lines(directory)
    name = sorted(directory.glob("u_ex*.log"))[-1].name
    assert name == dt.datetime.now(dt.timezone.utc).strftime("u_ex%y%m%d.log")
    assert lines[0].startswith("#Software: ")
    assert lines[1] == "#Version: 1.0"
    assert lines[2].startswith("#Date: ")
    assert lines[3] == "#Fields: " + DEFAULT_FIELDS
    entries = [line.split(" ") for line in lines if not line.startswith("#")]
    assert len(entries) == 2
    first = dict(zip(DEFAULT_FIELDS.split(), entries[0]))
    now = dt.datetime.now(dt.timezone.utc)
    logged = dt.datetime.strptime(first["date"] + " " + first["time"], "%Y-%m-%d %H:%M:%S")
    assert abs((now.replace(tzinfo=None) - logged).total_seconds()) < 30  # UTC
    assert first["s-ip"] == "127.0.0.1" and first["s-port"] == str(server.port)
    assert first["cs-method"] == "GET"
    assert first["cs-uri-stem"] == "/a%20b/c" and first["cs-uri-query"] == "x=1&y=2"
    assert first["cs-username"] == "-" and first["c-ip"] == "127.0.0.1"
    assert first["cs(User-Agent)"] == "tester+1.0" and first["cs(Referer)"] == "http://r/"
    assert (first["sc-status"], first["sc-substatus"], first["sc-win32-status"]) == ("200", "0", "0")
    assert int(first["time-taken"]) >= 0
    second = dict(zip(DEFAULT_FIELDS.split(), entries[1]))
    assert second["sc-status"] == "404" and second["cs-uri-query"] == "-"


def test_ext_file_flags_directory_and_disabled(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "elsewhere"
    server = poolhouse_server(config(
        f'<logFile directory="{logs}" logExtFileFlags="BytesSent, Method, Date, HttpStatus, Host, ProtocolVersion" />'
    ), files=FILES)
    assert get(server, "/x") == 200
    time.sleep(1.2)
    lines = log_lines(logs / "W3SVC7")
    assert lines[3] == "#Fields: date cs-method cs-version cs-host sc-status sc-bytes"
    date, method, version, host, status, sent = lines[4].split(" ")
    assert (method, version, host, status) == ("GET", "HTTP/1.1", f"127.0.0.1:{server.port}", "200")
    assert int(sent) > len("hello")

    off = poolhouse_server(config('<logFile enabled="false" />'), files=FILES)
    assert get(off, "/x") == 200
    time.sleep(1.5)
    assert not (off.state_dir / "logs" / "W3SVC7").exists() or not list(
        (off.state_dir / "logs" / "W3SVC7").glob("u_ex*.log"))


def test_listener_errors_go_to_httperr_not_the_access_log(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=FILES)
    assert get(server, "/ok") == 200
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/../../etc/passwd")
    assert conn.getresponse().status == 400
    conn.close()
    time.sleep(1.2)
    lines = [line for line in log_lines(server.state_dir / "logs" / "W3SVC7") if not line.startswith("#")]
    assert len(lines) == 1 and " /ok " in lines[0]
    assert " URL " in server.httperr()


def test_goaccess_parses_the_log(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("goaccess") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "goaccess"], capture_output=True, timeout=300)
    if shutil.which("goaccess") is None:
        pytest.skip("goaccess is not installed and could not be installed with apt-get")
    server = poolhouse_server(config(), files=FILES)
    for i in range(5):
        assert get(server, f"/page{i}?q={i}", {"User-Agent": "Mozilla/5.0 (X11; Linux)"}) == 200
    time.sleep(1.2)
    directory = server.state_dir / "logs" / "W3SVC7"
    log_lines(directory)
    path = sorted(directory.glob("u_ex*.log"))[-1]
    out = tmp_path / "report.json"
    proc = subprocess.run(
        ["goaccess", str(path), "--log-format=W3C", "--date-format=%Y-%m-%d", "--time-format=%H:%M:%S",
         "-o", str(out), "--no-global-config"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(out.read_text())
    assert report["general"]["total_requests"] == 5
    assert report["general"]["failed_requests"] == 0
