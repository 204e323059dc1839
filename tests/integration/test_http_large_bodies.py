"""Large bodies both ways with back-pressure: neither the listener nor the worker may
hold a body in memory, however fast one side and however slow the other."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable

import psutil

from tests.integration.conftest import Server, apphost

SIZE = 300 * 1024 * 1024
BLOCK = 1024 * 1024
RSS_LIMIT = 150 * 1024 * 1024

APP = '''
import hashlib

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/upload":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            chunk = inp.read(256 * 1024)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
        body = ("%d %s" % (n, h.hexdigest())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/download":
        size = int(environ["QUERY_STRING"])
        block = bytes(range(256)) * 4096
        def gen():
            left = size
            while left > 0:
                n = min(left, len(block))
                left -= n
                yield block[:n]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()
    if path == "/bigfirst":
        # the first piece is larger than the whole body window
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return iter([b"a" * (3 * 1024 * 1024), b"b" * 10, b"c" * (2 * 1024 * 1024)])
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
'''

SITES = '''<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/app" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>'''

FILES = {
    "app/big_app.py": APP,
    "app/web.config": '<configuration><system.webServer><handlers><add name="app" path="*" verb="*" '
                      'modules="WsgiModule" scriptProcessor="big_app:app" /></handlers>'
                      # uploads past request filtering's default 30,000,000 bytes (413.1)
                      '<security><requestFiltering><requestLimits maxAllowedContentLength="4000000000" />'
                      '</requestFiltering></security></system.webServer>'
                      '</configuration>',
}


def processes(server: Server) -> dict[str, psutil.Process]:
    assert server.proc is not None
    out = {}
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        cmd = " ".join(child.cmdline())
        for kind in ("poolhouse.listener", "poolhouse.worker"):
            if kind in cmd:
                out[kind] = child
    return out


class RssSampler(threading.Thread):
    """Samples the listener's and the worker's RSS until stopped; keeps the peaks."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.procs = processes(server)
        assert set(self.procs) == {"poolhouse.listener", "poolhouse.worker"}, self.procs
        self.peak = {k: 0 for k in self.procs}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for kind, proc in self.procs.items():
                try:
                    self.peak[kind] = max(self.peak[kind], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def pattern(i: int) -> bytes:
    return (b"%08d" % i) * (BLOCK // 8)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_chunked(sock: socket.socket, rest: bytes, consume: Callable[[bytes], None],
                 slow_until: int = 0) -> int:
    """Decodes a chunked body, sleeping a little per read while under ``slow_until``."""
    buf = rest
    total = 0

    def fill() -> None:
        nonlocal buf
        slow = total < slow_until
        if slow:
            time.sleep(0.01)
        data = sock.recv(64 * 1024 if slow else 256 * 1024)
        assert data, "connection closed inside a chunked body"
        buf += data

    while True:
        while b"\r\n" not in buf:
            fill()
        line, buf = buf.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return total
        while len(buf) < size + 2:
            fill()
        consume(buf[:size])
        total += size
        buf = buf[size + 2:]


def test_upload_300mb_is_streamed_with_bounded_memory(poolhouse_server: Callable[..., Server]) -> None:
    server = poolhouse_server(apphost(SITES).lstrip(), FILES)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    with sock:
        # a first request starts the worker, so both processes can be sampled
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        with RssSampler(server) as rss:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % SIZE)
            h = hashlib.sha256()
            for i in range(SIZE // BLOCK):
                block = pattern(i)
                h.update(block)
                sock.sendall(block)
            head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
        assert rest == b"%d %s" % (SIZE, h.hexdigest().encode())
    assert all(v < RSS_LIMIT for v in rss.peak.values()), rss.peak


def test_download_300mb_to_a_slow_reader_with_bounded_memory(poolhouse_server: Callable[..., Server]) -> None:
    server = poolhouse_server(apphost(SITES).lstrip(), FILES)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with sock:
        sock.sendall(b"GET /download?10 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, rest = read_head(sock)
        assert read_chunked(sock, rest, lambda b: None) == 10
        with RssSampler(server) as rss:
            sock.sendall(b"GET /download?%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
            h = hashlib.sha256()
            # slow for the first 8 MB (~1.3 s): the worker must wait for window meanwhile
            total = read_chunked(sock, rest, h.update, slow_until=8 * 1024 * 1024)
        assert total == SIZE
        block = bytes(range(256)) * 4096
        expect = hashlib.sha256()
        for _ in range(SIZE // len(block)):
            expect.update(block)
        assert h.hexdigest() == expect.hexdigest()
        assert all(v < RSS_LIMIT for v in rss.peak.values()), rss.peak
        print("peak RSS", rss.peak)


def test_first_streamed_piece_larger_than_the_window(poolhouse_server: Callable[..., Server]) -> None:
    server = poolhouse_server(apphost(SITES).lstrip(), FILES)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    with sock:
        for _ in range(2):
            sock.sendall(b"GET /bigfirst HTTP/1.1\r\nHost: x\r\n\r\n")
            head, rest = read_head(sock)
            assert b"transfer-encoding: chunked" in head.lower()
            parts: list[bytes] = []
            read_chunked(sock, rest, parts.append)
            assert b"".join(parts) == b"a" * (3 * 1024 * 1024) + b"b" * 10 + b"c" * (2 * 1024 * 1024)
