"""Bad input and bad clients: malformed requests get HTTP.sys's 400 and an HTTPERR line,
a client that vanishes mid-request is logged, idle and slowloris connections are cut by
``webLimits``; the server serves the next connection every time.

One server (with 2-second ``connectionTimeout`` and ``headerWaitTimeout``) serves the
whole module.
"""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, apphost, free_port

APP = '''
def app(environ, start_response):
    data = environ["wsgi.input"].read()
    body = b"ok %d" % len(data)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

SITES = '''<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/app" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>'''

LIMITS = '<webLimits connectionTimeout="00:00:02" headerWaitTimeout="00:00:02" />'

FILES = {
    "app/err_app.py": APP,
    "app/web.config": '<configuration><system.webServer><handlers><add name="app" path="*" verb="*" '
                      'modules="WsgiModule" scriptProcessor="err_app:app" /></handlers></system.webServer>'
                      '</configuration>',
}


@pytest.fixture(scope="module")
def server(searchable_tmp: Callable[[str], Path]) -> Iterator[Server]:
    root = searchable_tmp("http_errors")
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content))
    port = free_port()
    text = apphost(SITES).lstrip().replace("</sites>", "</sites>\n" + LIMITS)
    cfg = root / "applicationHost.config"
    cfg.write_text(text.replace("{root}", str(root)).replace("{port}", str(port)))
    srv = Server(root, cfg, port, [port])
    srv.start()
    yield srv
    code = srv.stop()
    left = srv.leftover()
    if code != 0 or left:
        print(srv.stderr()[-5000:])
    assert code == 0 and not left


def connect(server: Server, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the test fails on a timeout)."""
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def still_serves(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.endswith(b"ok 0")


def httperr_lines(server: Server, reason: str, start: int) -> list[str]:
    """HTTPERR lines with ``reason`` after the first ``start`` lines with it."""
    return [line for line in server.httperr().splitlines() if f" {reason} " in line][start:]


def count(server: Server, reason: str) -> int:
    return len(httperr_lines(server, reason, 0))


LONG = b"a" * (17 * 1024)

MALFORMED = {
    "garbage_request_line": b"THIS IS NOT HTTP\r\n\r\n",
    "bad_header_name": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    "content_length_and_chunked": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two_content_lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "nul_in_header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "header_line_over_16k": b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + LONG + b"\r\n\r\n",
    "url_over_16k_is_414": b"GET /" + LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "headers_over_16k_total": b"GET / HTTP/1.1\r\nHost: x\r\n"
                              + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(20)) + b"\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_400_and_close(server: Server, name: str) -> None:
    status = 414 if name.endswith("_414") else 400
    before = len([l for l in server.httperr().splitlines() if f" {status} " in l])
    with connect(server) as sock:
        sock.sendall(MALFORMED[name])
        data = read_all(sock)
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 %d " % status), data[:300]
    assert b"\r\nconnection: close" in head
    still_serves(server)
    server.wait_for(lambda: len([l for l in server.httperr().splitlines() if f" {status} " in l]) > before,
                    timeout=5)


def test_bad_request_behind_a_good_one_answers_the_good_one_first(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + MALFORMED["bad_header_name"])
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    assert b"ok 0HTTP/1.1 400 " in data


def test_client_disconnect_mid_body_is_logged(server: Server) -> None:
    before = count(server, "Client_Reset") + count(server, "Connection_Dropped")
    with connect(server) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 20))
        sock.sendall(b"x" * (1 << 19))
        time.sleep(0.2)
    server.wait_for(lambda: count(server, "Client_Reset") + count(server, "Connection_Dropped") > before,
                    timeout=5)
    still_serves(server)


def test_idle_keep_alive_connection_is_closed(server: Server) -> None:
    before = count(server, "Timer_ConnectionIdle")
    with connect(server) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_all(sock) == b""
        waited = time.monotonic() - started
    assert 1.5 < waited < 5, waited
    server.wait_for(lambda: count(server, "Timer_ConnectionIdle") > before, timeout=5)


def test_slowloris_is_cut_off_after_header_wait_timeout(server: Server) -> None:
    before = count(server, "Timer_HeaderWait")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for i in range(60):  # a header byte every 0.1 s: never idle, never complete
            try:
                sock.sendall(b"X-%d: y\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
        waited = time.monotonic() - started
    assert closed, "the slow client was never cut off"
    assert 1.5 < waited < 5, waited
    server.wait_for(lambda: count(server, "Timer_HeaderWait") > before, timeout=5)
    still_serves(server)


def test_head_limits_log_their_reasons(server: Server) -> None:
    for name, reason in (("header_line_over_16k", "FieldLength"), ("url_over_16k_is_414", "URL_Length"),
                         ("headers_over_16k_total", "RequestLength")):
        before = count(server, reason)
        with connect(server) as sock:
            sock.sendall(MALFORMED[name])
            read_all(sock)
        server.wait_for(lambda: count(server, reason) > before, timeout=5)


def test_head_dribbled_in_small_pieces(server: Server) -> None:
    """A 12 KB head in 500-byte writes is served; a 40 KB one is refused before the
    parser buffers all of it."""
    head = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"c" * 12000 + b"\r\nConnection: close\r\n\r\n"
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(head), 500):
            sock.sendall(head[i:i + 500])
            time.sleep(0.001)
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 40000:
                sock.sendall(b"d" * 1000)
                sent += 1000
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]


def test_pipelined_head_after_a_large_body_is_not_mistaken_for_a_long_head(server: Server) -> None:
    body = b"z" * 200000
    with connect(server) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body))
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200 ") == 2, data[:500]
    assert b"ok 200000" in data


def test_stalled_request_body_times_out(server: Server) -> None:
    """A client that stops sending its body is cut after connectionTimeout
    (HTTP.sys's EntityBody timer)."""
    before = count(server, "Timer_EntityBody")
    with connect(server) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        started = time.monotonic()
        data = read_all(sock)
        waited = time.monotonic() - started
    assert 1.5 < waited < 5, waited
    assert not data.startswith(b"HTTP/1.1 200"), data
    server.wait_for(lambda: count(server, "Timer_EntityBody") > before, timeout=5)
    still_serves(server)
