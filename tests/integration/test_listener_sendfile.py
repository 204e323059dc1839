"""Large static responses are sent by the listener (q.RESPONSE_FILE + sendfile): the
worker reads none of the file, over plain TCP and TLS, for the static handler (whole
files, single ranges, HEAD) and for a WSGI application's wsgi.file_wrapper; a body that
compression transforms still goes through the worker; a descriptor that is not a
readable regular file holding the range, or a file that changed, is never sent."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from pathlib import Path

import httpx
import psutil
import pytest

from poolhouse.admin.cert import generate
from poolhouse.ipc.queue import FileRange
from poolhouse.listener.file_channel import FileRefused
from poolhouse.listener.file_send import FileChanged, check_descriptor

from .conftest import apphost

MB = 1024 * 1024

APP = """\
import os

HERE = os.path.dirname(__file__)

def app(environ, start_response):
    path = os.path.join(HERE, "..", "www", "big.bin")
    fh = open(path, "rb")
    if environ["PATH_INFO"] == "/skip":
        fh.seek(1000)
    size = os.fstat(fh.fileno()).st_size - fh.tell()
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](fh, 65536)
"""


def site(https: str = "") -> str:
    return apphost(
        f"""
      <site name="Files" id="1">
        <application path="/" applicationPool="AppPool">
          <virtualDirectory path="/" physicalPath="{{root}}/www" />
        </application>
        <application path="/app" applicationPool="AppPool">
          <virtualDirectory path="/" physicalPath="{{root}}/app" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" />{https}</bindings>
      </site>""",
        pools='<add name="AppPool" />')


def make_big(root: Path, size: int) -> str:
    chunk = os.urandom(MB)
    digest = hashlib.sha256()
    with open(root / "www" / "big.bin", "wb") as fh:
        for i in range(size // MB):
            piece = chunk[i % 7:] + chunk[:i % 7]  # not one repeated block
            fh.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def worker_read_bytes(server) -> int:  # type: ignore[no-untyped-def]
    return sum(psutil.Process(w["pid"]).io_counters().read_chars for w in server.workers("AppPool"))


def download(client: httpx.Client, url: str, **kw) -> tuple[httpx.Response, str, int]:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    n = 0
    with client.stream("GET", url, **kw) as r:
        for piece in r.iter_bytes(MB):
            digest.update(piece)
            n += len(piece)
    return r, digest.hexdigest(), n


def test_large_static_files_are_sent_by_the_listener(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(site(), files={"www/index.html": "home", "app/app.py": APP,
                                             "app/web.config": WSGI_WEB_CONFIG})
    sha = make_big(server.root, 200 * MB)
    with httpx.Client(base_url=server.base, timeout=60) as c:
        assert c.get("/index.html").text == "home"  # the worker is up
        before = worker_read_bytes(server)
        r, got, n = download(c, "/big.bin")
        assert r.status_code == 200 and r.headers["content-length"] == str(200 * MB)
        assert (n, got) == (200 * MB, sha)
        # a single range, and HEAD
        r = c.get("/big.bin", headers={"Range": "bytes=100000000-100000099"})
        assert r.status_code == 206 and len(r.content) == 100
        with open(server.root / "www" / "big.bin", "rb") as fh:
            fh.seek(100000000)
            assert r.content == fh.read(100)
        r = c.head("/big.bin")
        assert r.status_code == 200 and r.headers["content-length"] == str(200 * MB) and r.content == b""
        # the worker read (almost) none of the 200 MB: the listener sent it
        assert worker_read_bytes(server) - before < 5 * MB
        # wsgi.file_wrapper: the same, for an application's file (from its position)
        before = worker_read_bytes(server)
        r, got, n = download(c, "/app/file")
        assert (r.status_code, n, got) == (200, 200 * MB, sha)
        r, _, n = download(c, "/app/skip")
        assert (r.status_code, n) == (200, 200 * MB - 1000)
        assert worker_read_bytes(server) - before < 5 * MB
        # keep-alive goes on after a sent file
        assert c.get("/index.html").text == "home"


WSGI_WEB_CONFIG = ('<configuration><system.webServer><handlers>'
                   '<add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />'
                   '</handlers></system.webServer></configuration>')


def test_tls_and_compressed_responses(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = generate(["files.test"], str(tmp_path / "certs"))
    https = (f'<binding protocol="https" bindingInformation="127.0.0.1:{{port1}}:" '
             f'certificateFile="{cert}" keyFile="{key}" />')
    server = poolhouse_server(site(https), files={"www/index.html": "home", "app/app.py": APP,
                                                  "app/web.config": WSGI_WEB_CONFIG}, extra_ports=1)
    sha = make_big(server.root, 20 * MB)
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    with httpx.Client(base_url=f"https://127.0.0.1:{server.ports[1]}", verify=ctx, timeout=60) as c:
        r, got, n = download(c, "/big.bin")
        assert (r.status_code, n, got) == (200, 20 * MB, sha)
        r, got, n = download(c, "/app/file")
        assert (r.status_code, n, got) == (200, 20 * MB, sha)
    # a body compression transforms still comes through the worker, compressed
    with open(server.root / "www" / "big.txt", "wb") as fh:
        fh.write(b"compressible line of text\n" * 400000)  # 10.4 MB
    with httpx.Client(base_url=server.base, timeout=60) as c:
        r = c.get("/big.txt", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and len(r.content) == 26 * 400000
        if r.headers.get("content-encoding") == "gzip":  # the stock config compresses text/plain
            assert int(r.headers.get("content-length", "0") or 0) < 26 * 400000


def test_descriptor_checks(tmp_path: Path) -> None:
    """What the listener checks on a descriptor a worker passed before it sends from it:
    a regular file open for reading, unchanged since the head, holding the range.  (The
    worker opened it as its own user: whether it may read the file was the kernel's
    decision, so an unreadable file never gets this far; see test_attack_files.py.)"""
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    st = path.stat()
    ref = FileRange(0, 1000, st.st_size, st.st_mtime_ns)
    fd = os.open(path, os.O_RDONLY)
    try:
        check_descriptor(fd, ref)  # the file the head was built from
        with pytest.raises(FileRefused, match="outside the file"):
            check_descriptor(fd, FileRange(1, 1000, st.st_size, st.st_mtime_ns))
        path.write_bytes(b"y" * 999)  # changed after the head was built
        with pytest.raises(FileChanged):
            check_descriptor(fd, ref)
    finally:
        os.close(fd)
    st = path.stat()
    ref = FileRange(0, 999, st.st_size, st.st_mtime_ns)
    for flags in (os.O_WRONLY, os.O_PATH):
        fd = os.open(path, flags)
        try:
            with pytest.raises(FileRefused, match="not open for reading"):
                check_descriptor(fd, ref)
        finally:
            os.close(fd)
    a, b = socket.socketpair()
    r, w = os.pipe()
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        for fd, kind in ((a.fileno(), "a socket"), (r, "a pipe"), (d, "a directory"), (null, "a device")):
            with pytest.raises(FileRefused, match=kind):
                check_descriptor(fd, FileRange(0, 0, 0, 0))
    finally:
        a.close(), b.close()
        for fd in (r, w, d, null):
            os.close(fd)


def listener_open_files(server, name: str) -> int:  # type: ignore[no-untyped-def]
    """How many descriptors of the listener point at a file called ``name``."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if "poolhouse.listener" in " ".join(child.cmdline()):
            return sum(1 for f in child.open_files() if os.path.basename(f.path) == name)
    raise AssertionError("no listener process")


