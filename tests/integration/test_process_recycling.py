"""Recycling and crashes under load: a client keeps 8 connections busy while workers are
killed, recycled (overlapped and not) and recycled by their own thresholds (requests,
private memory, time, schedule), and not one request may fail."""

from __future__ import annotations

import datetime
import http.client
import os
import signal
import threading
import time
from collections import Counter

import httpx
import psutil

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG, one_site

APP = """\
import os, time

HELD = []

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/alloc":
        HELD.append(b"x" * (int(environ.get("QUERY_STRING") or 64) << 20))
        body = b"allocated"
    else:
        body = b"hello " + path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

FILES = {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG}


def site(pool_attrs: str = "", inner: str = "") -> str:
    """One site on AppPool (the process-model tests' own), ``inner`` inside the pool."""
    return one_site(pool_attrs, inner)


class Load:
    """``clients`` threads sending GET /pid on keep-alive connections until stopped;
    counts answers by status and by pid, and every failure with its reason."""

    def __init__(self, port: int, clients: int = 8, path: str = "/pid") -> None:
        self.port = port
        self.path = path
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.pids: Counter[int] = Counter()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_event.is_set():
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                with self.lock:
                    if resp.status == 200:
                        self.ok += 1
                        self.pids[int(body)] += 1
                    else:
                        self.failures.append(f"HTTP {resp.status}: {body[:100]!r}")
                if resp.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            except Exception as exc:  # a failed request: record and reconnect
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def ready_pids(server) -> list[int]:
    return [w["pid"] for w in server.workers("AppPool") if w["state"] == "Ready"]


def test_sigkill_every_2s_under_load_loses_nothing(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<failure rapidFailProtectionMaxCrashes="1000" />'), FILES)
    assert httpx.get(server.url("/pid"), timeout=10).status_code == 200
    killed = []
    with Load(server.port) as load:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(2)
            pids = ready_pids(server)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
    assert load.failures == [], load.failures[:10]
    assert len(killed) >= 8 and load.ok > 500
    assert len(load.pids) >= len(killed)  # every replacement served
    exits = [e for e in server.events() if e["event"] == "worker_exited" and e.get("pid") in killed]
    assert all(e["id"] == 5009 for e in exits)


def test_recycle_every_second_under_load_overlapped(poolhouse_server) -> None:
    server = poolhouse_server(site(), FILES)
    assert httpx.get(server.url("/pid"), timeout=10).status_code == 200
    with Load(server.port) as load:
        for _ in range(10):
            time.sleep(1)
            server.api("recycle", what="apppool", name="AppPool")
        time.sleep(1)
    assert load.failures == [], load.failures[:10]
    assert len(load.pids) >= 5, load.pids
    recycles = [e for e in server.events() if e["event"] == "worker_recycle"]
    assert recycles and all(e["id"] == 5079 and e["overlapped"] for e in recycles)
    # the old worker drained only once its replacement was ready
    states = [e for e in server.events() if e["event"] == "worker_state"]
    for drain in (e for e in states if e["new"] == "Draining"):
        assert "replaced by" in drain["reason"]


def test_recycle_not_overlapped_loses_nothing_from_the_queue(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<recycling disallowOverlappingRotation="true" />'), FILES)
    assert httpx.get(server.url("/pid"), timeout=10).status_code == 200
    with Load(server.port) as load:
        for _ in range(4):
            time.sleep(1)
            server.api("recycle", what="apppool", name="AppPool")
        time.sleep(1)
    assert load.failures == [], load.failures[:10]
    assert len(load.pids) >= 3
    # stop-then-start: never two workers of the pool alive at once
    events = server.events()
    alive = 0
    for e in events:
        if e["event"] == "worker_started":
            alive += 1
            assert alive == 1, "a replacement started before the recycled worker exited"
        elif e["event"] == "worker_exited":
            alive -= 1


def test_recycle_after_requests(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<recycling><periodicRestart requests="50" /></recycling>'), FILES)
    pids = []
    deadline = time.monotonic() + 10  # the old worker serves until its replacement is ready
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            pids.append(int(client.get(server.url("/pid")).text))
            if len(set(pids)) > 1:
                break
    first = pids[0]
    assert len(set(pids)) == 2, "the worker was not recycled after ~50 requests"
    assert pids.count(first) >= 47
    [recycle] = [e for e in server.events() if e["event"] == "worker_recycle"]
    assert recycle["id"] == 5075 and recycle["reason"] == "requests" and 47 <= recycle["requests"] <= 50


def test_log_event_on_recycle_leaves_unlisted_reasons_out(poolhouse_server) -> None:
    """recycling/@logEventOnRecycle: a reason not listed recycles all the same, without
    its event (5075 here), as IIS writes no event log entry for it."""
    server = poolhouse_server(site(inner='<recycling logEventOnRecycle="Time, Memory">'
                                         '<periodicRestart requests="20" /></recycling>'), FILES)
    pids: set[int] = set()
    deadline = time.monotonic() + 10
    with httpx.Client(timeout=10) as client:
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(int(client.get(server.url("/pid")).text))
    assert len(pids) == 2, "the worker was not recycled after ~20 requests"
    assert not [e for e in server.events() if e["event"] == "worker_recycle"]
    assert "not in logEventOnRecycle" in server.stderr()


def test_recycle_on_private_memory(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<recycling><periodicRestart privateMemory="81920" /></recycling>'), FILES)
    pid = int(httpx.get(server.url("/pid"), timeout=10).text)
    wp = server.workers("AppPool")[0]
    assert wp["private_memory_kb"] < 81920
    assert httpx.get(server.url("/alloc?120"), timeout=10).status_code == 200
    event = server.wait_for(lambda: [e for e in server.events() if e["event"] == "worker_recycle"], timeout=10)[0]
    assert event["id"] == 5117 and event["reason"] == "privateMemory" and event["private_memory_kb"] > 81920
    server.wait_for(lambda: int(httpx.get(server.url("/pid"), timeout=10).text) != pid, timeout=10)
    server.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_time_schedule_and_idle_timeout(poolhouse_server) -> None:
    """The minute-granular settings together, in one minute: periodicRestart/@time,
    a periodicRestart/schedule time, idleTimeout Terminate and Suspend."""
    now = datetime.datetime.now()
    at = (now + datetime.timedelta(seconds=65)).replace(second=0, microsecond=0)
    pools = (
        '<add name="TimePool"><processModel idleTimeout="00:00:00" />'
        '<recycling><periodicRestart time="00:01:00" /></recycling></add>'
        '<add name="SchedulePool"><processModel idleTimeout="00:00:00" />'
        f'<recycling><periodicRestart><schedule><add value="{at:%H:%M}:00" /></schedule></periodicRestart>'
        '</recycling></add>'
        '<add name="IdlePool"><processModel idleTimeout="00:01:00" /></add>'
        '<add name="SuspendPool"><processModel idleTimeout="00:01:00" idleTimeoutAction="Suspend" /></add>'
    )
    names = ("Time", "Schedule", "Idle", "Suspend")
    apps = "".join(
        f'<application path="/{p}" applicationPool="{p}Pool">'
        f'<virtualDirectory path="/" physicalPath="{{root}}/{p}" /></application>'
        for p in names)
    files = {f"{p}/{name}": text for p in names for name, text in
             (("app.py", APP), ("web.config", WSGI_WEBCONFIG))}
    config = apphost(sites=f"""
        <site name="Main" id="1">
          <application path="/" applicationPool="TimePool"><virtualDirectory path="/" physicalPath="{{root}}" /></application>
          {apps}
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" /></bindings>
        </site>""", pools=pools)
    server = poolhouse_server(config, files)

    def pid(name: str) -> int:
        return int(httpx.get(server.url(f"/{name}/pid"), timeout=10).text)

    before = {name: pid(name) for name in ("Time", "Schedule", "Idle", "Suspend")}

    def done() -> bool:
        ids = {(e.get("apppool"), e.get("id")) for e in server.events()}
        return (("TimePool", 5074) in ids and ("SchedulePool", 5076) in ids and ("IdlePool", 5186) in ids
                and any(e["event"] == "worker_suspended" for e in server.events()))

    server.wait_for(done, timeout=90, interval=1.0)
    assert not [w for w in server.workers("IdlePool") if w["state"] != "Dead"]  # gone after idle
    [suspended] = server.workers("SuspendPool")
    assert suspended["state"] == "Suspended" and psutil.Process(suspended["pid"]).status() == psutil.STATUS_STOPPED
    # back on the next request: a new worker for Terminate, the same one resumed for Suspend
    assert pid("Idle") != before["Idle"]
    assert pid("Suspend") == before["Suspend"]
    assert pid("Time") != before["Time"] and pid("Schedule") != before["Schedule"]
    idle = [e for e in server.events() if e.get("id") == 5186 and e["event"] == "worker_idle_shutdown"]
    assert idle and idle[0]["idle_timeout_minutes"] == 1
