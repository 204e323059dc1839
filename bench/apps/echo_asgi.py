"""The ASGI 3 WebSocket echo every target of bench/websocket.py serves.

A WebSocket is accepted and every message goes back as it came (text as text, bytes as
bytes) until the client closes: what the Autobahn fuzzing-client cases expect of the
server under test, and what the throughput clients time.  Every other scope — plain
HTTP (the readiness check) and lifespan — is hello_asgi's.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from hello_asgi import app as hello

ACCEPT = {"type": "websocket.accept"}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        await hello(scope, receive, send)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send(ACCEPT)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
