"""One hung request costs only itself: an inline worker (``threads="0"``) whose event
loop is stuck gives back the requests it had not started (they are answered by its
replacement, not 502), the hung request is not replayed onto the replacement (so it
cannot kill that one too), a replayed request that dies again is answered 502 and logged,
and three hung requests do not trip rapid-fail protection."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import time

import httpx

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG

APP = """\
import os, time

# marks go to a folder the pool may write in (its code folder is read-only to it)
HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "marks")

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/hang"):
        # every run of a hung request leaves a mark: replays would show as a second one
        with open(os.path.join(HERE, "runs" + path.replace("/", "-")), "a") as f:
            f.write("%d\\n" % os.getpid())
        time.sleep(120)
        body = b"woke"
    elif path == "/crash":
        with open(os.path.join(HERE, "crash-runs"), "a") as f:
            f.write("%d\\n" % os.getpid())
        os._exit(9)
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = b"%d:%s" % (os.getpid(), environ["wsgi.input"].read(length))
    else:
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

FILES = {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG, "marks/.keep": ""}
PING = '<processModel pingInterval="00:00:01" pingResponseTime="00:00:01" />'


def site(inner: str = PING) -> str:
    return apphost(
        sites="""
        <site name="Main" id="1">
          <application path="/" applicationPool="AppPool">
            <virtualDirectory path="/" physicalPath="{root}/app" />
          </application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools=f'<add name="AppPool"><python threads="0" />{inner}</add>',
    )


def events(server, name: str) -> list[dict]:
    return [e for e in server.events() if e["event"] == name]


def runs(server, name: str) -> list[str]:
    path = server.root / "marks" / name
    return path.read_text().split() if path.exists() else []


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split()[1]), body


def test_requests_behind_a_hung_one_are_answered_by_the_replacement(poolhouse_server) -> None:
    server = poolhouse_server(site(), FILES, writable=("marks",))
    with httpx.Client(timeout=10) as client:  # a fast application: the worker takes 32 ahead
        first = {int(client.get(server.url("/pid")).text) for _ in range(20)}.pop()
    # connections opened beforehand, so that the requests reach the worker (it has free
    # credits) within moments of the hung one, before it reports its loop stuck
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        hung = pool.submit(lambda: httpx.get(server.url("/hang-a"), timeout=60))
        server.wait_for(lambda: runs(server, "runs-hang-a"), timeout=10, interval=0.01)
        for i, sock in enumerate(socks):
            if i % 3:
                sock.sendall(b"GET /pid?%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            else:  # a form: given back with its body, answered by the replacement
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nform%02d" % i)
        answers = [_read_response(sock) for sock in socks]
        r = hung.result()
    for sock in socks:
        sock.close()
    assert [status for status, _ in answers] == [200] * 12, answers
    for i, (_, body) in enumerate(answers):
        if i % 3 == 0:
            assert body.split(b":")[1] == b"form%02d" % i
    # the replacement answered them
    assert first not in {int(body.split(b":")[0]) for _, body in answers}
    # the hung request is answered 502 once its worker is killed, and not replayed
    assert r.status_code == 502
    assert runs(server, "runs-hang-a") == [str(first)]
    server.wait_for(lambda: "Connection_Abandoned_By_AppPool" in server.httperr(), timeout=5)
    [line] = [ln for ln in server.httperr().splitlines() if "Connection_Abandoned_By_AppPool" in ln]
    assert "/hang-a" in line and " 502 " in line
    assert [e["id"] for e in events(server, "worker_unhealthy")] == [5010]
    given_back = [ln for ln in server.stderr().splitlines() if "go back to the queue" in ln]
    assert given_back and "is stuck in /hang-a" in given_back[0]
    assert int(re.search(r": (\d+) request", given_back[0]).group(1)) >= 1, given_back


def test_three_hung_requests_do_not_trip_rapid_fail(poolhouse_server) -> None:
    server = poolhouse_server(site(), FILES, writable=("marks",))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        hung = [pool.submit(lambda i=i: httpx.get(server.url(f"/hang{i}"), timeout=90)) for i in range(3)]
        statuses = [f.result().status_code for f in hung]
    assert statuses == [502, 502, 502]
    for i in range(3):
        assert len(runs(server, f"runs-hang{i}")) == 1, f"/hang{i} was replayed"
    assert len(events(server, "worker_unhealthy")) == 3
    [pool_row] = server.api("list", what="apppools")
    assert not pool_row["rapid_fail_stopped"]
    assert httpx.get(server.url("/pid"), timeout=20).status_code == 200


def test_a_replayed_request_that_dies_again_is_502_and_logged(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<failure rapidFailProtectionMaxCrashes="3" />'), FILES,
                              writable=("marks",))
    httpx.get(server.url("/pid"), timeout=10)
    r = httpx.get(server.url("/crash"), timeout=30)
    assert r.status_code == 502
    assert len(runs(server, "crash-runs")) == 2  # replayed once, not more
    server.wait_for(lambda: "Connection_Abandoned_By_AppPool" in server.httperr(), timeout=5)
    assert any("/crash" in ln and " 502 " in ln for ln in server.httperr().splitlines())
    # one bad request counts once toward rapid-fail protection, however often it killed
    time.sleep(1.0)
    [pool_row] = server.api("list", what="apppools")
    assert pool_row["rapid_fail_count"] == 1, pool_row
    assert httpx.get(server.url("/pid"), timeout=20).status_code == 200
