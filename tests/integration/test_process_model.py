"""The three kinds of process working together: on-demand activation, crash detection
and replacement, queued requests surviving, exit codes, SIGTERM, the management CLI."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import time

import httpx
import psutil
import pytest

from .conftest import apphost

WSGI_WEBCONFIG = """\
<configuration>
  <system.webServer>
    <handlers>
      <add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />
    </handlers>
  </system.webServer>
</configuration>
"""

APP = """\
import os, time

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 0.5))
        body = b"slow"
    elif path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"first, ")
        return [b"then returned"]
    elif path == "/raise":
        raise RuntimeError("boom from the application")
    elif path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    elif path == "/environ":
        import json
        body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
    else:
        body = b"hello " + path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def one_site(pool_attrs: str = "", python: str = "") -> str:
    return apphost(
        sites="""
        <site name="Main" id="1">
          <application path="/" applicationPool="AppPool">
            <virtualDirectory path="/" physicalPath="{root}/app" />
          </application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools=f'<add name="AppPool" {pool_attrs}>{python}</add>',
    )


FILES = {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG, "app/static.txt": "static file\n"}


def get(server, path: str, timeout: float = 20.0) -> httpx.Response:
    return httpx.get(server.url(path), timeout=timeout)


def test_on_demand_worker_and_cli(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    assert server.workers() == []  # nothing runs before the first request
    r = get(server, "/pid")
    assert r.status_code == 200
    pid = int(r.text)
    [wp] = server.workers("AppPool")
    assert wp["pid"] == pid and wp["state"] == "Ready"
    # the worker is a fresh interpreter running poolhouse.worker, child of the service
    proc = psutil.Process(pid)
    assert "poolhouse.worker" in " ".join(proc.cmdline())
    assert proc.ppid() == server.proc.pid
    listed = json.loads(server.cli("list", "wp", "--json").stdout)
    assert listed[0]["pid"] == pid and listed[0]["apppool"] == "AppPool"
    assert listed[0]["requests"] >= 1 and "state" in listed[0]
    pools = json.loads(server.cli("list", "apppools", "--json").stdout)
    assert pools == [p for p in pools if p["name"] == "AppPool"] and pools[0]["state"] == "Started"
    sites = server.cli("list", "sites")
    assert "Main" in sites.stdout and sites.returncode == 0


def test_sigkill_worker_is_replaced(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    pid1 = int(get(server, "/pid").text)
    os.kill(pid1, signal.SIGKILL)
    pid2 = int(get(server, "/pid").text)
    assert pid2 != pid1
    exits = [e for e in server.events() if e["event"] == "worker_exited"]
    assert exits and exits[0]["pid"] == pid1 and "SIGKILL" in exits[0]["reason"]


def test_requests_queued_while_worker_starts(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: get(server, f"/n{i}"), range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert sorted(r.text for r in results) == sorted(f"hello /n{i}" for i in range(20))
    assert len([e for e in server.events() if e["event"] == "worker_started"]) == 1


def test_application_exception_is_500_and_logged(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    r = get(server, "/raise")
    assert r.status_code == 500
    assert get(server, "/ok").status_code == 200  # the worker survived
    server.wait_for(lambda: "boom from the application" in server.stderr())
    assert "Traceback" in server.stderr()


def test_import_failure_exit_code_and_rapid_fail(poolhouse_server) -> None:
    files = dict(FILES)
    files["app/app.py"] = "import no_such_module_anywhere\n"
    server = poolhouse_server(one_site('><failure rapidFailProtectionMaxCrashes="3" /'), files)
    r = get(server, "/x", timeout=30)
    assert r.status_code == 503  # the pool was stopped by rapid-fail protection
    events = server.events()
    exits = [e for e in events if e["event"] == "worker_exited"]
    assert len(exits) >= 3 and all(e["exit_code"] == 3 for e in exits)
    assert all(e["reason"] == "application failed to load" for e in exits)
    assert any(e["event"] == "apppool_state" and e["new"] == "RapidFail" for e in events)
    server.wait_for(lambda: "AppOffline" in server.httperr(), timeout=3)
    assert "no_such_module_anywhere" in server.stderr()
    # fix the application, start the pool again: serving
    (server.root / "app" / "app.py").write_text(APP)
    assert server.cli("start", "apppool", "AppPool").returncode == 0
    assert get(server, "/pid").status_code == 200


def test_in_flight_post_on_dead_worker_gets_502_get_is_retried(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    pid = int(get(server, "/pid").text)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        post = pool.submit(lambda: httpx.post(server.url("/slow?2"), content=b"x", timeout=20))
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        r = post.result()
    assert r.status_code == 502
    server.wait_for(lambda: "Connection_Abandoned_By_AppPool" in server.httperr(), timeout=5)
    # an idempotent GET in flight is replayed on the replacement worker
    pid2 = int(get(server, "/pid").text)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(lambda: get(server, "/slow?1.5"))
        time.sleep(0.5)
        os.kill(pid2, signal.SIGKILL)
        assert slow.result().status_code == 200


def test_malformed_request_then_still_serving(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GARBAGE \x01\x02 NOT HTTP\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    assert get(server, "/ok").text == "hello /ok"
    server.wait_for(lambda: "BadRequest" in server.httperr(), timeout=3)


def test_sigterm_drains_in_flight_and_leaves_nothing(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    get(server, "/pid")
    server.remember_descendants()
    assert len(server.descendants) >= 2  # listener + worker
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: get(server, "/slow?1"))
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert slow.result().text == "slow"  # finished, not cut off
    assert server.proc.wait(20) == 0
    assert server.leftover() == []
    # no new connections once stopped
    with pytest.raises(httpx.ConnectError):
        get(server, "/pid", timeout=2)


def test_recycle_stop_start_pool(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    pid1 = int(get(server, "/pid").text)
    out = server.cli("recycle", "apppool", "AppPool")
    assert out.returncode == 0, out.stderr
    server.wait_for(lambda: [w for w in server.workers("AppPool") if w["pid"] != pid1 and w["state"] == "Ready"])
    pid2 = int(get(server, "/pid").text)
    assert pid2 != pid1
    server.wait_for(lambda: not psutil.pid_exists(pid1) or psutil.Process(pid1).status() == psutil.STATUS_ZOMBIE)
    assert server.cli("stop", "apppool", "AppPool").returncode == 0
    assert get(server, "/pid").status_code == 503
    assert server.cli("start", "apppool", "AppPool").returncode == 0
    assert get(server, "/pid").status_code == 200
    bad = server.cli("recycle", "apppool", "NoSuchPool")
    assert bad.returncode != 0 and "NoSuchPool" in bad.stderr


def test_threaded_pool_runs_requests_concurrently(poolhouse_server) -> None:
    server = poolhouse_server(one_site(python='<python threads="8" />'), FILES)
    get(server, "/pid")
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: get(server, "/slow?1"), range(8)))
    elapsed = time.monotonic() - start
    assert all(r.status_code == 200 for r in results)
    assert elapsed < 4.0, f"8 one-second requests took {elapsed:.1f} s on an 8-thread pool"


def test_listener_restart_keeps_backlog(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES)
    assert get(server, "/ok").status_code == 200
    listener = next(p for p in psutil.Process(server.proc.pid).children()
                    if "poolhouse.listener" in " ".join(p.cmdline()))
    listener.kill()
    listener.wait(5)
    # connect while no listener runs: the kernel backlog of the service's socket holds it
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", "/ok")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"hello /ok"
    assert any(e["event"] == "listener_exited" for e in server.events())


def test_wsgi_environ_is_pep3333(poolhouse_server) -> None:
    files = dict(FILES)
    files["app/app.py"] = APP + """
from wsgiref.validate import validator
_inner = app
app = validator(_inner)
"""
    server = poolhouse_server(one_site(), files)
    r = get(server, "/environ?a=1")
    assert r.status_code == 200, server.stderr()
    env = r.json()
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/environ" and env["QUERY_STRING"] == "a=1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["wsgi.url_scheme"] == "http"
    assert env["SCRIPT_NAME"] == "" and env["HTTP_HOST"].startswith("127.0.0.1")
    assert get(server, "/write").text == "written first, then returned"  # legacy write()
    r = httpx.post(server.url("/echo"), content=b"abc" * 1000, timeout=10)
    assert r.content == b"abc" * 1000
    assert "AssertionError" not in server.stderr() and "WSGIWarning" not in server.stderr()


def test_sighup_reload_adds_a_binding_and_keeps_serving(poolhouse_server) -> None:
    server = poolhouse_server(one_site(), FILES, extra_ports=1)
    assert get(server, "/ok").status_code == 200
    second = server.ports[1]
    text = server.config.read_text().replace(
        f'<binding protocol="http" bindingInformation="127.0.0.1:{server.port}:" />',
        f'<binding protocol="http" bindingInformation="127.0.0.1:{server.port}:" />'
        f'<binding protocol="http" bindingInformation="127.0.0.1:{second}:" />')
    server.config.write_text(text)
    server.proc.send_signal(signal.SIGHUP)
    r = server.wait_for(lambda: _try_get(f"http://127.0.0.1:{second}/ok"), timeout=5)
    assert r.text == "hello /ok"
    assert get(server, "/ok").status_code == 200
    # a broken file is refused: the running configuration keeps serving
    server.config.write_text(text.replace("<sites>", "<sites><bogus/>"))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda: any(e["event"] == "config_refused" for e in server.events()), timeout=5)
    refused = [e for e in server.events() if e["event"] == "config_refused"][0]
    assert "applicationHost.config" in refused["reason"] and "bogus" in refused["reason"]
    assert get(server, "/ok").status_code == 200


def _try_get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
