"""HttpRedirectionModule: ``system.webServer/httpRedirect`` at BeginRequest."""

from __future__ import annotations

from typing import Any

from ..pipeline import FINISH, HttpContext
from .base import Module, ModuleConfig, wildcard_regex

_STATUS = {"Permanent": 301, "Found": 302, "Temporary": 307, "PermRedirect": 308}


class HttpRedirectionModule(Module):
    """Redirects every request of the scope to ``destination`` (with the path below the
    application appended unless ``exactDestination``; ``childOnly``: only requests for
    content below the application root), or per ``<add wildcard= destination=>``.
    ``$S`` (the path below the application), ``$Q`` (``?`` + query) and ``$V`` (the path)
    are substituted in destinations.  A redirect to the URL itself is not made."""

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("httpRedirect")
        self.on = bool(sec.get("enabled"))
        self.destination = str(sec.get("destination", ""))
        self.exact = bool(sec.get("exactDestination"))
        self.child_only = bool(sec.get("childOnly"))
        self.status = _STATUS.get(str(sec.get("httpResponseStatus", "Found")), 302)
        self.wildcards = [(wildcard_regex(w["wildcard"]), w["destination"]) for w in sec.get("items", [])]

    def enabled(self) -> bool:
        return self.on and bool(self.destination or self.wildcards)

    def begin_request(self, ctx: HttpContext) -> Any:
        rel = ctx.rel
        query = ("?" + ctx.query) if ctx.query else ""
        target = ""
        if self.wildcards:
            for pattern, dest in self.wildcards:
                if pattern.match(ctx.path) or pattern.match(rel):
                    target = dest
                    break
        if not target and self.destination:
            if self.child_only and rel.strip("/") == "":
                return None
            if self.exact or "$" in self.destination:
                target = self.destination
            else:
                target = self.destination.rstrip("/") + rel + query
        if not target:
            return None
        target = target.replace("$S", rel).replace("$Q", query).replace("$V", ctx.path)
        if target.split("?", 1)[0] in (ctx.path, ctx.raw_path) or target.endswith("://" + ctx.headers.get("host", "") + ctx.path):
            return None
        ctx.redirect(target, self.status)
        return FINISH
