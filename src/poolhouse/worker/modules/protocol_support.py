"""ProtocolSupportModule: ``system.webServer/httpProtocol`` custom and redirect headers
(SendResponse), and the handler of the stock OPTIONSVerbHandler/TRACEVerbHandler
mappings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pipeline import HttpContext
from .base import Module, ModuleConfig, items

if TYPE_CHECKING:
    from ..apps import Selection
    from ..stream import Stream

ALLOW = b"OPTIONS, TRACE, GET, HEAD, POST"
_HIDDEN_FROM_TRACE = frozenset((b"authorization", b"cookie", b"proxy-authorization"))


def _pairs(section: dict[str, Any], element: str) -> list[tuple[bytes, bytes]]:
    return [(h["name"].encode("latin-1"), h["value"].encode("latin-1")) for h in items(section, element)]


class ProtocolSupportModule(Module):
    """customHeaders go on every response, redirectHeaders on 3xx ones."""

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("httpProtocol")
        self.custom = _pairs(sec, "customHeaders")
        self.redirect = _pairs(sec, "redirectHeaders")

    def enabled(self) -> bool:
        return bool(self.custom or self.redirect)

    @property
    def static_headers(self) -> list[tuple[bytes, bytes]]:
        return self.custom  # appended to every response by the pipeline itself

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(("SendResponse",)) if self.redirect else frozenset()

    def send_response(self, ctx: HttpContext) -> Any:
        resp = ctx.response
        assert resp is not None
        if 300 <= resp.status < 400:
            resp.headers = resp.headers + self.redirect
        return None


def protocol_handler(worker: Any, stream: "Stream", sel: "Selection", ctx: HttpContext | None) -> None:
    """OPTIONS: 200 with the verbs IIS lists; TRACE: the request echoed as message/http
    (credentials and cookies left out)."""
    head = stream.head
    if head.method == "OPTIONS":
        headers = [(b"Allow", ALLOW), (b"Public", ALLOW)]
        body = b""
    elif head.method == "TRACE":
        lines = [b"TRACE %s HTTP/1.%d" % (head.target, head.http_minor)]
        raw = head.headers
        for i in range(0, len(raw), 2):
            if raw[i] not in _HIDDEN_FROM_TRACE:
                lines.append(raw[i] + b": " + raw[i + 1])
        body = b"\r\n".join(lines) + b"\r\n\r\n"
        headers = [(b"Content-Type", b"message/http")]
    else:
        worker.error_response(stream, 405, 0, extra_headers=[(b"Allow", ALLOW)])
        return
    if ctx is not None:
        worker.send_whole(stream, 200, headers, body, ctx)
        return
    block = b"".join(b"%s: %s\r\n" % h for h in headers)
    stream.respond(200, block, len(body), body, True)
