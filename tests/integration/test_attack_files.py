"""A hostile application against the listener's file sending, and against the pool's
folder boundary.

The real server runs as root with two pools, each with its own ApplicationPoolIdentity.
The application in pool "Evil" finds its worker's queue socket and file channel among
its inherited descriptors and writes forged frames on them: the old exploit (READY with
pid 1, then a RESPONSE_FILE naming a root-only file, a TLS private key, a file of the
other pool), a RESPONSE_FILE without a descriptor, descriptors for streams it does not
own, several at once, descriptors that are not files, ranges outside the file, and a
flood.  The listener (root, able to read every secret) must send none of it: each
forgery fails only the forging response, with a log line, and both pools go on serving.

None of this depends on the uid the Evil worker runs as: the secrets are never opened
by the worker in these tests, only named or claimed, so what is checked is the
listener's own behaviour.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import psutil
import pytest

from poolhouse.admin.cert import generate

from .conftest import apphost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pool identities need root")

EVIL_APP = r'''
import array, gc, marshal, os, socket, struct

HEADER = struct.Struct("<BBII")
READY, RESPONSE, RESPONSE_FILE, END = 16, 17, 22, 1


def frame(type_, flags, sid, payload=b""):
    return HEADER.pack(type_, flags, sid, len(payload)) + payload


def channels():
    """The queue socket and the file channel, both named on our own command line."""
    argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
    queue = int(argv[argv.index(b"--queue-fd") + 1])
    files = int(argv[argv.index(b"--files-fd") + 1])
    return queue, files


def my_stream(token):
    """Our own stream id: the worker's bookkeeping is in our process."""
    for obj in gc.get_objects():
        if type(obj).__name__ == "WorkerProcess":
            for sid, stream in obj.streams.items():
                if token.encode() in stream.head.target:
                    return sid
    raise RuntimeError("stream not found")


def pass_fds(files, sid, fds):
    files_sock = socket.socket(fileno=os.dup(files))
    try:
        files_sock.sendmsg([struct.pack("<I", sid)],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    finally:
        files_sock.close()


def app(environ, start_response):
    q = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    case = q.get("case", "")
    if not case:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"evil pool alive"]
    queue, files = channels()
    if case == "ready":  # announce itself again, well-formed, with many credits
        os.write(queue, frame(READY, 0, 0, struct.pack("<i", 100000)))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"announced"]
    sid = my_stream(q["tok"])
    path = q.get("path", "")
    size, mtime = int(q.get("size", "0")), int(q.get("mtime", "0"))
    out = []
    head = marshal.dumps((200, b"Content-Type: application/octet-stream\r\n", size, b""), 4)
    if case == "path":
        # the old exploit: claim to be pid 1, then name a file for the root listener to open
        out.append(frame(READY, 0, 0, marshal.dumps((1, 32), 4)))
        out.append(frame(RESPONSE, 0, sid, head))
        out.append(frame(RESPONSE_FILE, END, sid, marshal.dumps((path, 0, size, size, mtime), 4)))
    else:
        rng = struct.pack("<qqqq", 0, size, size, mtime)
        if case == "other_stream":   # a real file of ours, passed for a stream we do not own
            own = os.open(__file__, os.O_RDONLY)
            pass_fds(files, sid + 1000, [own])
            os.close(own)
        elif case == "several":      # two descriptors at once for our stream
            own = os.open(__file__, os.O_RDONLY)
            pass_fds(files, sid, [own, own])
            os.close(own)
        elif case in ("pipe", "socket", "directory", "device"):
            if case == "pipe":
                r, w = os.pipe()
                os.write(w, b"x" * 100)
                fds = [r, w]
            elif case == "socket":
                fds = [os.dup(queue)]
            elif case == "directory":
                fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY)]
            else:
                fds = [os.open("/dev/zero", os.O_RDONLY)]
            pass_fds(files, sid, fds[:1])
            for fd in fds:
                os.close(fd)
        elif case == "range":        # our own file, a range past its end
            own = os.open(__file__, os.O_RDONLY)
            st = os.fstat(own)
            size, mtime = st.st_size, st.st_mtime_ns
            head = marshal.dumps((200, b"", size + 4096, b""), 4)
            pass_fds(files, sid, [own])
            os.close(own)
            rng = struct.pack("<qqqq", 0, size + 4096, size, mtime)
        elif case == "flood":        # thousands of descriptors for streams that are not ours
            own = os.open(__file__, os.O_RDONLY)
            sock = socket.socket(fileno=os.dup(files))
            sock.setblocking(False)
            sent = 0
            for i in range(3000):
                try:
                    sock.sendmsg([struct.pack("<I", sid + 1 + i)],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [own] * (1 + i % 3)))])
                    sent += 1
                except BlockingIOError:
                    import time
                    time.sleep(0.005)
            sock.close()
            os.close(own)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"flooded %d" % sent]
        # "nofd" and "nohead" pass nothing at all
        if case != "nohead":
            out.append(frame(RESPONSE, 0, sid, head))
        out.append(frame(RESPONSE_FILE, END, sid, rng))
    os.write(queue, b"".join(out))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the forged response should have been the answer"]
