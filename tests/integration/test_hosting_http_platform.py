"""httpPlatform (HttpPlatformHandler): a uvicorn-launched application configured as on
IIS — processPath, arguments with %HTTP_PLATFORM_PORT%, environmentVariables,
stdoutLogEnabled — started by the worker as its child and reverse-proxied; started
again after it dies; gone with the worker."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections import Counter

import httpx
import psutil

from .conftest import apphost
from .upstream import SITE

APP = """\
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(6)
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    data = json.dumps({"path": scope["path"], "query": scope["query_string"].decode(), "pid": os.getpid(),
                       "greeting": os.environ.get("APP_GREETING"), "port": os.environ.get("PORT"),
                       "platform_port": os.environ.get("HTTP_PLATFORM_PORT"), "body": len(body),
                       "xff": headers.get("x-forwarded-for"), "cwd": os.getcwd()}).encode()
    print("request", scope["path"], flush=True)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})
"""

WEB = f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <system.webServer>
    <handlers>
      <add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" resourceType="Unspecified" />
    </handlers>
    <httpPlatform processPath="{sys.executable}"
                  arguments="-m uvicorn main:app --host 127.0.0.1 --port %HTTP_PLATFORM_PORT% --log-level warning"
                  stdoutLogEnabled="true" stdoutLogFile=".\\logs\\python.log" startupTimeLimit="20"
                  requestTimeout="00:00:02">
      <environmentVariables>
        <environmentVariable name="APP_GREETING" value="hello from httpPlatform" />
        <environmentVariable name="PORT" value="%HTTP_PLATFORM_PORT%" />
      </environmentVariables>
    </httpPlatform>
  </system.webServer>
</configuration>"""

