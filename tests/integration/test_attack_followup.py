"""More of the hostile application, against the listener's memory: the listener is one
process for every pool, so a worker that makes it hold memory without bound takes every
pool down with it.

The application in pool "Evil" writes forged frames on its worker's own queue socket
(named on its command line, as in test_attack_files.py): response body far past the
window the listener granted, to a client of its own that reads nothing; and a request
body window far larger than the listener ever gave, while its worker reads nothing.  The
listener must not buffer either: it holds at most a window per stream, refuses the
forgery with a log line, and both pools go on serving.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import psutil
import pytest

from .conftest import apphost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pool identities need root")

MB = 1 << 20
FLOOD = 256 * MB

EVIL_APP = r'''
import gc, json, marshal, os, signal, socket, struct, subprocess, time

HEADER = struct.Struct("<BBII")
WINDOW, RESPONSE, RESPONSE_BODY = 4, 17, 18


def frame(type_, flags, sid, payload=b""):
    return HEADER.pack(type_, flags, sid, len(payload)) + payload


def queue_socket():
    argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
    sock = socket.socket(fileno=os.dup(int(argv[argv.index(b"--queue-fd") + 1])))
    sock.settimeout(60)
    return sock


def my_stream(token):
    for obj in gc.get_objects():
        if type(obj).__name__ == "WorkerProcess":
            for sid, stream in obj.streams.items():
                if token.encode() in stream.head.target.split(b"?")[-1] or token.encode() == stream.head.target:
                    return sid
    raise RuntimeError("stream not found")


def app(environ, start_response):
    q = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    case = q.get("case", "")
    if case == "flood":
        # a streamed response whose body ignores the window: %(flood)d bytes at once
        sid = my_stream(q["tok"])
        sock = queue_socket()
        head = marshal.dumps((200, b"Content-Type: application/octet-stream\r\n", -1, b""), 4)
        sock.sendall(frame(RESPONSE, 0, sid, head))
        piece = frame(RESPONSE_BODY, 0, sid, b"x" * (1 << 20))
        for _ in range(%(flood)d >> 20):
            sock.sendall(piece)
        sock.close()
    elif case == "window":
        # grant the listener a 4 GB request-body window, then read nothing for a while
        sid = my_stream(q["tok"])
        sock = queue_socket()
        sock.sendall(frame(WINDOW, 0, sid, struct.pack("<I", 0xFFFF0000)))
        sock.close()
        # and stop the whole worker (its loop, too) for a while: nothing reads the socket
        subprocess.Popen(["/bin/sh", "-c", "sleep " + q.get("sleep", "8") + "; kill -CONT " + str(os.getpid())])
        os.kill(os.getpid(), signal.SIGSTOP)
    elif case == "control":
        # the worker's control channel to the activation service: "ready" again and
        # again, with a "warmup" that carries a line of its own
        argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
        sock = socket.socket(fileno=os.dup(int(argv[argv.index(b"--control-fd") + 1])))
        sock.settimeout(60)
        forged = "0\n2026-01-01 00:00:00,000 activation[1] ERROR FORGED-BY-EVIL pool Good is compromised"
        msg = json.dumps({"op": "ready", "pid": 1, "credits": 1, "warmup": forged}).encode()
        sock.sendall(frame(1, 0, 0, msg) * int(q.get("n", "2000")))
        sock.close()
    elif case == "cycle":
        # "stuck" and "running again", over and over: each STALLED gives back every
        # request it had not started, each CREDIT takes them all again
        time.sleep(float(q.get("delay", "1.5")))
        sid = my_stream(q["tok"])
        sock = queue_socket()
        pair = frame(30, 0, 0, marshal.dumps((sid,), 4)) + frame(20, 0, 0, struct.pack("<i", 0))
        for _ in range(int(q.get("n", "20000")) // 100):
            sock.sendall(pair * 100)
        sock.close()
    elif environ["PATH_INFO"].startswith("/marker/"):
        # a "static file" in a folder of its own each time: the listener watches the
        # folder of every file it caches
        folder = os.path.join(os.environ["TMPDIR"], "w", environ["PATH_INFO"][8:])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "f.txt")
        with open(path, "w") as fh:
            fh.write("x")
        # the worker strips the marker from an application's headers: write the frame
        sid = my_stream(environ["PATH_INFO"])
        block = b"Content-Type: text/plain\r\nX-Poolhouse-File: " + path.encode() + b"\r\n"
        sock = queue_socket()
        sock.sendall(frame(RESPONSE, 1, sid, marshal.dumps((200, block, 1, b"x"), 4)))
        sock.close()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"(already answered)"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"evil pool alive"]
''' % {"flood": FLOOD}

WSGI_WEB_CONFIG = ('<configuration><system.webServer><handlers>'
                   '<add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />'
                   '</handlers><security><requestFiltering><requestLimits maxAllowedContentLength="4000000000" />'
                   '</requestFiltering></security></system.webServer></configuration>')


def config() -> str:
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
      </site>
      <site name="Threads" id="3">
        <application path="/" applicationPool="Threads">
          <virtualDirectory path="/" physicalPath="{root}/evil" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port2}:" /></bindings>
      </site>""",
        pools='<add name="Good" /><add name="Evil"><python threads="0" /></add>'
              '<add name="Threads"><python threads="4" /></add>')