'''

WSGI_WEB_CONFIG = ('<configuration><system.webServer><handlers>'
                   '<add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />'
                   '</handlers></system.webServer></configuration>')


def config(https: str = "") -> str:
    return apphost(
        f"""
      <site name="Good" id="1">
        <application path="/" applicationPool="Good">
          <virtualDirectory path="/" physicalPath="{{root}}/good" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" />{https}</bindings>
      </site>
      <site name="Evil" id="2">
        <application path="/" applicationPool="Evil">
          <virtualDirectory path="/" physicalPath="{{root}}/evil" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port1}}:" /></bindings>
      </site>""",
        pools='<add name="Good" /><add name="Evil" />')


def raw_get(port: int, target: str, timeout: float = 20.0) -> bytes:
    """Everything the client receives for one request, until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data


def listener_fds(server) -> list[str]:  # type: ignore[no-untyped-def]
    """What the listener's descriptors point at (but its own log files, opened lazily)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if "poolhouse.listener" in " ".join(child.cmdline()):
            found = []
            for name in os.listdir(f"/proc/{child.pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{child.pid}/fd/{name}")
                except OSError:
                    continue
                if not target.startswith(str(server.state_dir)):
                    found.append(target)
            return sorted(found)
    raise AssertionError("no listener process")


@pytest.fixture
def attacked(poolhouse_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    marker = "SECRET-" + secrets.token_hex(8)
    server = poolhouse_server(config(), files={
        "good/index.html": "good pool", "good/private.txt": f"{marker} of the good pool\n" * 10,
        "evil/app.py": EVIL_APP, "evil/web.config": WSGI_WEB_CONFIG,
    }, extra_ports=1)
    os.chmod(server.root / "good" / "private.txt", 0o600)
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    root_only = vault / "root-only.txt"
    root_only.write_text(f"{marker} of root\n" * 10)
    os.chmod(root_only, 0o600)
    cert, key = generate(["evil.test"], str(tmp_path / "certs"))
    os.chmod(key, 0o600)
    return server, marker, {"root": str(root_only), "tls_key": key,
                            "other_pool": str(server.root / "good" / "private.txt")}


def attack(server, case: str, path: str = "", **extra: int) -> bytes:  # type: ignore[no-untyped-def]
    size = mtime = 0
    if path and os.path.isfile(path):
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
    size, mtime = extra.get("size", size), extra.get("mtime", mtime)
    tok = secrets.token_hex(6)
    return raw_get(server.ports[1], f"/x?case={case}&tok={tok}&path={path}&size={size}&mtime={mtime}")


def secret_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def assert_nothing_leaked(data: bytes, marker: str, *paths: str) -> None:
    assert marker.encode() not in data
    assert b"PRIVATE KEY" not in data
    for path in paths:
        assert secret_bytes(path)[:64] not in data
    # the forged head may have gone out, but never a body: the connection was cut
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"", body[:200]


def test_forged_ready_and_file_by_path_send_nothing(attacked) -> None:  # type: ignore[no-untyped-def]
    server, marker, targets = attacked
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")
    for name, path in targets.items():
        data = attack(server, "path", path)
        assert_nothing_leaked(data, marker, path)
    assert attack(server, "ready").endswith(b"announced")
    err = server.stderr()
    assert "malformed READY" in err and "sent READY again; ignored" in err
    assert err.count("RESPONSE_FILE without a descriptor") >= len(targets)
    server.wait_for(lambda: "File_Not_Sendable" in server.httperr(), timeout=15)
    # both pools keep serving
    assert raw_get(server.port, "/index.html").endswith(b"good pool")
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")


@pytest.mark.parametrize("case, reason", [
    ("nofd", "RESPONSE_FILE without a descriptor"),
    ("other_stream", "a descriptor for a stream it does not own"),
    ("several", "several descriptors at once"),
    ("pipe", "the descriptor is a pipe"),
    ("socket", "the descriptor is a socket"),
    ("directory", "the descriptor is a directory"),
    ("device", "the descriptor is a device"),
    ("range", "file reference outside its file"),
])
def test_forged_descriptors_are_refused(attacked, case: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    server, marker, targets = attacked
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")
    before = listener_fds(server)
    path = targets["root"] if case != "directory" else str(server.root / "good")
    data = attack(server, case, path)
    assert_nothing_leaked(data, marker, targets["root"])
    assert data.startswith(b"HTTP/1.1 200") or data == b""
    server.wait_for(lambda: reason in server.stderr(), timeout=10)
    # every descriptor it passed was closed again, and both pools keep serving
    server.wait_for(lambda: listener_fds(server) == before, timeout=10)
    assert raw_get(server.port, "/index.html").endswith(b"good pool")
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")


def test_a_file_without_a_head_or_descriptor_is_a_502(attacked) -> None:  # type: ignore[no-untyped-def]
    server, marker, targets = attacked
    data = attack(server, "nohead", targets["root"])
    assert data.startswith(b"HTTP/1.1 502") and marker.encode() not in data
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")


def test_a_flood_of_descriptors_is_closed_and_bounded_in_the_log(attacked) -> None:  # type: ignore[no-untyped-def]
    server, marker, targets = attacked
    assert raw_get(server.ports[1], "/").endswith(b"evil pool alive")
    before = listener_fds(server)
    data = attack(server, "flood")
    assert data.startswith(b"HTTP/1.1 200") and b"flooded " in data  # its own response still works
    sent = int(data.rsplit(b"flooded ", 1)[1])
    assert sent > 1000
    server.wait_for(lambda: listener_fds(server) == before, timeout=10)
    err = server.stderr()
    assert "a descriptor for a stream it does not own" in err or "several descriptors at once" in err
    assert err.count("nothing is sent for it") <= 25 + sent // 1000
    assert raw_get(server.port, "/index.html").endswith(b"good pool")


# ---- symbolic links out of a site's folders ------------------------------------------

OPEN_SITE = """
      <site name="Open" id="3">
        <application path="/" applicationPool="Evil">
          <virtualDirectory path="/" physicalPath="{root}/open" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port2}:" /></bindings>
        <symbolicLinks allowOutsideRoot="true" />
      </site>"""


def links_config(open_site: bool) -> str:
    return apphost(
        """
      <site name="Good" id="1">
        <application path="/" applicationPool="Good">
          <virtualDirectory path="/" physicalPath="{root}/good" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>
      <site name="Evil" id="2">
        <application path="/" applicationPool="Evil">
          <virtualDirectory path="/" physicalPath="{root}/evil" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port1}:" /></bindings>
      </site>""" + (OPEN_SITE if open_site else ""),
        pools='<add name="Good" /><add name="Evil" />')


DEFAULT_DOC = ('<defaultDocument enabled="true"><files><clear /><add value="page.html" /></files>'
               '</defaultDocument>')


@pytest.fixture
def linked(poolhouse_server, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    open_site = request.node.name.startswith("test_a_site_may")
    marker = "SECRET-" + secrets.token_hex(8)
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    secret = vault / "root-only.txt"
    secret.write_text(f"{marker} of root\n" * 10)
    os.chmod(secret, 0o600)
    big = vault / "big.bin"  # past the small-file limit: sent by the listener
    big.write_bytes(marker.encode() * 100000)
    os.chmod(big, 0o600)
    public = tmp_path / "public"
    public.mkdir()
    (public / "shared.txt").write_text("shared outside the site\n")
    (public / "dd.config").write_text(DEFAULT_DOC)
    server = poolhouse_server(links_config(open_site), files={
        "good/index.html": "good pool", "good/private.txt": f"{marker} of the good pool\n",
        "evil/index.html": "evil pool", "evil/inside/real.txt": "inside the root\n",
        "evil/conf/page.html": "a page", "evil/conf/web.config":
            '<configuration><system.webServer><defaultDocument configSource="dd.config" />'
            '</system.webServer></configuration>',
        "evil/conf2/page.html": "a page", "evil/docs/placeholder": "",
        "open/index.html": "open", "open/conf/page.html": "linked default document",
        "open/conf/web.config":
            '<configuration><system.webServer><defaultDocument configSource="dd.config" />'
            '</system.webServer></configuration>',
    }, extra_ports=2)
    evil = server.root / "evil"
    os.chmod(server.root / "good" / "private.txt", 0o600)
    (evil / "shadow.txt").symlink_to("/etc/shadow")
    (evil / "secret.txt").symlink_to(secret)
    (evil / "big.bin").symlink_to(big)
    (evil / "neighbour").symlink_to(server.root / "good")
    (evil / "neighbour.txt").symlink_to(server.root / "good" / "private.txt")
    (evil / "alias.txt").symlink_to(evil / "inside" / "real.txt")  # stays inside: fine
    (evil / "alias").symlink_to("inside")
    (evil / "docs" / "index.html").symlink_to(secret)  # a default document out of the root
    (evil / "conf" / "dd.config").symlink_to(secret)
    (evil / "conf2" / "web.config").symlink_to(secret)
    if open_site:
        (server.root / "open" / "shared.txt").symlink_to(public / "shared.txt")
        (server.root / "open" / "conf" / "dd.config").symlink_to(public / "dd.config")
    return server, marker


def test_content_symlinks_out_of_the_root_are_404(linked) -> None:  # type: ignore[no-untyped-def]
    server, marker = linked
    evil = server.ports[1]
    assert raw_get(evil, "/index.html").endswith(b"evil pool")
    for target in ("/shadow.txt", "/secret.txt", "/big.bin", "/neighbour/private.txt", "/neighbour/index.html",
                   "/neighbour.txt"):
        data = raw_get(evil, target)
        assert data.startswith(b"HTTP/1.1 404"), (target, data[:200])
        assert marker.encode() not in data and b"root:" not in data
    # a default document out of the root is not served either (no listing: 403.14)
    data = raw_get(evil, "/docs/")
    assert data.startswith(b"HTTP/1.1 403") and marker.encode() not in data
    # links that stay inside keep working
    assert raw_get(evil, "/alias.txt").endswith(b"inside the root\n")
    assert raw_get(evil, "/alias/real.txt").endswith(b"inside the root\n")
    assert raw_get(server.port, "/index.html").endswith(b"good pool")


def test_config_symlinks_out_of_the_folder_are_500_19_without_content(linked) -> None:  # type: ignore[no-untyped-def]
    server, marker = linked
    evil = server.ports[1]
    for target in ("/conf/", "/conf2/"):  # configSource through a link; web.config itself a link
        data = raw_get(evil, target)
        assert data.startswith(b"HTTP/1.1 500"), data[:300]
        assert b"500.19" in data and b"symbolic link" in data
        assert marker.encode() not in data
    assert raw_get(evil, "/index.html").endswith(b"evil pool")


def test_a_site_may_allow_links_out_of_its_root(linked) -> None:  # type: ignore[no-untyped-def]
    server, marker = linked
    open_site = server.ports[2]
    assert raw_get(open_site, "/shared.txt").endswith(b"shared outside the site\n")
    assert raw_get(open_site, "/conf/").endswith(b"linked default document")
