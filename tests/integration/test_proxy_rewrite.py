"""Reverse proxy (ARR's behaviour): URL Rewrite rules sending requests to an absolute
http:// URL, forwarded by the worker to a local upstream started by the test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from .conftest import free_port
from .upstream import proxy_site, rule, serve_http

BIG = b"0123456789abcdef" * 65536 * 3  # 3 MiB


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def do_GET(self) -> None:
        self.handle_any()

    def do_POST(self) -> None:
        self.handle_any()

    def handle_any(self) -> None:
        body = self._body()
        if self.path.startswith("/big"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BIG), 100_000):
                piece = BIG[i:i + 100_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/moved"):
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps({
            "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_length": len(body), "body_sum": sum(body) % 65521,
        }).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def upstream() -> Iterator[int]:
    with serve_http(Upstream) as srv:
        yield srv.server_address[1]


def test_reverse_proxy(poolhouse_server, upstream: int) -> None:  # type: ignore[no-untyped-def]
    server = proxy_site(poolhouse_server,
                        rule("api", f"http://127.0.0.1:{upstream}", {"HTTP_X_FROM_RULE": "{R:1}"}),
                        rule("down", f"http://127.0.0.1:{free_port()}"),
                        extra='<httpProtocol><customHeaders><add name="X-Via-Poolhouse" value="1" /></customHeaders>'
                              '</httpProtocol>')
    with httpx.Client(base_url=server.base, timeout=20) as c:
        r = c.get("/api/users?page=2", headers={"X-Forwarded-For": "10.0.0.9", "Connection": "keep-alive, X-Secret",
                                                "X-Secret": "hop"})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["path"] == "/users?page=2"
        h = data["headers"]
        assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == f"127.0.0.1:{server.port}"
        assert h["host"] == f"127.0.0.1:{upstream}"
        assert h["x-from-rule"] == "users"
        assert h["x-original-url"] == "/api/users?page=2"
        assert "x-secret" not in h  # named by Connection: hop-by-hop
        assert r.headers["x-upstream"] == "yes"
        assert "keep-alive" not in r.headers
        assert r.headers["x-via-poolhouse"] == "1"  # SendResponse hooks ran

        body = bytes(range(256)) * 400  # ~100 KB upload
        r = c.post("/api/upload", content=body)
        assert r.status_code == 201
        assert (r.json()["body_length"], r.json()["body_sum"]) == (len(body), sum(body) % 65521)

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 10_000):
                yield body[i:i + 10_000]
        r = c.post("/api/chunked", content=chunks())
        assert r.json()["body_length"] == len(body)

        r = c.get("/api/big")
        assert r.status_code == 200 and r.content == BIG

        r = c.get("/api/moved", follow_redirects=False)
        assert r.status_code == 302
        assert r.headers["location"] == f"http://127.0.0.1:{server.port}/elsewhere"

        for _ in range(20):  # kept-alive upstream connections are reused
            assert c.get("/api/x").status_code == 200

        r = c.get("/down/anything")
        assert r.status_code == 502
        assert c.get("/index.html").text == "home"
    assert "reverse proxy GET /down/anything" in server.stderr()
