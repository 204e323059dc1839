"""HTTP/1.x connection semantics of the listener over real sockets: keep-alive, HTTP/1.0,
``Connection: close``, pipelining, HEAD, chunked and close-delimited responses,
``Expect: 100-continue``.

One server serves the whole module (static files, WSGI and ASGI apps), so the module
pays one start-up.  The application modules have distinct names: a pool's worker shares
one ``sys.modules`` between its applications.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, apphost, free_port

WSGI_APP = '''
import hashlib

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
        body = ("%d %s" % (n, h.hexdigest())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/chunks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part%d;" % i for i in range(5))
    body = b"wsgi " + environ["SERVER_PROTOCOL"].encode() + b" " + path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(4):
        await send({"type": "http.response.body", "body": b"asgi%d;" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"end", "more_body": False})
'''

WEB_CONFIG = '''<?xml version="1.0" encoding="UTF-8"?>
<configuration><system.webServer><handlers>
  <add name="app" path="*" verb="*" modules="{module}" scriptProcessor="{script}:app" />
</handlers></system.webServer></configuration>
'''

SITES = '''
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <application path="/app" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/wsgi" />
  </application>
  <application path="/asgi" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/asgi" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>
'''

STATIC = "static file\n" * 10
FILES = {
    "www/index.html": STATIC,
    "www/a.txt": "A" * 1000,
    "wsgi/wsgi_app.py": WSGI_APP,
    "wsgi/web.config": WEB_CONFIG.format(module="WsgiModule", script="wsgi_app"),
    "asgi/asgi_app.py": ASGI_APP,
    "asgi/web.config": WEB_CONFIG.format(module="AsgiModule", script="asgi_app"),
}


# ---- a raw HTTP/1.x response reader --------------------------------------------------


class Response:
    def __init__(self, status: int, version: str, headers: dict[str, str], body: bytes,
                 chunked: bool) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.body = body
        self.chunked = chunked


class Reader:
    """Reads responses off a raw socket, one after another, as a client would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed mid-line: %r" % self.buf[:200])
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed with %d of %d bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, str, dict[str, str]]:
        status_line = self._line()
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                break
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return int(status), version, headers

    def response(self, method: str = "GET") -> Response:
        status, version, headers = self.head()
        while status < 200:
            status, version, headers = self.head()
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif chunked:
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, version, headers, body, chunked)

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (nothing more to read)."""
        self.sock.settimeout(timeout)
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def connect(server: Server) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock, Reader(sock)


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


# ---- the module's server ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(searchable_tmp: Callable[[str], Path]) -> Server:
    root = searchable_tmp("http_connection")
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content))
    port = free_port()
    cfg = root / "applicationHost.config"
    cfg.write_text(apphost(SITES).lstrip().replace("{root}", str(root)).replace("{port}", str(port)))
    srv = Server(root, cfg, port, [port])
    srv.start()
    yield srv
    code = srv.stop()
    left = srv.leftover()
    if code != 0 or left:
        print(srv.stderr()[-5000:])
    assert code == 0 and not left


# ---- keep-alive and connection management -----------------------------------------


def test_http11_keep_alive_serves_several_requests(server: Server) -> None:
    sock, reader = connect(server)
    with sock:
        for path, expect in [("/", STATIC.encode()), ("/app/x", b"wsgi HTTP/1.1 /x"),
                             ("/a.txt", b"A" * 1000), ("/app/y", b"wsgi HTTP/1.1 /y")]:
            sock.sendall(get(path))
            resp = reader.response()
            assert resp.status == 200
            assert resp.body == expect
            assert resp.headers.get("connection", "") != "close"
    with httpx.Client(base_url=server.base) as client:
        for _ in range(5):
            assert client.get("/app/z").text == "wsgi HTTP/1.1 /z"
        assert client.get("/").text == STATIC


def test_http10_closes_by_default(server: Server) -> None:
    for path in ("/", "/app/x"):
        sock, reader = connect(server)
        with sock:
            sock.sendall(get(path, "1.0"))
            resp = reader.response()
            assert resp.status == 200
            assert resp.version == "HTTP/1.0"
            assert "keep-alive" not in resp.headers.get("connection", "").lower()
            assert reader.closed()


def test_http10_keep_alive_when_asked(server: Server) -> None:
    sock, reader = connect(server)
    with sock:
        for path in ("/", "/app/x", "/a.txt", "/app/y"):
            sock.sendall(get(path, "1.0", "Connection: keep-alive\r\n"))
            resp = reader.response()
            assert resp.status == 200
            assert resp.version == "HTTP/1.0"
            assert resp.headers["connection"].lower() == "keep-alive"
            assert "content-length" in resp.headers
        sock.sendall(get("/app/last", "1.0"))
        assert reader.response().body == b"wsgi HTTP/1.0 /last"
        assert reader.closed()


@pytest.mark.parametrize("path", ["/", "/app/x"])
def test_connection_close_is_honoured(server: Server, path: str) -> None:
    sock, reader = connect(server)
    with sock:
        sock.sendall(get(path, "1.1", "Connection: close\r\n"))
        resp = reader.response()
        assert resp.status == 200
        assert resp.headers["connection"].lower() == "close"
        assert reader.closed()


def test_pipelining_ten_requests_in_one_write(server: Server) -> None:
    post_body = b"p" * 5000
    reqs = [get("/"), get("/app/1"), get("/a.txt"), get("/app/2"),
            b"POST /app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(post_body), post_body),
            get("/app/3"), get("/"), get("/asgi/"), get("/app/chunks"), get("/app/4")]
    expect = [STATIC.encode(), b"wsgi HTTP/1.1 /1", b"A" * 1000, b"wsgi HTTP/1.1 /2",
              b"%d %s" % (len(post_body), hashlib.sha256(post_body).hexdigest().encode()),
              b"wsgi HTTP/1.1 /3", STATIC.encode(), b"asgi0;asgi1;asgi2;asgi3;end",
              b"part0;part1;part2;part3;part4;", b"wsgi HTTP/1.1 /4"]
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"".join(reqs))
        for i, body in enumerate(expect):
            resp = reader.response()
            assert resp.status == 200, i
            assert resp.body == body, i
        # still usable afterwards
        sock.sendall(get("/app/after"))
        assert reader.response().body == b"wsgi HTTP/1.1 /after"


# ---- bodies -------------------------------------------------------------------------


def test_chunked_request_body(server: Server) -> None:
    pieces = [b"a" * 10, b"b" * 70000, b"c", b"d" * 300000]
    data = b"".join(pieces)
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"POST /app/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        resp = reader.response()
        assert resp.status == 200
        assert resp.body == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
        sock.sendall(get("/app/after"))
        assert reader.response().body == b"wsgi HTTP/1.1 /after"


def test_chunked_response_on_http11(server: Server) -> None:
    sock, reader = connect(server)
    with sock:
        sock.sendall(get("/app/chunks"))
        resp = reader.response()
        assert resp.chunked
        assert "content-length" not in resp.headers
        assert resp.body == b"part0;part1;part2;part3;part4;"
        sock.sendall(get("/app/after"))
        assert reader.response().body == b"wsgi HTTP/1.1 /after"


def test_close_delimited_response_on_http10(server: Server) -> None:
    sock, reader = connect(server)
    with sock:
        sock.sendall(get("/app/chunks", "1.0", "Connection: keep-alive\r\n"))
        resp = reader.response()
        assert not resp.chunked
        assert "content-length" not in resp.headers
        assert resp.headers.get("connection", "").lower() == "close"
        assert resp.body == b"part0;part1;part2;part3;part4;"


def test_asgi_streaming_response(server: Server) -> None:
    with httpx.Client(base_url=server.base) as client:
        with client.stream("GET", "/asgi/") as resp:
            assert resp.headers["transfer-encoding"] == "chunked"
            assert b"".join(resp.iter_raw()) == b"asgi0;asgi1;asgi2;asgi3;end"
        assert client.get("/app/x").text == "wsgi HTTP/1.1 /x"


def test_expect_100_continue(server: Server) -> None:
    body = b"x" * 200000
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"POST /app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\n\r\n" % len(body))
        status, version, _ = reader.head()
        assert (status, version) == (100, "HTTP/1.1")
        sock.sendall(body)
        resp = reader.response()
        assert resp.status == 200
        assert resp.body == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    # http.client does not wait for 100, but the server must cope with both orders
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/app/echo", body=body, headers={"Expect": "100-continue"})
    assert conn.getresponse().read() == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    conn.close()


@pytest.mark.parametrize("path,length", [("/a.txt", 1000), ("/app/x", len(b"wsgi HTTP/1.1 /x"))])
def test_head_has_length_and_no_body(server: Server, path: str, length: int) -> None:
    sock, reader = connect(server)
    with sock:
        for _ in range(2):
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp = reader.response("HEAD")
            assert resp.status == 200
            assert int(resp.headers["content-length"]) == length
        # no stray body bytes: the next response starts right away
        sock.sendall(get("/app/after"))
        resp = reader.response()
        assert resp.body == b"wsgi HTTP/1.1 /after"
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(1)
