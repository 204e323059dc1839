"""ASGI WebSocket through the listener and the queue protocol: the handshake, messages
both ways, close codes from either side, pings, back-pressure, refusals, a FastAPI
WebSocket route, teardown on recycle, the `webSocket` section — with the `websockets`
client library over real sockets — and the Autobahn cases (kosoku) against an echo app."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import apphost

ECHO = """\
import asyncio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await receive()
        body = b"plain http: " + scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    first = await receive()
    assert first["type"] == "websocket.connect"
    if path == "/refuse":
        await send({"type": "websocket.close"})
        return
    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no entry"})
        return
    if path == "/crash-before":
        raise RuntimeError("boom before accept")
    sub = scope["subprotocols"][0] if scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": sub,
                "headers": [(b"x-app", b"echo")]})
    if path == "/scope":
        await send({"type": "websocket.send", "text": repr(sorted(
            (k, v) for k, v in scope.items() if k in ("scheme", "path", "query_string", "root_path",
                                                      "subprotocols", "http_version"))) })
    if path == "/two-senders":
        # two tasks sending large messages at once: each must arrive whole
        async def sender(ch):
            for _ in range(3):
                await send({"type": "websocket.send", "bytes": ch * 3_000_000})
        await asyncio.gather(sender(b"a"), sender(b"b"))
        await send({"type": "websocket.close", "code": 1000})
        return
    if path == "/close-4001":
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        return
    if path == "/crash-after":
        raise RuntimeError("boom after accept")
    if path == "/flood":
        # sends until told to stop; a client that does not read must hold it back
        n = 0
        chunk = "x" * 65536
        try:
            while True:
                await send({"type": "websocket.send", "text": chunk})
                n += 1
                if n % 16 == 0:
                    with open(__file__ + ".flood", "w") as fh:
                        fh.write(str(n))
        except OSError:
            return
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            with open(__file__ + ".closed", "a") as fh:
                fh.write(f"{path} {msg['code']}\\n")
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})
"""

FASTAPI_WS = """\
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()

@app.get("/")
def index():
    return {"ok": True}

@app.websocket("/chat/{room}")
async def chat(ws: WebSocket, room: str):
    await ws.accept()
    try:
        while True:
            data = await ws.receive_json()
            await ws.send_json({"room": room, "echo": data})
    except WebSocketDisconnect:
        pass