def listener(server) -> psutil.Process:  # type: ignore[no-untyped-def]
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if "poolhouse.listener" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no listener process")


def get(port: int, target: str, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data


@pytest.fixture
def attacked(poolhouse_server):  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(), files={
        "good/index.html": "good pool", "evil/app.py": EVIL_APP, "evil/web.config": WSGI_WEB_CONFIG,
    }, extra_ports=2)
    assert get(server.ports[1], "/").endswith(b"evil pool alive")
    assert get(server.port, "/index.html").endswith(b"good pool")
    return server


def test_a_response_body_past_its_window_is_not_buffered(attacked) -> None:  # type: ignore[no-untyped-def]
    """The worker may be one window (and one frame) ahead of the client, no more: 256 MB
    of body written at once to a client that reads nothing must not sit in the
    listener's memory (it did: every byte went into the client's transport buffer)."""
    server = attacked
    proc = listener(server)
    before = proc.memory_info().rss
    tok = secrets.token_hex(6)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(30)
    client.connect(("127.0.0.1", server.ports[1]))
    try:
        client.sendall(f"GET /x?case=flood&tok={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        # the worker is inline: this answer comes after every forged frame, so by then the
        # listener has read them all
        assert get(server.ports[1], "/after").endswith(b"evil pool alive")
        grown = proc.memory_info().rss - before
        assert grown < 64 * MB, f"the listener holds {grown // MB} MB for one client"
    finally:
        client.close()
    assert "past its window" in server.wait_for(server.stderr)
    # both pools still serve
    assert get(server.port, "/index.html").endswith(b"good pool")
    assert get(server.ports[1], "/").endswith(b"evil pool alive")


def test_a_request_body_window_past_what_was_given_is_not_honoured(attacked) -> None:  # type: ignore[no-untyped-def]
    """A worker returns request-body window only for bytes it consumed, so the window is
    never more than BODY_WINDOW; a forged 4 GB one, from a worker that then reads
    nothing (it stops itself), must not make the listener take an upload into its
    memory (it did: the whole body went into the worker link's transport buffer)."""
    server = attacked
    proc = listener(server)
    before = proc.memory_info().rss
    tok = secrets.token_hex(6)
    client = socket.socket()
    client.settimeout(0.5)
    client.connect(("127.0.0.1", server.ports[2]))  # a threaded worker: the application runs at once
    sent = 0
    try:
        client.sendall(f"POST /x?case=window&tok={tok}&sleep=8 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Content-Length: {FLOOD}\r\n\r\n".encode())
        piece = b"y" * MB
        deadline = time.monotonic() + 6
        view = memoryview(piece)
        while sent < FLOOD and time.monotonic() < deadline:
            try:
                sent += client.send(view[sent % MB:])
            except (socket.timeout, BlockingIOError):
                continue
        grown = proc.memory_info().rss - before
        assert sent < 64 * MB, f"the listener took {sent // MB} MB of a body its worker is not reading"
        assert grown < 64 * MB, f"the listener holds {grown // MB} MB for one upload"
    finally:
        client.close()
    assert "more than it was sent" in server.stderr()
    assert get(server.port, "/index.html").endswith(b"good pool")


def test_a_worker_cannot_flood_or_forge_the_service_logs(attacked) -> None:  # type: ignore[no-untyped-def]
    """The control channel is the worker's too: a "ready" it repeats is not an event
    each time (events.jsonl is the service's, shared by every pool), and what it puts
    in a message does not become a line of the service's log (the journal)."""
    server = attacked
    assert get(server.ports[1], "/x?case=control&n=2000").endswith(b"evil pool alive")
    time.sleep(1.0)
    assert get(server.ports[1], "/").endswith(b"evil pool alive")
    readies = [e for e in server.events() if e["event"] == "worker_ready" and e["apppool"] == "Evil"]
    assert len(readies) <= 2, f"{len(readies)} worker_ready events from one worker"
    lines = server.stderr().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], "a forged log line"
    assert get(server.port, "/index.html").endswith(b"good pool")


