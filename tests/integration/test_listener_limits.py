"""Site limits and webLimits enforced by the listener with real slow clients, each with its
HTTPERR reason: maxConnections (503 ConnLimit), the site's connectionTimeout
(Timer_ConnectionIdle), minBytesPerSecond (Timer_MinBytesPerSecond)."""

from __future__ import annotations

import socket
import time

from tests.integration.conftest import Server, apphost


def config(limits: str = "", web_limits: str = "") -> str:
    return apphost(
        '<site name="S" id="1"><application path="/" applicationPool="DefaultAppPool">'
        '<virtualDirectory path="/" physicalPath="{root}/www" /></application>'
        '<bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>'
        f'{limits}</site>',
        extra=f"<system.applicationHost>{web_limits}</system.applicationHost>" if web_limits else "",
    ).replace("</sites>\n  </system.applicationHost>\n  <system.applicationHost>", "</sites>\n")


def request(sock: socket.socket, path: str = "/a.txt") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head


def wait_httperr(server: Server, reason: str, timeout: float = 15) -> str:
    return server.wait_for(lambda: reason in server.httperr() and server.httperr(), timeout=timeout)  # type: ignore[no-any-return]


def test_max_connections(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config('<limits maxConnections="2" />'), files={"www/a.txt": "a"})
    first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    second = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert request(first).startswith(b"HTTP/1.1 200")
    assert request(second).startswith(b"HTTP/1.1 200")
    third = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = request(third)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"connection: close" in head.lower()
    assert " ConnLimit " in wait_httperr(server, "ConnLimit")
    first.close()
    time.sleep(0.3)
    fourth = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert request(fourth).startswith(b"HTTP/1.1 200")
    assert request(second).startswith(b"HTTP/1.1 200")  # a connection keeps its place
    for s in (second, third, fourth):
        s.close()


def test_site_connection_timeout(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config('<limits connectionTimeout="00:00:02" />'), files={"www/a.txt": "a"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert request(sock).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert sock.recv(1) == b""  # closed by the listener
    assert 1.5 < time.monotonic() - started < 6
    assert "Timer_ConnectionIdle" in wait_httperr(server, "Timer_ConnectionIdle")


def test_min_bytes_per_second(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(
        config(web_limits='<webLimits minBytesPerSecond="500000" />'),
        files={"www/big.txt": "x" * (40 * 1024 * 1024)},
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /big.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    # a client that reads (almost) nothing
    text = wait_httperr(server, "Timer_MinBytesPerSecond", timeout=20)
    assert "/big.txt" in text.split("Timer_MinBytesPerSecond")[0].splitlines()[-1]
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()


def test_site_max_bandwidth_throttles_responses(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    size = 5 * 1024 * 1024
    server = poolhouse_server(config('<limits maxBandwidth="1048576" />'), files={"www/big.txt": "x" * size})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    started = time.monotonic()
    sock.sendall(b"GET /big.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    while received < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    elapsed = time.monotonic() - started
    sock.close()
    assert received >= size
    # 5 MB at 1 MB/s: the first window and a second of saved budget are free
    assert elapsed > 2.5, elapsed
