"""A listener crash does not cost the pools their warm workers: the activation service
starts a new listener on the same sockets and re-attaches every running worker to it (new
queue sockets over the workers' descriptor channels), so the same processes keep serving
with their application state, and no worker exits or cold-starts."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time

import httpx
import psutil

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG

APP = """\
import os, time

hits = 0

def app(environ, start_response):
    global hits
    path = environ["PATH_INFO"]
    if path == "/break":
        # a hostile application: a frame header announcing 4 GiB on its own queue socket
        import gc, struct
        from poolhouse.worker.process import WorkerProcess
        worker = next(o for o in gc.get_objects() if isinstance(o, WorkerProcess))
        worker.transport.write(struct.pack("<BBII", 2, 0, 1, 0xFFFFFFFF))
        body = b"broken"
    elif path == "/write-fd-channel":
        # a hostile application: write on the channel that brings descriptors from the
        # service (and offer it one of ours)
        import array, gc, socket
        from poolhouse.worker.process import WorkerProcess
        worker = next(o for o in gc.get_objects() if isinstance(o, WorkerProcess))
        sock = worker.fd_receiver._sock
        try:
            sock.sendmsg([b'{"op": "attach_worker"}'],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]))])
            body = b"sent"
        except OSError as exc:
            body = type(exc).__name__.encode()
    elif path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
        body = b"slow done"
    else:
        hits += 1  # state that lives only in this process
        body = f"{os.getpid()} {hits}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

CONFIG = apphost(
    sites="""
    <site name="A" id="1">
      <application path="/" applicationPool="PoolA">
        <virtualDirectory path="/" physicalPath="{root}/a" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port0}:" /></bindings>
    </site>
    <site name="B" id="2">
      <application path="/" applicationPool="PoolB">
        <virtualDirectory path="/" physicalPath="{root}/b" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port1}:" /></bindings>
    </site>""",
    pools='<add name="PoolA"><python threads="4" /></add>'
          '<add name="PoolB" />',
)

FILES = {"a/app.py": APP, "a/web.config": WSGI_WEBCONFIG, "b/app.py": APP, "b/web.config": WSGI_WEBCONFIG}


def _hit(url: str) -> tuple[int, int]:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    pid, hits = r.text.split()
    return int(pid), int(hits)


def _listener(server) -> psutil.Process:
    return next(p for p in psutil.Process(server.proc.pid).children()
                if "poolhouse.listener" in " ".join(p.cmdline()))


def _workers(server) -> dict[int, str]:
    out = server.cli("list", "wp", "--json")
    assert out.returncode == 0, out.stderr
    return {w["pid"]: w["apppool"] for w in json.loads(out.stdout) if w["state"] == "Ready"}


def test_killed_listener_keeps_the_warm_workers(poolhouse_server) -> None:
    server = poolhouse_server(CONFIG, FILES, extra_ports=1)
    url_a = f"http://127.0.0.1:{server.ports[0]}/count"
    url_b = f"http://127.0.0.1:{server.ports[1]}/count"
    pid_a, hits_a = _hit(url_a)
    pid_b, hits_b = _hit(url_b)
    _hit(url_a)
    hits_a += 1
    before = _workers(server)
    assert before == {pid_a: "PoolA", pid_b: "PoolB"}

    old = _listener(server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # a request in the listener when it dies: lost with its connection (reset)
        slow = pool.submit(httpx.get, f"http://127.0.0.1:{server.ports[0]}/slow?2", timeout=30)
        server.wait_for(lambda: any(r.get("url") == "/slow?2" for r in server.api("list", what="requests")),
                        timeout=10)
        old.send_signal(signal.SIGKILL)
        old.wait(10)
        try:
            lost = slow.result()
            raise AssertionError(f"a request in a dead listener got an answer: {lost.status_code}")
        except httpx.TransportError:
            pass

    # the new listener serves with the same processes, their state intact
    server.wait_for(lambda: sum(e["event"] == "worker_reattached" for e in server.events()) >= 2, timeout=30)
    assert _listener(server).pid != old.pid
    assert _hit(url_a) == (pid_a, hits_a + 1)
    assert _hit(url_b) == (pid_b, hits_b + 1)
    # the worker whose slow request was cut off keeps counting once that request has
    # finished (its answer went nowhere) and serves several at once again
    time.sleep(2.5)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _hit(url_a), range(8)))
    assert {pid for pid, _ in results} == {pid_a}
    assert sorted(h for _, h in results) == list(range(hits_a + 2, hits_a + 10))
    assert _workers(server) == before

    events = server.events()
    assert not [e for e in events if e["event"] == "worker_exited"]
    assert not [e for e in events if e["event"] == "worker_started" and e["pid"] not in before]
    reattached = {e["pid"] for e in events if e["event"] == "worker_reattached"}
    assert reattached == set(before)
    err = server.stderr()
    assert "unknown frame" not in err and "broke the queue protocol" not in err


