"""WebSocket passthrough of the reverse proxy: a URL Rewrite rule sends ``/ws/*`` to a
real WebSocket server (the ``websockets`` library's, on loopback, plain and TLS), and a
``websockets`` client talks to it through Poolhouse: messages both ways, close codes from
either side, the handshake's headers, back-pressure both ways, refusals and an upstream
that is down, and a recycle ending open tunnels."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from poolhouse.admin.cert import generate

from .conftest import apphost, free_port
from .upstream import SITE, proxy_site, rule

FLOOD_PIECE = os.urandom(65536)  # incompressible: permessage-deflate is on both ends


class EchoUpstream:
    """A WebSocket server in a thread: echoes, reports what it saw, floods, sinks."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.closes: list[tuple[str, int | None]] = []
        self.flooded = 0  # bytes the /flood handler managed to send
        self.sunk = 0  # bytes the /sink handler received
        self.sink_go = threading.Event()
        self.server: Server = serve(self.handler, "127.0.0.1", 0, ssl=tls, max_size=None,
                                    select_subprotocol=self.subprotocol, process_request=self.refuse)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)

    @staticmethod
    def subprotocol(ws: ServerConnection, offered: Any) -> Any:
        return next((p for p in offered if p in ("chat.v1", "chat.v2")), None)

    @staticmethod
    def refuse(ws: ServerConnection, request: Any) -> Any:
        if request.path == "/refuse":
            return ws.respond(403, "no entry\n")
        return None

    def handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        path = request.path
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        self.seen.append({"path": path, "headers": headers})
        try:
            if path == "/close-4001":
                ws.close(4001, "bye")
                return
            if path == "/flood":
                while True:
                    ws.send(FLOOD_PIECE)
                    self.flooded += len(FLOOD_PIECE)
            if path == "/sink":
                self.sink_go.wait(30)  # read nothing until the test says so
                for message in ws:
                    self.sunk += len(message)
                    if message == "last":
                        ws.send(str(self.sunk))
                return
            for message in ws:
                if message == "headers":
                    ws.send(json.dumps({"path": path, "headers": headers}))
                else:
                    ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((path, ws.close_code))


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    up = EchoUpstream()
    yield up
    up.stop()


def ws_url(server, path: str) -> str:  # type: ignore[no-untyped-def]
    return server.base.replace("http://", "ws://") + path


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_websocket_passthrough(poolhouse_server, upstream: EchoUpstream) -> None:  # type: ignore[no-untyped-def]
    down = free_port()
    server = proxy_site(poolhouse_server, rule("ws", f"http://127.0.0.1:{upstream.port}"),
                        rule("down", f"http://127.0.0.1:{down}"))
    big = bytes(range(256)) * 12288  # 3 MiB: many windows of the queue protocol both ways

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/ws/echo?room=1"), subprotocols=[Subprotocol("chat.v2")],
                                      additional_headers={"X-Forwarded-For": "10.0.0.9"}, max_size=None) as ws:
            assert ws.subprotocol == "chat.v2"  # the upstream's choice, relayed
            # the two ends agreed on compression: the proxy moves their bytes as they are
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff" * 10)
            assert await ws.recv() == b"\x00\xff" * 10
            await ws.send(big)
            assert await ws.recv() == big
            for i in range(100):
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(100)] == [f"m{i}" for i in range(100)]
            await ws.send("headers")
            seen = json.loads(await ws.recv())
            pong = await ws.ping(b"there?")
            await asyncio.wait_for(pong, 5)  # the upstream answers pings: they pass through
            await ws.close(code=4321, reason="done")
        h = seen["headers"]
        assert seen["path"] == "/echo?room=1"
        assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == f"127.0.0.1:{server.port}"
        assert h["host"] == f"127.0.0.1:{upstream.port}"
        assert h["upgrade"] == "websocket" and h["connection"].lower() == "upgrade"

        # the upstream closes with its code and reason
        async with websockets.connect(ws_url(server, "/ws/close-4001")) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")

        # the upstream refuses the handshake: an ordinary response, relayed
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(server, "/ws/refuse")):
                pass
        assert refused.value.response.status_code == 403
        assert refused.value.response.body == b"no entry\n"

        # the upstream is down: 502 (502.3)
        with pytest.raises(InvalidStatus) as info_down:
            async with websockets.connect(ws_url(server, "/down/echo")):
                pass
        assert info_down.value.response.status_code == 502

    run(scenario())
    # the client's close code reached the upstream
    server.wait_for(lambda: ("/echo?room=1", 4321) in upstream.closes)
    assert ("/close-4001", 4001) in upstream.closes
    # plain proxying and plain requests go on as before
    assert httpx.get(server.url("/index.html")).text == "home"
    server.wait_for(lambda: "Connection_Refused_By_Upstream" in server.httperr())
    line = next(x for x in server.httperr().splitlines() if "Connection_Refused_By_Upstream" in x)
    assert " GET /down/echo 502 1 Connection_Refused_By_Upstream DefaultAppPool" in line
    assert "reverse proxy GET /down/echo" in server.stderr()


