"""Reverse-proxy failures are logged as ARR's are: the W3C log has the request with its
sub-status (502.3, 504.0), and the listener writes an HTTPERR line with the reason the
worker gave (``Connection_Refused_By_Upstream``, ``Timer_UpstreamResponse``, …)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from .conftest import apphost, free_port

SITE = """
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


class BadUpstream:
    """A TCP server that misbehaves by path: ``/silent`` never answers, ``/hangup``
    closes without a word, ``/garbage`` answers something that is not HTTP, and
    ``/ok`` answers properly."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                conn.close()
                return
            data += piece
        path = data.split(b" ", 2)[1]
        if path.startswith(b"/silent"):
            self.held.append(conn)  # keeps it open, says nothing
            return
        if path.startswith(b"/garbage"):
            conn.sendall(b"SPDY/9 what\r\n\r\n")
        elif path.startswith(b"/ok"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        conn.close()

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def bad_upstream() -> Iterator[BadUpstream]:
    up = BadUpstream()
    yield up
    up.stop()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full and never served: Linux drops the SYNs of
    further connections, so connecting to it times out (on loopback, without routing)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)
    yield port
    for c in fill:
        c.close()
    srv.close()


def test_proxy_failures_get_httperr_lines(poolhouse_server, bad_upstream: BadUpstream,  # type: ignore[no-untyped-def]
                                          full_backlog: int) -> None:
    web = f"""<configuration><system.webServer><rewrite><rules>
      <rule name="down" stopProcessing="true">
        <match url="^down/(.*)" />
        <action type="Rewrite" url="http://127.0.0.1:{free_port()}/{{R:1}}" />
      </rule>
      <rule name="full" stopProcessing="true">
        <match url="^full/(.*)" />
        <serverVariables><set name="POOLHOUSE_PROXY_TIMEOUT" value="1" /></serverVariables>
        <action type="Rewrite" url="http://127.0.0.1:{full_backlog}/{{R:1}}" />
      </rule>
      <rule name="bad" stopProcessing="true">
        <match url="^bad/(.*)" />
        <serverVariables><set name="POOLHOUSE_PROXY_TIMEOUT" value="00:00:01" /></serverVariables>
        <action type="Rewrite" url="http://127.0.0.1:{bad_upstream.port}/{{R:1}}" />
      </rule>
    </rules></rewrite></system.webServer></configuration>"""
    server = poolhouse_server(apphost(SITE), files={"www/web.config": web, "www/index.html": "home"})
    expected = {
        "/down/x?q=1": (502, 3, "Connection_Refused_By_Upstream"),
        "/bad/silent": (504, 0, "Timer_UpstreamResponse"),
        "/bad/hangup": (502, 3, "Connection_Dropped_By_Upstream"),
        "/bad/garbage": (502, 3, "BadResponse_From_Upstream"),
        "/full/x": (504, 0, "Timer_UpstreamConnect"),
    }
    with httpx.Client(base_url=server.base, timeout=30) as c:
        for path, (status, _, _) in expected.items():
            r = c.get(path)
            assert r.status_code == status, (path, r.status_code, r.text)
        assert c.get("/bad/ok").text == "ok"  # a good answer: no HTTPERR line
        assert c.get("/index.html").text == "home"

    server.wait_for(lambda: server.httperr().count("Upstream") >= len(expected))
    lines = [line for line in server.httperr().splitlines() if not line.startswith("#")]
    assert len(lines) == len(expected), lines
    for path, (status, _, reason) in expected.items():
        # date time c-ip c-port s-ip s-port cs-version cs-method cs-uri sc-status s-siteid s-reason s-queuename
        assert any(line.split()[6:] == ["HTTP/1.1", "GET", path, str(status), "1", reason, "DefaultAppPool"]
                   for line in lines), (path, lines)

    # the W3C log has them too, with ARR's sub-statuses
    logs = server.state_dir / "logs" / "W3SVC1"
    failed = re.compile(r" 50[24] \d+ \d+ \d+$", re.M)  # sc-status sc-substatus sc-win32-status time-taken
    server.wait_for(lambda: logs.exists() and sum(len(failed.findall(p.read_text())) for p in logs.glob("*.log")) >= 5)
    w3c = "".join(p.read_text() for p in logs.glob("*.log"))
    for path, (status, substatus, _) in expected.items():
        stem = path.split("?")[0]
        assert any(f" {stem} " in line and f" {status} {substatus} " in line for line in w3c.splitlines()), (path, w3c)
    log = server.stderr()
    assert "reverse proxy GET /bad/silent" in log and "did not answer in time" in log