def test_listener_killed_twice_still_reattaches(poolhouse_server) -> None:
    server = poolhouse_server(CONFIG, FILES, extra_ports=1)
    url_b = f"http://127.0.0.1:{server.ports[1]}/count"
    pid_b, hits = _hit(url_b)
    for round_ in (1, 2):
        old = _listener(server)
        old.kill()
        old.wait(10)
        server.wait_for(lambda: sum(e["event"] == "worker_reattached" for e in server.events()) >= round_,
                        timeout=30)
        hits += 1
        assert _hit(url_b) == (pid_b, hits)
    assert not [e for e in server.events() if e["event"] == "worker_exited"]


def test_worker_whose_queue_the_listener_closes_is_drained(poolhouse_server) -> None:
    """Not every lost queue is a listener crash: when the running listener drops a
    worker's queue (here: the application writes a forged frame header on it, and the
    listener closes the connection of a worker that breaks the queue protocol), the
    worker does not wait for a re-attach that will not come; the service drains it and
    the pool serves with another worker."""
    server = poolhouse_server(CONFIG, FILES, extra_ports=1)
    url_b = f"http://127.0.0.1:{server.ports[1]}"
    pid_b, _ = _hit(url_b + "/count")
    r = httpx.post(url_b + "/break", timeout=30)
    assert r.status_code == 502
    server.wait_for(lambda: not psutil.pid_exists(pid_b) or psutil.Process(pid_b).status() == psutil.STATUS_ZOMBIE,
                    timeout=30)
    pid_new, hits = _hit(url_b + "/count")
    assert pid_new != pid_b and hits == 1
    events = server.events()
    drained = [e for e in events if e["event"] == "worker_state" and e["pid"] == pid_b and e["new"] == "Draining"]
    assert drained and "closed by the listener" in drained[0]["reason"]
    assert "broke the queue protocol" in server.stderr()


SLOW_BOOT = apphost(
    sites="""
    <site name="A" id="1">
      <application path="/" applicationPool="PoolA">
        <virtualDirectory path="/" physicalPath="{root}/a" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="PoolA" startMode="AlwaysRunning" />',
)


def test_listener_dies_while_a_worker_loads_its_application(poolhouse_server) -> None:
    """A worker still importing its application when the listener dies takes the new
    listener's queue socket when it has booted: it becomes ready there, and no second
    worker is started."""
    files = {"a/app.py": "import time\ntime.sleep(4)  # a slow import\n" + APP, "a/web.config": WSGI_WEBCONFIG}
    server = poolhouse_server(SLOW_BOOT, files)
    booting = server.wait_for(lambda: [w for w in server.workers("PoolA") if w["state"] == "Initializing"],
                              timeout=20)[0]
    old = _listener(server)
    old.kill()
    old.wait(10)
    server.wait_for(lambda: any(e["event"] == "worker_reattached" for e in server.events()), timeout=30)
    pid, hits = _hit(server.url("/count"))
    assert (pid, hits) == (booting["pid"], 1)
    events = server.events()
    assert [e["pid"] for e in events if e["event"] == "worker_started"] == [pid]
    assert not [e for e in events if e["event"] == "worker_exited"]


def test_application_cannot_write_on_its_descriptor_channel(poolhouse_server) -> None:
    """The channel that brings a worker its new queue socket goes one way: the worker
    shut its sending side before loading any application, so application code cannot
    hand the service anything on it."""
    server = poolhouse_server(CONFIG, FILES, extra_ports=1)
    r = httpx.get(f"http://127.0.0.1:{server.ports[1]}/write-fd-channel", timeout=30)
    assert r.status_code == 200 and r.text == "BrokenPipeError", r.text


def test_draining_worker_ends_cleanly_when_the_listener_dies(poolhouse_server) -> None:
    """A worker that was draining (recycled, finishing a request) when the listener died
    has nothing left to answer for: it exits as stopped (code 0, no crash event), and its
    replacement is re-attached."""
    server = poolhouse_server(CONFIG, FILES, extra_ports=1)
    url_a = f"http://127.0.0.1:{server.ports[0]}"
    old_pid, _ = _hit(url_a + "/count")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, url_a + "/slow?4", timeout=30)
        server.wait_for(lambda: any(r.get("url") == "/slow?4" for r in server.api("list", what="requests")),
                        timeout=10)
        assert server.cli("recycle", "apppool", "PoolA").returncode == 0
        server.wait_for(lambda: any(w["pid"] == old_pid and w["state"] == "Draining" for w in server.workers("PoolA")),
                        timeout=20)
        old = _listener(server)
        old.kill()
        old.wait(10)
        try:
            slow.result()
        except httpx.TransportError:
            pass
    server.wait_for(lambda: [e for e in server.events() if e["event"] == "worker_exited" and e["pid"] == old_pid],
                    timeout=20)
    [gone] = [e for e in server.events() if e["event"] == "worker_exited" and e["pid"] == old_pid]
    assert gone["exit_code"] == 0 and gone["reason"] == "stopped", gone
    server.wait_for(lambda: any(e["event"] == "worker_reattached" for e in server.events()), timeout=30)
    new_pid, hits = _hit(url_a + "/count")
    assert new_pid != old_pid and hits == 1
    assert "Traceback" not in server.stderr()