"""


def ws_site(extra_web: str = "") -> str:
    """``extra_web``: system.webServer elements for the site (webSocket is a section a
    web.config may not set: overrideModeDefault="Deny", as in IIS)."""
    location = (f'<location path="WS"><system.webServer>{extra_web}</system.webServer></location>'
                if extra_web else "")
    return apphost(
        """
      <site name="WS" id="1">
        <application path="/" applicationPool="AppPool">
          <virtualDirectory path="/" physicalPath="{root}/app" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>""",
        pools='<add name="AppPool" />',
        extra=location,
    )


def web_config(extra: str = "") -> str:
    return ('<configuration><system.webServer><handlers>'
            '<add name="echo" path="*" verb="*" modules="AsgiModule" scriptProcessor="echo:app" />'
            f'</handlers>{extra}</system.webServer></configuration>')


def serve(poolhouse_server, extra: str = ""):  # type: ignore[no-untyped-def]
    return poolhouse_server(ws_site(extra), files={"app/echo.py": ECHO, "app/web.config": web_config()},
                            writable=("app",))  # echo.py.closed, echo.py.flood


def ws_url(server, path: str) -> str:  # type: ignore[no-untyped-def]
    return server.base.replace("http://", "ws://") + path


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_echo_text_binary_and_close_codes(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server)

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/echo?x=1"), subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            assert ws.response.headers["x-app"] == "echo"
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01" * 40000)  # 80 KB: several frames of the queue protocol
            assert await ws.recv() == b"\x00\x01" * 40000
            for i in range(200):
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(200)] == [f"m{i}" for i in range(200)]
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
        # client-initiated close: the application sees the code
        async with websockets.connect(ws_url(server, "/client-closes")) as ws:
            await ws.close(code=4321, reason="done")
        # server-initiated close with the application's code and reason
        async with websockets.connect(ws_url(server, "/close-4001")) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")
        # the application raises after accepting: 1011
        async with websockets.connect(ws_url(server, "/crash-after")) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1011
        async with websockets.connect(ws_url(server, "/scope")) as ws:
            scope = await ws.recv()
            assert "('scheme', 'ws')" in scope and "('query_string', b'')" in scope

    run(scenario())
    closed = server.root / "app" / "echo.py.closed"
    server.wait_for(lambda: "/client-closes 4321" in closed.read_text() if closed.exists() else False)
    assert "/echo 1000" in closed.read_text()
    # the W3C log has the upgrades as 101s; the server keeps serving plain HTTP meanwhile
    assert httpx.get(server.url("/plain")).text == "plain http: /plain"


def test_concurrent_senders_do_not_interleave_frames(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server)

    async def scenario() -> list[bytes]:
        got = []
        async with websockets.connect(ws_url(server, "/two-senders"), max_size=None, compression=None) as ws:
            while True:
                try:
                    await ws.ping()  # its pong is written between the messages, never inside one
                except ConnectionClosed:
                    pass  # the server has closed: what it sent before is still to be read
                try:
                    got.append(await ws.recv())
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code == 1000
                    break
                await asyncio.sleep(0.05)  # a slow reader: the senders wait for window
        return got

    got = run(scenario())
    assert sorted(m[:1] * len(m) == m and len(m) for m in got) == [3_000_000] * 6
    assert sorted(m[:1] for m in got) == [b"a"] * 3 + [b"b"] * 3


def test_refused_and_bad_handshakes(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server)

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server, "/refuse")):
                pass
        assert info.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server, "/deny")):
                pass
        assert info.value.response.status_code == 401 and info.value.response.body == b"no entry"
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server, "/crash-before")):
                pass
        assert info.value.response.status_code == 500

    run(scenario())
    # a handshake of another version: 426 with the version we speak, connection closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
        data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in data
    assert b"Connection: close" in data
    # bytes the client sends right behind the handshake reach the application, in order
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        frame = _masked_text(b"early bird")
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame)
        data = b""
        while b"early bird" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data
    assert b"Upgrade: websocket\r\nConnection: Upgrade\r\n" in data


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def _masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_disabled_section_serves_plain_http(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server, '<webSocket enabled="false" />')
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"plain http: /echo")


def test_message_limit_and_server_pings(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server, '<webSocket receiveBufferLimit="65536" pingInterval="00:00:01" />')

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/echo"), ping_interval=None) as ws:
            await ws.send("a" * 60000)
            assert len(await ws.recv()) == 60000
            await ws.send("b" * 70000)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009

    run(scenario())
    # pingInterval: the server pings an idle client (a raw socket sees the ping frames)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        time.sleep(2.6)
        s.settimeout(1)
        data = s.recv(65536)
    frames = data.split(b"\r\n\r\n", 1)[1]
    assert frames.count(b"\x89\x09poolhouse") >= 2, frames  # FIN|ping, 9 bytes, unmasked


def test_back_pressure_holds_a_sending_app(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """A client that does not read stops the application's sends (the windows of the
    queue protocol), instead of the worker or listener buffering without bound."""
    server = serve(poolhouse_server)
    counter = server.root / "app" / "echo.py.flood"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        server.wait_for(counter.exists)
        # the sender must come to a stop: the same count a second apart (a slow machine
        # takes longer to fill the buffers, so wait for it rather than for a fixed time)
        readings = [int(counter.read_text() or 0)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(1.0)
            readings.append(int(counter.read_text() or 0))
            if readings[-1] == readings[-2]:
                break
        stalled = readings[-1]
        assert readings[-1] == readings[-2], readings
        # 64 KB messages: held after a few MB (socket buffers + one window each side)
        assert stalled * 65536 < 32 * 1024 * 1024, readings
        rss = _rss_mb(server)
        assert rss < 400, rss
        # reading again lets it go on
        got = 0
        while got < 8 * 1024 * 1024:
            got += len(s.recv(1 << 20))
        server.wait_for(lambda: int(counter.read_text() or 0) > stalled, timeout=10)


def _rss_mb(server) -> float:  # type: ignore[no-untyped-def]
    import psutil

    total = 0
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def test_recycle_closes_with_1012_and_clients_reconnect(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = serve(poolhouse_server)

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/echo")) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            pid = server.workers("AppPool")[0]["pid"]
            await asyncio.to_thread(server.api, "recycle", what="apppool", name="AppPool")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1012
        async with websockets.connect(ws_url(server, "/echo")) as ws:
            await ws.send("after")
            assert await ws.recv() == "after"
        await asyncio.to_thread(server.wait_for, lambda: pid not in [w["pid"] for w in server.workers()])

    run(scenario())


def test_many_websockets_do_not_starve_http(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """An open WebSocket gives its worker credit back: more sockets than credits stay
    open while plain requests are still served."""
    server = serve(poolhouse_server)

    async def scenario() -> None:
        sockets = [await websockets.connect(ws_url(server, f"/echo{i}")) for i in range(130)]
        try:
            for i, ws in enumerate(sockets):
                await ws.send(str(i))
            assert [await ws.recv() for ws in sockets] == [str(i) for i in range(130)]
            async with httpx.AsyncClient() as client:
                r = await client.get(server.url("/plain"), timeout=10)
                assert r.text == "plain http: /plain"
        finally:
            for ws in sockets:
                await ws.close()

    run(scenario())


def test_fastapi_websocket_route(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(ws_site(), files={
        "app/main.py": FASTAPI_WS,
        "app/web.config": web_config().replace("echo:app", "main:app"),
    })

    async def scenario() -> None:
        async with websockets.connect(ws_url(server, "/chat/lobby")) as ws:
            await ws.send(json.dumps({"n": 1}))
            assert json.loads(await ws.recv()) == {"room": "lobby", "echo": {"n": 1}}
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server, "/nowhere")):
                pass
        assert info.value.response.status_code == 403  # Starlette refuses unknown routes

    run(scenario())
    assert httpx.get(server.url("/")).json() == {"ok": True}


@pytest.mark.skipif(shutil.which("kosoku", path=str(Path(sys.executable).parent)) is None,
                    reason="kosoku (the Autobahn cases) is not installed")
def test_autobahn_conformance(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The Autobahn fuzzing-client cases (kosoku) against the echo application: no case
    may fail.  The slow groups are left to `make bench-websocket` (bench/websocket.py,
    which writes the counts of all 517 cases to bench/results/websocket.json): 9.* (large
    messages, ~40 s) and 12.*/13.* (permessage-deflate, ~20 min)."""
    server = serve(poolhouse_server, '<webSocket receiveBufferLimit="67108864" />')
    out = tmp_path / "reports"
    kosoku = str(Path(sys.executable).parent / "kosoku")
    proc = subprocess.run(
        [kosoku, "-m", "fuzzingclient", "-o", str(out), "-p", "4",
         "-x", "9.*", "-x", "12.*", "-x", "13.*", f"127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    index = next(out.rglob("index.json"))
    results = json.loads(index.read_text())
    behaviours: dict[str, int] = {}
    failed = []
    for agent in results.values():
        for case, res in agent.items():
            behaviours[res["behavior"]] = behaviours.get(res["behavior"], 0) + 1
            if res["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or res.get("behaviorClose") not in (
                    "OK", "INFORMATIONAL", None):
                failed.append((case, res["behavior"], res.get("behaviorClose")))
    assert behaviours.get("OK", 0) > 200, behaviours
    assert not failed, (behaviours, failed[:20])


def test_wss_over_an_https_binding(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ssl

    from poolhouse.admin.cert import generate

    cert, key = generate(["ws.test"], str(tmp_path / "certs"))
    config = ws_site().replace(
        '<binding protocol="http" bindingInformation="127.0.0.1:{port}:" />',
        f'<binding protocol="https" bindingInformation="127.0.0.1:{{port}}:" certificateFile="{cert}" '
        f'keyFile="{key}" />')
    server = poolhouse_server(config, files={"app/echo.py": ECHO, "app/web.config": web_config()})
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False

    async def scenario() -> None:
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/scope", ssl=ctx) as ws:
            assert "('scheme', 'wss')" in await ws.recv()
            await ws.send(b"z" * 300000)
            assert await ws.recv() == b"z" * 300000

    run(scenario())


def test_server_stop_with_open_websockets(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """Stopping the service closes open WebSockets cleanly (1012) instead of waiting out
    shutdownTimeLimit, and leaves no process behind (checked by the fixture)."""
    server = serve(poolhouse_server)

    async def scenario() -> tuple[int, float]:
        async with websockets.connect(ws_url(server, "/echo")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            code = info.value.rcvd.code if info.value.rcvd else 1006
            assert await stopping == 0
            return code, time.monotonic() - started

    code, took = run(scenario())
    assert code == 1012 and took < 10, (code, took)
