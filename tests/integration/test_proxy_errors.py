"""Reverse-proxy failures are logged as ARR's are: the W3C log has the request with its
sub-status (502.3, 504.0), and the listener writes an HTTPERR line with the reason the
worker gave (``Connection_Refused_By_Upstream``, ``Timer_UpstreamResponse``, …)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from .conftest import free_port
from .upstream import RawUpstream, proxy_site, rule

class BadUpstream(RawUpstream):
    """A TCP server that misbehaves by path: ``/silent`` never answers, ``/hangup``
    closes without a word, ``/garbage`` answers something that is not HTTP, and
    ``/ok`` answers properly."""

    def answer(self, conn: socket.socket, method: str, path: str) -> bool:
        if path.startswith("/silent"):
            return True  # keeps it open, says nothing
        if path.startswith("/garbage"):
            conn.sendall(b"SPDY/9 what\r\n\r\n")
        elif path.startswith("/ok"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return False


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
    server = proxy_site(poolhouse_server,
                        rule("down", f"http://127.0.0.1:{free_port()}"),
                        rule("full", f"http://127.0.0.1:{full_backlog}", {"POOLHOUSE_PROXY_TIMEOUT": "1"}),
                        rule("bad", f"http://127.0.0.1:{bad_upstream.port}", {"POOLHOUSE_PROXY_TIMEOUT": "00:00:01"}))
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
