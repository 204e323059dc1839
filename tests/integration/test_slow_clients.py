"""Slow clients cannot hold a pool: request bodies are read ahead by the listener
(``serverRuntime/@uploadReadAheadSize``) before a request takes a worker's slot, a body
larger than that which then trickles lends its slot back while the worker waits for it,
and the entity-body timers cut off bodies that stop (``connectionTimeout``,
Timer_EntityBody) or crawl (``minBytesPerSecond``, Timer_MinBytesPerSecond).  Each test
runs real trickling clients against a real server beside legitimate clients."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import httpx

from .conftest import Server

WSGI_APP = """\
import os

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    out = b"%s %d" % (environ["PATH_INFO"].encode(), len(body))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
"""

ASGI_APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    out = b"%s %d" % (scope["path"].encode(), size)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
"""


def web_config(module: str) -> str:
    return ("<configuration><system.webServer><handlers>"
            f'<add name="app" path="*" verb="*" modules="{module}" scriptProcessor="app:app" />'
            "</handlers></system.webServer></configuration>")


def config(pool: str, web_limits: str = "", extra: str = "") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <applicationPools>{pool}</applicationPools>
    <sites>
      <site name="Main" id="1">
        <application path="/" applicationPool="AppPool">
          <virtualDirectory path="/" physicalPath="{{root}}/app" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" /></bindings>
      </site>
    </sites>
    {web_limits}
  </system.applicationHost>
  {extra}
