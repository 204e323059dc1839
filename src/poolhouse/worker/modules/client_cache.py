"""HttpCacheModule, client side: ``staticContent/clientCache`` headers on the static file
handler's responses (SendResponse).  The server-side output cache is the listener's."""

from __future__ import annotations

from typing import Any

from ..apps import STATIC
from ..pipeline import HttpContext
from .base import Module, ModuleConfig


class HttpCacheModule(Module):
    handler_kinds = frozenset((STATIC,))
    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        cache = config.section("staticContent").get("clientCache", {})
        mode = str(cache.get("cacheControlMode", "NoControl"))
        custom = str(cache.get("cacheControlCustom", "") or "")
        self.set_etag = bool(cache.get("setEtag", True))
        self.headers: list[tuple[bytes, bytes]] = []
        control = []
        if mode == "DisableCache":
            control.append("no-cache")
        elif mode == "UseMaxAge":
            control.append(f"max-age={int(float(cache.get('cacheControlMaxAge', 86400)))}")
        elif mode == "UseExpires" and cache.get("httpExpires"):
            self.headers.append((b"Expires", str(cache["httpExpires"]).encode("latin-1")))
        if custom:
            control.append(custom)
        if control:
            self.headers.insert(0, (b"Cache-Control", ", ".join(control).encode("latin-1")))

    def enabled(self) -> bool:
        return bool(self.headers) or not self.set_etag

    def send_response(self, ctx: HttpContext) -> Any:
        resp = ctx.response
        if resp is None or ctx.selection.kind != STATIC or resp.status not in (200, 206, 304):
            return None
        for name, value in self.headers:
            resp.set_header(name, value)
        if not self.set_etag:
            resp.remove_header(b"ETag")
        return None
