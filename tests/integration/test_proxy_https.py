"""Reverse proxy to https:// upstreams: a local TLS upstream whose certificate is made
by ``poolhouse cert`` (cryptography); verified against a CA file a rule names, refused
when untrusted or for another name, and unverified only when a rule says so."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from poolhouse.admin.cert import generate

from .upstream import proxy_site, rule, serve_http

class TlsUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        self.server.peers.add(self.client_address)
        data = json.dumps({
            "path": self.path, "host": self.headers.get("Host"), "sni": self.server.sni.get(self.client_address),
            "proto": self.headers.get("X-Forwarded-Proto"), "body_length": len(body),
            "cipher": self.connection.cipher()[0],  # type: ignore[attr-defined]
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, str, ThreadingHTTPServer]]:
    cert, key = generate(["localhost"], str(tmp_path / "pki"))
    sni: dict[Any, str | None] = {}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def remember_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        sni[sock.getpeername()] = name
    ctx.sni_callback = remember_sni  # type: ignore[assignment]
    with serve_http(TlsUpstream, tls=ctx) as srv:
        srv.peers = set()  # type: ignore[attr-defined]
        srv.sni = sni  # type: ignore[attr-defined]
        yield srv.server_address[1], cert, srv


def test_https_upstream(poolhouse_server, tls_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, cert, upstream = tls_upstream
    server = proxy_site(
        poolhouse_server,
        rule("trusted", f"https://localhost:{port}", {"POOLHOUSE_PROXY_CA_FILE": cert}),
        rule("system", f"https://localhost:{port}"),  # the system's CAs do not know it
        rule("othername", f"https://127.0.0.1:{port}", {"POOLHOUSE_PROXY_CA_FILE": cert}),
        rule("nocafile", f"https://localhost:{port}", {"POOLHOUSE_PROXY_CA_FILE": str(tmp_path / "none.pem")}),
        rule("insecure", f"https://127.0.0.1:{port}", {"POOLHOUSE_PROXY_VERIFY": "false"}),
    )
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/trusted/a/b?x=1")
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["path"] == "/a/b?x=1"
        assert data["host"] == f"localhost:{port}"
        assert data["sni"] == "localhost"
        assert data["proto"] == "http"  # the client's scheme
        r = c.post("/trusted/upload", content=b"x" * 200_000)
        assert r.status_code == 200 and r.json()["body_length"] == 200_000
        for _ in range(10):
            assert c.get("/trusted/again").status_code == 200
        assert len(upstream.peers) <= 2  # TLS connections are kept alive and reused

        peers_before = len(upstream.peers)
        for path in ("/system/x", "/othername/x", "/nocafile/x"):
            r = c.get(path)
            assert r.status_code == 502, (path, r.status_code, r.text)
        assert len(upstream.peers) == peers_before  # no request reached the upstream

        r = c.get("/insecure/x")
        assert r.status_code == 200 and r.json()["sni"] is None  # no SNI for an IP address
    log = server.stderr()
    assert "reverse proxy GET /system/x" in log and "is not trusted" in log
    assert "reverse proxy GET /othername/x" in log and "127.0.0.1" in log
    assert "reverse proxy GET /nocafile/x" in log and "cannot be loaded" in log
    assert "without certificate verification" in log
