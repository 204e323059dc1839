"""Site limits and webLimits enforced by the listener with real slow clients, each with its
HTTPERR reason: maxConnections (503 ConnLimit), the site's connectionTimeout
(Timer_ConnectionIdle), minBytesPerSecond (Timer_MinBytesPerSecond); and request
filtering's requestLimits, which the listener answers before queueing (404.14, 404.15,
431, 413.1 in the W3C log), honouring looser ``<location>`` and folder limits."""

from __future__ import annotations

import json
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


# ---- requestFiltering/requestLimits, enforced by the listener before queueing ----------

COUNTING_APP = '''
import os

def app(environ, start_response):
    body = environ["wsgi.input"].read()
    with open(os.path.join(os.path.dirname(__file__), "calls.log"), "a") as fh:
        fh.write("%s %s %d\\n" % (environ["REQUEST_METHOD"], environ["PATH_INFO"], len(body)))
    out = b"got %d" % len(body)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
'''

LIMITS_WEB_CONFIG = '''<configuration>
  <system.webServer>
    <handlers><add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="count_app:app" /></handlers>
    <security><requestFiltering>
      <requestLimits maxUrl="64" maxQueryString="32" maxAllowedContentLength="1000">
        <headerLimits><add header="X-Big" sizeLimit="20" /></headerLimits>
      </requestLimits>
    </requestFiltering></security>
  </system.webServer>
  <location path="upload"><system.webServer><security><requestFiltering>
    <requestLimits maxAllowedContentLength="5000" maxUrl="200" />
  </requestFiltering></security></system.webServer></location>
  <location path="strict"><system.webServer><security><requestFiltering>
    <requestLimits maxAllowedContentLength="10" />
  </requestFiltering></security></system.webServer></location>
</configuration>'''

# a folder's own web.config loosens the limit for its URLs (found per URL, as the worker does)
FOLDER_WEB_CONFIG = '''<configuration><system.webServer><security><requestFiltering>
  <requestLimits maxAllowedContentLength="50000" />
</requestFiltering></security></system.webServer></configuration>'''

LIMIT_FILES = {"www/count_app.py": COUNTING_APP, "www/web.config": LIMITS_WEB_CONFIG,
               "www/big/web.config": FOLDER_WEB_CONFIG}


def exchange(sock: socket.socket, raw: bytes) -> tuple[bytes, bytes]:
    """Send ``raw``; the response's head and body (by Content-Length)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest


def w3c_lines(server: Server, count: int) -> list[list[str]]:
    """The site's W3C log lines (fields split), once there are ``count`` of them."""
    directory = server.state_dir / "logs" / "W3SVC1"

    def lines() -> list[list[str]] | None:
        out = [line.split() for f in sorted(directory.glob("u_ex*.log"))
               for line in f.read_text().splitlines() if line and not line.startswith("#")]
        return out if len(out) >= count else None
    return server.wait_for(lines, timeout=10)  # type: ignore[no-any-return]


def app_calls(server: Server) -> str:
    path = server.root / "www" / "calls.log"
    return path.read_text() if path.exists() else ""