</configuration>
"""


class Tricklers:
    """``n`` clients that each send a request head and then one body byte every
    ``interval`` seconds (after ``burst`` body bytes at once), until stopped."""

    def __init__(self, server: Server, n: int, length: int = 1000, interval: float = 1.0,
                 burst: int = 1, chunked: bool = False) -> None:
        self.socks = []
        self.piece = b"1\r\nx\r\n" if chunked else b"x"
        for i in range(n):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if chunked:
                sock.sendall(b"POST /trickle%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n" % (i, burst, b"x" * burst))
            else:
                sock.sendall(b"POST /trickle%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                             % (i, length) + b"x" * burst)
            self.socks.append(sock)
        self.closed_by_server = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        alive = list(self.socks)
        while not self._stop.wait(self.interval):
            for sock in list(alive):
                try:
                    sock.sendall(self.piece)
                except OSError:
                    alive.remove(sock)
                    self.closed_by_server += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


def legitimate(server: Server, n: int = 24) -> list[tuple[int, str, float]]:
    """``n`` ordinary clients at once, half GET and half POST (a small form); returns
    (status, body, seconds) of each."""

    def one(i: int) -> tuple[int, str, float]:
        started = time.monotonic()
        if i % 2:
            r = httpx.post(server.url(f"/form{i}"), content=b"a=1&b=2" * 10, timeout=15)
        else:
            r = httpx.get(server.url(f"/get{i}"), timeout=15)
        return r.status_code, r.text, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def assert_all_served(results: list[tuple[int, str, float]]) -> None:
    assert [status for status, _, _ in results] == [200] * len(results), results
    for i, (_, text, _) in enumerate(results):
        assert text == (f"/form{i} 70" if i % 2 else f"/get{i} 0")
    assert max(seconds for _, _, seconds in results) < 10


NO_RATE = '<webLimits minBytesPerSecond="0" />'  # only the read-ahead stands in their way


def test_tricklers_do_not_hold_a_threaded_wsgi_pool(poolhouse_server) -> None:
    server = poolhouse_server(config('<add name="AppPool"><python threads="4" /></add>', NO_RATE),
                              {"app/app.py": WSGI_APP, "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    tricklers = Tricklers(server, 32)
    try:
        time.sleep(1.5)  # every trickler is in, trickling
        assert_all_served(legitimate(server))
        # nothing of theirs reached a worker
        stats = server.api("counters")
        assert stats["pools"]["AppPool"]["in_flight"] == 0, stats["pools"]
        assert tricklers.closed_by_server == 0
    finally:
        tricklers.stop()


def test_tricklers_do_not_hold_an_inline_wsgi_pool(poolhouse_server) -> None:
    server = poolhouse_server(config('<add name="AppPool" />', NO_RATE),
                              {"app/app.py": WSGI_APP, "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    tricklers = Tricklers(server, 32)
    try:
        time.sleep(1.5)
        assert_all_served(legitimate(server))
    finally:
        tricklers.stop()


def test_tricklers_do_not_hold_an_asgi_pool(poolhouse_server) -> None:
    server = poolhouse_server(config('<add name="AppPool" />', NO_RATE),
                              {"app/app.py": ASGI_APP, "app/web.config": web_config("AsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    tricklers = Tricklers(server, 100)
    try:
        time.sleep(2.0)
        assert_all_served(legitimate(server))
    finally:
        tricklers.stop()


def test_a_body_past_the_read_ahead_that_trickles_lends_its_slot(poolhouse_server) -> None:
    """Bodies larger than uploadReadAheadSize stream to the worker; while a thread waits
    for the rest, its request's credit goes back, so 4 such uploads do not hold a
    2-thread pool."""
    server = poolhouse_server(config('<add name="AppPool"><python threads="2" /></add>', NO_RATE),
                              {"app/app.py": WSGI_APP, "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    tricklers = Tricklers(server, 4, length=200_000, burst=60_000)
    try:
        # they are past the read-ahead: their requests are on the worker, reading
        server.wait_for(lambda: server.api("counters")["pools"]["AppPool"]["in_flight"] == 4, timeout=10)
        time.sleep(1.0)
        assert_all_served(legitimate(server, 12))
    finally:
        tricklers.stop()


def test_chunked_tricklers_lend_their_slots(poolhouse_server) -> None:
    """A chunked body is not read ahead (it may be an interactive stream): it reaches
    the worker at once, and the worker lends the slot back while it waits for more."""
    server = poolhouse_server(config('<add name="AppPool"><python threads="2" /></add>', NO_RATE),
                              {"app/app.py": WSGI_APP.replace(
                                  "read(length) if length else b\"\"", "read()"),
                               "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    tricklers = Tricklers(server, 6, chunked=True)
    try:
        server.wait_for(lambda: server.api("counters")["pools"]["AppPool"]["in_flight"] == 6, timeout=10)
        time.sleep(1.0)
        assert_all_served(legitimate(server, 12))
    finally:
        tricklers.stop()


def test_a_smaller_read_ahead_streams_the_body_sooner(poolhouse_server) -> None:
    """uploadReadAheadSize is the application's (serverRuntime, in a <location> of
    applicationHost.config: the section is locked for web.config files, as in IIS): with
    16 bytes, a request reaches the worker once 16 bytes of its body are in."""
    runtime = ('<location path="Main"><system.webServer><serverRuntime uploadReadAheadSize="16" />'
               '</system.webServer></location>')
    server = poolhouse_server(config('<add name="AppPool"><python threads="2" /></add>', NO_RATE, runtime),
                              {"app/app.py": WSGI_APP, "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    pools = lambda: server.api("counters")["pools"]["AppPool"]  # noqa: E731
    tricklers = Tricklers(server, 1, length=1000, burst=10)
    try:
        time.sleep(1.0)
        assert pools()["in_flight"] == 0  # 10 bytes: still reading ahead
        [row] = server.api("list", what="requests")
        assert row["url"] == "/trickle0" and row["stage"] == "ReadingEntityBody" and row["worker"] is None
        server.wait_for(lambda: pools()["in_flight"] == 1, timeout=15)  # a byte a second
    finally:
        tricklers.stop()


def test_entity_body_timer_and_min_bytes_per_second(poolhouse_server) -> None:
    server = poolhouse_server(
        config('<add name="AppPool"><python threads="4" /></add>',
               '<webLimits connectionTimeout="00:00:03" minBytesPerSecond="240" />'),
        {"app/app.py": WSGI_APP, "app/web.config": web_config("WsgiModule")})
    assert httpx.get(server.url("/warm"), timeout=20).status_code == 200
    # a body that stops: cut after connectionTimeout (HTTP.sys's EntityBody timer)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    stalled.sendall(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    # a body that crawls (1 byte every half second, far under 240 bytes/s): cut too,
    # though it never stops long enough for the EntityBody timer
    crawler = Tricklers(server, 1, interval=0.5)
    # an ordinary upload at full speed is not affected
    big = httpx.post(server.url("/upload"), content=b"u" * 300_000, timeout=20)
    assert big.status_code == 200 and big.text == "/upload 300000"
    started = time.monotonic()
    assert stalled.recv(100) == b""  # closed without an answer, as HTTP.sys does
    assert 1.0 < time.monotonic() - started + 1.0 < 9
    stalled.close()
    server.wait_for(lambda: crawler.closed_by_server == 1, timeout=15)
    crawler.stop()
    server.wait_for(lambda: "Timer_MinBytesPerSecond" in server.httperr(), timeout=5)
    lines = server.httperr().splitlines()
    [entity] = [ln for ln in lines if "Timer_EntityBody" in ln]
    assert "POST /stalled" in entity
    [slow] = [ln for ln in lines if "Timer_MinBytesPerSecond" in ln]
    assert "POST /trickle0" in slow
    assert httpx.get(server.url("/after"), timeout=10).text == "/after 0"