def test_descriptors_outlive_the_worker_and_die_with_the_client(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """The listener holds its own reference to a file it sends: a worker that dies
    mid-send does not cut the download, and a client that goes away mid-send leaves no
    descriptor behind."""
    server = poolhouse_server(site(), files={"www/index.html": "home", "app/app.py": APP,
                                             "app/web.config": WSGI_WEB_CONFIG})
    sha = make_big(server.root, 64 * MB)
    with httpx.Client(base_url=server.base, timeout=60) as c:
        assert c.get("/index.html").text == "home"
        pid = server.workers("AppPool")[0]["pid"]
        digest = hashlib.sha256()
        n = 0
        with c.stream("GET", "/big.bin") as r:
            pieces = r.iter_bytes(MB)
            first = next(pieces)
            digest.update(first)
            n += len(first)
            os.kill(pid, 9)  # the worker that opened the file is gone
            for piece in pieces:
                digest.update(piece)
                n += len(piece)
        assert (r.status_code, n, digest.hexdigest()) == (200, 64 * MB, sha)
        server.wait_for(lambda: listener_open_files(server, "big.bin") == 0, timeout=10)
        assert c.get("/index.html").text == "home"  # a new worker (on demand)
    # a client that reads a little and leaves
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 2 * MB:
            got += len(s.recv(65536))
        assert listener_open_files(server, "big.bin") == 1
    server.wait_for(lambda: listener_open_files(server, "big.bin") == 0, timeout=15)
    with httpx.Client(base_url=server.base, timeout=60) as c:
        assert c.get("/index.html").text == "home"