def test_stalled_and_credit_over_and_over_cost_the_listener_little(attacked) -> None:  # type: ignore[no-untyped-def]
    """STALLED gives back the requests a worker had not started, and its next CREDIT
    takes them again: a worker that sends the pair in a loop, while reading nothing,
    must not make the listener re-send the same requests into a buffer without bound."""
    server = attacked
    proc = listener(server)
    before = proc.memory_info().rss
    cpu_before = sum(proc.cpu_times()[:2])
    tok = secrets.token_hex(6)
    spin = socket.create_connection(("127.0.0.1", server.ports[1]), timeout=60)
    holders = []
    try:
        spin.sendall(f"GET /x?case=cycle&tok={tok}&n=10000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        for i in range(60):
            h = socket.create_connection(("127.0.0.1", server.ports[1]), timeout=60)
            h.sendall(b"GET /hold%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            holders.append(h)
        assert spin.recv(65536).startswith(b"HTTP/1.1 200")  # the loop is over
        grown = proc.memory_info().rss - before
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        assert grown < 32 * MB, f"the listener holds {grown // MB} MB after the loop"
        assert cpu < 5, f"the listener spent {cpu:.1f} s of CPU on the loop"
    finally:
        spin.close()
        for h in holders:
            h.close()
    assert get(server.port, "/index.html").endswith(b"good pool")


def inotify_watches(pid: int) -> int:
    """How many inotify watches process ``pid`` holds (all its inotify instances)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                count += sum(1 for line in fh if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def test_the_cache_does_not_keep_a_watch_for_every_folder_a_worker_names(attacked) -> None:  # type: ignore[no-untyped-def]
    """A worker names the file of a static response (the marker the listener strips),
    and the root listener watches that file's folder: watches are root's, counted
    against a limit every root process on the machine shares (max_user_watches), so
    they must go with the entries that needed them (they stayed until the listener
    exited: a worker naming 200,000 folders of its own used up root's inotify)."""
    server = attacked
    pid = listener(server).pid
    before = inotify_watches(pid)
    with socket.create_connection(("127.0.0.1", server.ports[1]), timeout=20) as s:
        reader = s.makefile("rb")
        for i in range(300):
            for _ in range(2):  # frequently hit: stored on the second
                s.sendall(b"GET /marker/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                assert reader.readline().startswith(b"HTTP/1.1 200")
                length = 0
                while (line := reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
    assert inotify_watches(pid) >= before + 300  # each cached file's folder is watched
    out = server.cli("cache", "flush")
    assert out.returncode == 0, out.stderr
    server.wait_for(lambda: inotify_watches(pid) <= before + 2, timeout=10)


# ---- the response cache and what a rewrite rule reads --------------------------------

TENANT_RULES = r"""<configuration><system.webServer><rewrite><rules>
  <rule name="ByHost" stopProcessing="true">
    <match url="^page\.txt$" />
    <conditions><add input="{HTTP_HOST}" pattern="^(alpha|beta)\.test" /></conditions>
    <action type="Rewrite" url="/tenants/{C:1}/page.txt" />
  </rule>
  <rule name="ByHeader" stopProcessing="true">
    <match url="^mine\.txt$" />
    <action type="Rewrite" url="/tenants/{HTTP_X_TENANT}/page.txt" />
  </rule>
</rules></rewrite></system.webServer></configuration>"""


@pytest.fixture
def tenants(poolhouse_server):  # type: ignore[no-untyped-def]
    config = apphost("""
      <site name="Tenants" id="1">
        <application path="/" applicationPool="Tenants">
          <virtualDirectory path="/" physicalPath="{root}/www" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>""", pools='<add name="Tenants" />')
    return poolhouse_server(config, files={
        "www/web.config": TENANT_RULES,
        "www/tenants/alpha/page.txt": "alpha's private page",
        "www/tenants/beta/page.txt": "beta's private page",
    })


def fetch(server, path: str, **headers: str) -> bytes:  # type: ignore[no-untyped-def]
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def test_the_cache_does_not_answer_one_host_with_anothers_page(tenants) -> None:  # type: ignore[no-untyped-def]
    """HTTP_HOST counts as cache-safe for URL Rewrite because HTTP.sys keys its cache on
    the whole URL, host included; a site bound to every host name, whose rules route
    by host, must not serve alpha's page to beta once alpha fetched it twice."""
    server = tenants
    for _ in range(4):
        assert fetch(server, "/page.txt", Host="alpha.test") == b"alpha's private page"
    assert fetch(server, "/page.txt", Host="beta.test") == b"beta's private page"


def test_a_rewrite_url_reading_a_request_header_keeps_the_url_out_of_the_cache(tenants) -> None:  # type: ignore[no-untyped-def]
    """URL Rewrite: a rule set that *uses* a server variable outside the cache-safe list
    is unsafe for output caching — in its action's URL as much as in its conditions."""
    server = tenants
    for _ in range(4):
        assert fetch(server, "/mine.txt", Host="t.test", X_Tenant="alpha") == b"alpha's private page"
    assert fetch(server, "/mine.txt", Host="t.test", X_Tenant="beta") == b"beta's private page"


# ---- chunked bodies that trickle just fast enough ------------------------------------

UPLOAD_APP = r'''
def app(environ, start_response):
    body = environ["wsgi.input"].read() if environ["REQUEST_METHOD"] == "POST" else b""
    out = b"%s %d" % (environ["PATH_INFO"].encode(), len(body))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
'''


@pytest.mark.xfail(strict=True, reason=(
    "known limit: chunked request bodies are not read ahead (a CGI or ASGI application may "
    "answer its input as it arrives), and a request waiting for one lends its credit only up "
    "to 64 at a time; ~100 chunked uploads kept just above minBytesPerSecond hold an inline "
    "pool (docs/listener.md, Read-ahead)"))
def test_chunked_uploads_at_the_minimum_rate_do_not_hold_an_inline_pool(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """A chunked body is not read ahead (it may be an interactive stream): it goes to the
    worker as it arrives, and only the credit lending (at most 64 per worker) and the
    timers stand in its way.  120 clients each sending 300 bytes every half second — above
    minBytesPerSecond's 240, so no timer fires, 72 KB/s in all — must still leave the
    pool to an ordinary GET."""
    config = apphost("""
      <site name="Up" id="1">
        <application path="/" applicationPool="Up"><virtualDirectory path="/" physicalPath="{root}/app" /></application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>""", pools='<add name="Up" />')
    server = poolhouse_server(config, files={"app/app.py": UPLOAD_APP, "app/web.config": WSGI_WEB_CONFIG})
    assert get(server.port, "/warm").endswith(b"/warm 0")
    socks: list[socket.socket] = []
    piece = b"12c\r\n" + b"x" * 300 + b"\r\n"
    try:
        for i in range(120):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"POST /up%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % i + piece)
            socks.append(s)
        started = time.monotonic()
        answer: list[bytes] = []

        def ordinary() -> None:
            try:
                answer.append(get(server.port, "/ordinary", timeout=8))
            except OSError as exc:
                answer.append(repr(exc).encode())

        worker = threading.Thread(target=ordinary, daemon=True)
        while time.monotonic() - started < 12:
            time.sleep(0.5)
            for s in list(socks):
                try:
                    s.sendall(piece)
                except OSError:
                    socks.remove(s)
            if not worker.is_alive() and not answer and time.monotonic() - started > 3:
                worker.start()
            if answer:
                break
        worker.join(10)
        assert answer and answer[0].endswith(b"/ordinary 0"), (answer, len(socks))
    finally:
        for s in socks:
            s.close()


# ---- pools that share a uid, and the processes their workers start ------------------

PEEK_APP = r'''
def app(environ, start_response):
    import urllib.parse
    q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    try:
        with open("/proc/%s/environ" % q["pid"], "rb") as fh:
            out = b"READ " + fh.read()
    except OSError as exc:
        out = b"REFUSED " + type(exc).__name__.encode()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [out]
'''


@pytest.mark.xfail(strict=True, reason=(
    "known limit, as on Windows: pools that share an identity (LocalService and NetworkService "
    "are both `nobody`) share what it may do; a program a worker execs is dumpable again, so "
    "the other pool can read its /proc files. Isolation between pools needs their own "
    "identities (ApplicationPoolIdentity, the default) (docs/process-model.md, Isolation)"))
def test_a_cgi_program_of_a_pool_sharing_nobody_is_not_open_to_the_other(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """LocalService and NetworkService are both ``nobody``; their workers clear their
    dumpable flag so that neither reads the other's memory or environment.  What a
    worker starts is exec'd, and exec makes a process dumpable again: a CGI program of
    the one pool (its environment holds the request's cookies) is open to the other."""
    token = secrets.token_hex(8)
    config = apphost("""
      <site name="A" id="1">
        <application path="/" applicationPool="Local"><virtualDirectory path="/" physicalPath="{root}/evil" /></application>
        <application path="/net" applicationPool="Network"><virtualDirectory path="/" physicalPath="{root}/net" /></application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>""",
        pools='<add name="Local"><processModel identityType="LocalService" /></add>'
              '<add name="Network"><processModel identityType="NetworkService" /></add>',
        extra='<system.webServer><security><isapiCgiRestriction>'
              '<add path="{root}/net/slow.cgi" allowed="true" /></isapiCgiRestriction></security></system.webServer>')
    server = poolhouse_server(config, {
        "evil/app.py": PEEK_APP, "evil/web.config": WSGI_WEB_CONFIG,
        "net/slow.cgi": "#!/bin/sh\nsleep 6\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow'\n",
        "net/web.config": '<configuration><system.webServer><handlers accessPolicy="Read, Script, Execute">'
                          '<add name="cgi" path="*.cgi" verb="*" modules="CgiModule" resourceType="File" '
                          'requireAccess="Execute" /></handlers></system.webServer></configuration>'})
    os.chmod(server.root / "net" / "slow.cgi", 0o755)
    # nobody is an account the administrator chose: the administrator opens the way
    opened = {d: d.stat().st_mode for d in [server.root, *server.root.parents] if str(d).startswith("/tmp/")}
    for d, mode in opened.items():
        d.chmod(mode | 0o711)
    for d in (server.root / "evil", server.root / "net"):
        d.chmod(0o755)
    try:
        assert b"REFUSED" in get(server.port, "/?pid=1")  # the evil pool works
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            s.sendall(f"GET /net/slow.cgi HTTP/1.1\r\nHost: x\r\nCookie: session={token}\r\n"
                      "Connection: close\r\n\r\n".encode())

            def cgi_pid() -> int:
                for p in psutil.process_iter(["cmdline"]):
                    if p.info["cmdline"] and p.info["cmdline"][-1:] == [str(server.root / "net" / "slow.cgi")] \
                            and "cgi_launcher" not in " ".join(p.info["cmdline"]):
                        return p.pid
                return 0

            pid = server.wait_for(cgi_pid, timeout=10)
            seen = get(server.port, f"/?pid={pid}")
            assert token.encode() not in seen and seen.split(b"\r\n\r\n", 1)[-1].startswith(b"REFUSED"), seen[-200:]
    finally:
        for d, mode in opened.items():
            d.chmod(mode & 0o7777)


ENV_APP = r'''
import os
def app(environ, start_response):
    out = "\n".join("%s=%s" % kv for kv in sorted(os.environ.items())).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [out]
'''


def test_the_services_own_environment_does_not_reach_the_pools(poolhouse_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Whatever the administrator's shell (or the unit's Environment=) gives the service
    — a database password, a cloud token, the sudo user — is the service's: a pool gets
    its own environmentVariables and what it needs to run, as IIS gives w3wp the
    machine's environment and the pool's variables, never WAS's process environment."""
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("POOLHOUSE_ADMIN_DB_PASSWORD", secret)
    monkeypatch.setenv("SUDO_USER", "admin-" + secret)
    config = apphost("""
      <site name="S" id="1">
        <application path="/" applicationPool="P"><virtualDirectory path="/" physicalPath="{root}/app" /></application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>""", pools='<add name="P"><environmentVariables><add name="MINE" value="for-the-pool" />'
                       '</environmentVariables></add>')
    server = poolhouse_server(config, {"app/app.py": ENV_APP, "app/web.config": WSGI_WEB_CONFIG})
    seen = get(server.port, "/")
    assert b"MINE=for-the-pool" in seen  # the pool's own variables arrive
    assert secret.encode() not in seen, "the service's environment reached a pool"
