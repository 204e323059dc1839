"""Web gardens grow under load: a pool with ``maxProcesses="N"`` whose blocking
application is kept busy by N-way (and more) concurrency runs N workers, and ``poolhouse
list wp`` shows them.  A worker is busy when it has no free credit: a threaded worker has
one per thread, an inline worker (``threads="0"``) as many as it can answer promptly at
its measured service time (worker/credits.py) — for an application that sleeps 50 ms, one."""

from __future__ import annotations

import json
import threading
import time

import httpx

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG

APP = """\
import os, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(0.05)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

FILES = {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG}


def site(pool: str) -> str:
    return apphost(
        sites="""
        <site name="Main" id="1">
          <application path="/" applicationPool="AppPool">
            <virtualDirectory path="/" physicalPath="{root}/app" />
          </application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools=pool,
    )


class Load:
    """``clients`` clients, each sending requests one after another until stopped;
    ``pids`` holds the pid that answered each request, in order."""

    def __init__(self, server, clients: int, path: str = "/sleep") -> None:
        self.pids: list[int] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(server, path), daemon=True)
                         for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, server, path: str) -> None:
        with httpx.Client(timeout=20) as c:
            while not self._stop.is_set():
                r = c.get(server.url(path))
                self.statuses.append(r.status_code)
                self.pids.append(int(r.text) if r.status_code == 200 else 0)

    def stop(self) -> list[int]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        assert set(self.statuses) == {200}, set(self.statuses)
        return self.pids


def ready(server) -> set[int]:
    return {w["pid"] for w in server.workers("AppPool") if w["state"] == "Ready"}


def grows_to_three(server, clients: int) -> None:
    assert httpx.get(server.url("/sleep"), timeout=20).status_code == 200
    load = Load(server, clients)
    try:
        server.wait_for(lambda: len(ready(server)) == 3, timeout=40, interval=0.2)
        mark = len(load.pids)
        time.sleep(2.0)
        late = load.pids[mark:]
    finally:
        load.stop()
    # the three of them share the load now
    assert set(late) == ready(server), (set(late), server.workers("AppPool"))
    listed = server.cli("list", "wp")
    assert listed.returncode == 0
    for pid in ready(server):
        assert str(pid) in listed.stdout
    assert len(json.loads(server.cli("list", "wp", "--json").stdout)) == 3


def test_inline_garden_grows_to_max_processes(poolhouse_server) -> None:
    server = poolhouse_server(site('<add name="AppPool"><processModel maxProcesses="3" /><python threads="0" /></add>'),
                              FILES)
    grows_to_three(server, 12)


def test_threaded_garden_grows_to_max_processes(poolhouse_server) -> None:
    server = poolhouse_server(site('<add name="AppPool"><processModel maxProcesses="3" /><python threads="2" /></add>'),
                              FILES)
    grows_to_three(server, 8)


def test_a_fast_application_keeps_one_worker(poolhouse_server) -> None:
    """Concurrency alone is not load: a worker that answers promptly keeps its credits,
    so no second worker is started for a hello-world application."""
    server = poolhouse_server(site('<add name="AppPool"><processModel maxProcesses="3" /><python threads="0" /></add>'),
                              FILES)
    assert httpx.get(server.url("/fast"), timeout=20).status_code == 200
    load = Load(server, 4, "/fast")
    time.sleep(3.0)
    pids = load.stop()
    assert len(pids) > 50 and len(set(pids)) == 1
    assert len(server.workers("AppPool")) == 1