def test_websocket_passthrough_back_pressure(poolhouse_server, upstream: EchoUpstream) -> None:  # type: ignore[no-untyped-def]
    """A client that stops reading holds back a flooding upstream, and an upstream that
    stops reading holds back a flooding client: the tunnel buffers a bounded amount."""
    server = proxy_site(poolhouse_server, rule("ws", f"http://127.0.0.1:{upstream.port}"))
    bound = 48 << 20  # windows, StreamReader limits, socket buffers: a few MiB, far below this

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/ws/flood"), max_queue=1) as ws:
            await ws.recv()
            await asyncio.sleep(2.0)  # not reading
            held = upstream.flooded
            await asyncio.sleep(1.0)
            assert upstream.flooded - held < 1 << 20, "the upstream went on sending to a client not reading"
            assert upstream.flooded < bound
            for _ in range(1000):  # reading again lets it go on, once what is in flight is read
                assert await ws.recv() == FLOOD_PIECE
                if upstream.flooded > held:
                    break
            assert upstream.flooded > held

        async with websockets.connect(ws_url(server, "/ws/sink"), max_size=None) as ws:
            sent = 0
            stop = False

            async def flood() -> None:
                nonlocal sent
                while not stop:
                    await ws.send(FLOOD_PIECE)
                    sent += len(FLOOD_PIECE)
            task = asyncio.create_task(flood())
            await asyncio.sleep(2.0)
            held = sent
            await asyncio.sleep(1.0)
            assert sent - held < 1 << 20, "the client went on sending to an upstream not reading"
            assert sent < bound
            stop = True
            upstream.sink_go.set()  # reading again lets the client go on
            await asyncio.wait_for(task, 20)
            await ws.send("last")
            assert int(await ws.recv()) == sent + len("last")

    run(scenario())