def test_request_limits_answered_by_the_listener(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=LIMIT_FILES, writable=("www",))  # calls.log
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head, body = exchange(sock, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"got 0", head
    # With the pool stopped, whatever reaches the queue gets 503: the refusals below
    # carry request filtering's status, so the listener gave them without a worker.
    out = server.cli("stop", "apppool", "DefaultAppPool")
    assert out.returncode == 0, out.stderr
    server.wait_for(lambda: not server.workers("DefaultAppPool"))
    head, _ = exchange(sock, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    sock.close()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    # The application's loosest maxUrl is 200 (<location path="upload">): a longer URL is
    # refused here; one between the root's 64 and 200 is left to the worker's module.
    head, _ = exchange(sock, b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    sock.close()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    # maxUrl counts the path without the query: 200 bytes pass, 201 do not
    head, body = exchange(sock, b"GET /" + b"a" * 199 + b"?" + b"q" * 30 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    sock.close()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head, body = exchange(sock, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and b"HTTP Error 404.14" in body, head
    assert b"connection: close" not in head.lower()  # nothing left to read: kept open
    head, body = exchange(sock, b"GET /q?" + b"x" * 33 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and b"HTTP Error 404.15" in body, head
    head, _ = exchange(sock, b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 21 + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    # repeated headers count joined with ", " (10 + 2 + 10 > 20)
    head, _ = exchange(sock, b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10
                       + b"\r\nX-Big: " + b"c" * 10 + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    # a small body over maxAllowedContentLength is read and dropped: the connection stays
    # (over the loosest limit, 5000 under /upload, and over the root's 1000 at /p)
    head, body = exchange(sock, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n" + b"z" * 6000)
    assert head.startswith(b"HTTP/1.1 413") and b"HTTP Error 413.1" in body, head
    assert b"connection: close" not in head.lower()
    head, _ = exchange(sock, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head  # the same connection, still in step
    sock.close()
    lines = w3c_lines(server, 6)
    # fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip
    # cs(User-Agent) cs(Referer) sc-status sc-substatus sc-win32-status time-taken
    refused = [(f[3], f[4][:4], f[11], f[12]) for f in lines if f[11] != "503" and f[11] != "200"]
    assert refused == [("GET", "/aaa", "404", "14"), ("GET", "/q", "404", "15"), ("GET", "/h", "431", "0"),
                       ("GET", "/h", "431", "0"), ("POST", "/p", "413", "1")], refused
    assert app_calls(server) == "GET /ok 0\n"
    httperr = server.httperr()
    assert " 404 " not in httperr and " 413 " not in httperr and " 431 " not in httperr, httperr


def test_large_upload_refused_without_reading_it(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=LIMIT_FILES, writable=("www",))  # calls.log
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    size = 1024 * 1024 * 1024
    sock.sendall(b"POST /upload/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    started = time.monotonic()
    head, body = exchange(sock, b"x" * 65536)  # the client goes on sending; the answer comes at once
    assert head.startswith(b"HTTP/1.1 413") and b"HTTP Error 413.1" in body, head
    assert b"connection: close" in head.lower()
    assert time.monotonic() - started < 5
    sent = 0
    try:  # the listener closed the connection: sending the rest fails long before 1 GB
        while sent < size:
            sock.sendall(b"x" * (1 << 20))
            sent += 1 << 20
    except OSError:
        pass
    assert sent < size // 4
    sock.close()
    # a client waiting for 100 Continue gets the refusal instead, and the connection
    # closes (whether it will send the body after all cannot be known)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head, body = exchange(sock, b"PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"413.1" in body, head
        assert b"connection: close" in head.lower()
        assert sock.recv(1) == b""
    counters = json.loads(server.cli("counters", "--json").stdout)
    assert counters["sites"]["1"]["bytes_received"] < 64 * 1024 * 1024
    assert counters["sites"]["1"]["rejected"].get("RequestFiltering_413.1") == 2
    assert app_calls(server) == ""
    assert [f[11:13] for f in w3c_lines(server, 2)] == [["413", "1"], ["413", "1"]]


def test_request_limits_of_locations_and_folders(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=LIMIT_FILES, writable=("www",))  # calls.log

    def post(path: str, size: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            return exchange(sock, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                            % (path.encode(), size, b"u" * size))

    # <location path="upload"> loosens the limit: honoured by the listener
    head, body = post("/upload/file", 5000)
    assert head.startswith(b"HTTP/1.1 200") and body == b"got 5000", head
    head, body = post("/upload/" + "u" * 100, 10)  # and maxUrl there is 200
    assert head.startswith(b"HTTP/1.1 200"), head
    head, body = post("/upload/file", 5001)
    assert head.startswith(b"HTTP/1.1 413") and b"413.1" in body, head
    # elsewhere the application root's 1000 bytes hold: past the loosest limit (5000) the
    # listener refuses, below it the worker's module does
    head, body = post("/other", 6000)
    assert head.startswith(b"HTTP/1.1 413") and b"413.1" in body, head
    head, body = post("/other", 3000)
    assert head.startswith(b"HTTP/1.1 413") and b"413.1" in body, head
    # a folder's web.config loosens it for its URLs too (the listener checks a refusal
    # against the configuration at the URL before it answers)
    head, body = post("/big/file", 20000)
    assert head.startswith(b"HTTP/1.1 200") and body == b"got 20000", head
    # <location path="strict"> is tighter than the root: the worker's module refuses it
    head, body = post("/strict/file", 500)
    assert head.startswith(b"HTTP/1.1 413"), head
    calls = app_calls(server)
    assert calls.splitlines() == ["POST /upload/file 5000", "POST /upload/" + "u" * 100 + " 10",
                                  "POST /big/file 20000"], calls
    statuses = [(f[4].split("/")[1], f[11], f[12]) for f in w3c_lines(server, 7)]
    assert statuses == [("upload", "200", "0"), ("upload", "200", "0"), ("upload", "413", "1"),
                        ("other", "413", "1"), ("other", "413", "1"), ("big", "200", "0"),
                        ("strict", "413", "1")], statuses


def chunked(sock: socket.socket, path: bytes, pieces: list[bytes]) -> tuple[bytes, bytes]:
    sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in pieces:
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.05)
    return exchange(sock, b"0\r\n\r\n")


def test_chunked_body_counted_against_the_limit(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files=LIMIT_FILES, writable=("www",))  # calls.log
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head, body = chunked(sock, b"/small", [b"a" * 400, b"b" * 600])  # exactly 1000
        assert head.startswith(b"HTTP/1.1 200") and body == b"got 1000", head
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            # 1200 bytes, never ended: over the root's 1000 (not the loosest 5000)
            sock.sendall(b"190\r\n" + b"c" * 400 + b"\r\n")
            time.sleep(0.05)
        head, body = exchange(sock, b"")
        assert head.startswith(b"HTTP/1.1 413") and b"413.1" in body, head
        assert b"connection: close" in head.lower()
        assert sock.recv(1) == b""
    # the folder's own limit applies to chunked bodies as well
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head, body = chunked(sock, b"/big/chunks", [b"d" * 6000, b"e" * 6000])
        assert head.startswith(b"HTTP/1.1 200") and body == b"got 12000", head
    lines = w3c_lines(server, 3)
    assert [f[11:13] for f in lines] == [["200", "0"], ["413", "1"], ["200", "0"]], lines
