"""How the reverse proxy relays upstream responses that are unusual but legal: a body
delimited by the connection's close (HTTP/1.0 style), HEAD answers with and without a
Content-Length, errors to HEAD under httpErrors, and the upstream's Server header (one
Server header per response, the upstream's, as ARR passes it through)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from .upstream import RawUpstream, proxy_site, rule

BIG = bytes(range(256)) * 4096 * 2  # 2 MiB: more than the proxy gathers into one frame


class OddUpstream(RawUpstream):
    """Answers by path, each on a connection of its own that it closes afterwards."""

    def answer(self, conn: socket.socket, method: str, path: str) -> bool:
        if path.startswith("/eof-small"):  # HTTP/1.0: no length, the close ends the body
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nServer: Upstream/1.0\r\n\r\nsmall body")
        elif path.startswith("/eof-big"):  # HTTP/1.1 without a length, in pieces, slowly
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
            for i in range(0, len(BIG), 256 * 1024):
                conn.sendall(BIG[i:i + 256 * 1024])
                time.sleep(0.01)
        elif path.startswith("/head-nolength"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        elif path.startswith("/head-length"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
                         + (b"x" * 1234 if method != "HEAD" else b""))
        elif path.startswith("/gone-nolength"):
            conn.sendall(b"HTTP/1.1 410 Gone\r\nConnection: close\r\n\r\n")
        elif path.startswith("/gone"):
            conn.sendall(b"HTTP/1.1 410 Gone\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
                         b"Server: Upstream/1.0\r\n\r\n" + (b"gone away" if method != "HEAD" else b""))
        elif path.startswith("/cached"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
                         b"Cache-Control: max-age=60\r\nServer: Upstream/1.0\r\n\r\ncached")
        elif path.startswith("/plain"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nplain")
        return False


@pytest.fixture
def odd_upstream() -> Iterator[OddUpstream]:
    up = OddUpstream()
    yield up
    up.stop()


def test_body_delimited_by_close(poolhouse_server, odd_upstream: OddUpstream) -> None:  # type: ignore[no-untyped-def]
    server = proxy_site(poolhouse_server, rule("up", f"http://127.0.0.1:{odd_upstream.port}"))
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/up/eof-small")
        assert (r.status_code, r.content) == (200, b"small body")
        for _ in range(2):  # (the second on the same client connection: it was kept alive)
            r = c.get("/up/eof-big")
            assert r.status_code == 200
            assert len(r.content) == len(BIG) and r.content == BIG
            # its length was unknown until the upstream closed: chunked to the client
            assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
    # HTTP/1.0 client: no chunked encoding, the end of the body is the end of the connection
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /up/eof-big HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while piece := s.recv(1 << 20):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert body == BIG
    assert "closed the connection" not in server.stderr()


def test_head_keeps_the_upstreams_content_length_or_none(poolhouse_server,  # type: ignore[no-untyped-def]
                                                         odd_upstream: OddUpstream) -> None:
    server = proxy_site(poolhouse_server, rule("up", f"http://127.0.0.1:{odd_upstream.port}"))
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.head("/up/head-nolength")
        assert r.status_code == 200
        assert "content-length" not in r.headers and "transfer-encoding" not in r.headers
        r = c.head("/up/head-length")
        assert (r.status_code, r.headers.get("content-length")) == (200, "1234")
        assert c.get("/up/head-length").content == b"x" * 1234
        # an upstream's error to HEAD is an existing response (httpErrors existingResponse
        # Auto): passed through with its own length, not the length of an IIS error page
        r = c.head("/up/gone")
        assert (r.status_code, r.headers.get("content-length")) == (410, "9")
        assert r.headers.get("content-type") == "text/plain"
        assert r.headers.get_list("server") == ["Upstream/1.0"]
        r = c.get("/up/gone")
        assert (r.status_code, r.text) == (410, "gone away")
        r = c.head("/up/gone-nolength")
        assert r.status_code == 410 and "content-length" not in r.headers
        # a server-generated error to HEAD keeps the length of its page, as on IIS
        page = c.get("/nothing-here")
        r = c.head("/nothing-here")
        assert page.status_code == r.status_code == 404
        assert r.headers.get("content-length") == str(len(page.content))


def test_one_server_header_the_upstreams(poolhouse_server, odd_upstream: OddUpstream) -> None:  # type: ignore[no-untyped-def]
    server = proxy_site(poolhouse_server, rule("up", f"http://127.0.0.1:{odd_upstream.port}"))
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/up/eof-small")  # streamed
        assert r.headers.get_list("server") == ["Upstream/1.0"]
        r = c.get("/up/gone")  # an error, whole
        assert r.headers.get_list("server") == ["Upstream/1.0"]
        first = c.get("/up/cached")
        again = c.get("/up/cached")  # from the listener's response cache
        assert first.text == again.text == "cached" and "age" in again.headers
        assert first.headers.get_list("server") == again.headers.get_list("server") == ["Upstream/1.0"]
        # an upstream without one, and Poolhouse's own answers: Poolhouse's
        assert c.get("/up/plain").headers.get_list("server") == ["Poolhouse"]
        assert c.get("/index.html").headers.get_list("server") == ["Poolhouse"]
        assert c.get("/nothing-here").headers.get_list("server") == ["Poolhouse"]


class JsonUpstream(RawUpstream):
    def answer(self, conn: socket.socket, method: str, path: str) -> bool:
        body = b'{"items": [' + b", ".join(b'{"n": %d, "name": "item"}' % i for i in range(300)) + b"]}"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        return False


def test_a_rewrite_to_the_proxy_runs_the_proxy_handlers_modules(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """The URL of a single-page application is mapped to StaticFile; a rule sends /api/
    to an upstream: the proxied JSON gets DynamicCompressionModule (which acts on every
    handler but StaticFile), as the proxy handler's own pipeline has it."""
    upstream = JsonUpstream()
    try:
        modules = '<modules><add name="DynamicCompressionModule" /></modules>'
        server = proxy_site(poolhouse_server, rule("api", f"http://127.0.0.1:{upstream.port}"), extra=modules)
        with httpx.Client(base_url=server.base, timeout=10) as c:
            r = c.get("/api/items", headers={"Accept-Encoding": "gzip"})
            assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip", r.headers
            assert r.json()["items"][299] == {"n": 299, "name": "item"}
            r = c.get("/index.html", headers={"Accept-Encoding": "gzip"})
            assert r.text == "home" and "content-encoding" not in r.headers  # StaticFile: not dynamic
    finally:
        upstream.stop()