def test_websocket_passthrough_to_https_upstream(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = generate(["localhost"], str(tmp_path / "pki"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    up = EchoUpstream(ctx)
    try:
        server = proxy_site(poolhouse_server,
                            rule("ws", f"https://localhost:{up.port}", {"POOLHOUSE_PROXY_CA_FILE": cert}),
                            rule("untrusted", f"https://localhost:{up.port}"))

        async def scenario() -> None:
            async with websockets.connect(ws_url(server, "/ws/echo"), max_size=None) as ws:
                await ws.send("over TLS")
                assert await ws.recv() == "over TLS"
                await ws.send(b"\x01" * 300_000)
                assert await ws.recv() == b"\x01" * 300_000
                await ws.send("headers")
                assert json.loads(await ws.recv())["headers"]["x-forwarded-proto"] == "http"
            with pytest.raises(InvalidStatus) as info:
                async with websockets.connect(ws_url(server, "/untrusted/echo")):
                    pass
            assert info.value.response.status_code == 502

        run(scenario())
        server.wait_for(lambda: ("/echo", 1000) in up.closes)
        server.wait_for(lambda: "TLS_Failure_With_Upstream" in server.httperr())
        assert "is not trusted" in server.stderr()
    finally:
        up.stop()


def test_recycle_ends_open_tunnels(poolhouse_server, upstream: EchoUpstream) -> None:  # type: ignore[no-untyped-def]
    server = proxy_site(poolhouse_server, rule("ws", f"http://127.0.0.1:{upstream.port}"))

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/ws/echo")) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            pid = server.workers("DefaultAppPool")[0]["pid"]
            started = time.monotonic()
            await asyncio.to_thread(server.api, "recycle", what="apppool", name="DefaultAppPool")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is None  # the TCP connection closed: no close frame from a proxy
            assert time.monotonic() - started < 15  # not kept until shutdownTimeLimit
        async with websockets.connect(ws_url(server, "/ws/echo")) as ws:  # the new worker
            await ws.send("after")
            assert await ws.recv() == "after"
        await asyncio.to_thread(server.wait_for, lambda: pid not in [w["pid"] for w in server.workers()], 20)

    run(scenario())
    # the upstream saw its connection end (no close frame: 1006)
    server.wait_for(lambda: sum(1 for path, _ in upstream.closes if path == "/echo") == 2)


ASGI_ECHO = """\
async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") == "who":
            headers = dict(scope["headers"])
            await send({"type": "websocket.send",
                        "text": "uvicorn " + headers.get(b"x-forwarded-for", b"-").decode()})
        elif msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})
"""

PLATFORM_WEB = f"""<configuration><system.webServer>
  <handlers>
    <add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" resourceType="Unspecified" />
  </handlers>
  <httpPlatform processPath="{sys.executable}" startupTimeLimit="20"
                arguments="-m uvicorn main:app --host 127.0.0.1 --port %HTTP_PLATFORM_PORT% --log-level warning" />
</system.webServer></configuration>"""


def test_http_platform_websocket_passes_through(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """An httpPlatform application (uvicorn, as it is launched on IIS) gets its WebSockets
    through the same proxy."""
    server = poolhouse_server(apphost(SITE), files={"www/web.config": PLATFORM_WEB, "www/main.py": ASGI_ECHO})

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/chat"), open_timeout=30) as ws:
            await ws.send("who")
            assert await ws.recv() == "uvicorn 127.0.0.1"
            await ws.send(b"\x02" * 100_000)
            assert await ws.recv() == b"\x02" * 100_000
            await ws.close(code=1000)

    run(scenario())


def test_half_close_both_ways(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """The tunnel is bytes: a client that shuts down its write side gets the upstream's
    write side shut down, and what the upstream still sends afterwards reaches it before
    the connection closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def upstream() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            got.append(head)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Up: 1\r\n\r\nhello-from-upstream;")
            data = b""
            while True:  # until the client's end of stream arrives through the proxy
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            got.append(data)
            conn.sendall(b"after-your-eof:" + str(len(data)).encode())  # the other half is still open
    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    try:
        server = proxy_site(poolhouse_server, rule("ws", f"http://127.0.0.1:{listener.getsockname()[1]}"))
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as c:
            c.sendall(b"GET /ws/raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      + b"early-bytes;")  # sent before the answer: held by the listener, then relayed
            received = b""
            while b"hello-from-upstream;" not in received:
                received += c.recv(65536)
            head = received.split(b"\r\n\r\n")[0].decode().lower()
            assert head.startswith("http/1.1 101")
            assert "upgrade: websocket" in head and "connection: upgrade" in head and "x-up: 1" in head
            payload = os.urandom(500_000)
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            while True:
                piece = c.recv(65536)
                if not piece:
                    break
                received += piece
        assert received.endswith(b"after-your-eof:%d" % (len(b"early-bytes;") + len(payload)))
        thread.join(10)
        assert got[1] == b"early-bytes;" + payload
        assert b"upgrade: websocket" in got[0].lower() and b"x-forwarded-for: 127.0.0.1" in got[0].lower()
    finally:
        listener.close()


def test_client_leaving_during_the_handshake_closes_the_upstream_connection(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """A client that gives up while the upstream has not answered its handshake does not
    leave the upstream connection waiting for the proxy timeout (120 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    try:
        server = proxy_site(poolhouse_server, rule("ws", f"http://127.0.0.1:{listener.getsockname()[1]}"))
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as c:
            c.sendall(b"GET /ws/slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            up, _ = listener.accept()
            # a reset, not a FIN: a client that only half-closes may still be waiting for its answer
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # the client is gone: the upstream connection ends soon, not after the proxy timeout
        with up:
            up.settimeout(10)
            started = time.monotonic()
            data = b""
            while True:
                piece = up.recv(65536)
                if not piece:
                    break
                data += piece
            assert time.monotonic() - started < 10
            # the handshake was sent, unless the client had left before the connection to
            # the upstream was made (then nothing is)
            assert data == b"" or data.startswith(b"GET /slow HTTP/1.1\r\n"), data[:100]
        assert httpx.get(server.url("/index.html")).text == "home"
    finally:
        listener.close()
