"""The ASGI 3 WebSocket echo every target of bench/websocket.py serves.

A WebSocket is accepted and every message goes back as it came (text as text, bytes as
bytes) until the client closes: what the Autobahn fuzzing-client cases expect of the
server under test, and what the throughput clients time.  Plain HTTP answers 200
"Hello, world!" (the readiness check), and the lifespan protocol is honoured.
"""

from collections.abc import Awaitable, Callable
from typing import Any

BODY = b"Hello, world!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}
RESPONSE_BODY = {"type": "http.response.body", "body": BODY}
ACCEPT = {"type": "websocket.accept"}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
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
    elif kind == "http":
        await send(START)
        await send(RESPONSE_BODY)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    else:
        raise ValueError(f"unsupported scope type {kind!r}")