def test_http_platform_uvicorn(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(apphost(SITE), files={"www/web.config": WEB, "www/main.py": APP},
                              writable=("www/logs",))  # stdoutLogFile
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.post("/api/items?x=1", content=b"a" * 5000)
        assert r.status_code == 200, r.text
        data = r.json()
        assert (data["path"], data["query"], data["body"]) == ("/api/items", "x=1", 5000)
        assert data["greeting"] == "hello from httpPlatform"
        assert data["port"] == data["platform_port"] and data["port"].isdigit()
        assert data["xff"] == "127.0.0.1"
        assert data["cwd"] == str(server.root / "www")
        child = psutil.Process(data["pid"])
        worker_pids = {w["pid"] for w in server.workers()}
        assert child.ppid() in worker_pids  # a child of the pool's worker

        # the process dies: the next request starts it again
        os.kill(data["pid"], signal.SIGKILL)
        time.sleep(0.2)
        r = c.get("/again")
        assert r.status_code == 200 and r.json()["pid"] != data["pid"]
        new_pid = r.json()["pid"]

        # requestTimeout: a process that stays silent gets the client a 504
        assert c.get("/slow").status_code == 504
        assert c.get("/fast").status_code == 200
    logs = list((server.root / "www" / "logs").glob("python.log_*.log"))
    assert logs and "request /api/items" in "".join(p.read_text() for p in logs)
    assert "did not answer in time" in server.stderr()
    server.stop()
    server.wait_for(lambda: not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE,
                    timeout=5)


def test_http_platform_processes_per_application(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    web = WEB.replace('requestTimeout="00:00:02"', 'requestTimeout="00:00:20" processesPerApplication="3"')
    server = poolhouse_server(apphost(SITE), files={"www/web.config": web, "www/main.py": APP},
                              writable=("www/logs",))  # stdoutLogFile
    with httpx.Client(base_url=server.base, timeout=30) as c:
        ports: dict[int, str] = {}  # pid -> its %HTTP_PLATFORM_PORT%
        deadline = time.monotonic() + 30
        while len(ports) < 3 and time.monotonic() < deadline:  # started together, up one by one
            r = c.get("/who")
            assert r.status_code == 200, r.text
            ports[r.json()["pid"]] = r.json()["platform_port"]
        assert len(ports) == 3 and len(set(ports.values())) == 3  # three processes, three ports
        worker_pids = {w["pid"] for w in server.workers()}
        assert all(psutil.Process(pid).ppid() in worker_pids for pid in ports)

        seen = Counter(c.get("/rr").json()["pid"] for _ in range(30))
        assert seen == {pid: 10 for pid in ports}  # round-robin over the running processes

        victim = next(iter(ports))
        os.kill(victim, signal.SIGKILL)
        server.wait_for(lambda: psutil.Process(victim).status() == psutil.STATUS_ZOMBIE, timeout=5)
        live: set[int] = set()
        deadline = time.monotonic() + 30
        while (len(live) < 3 or victim in live) and time.monotonic() < deadline:
            r = c.get("/after")  # the others serve while the dead one starts again
            assert r.status_code == 200, r.text
            live.add(r.json()["pid"])
        assert len(live) == 3 and victim not in live
        assert live - set(ports)  # the replacement
    assert f"process {victim} exited with -9; starting it again" in server.stderr()
    logs = list((server.root / "www" / "logs").glob("python.log_*.log"))  # one file per process
    assert {p.name.rsplit("_", 1)[1] for p in logs} == {"1.log", "2.log", "3.log"}


# A backend of its own (not uvicorn), so a test can make one process stop listening and
# stay alive a while before exiting: the window a SIGKILLed process has while the kernel
# tears it down, made long enough to be sure to hit.
BACKEND = """\
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer(b"")

    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def answer(self, body):
        data = json.dumps({"pid": os.getpid(), "port": server.server_address[1], "path": self.path,
                           "body": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")  # each request on a new connection to the port
        self.end_headers()
        self.wfile.write(data)
        if self.path == "/stop-listening":
            threading.Thread(target=stop, daemon=True).start()

def stop():
    server.shutdown()
    server.server_close()  # connections to the port are refused from now on
    time.sleep(1.5)        # ... while the process is still alive
    os._exit(3)

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever(poll_interval=0.05)
threading.Event().wait()  # until stop() ends the process
"""

BACKEND_WEB = f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <system.webServer>
    <handlers>
      <add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" resourceType="Unspecified" />
    </handlers>
    <httpPlatform processPath="{sys.executable}" arguments="backend.py %HTTP_PLATFORM_PORT%"
                  processesPerApplication="3" startupTimeLimit="20" requestTimeout="00:00:20" />
  </system.webServer>
</configuration>"""


def wait_refused(port: int) -> None:
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # accepted by the kernel while the port was closing
        time.sleep(0.01)
    raise AssertionError(f"port {port} still accepts connections")


def test_http_platform_fails_over_from_a_process_that_refuses(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """A process whose port refuses connections before the worker has seen it exit: the
    requests routed to it (a POST with a body too: nothing of it was sent) go to the
    others, and it is started again once it has exited."""
    server = poolhouse_server(apphost(SITE), files={"www/web.config": BACKEND_WEB, "www/backend.py": BACKEND})
    with httpx.Client(base_url=server.base, timeout=30) as c:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 3 and time.monotonic() < deadline:
            r = c.get("/who")
            assert r.status_code == 200, r.text
            pids.add(r.json()["pid"])
        assert len(pids) == 3
        r = c.get("/stop-listening")
        assert r.status_code == 200
        victim = r.json()["pid"]
        wait_refused(r.json()["port"])  # it has stopped listening; it exits 1.5 s later
        assert psutil.pid_exists(victim) and psutil.Process(victim).status() != psutil.STATUS_ZOMBIE
        served: Counter[int] = Counter()
        for i in range(12):  # each process's turn comes four times
            r = c.post("/during", content=b"x" * 1000) if i % 2 else c.get("/during")
            assert r.status_code == 200, r.text
            assert r.json()["body"] == (1000 if i % 2 else 0)
            served[r.json()["pid"]] += 1
        assert victim not in served and set(served) == pids - {victim}
        assert psutil.pid_exists(victim)  # all that while, the worker had not seen it exit
        live: set[int] = set()
        deadline = time.monotonic() + 30
        while (len(live) < 3 or victim in live) and time.monotonic() < deadline:
            r = c.get("/after")
            assert r.status_code == 200, r.text
            live.add(r.json()["pid"])
        assert len(live) == 3 and victim not in live and len(live - pids) == 1  # started again
    errors = server.stderr()
    assert f"process {victim} exited with 3; starting it again" in errors
    assert "Connection refused; the request goes to another process" in errors


def test_http_platform_errors_logged_with_their_sub_status(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """No module hooks the URL (no pipeline context): the 502.3 of a process that refuses
    the connection, and the 502.5 of one that cannot start, reach the W3C log with their
    sub-status, as they do through the pipeline."""
    single = BACKEND_WEB.replace('processesPerApplication="3"', 'processesPerApplication="1"')
    # the stock modules are locked for web.config; applicationHost.config may clear them
    bare = ('<location path="S"><system.webServer><modules><clear /><add name="httpPlatformHandler" />'
            '</modules></system.webServer></location>')
    # (the handler mapping is inherited from the site's root web.config)
    broken = ('<configuration><system.webServer><httpPlatform processPath="./no-such-program" '
              'startupTimeLimit="2" startupRetryCount="1" /></system.webServer></configuration>')
    site = SITE.replace("</application>", """</application>
  <application path="/broken" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/broken" />
  </application>""", 1)
    server = poolhouse_server(apphost(site, extra=bare), files={"www/web.config": single, "www/backend.py": BACKEND,
                                                    "broken/web.config": broken})
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/stop-listening")
        assert r.status_code == 200
        wait_refused(r.json()["port"])  # no longer listening, not yet exited: the one process refuses
        r = c.get("/refused")
        assert r.status_code == 502 and "502.3" in r.text, r.text
        r = c.get("/broken/x")
        assert r.status_code == 502 and "502.5" in r.text, r.text
    logs = server.state_dir / "logs" / "W3SVC1"

    def w3c() -> str:
        return "".join(p.read_text() for p in logs.glob("*.log")) if logs.exists() else ""
    server.wait_for(lambda: " /broken/x " in w3c())
    lines = w3c().splitlines()
    # ... cs-uri-stem cs-uri-query s-port ... sc-status sc-substatus sc-win32-status time-taken
    assert any(" /refused " in line and " 502 3 " in line for line in lines), lines
    assert any(" /broken/x " in line and " 502 5 " in line for line in lines), lines
