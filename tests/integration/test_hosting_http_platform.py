"""httpPlatform (HttpPlatformHandler): a uvicorn-launched application configured as on
IIS — processPath, arguments with %HTTP_PLATFORM_PORT%, environmentVariables,
stdoutLogEnabled — started by the worker as its child and reverse-proxied; started
again after it dies; gone with the worker."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

import httpx
import psutil

from .conftest import apphost

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

SITE = """
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


def test_http_platform_uvicorn(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(apphost(SITE), files={"www/web.config": WEB, "www/main.py": APP})
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
    server = poolhouse_server(apphost(SITE), files={"www/web.config": web, "www/main.py": APP})
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
