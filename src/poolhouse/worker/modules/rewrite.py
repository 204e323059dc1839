"""RewriteModule (IIS's rewrite.dll): ``system.webServer/rewrite`` global and
distributed rules at BeginRequest, outbound header rules at SendResponse.

Rules are compiled once per effective configuration (this module is instantiated once
per configuration); a request pays for the evaluation only.  A Rewrite to a local URL
moves the request: the handler mapping, and the pipeline when the new URL's
configuration differs, are those of the new URL (in the same application, or in another
application of the same site served by this pool).  A Rewrite to an absolute
``http(s)://`` URL makes the request a reverse-proxy request (ARR's behaviour; handler
``handlers/proxy.py``).
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any
from urllib.parse import quote

from ...config import ConfigError
from ...urlpath import BadPath, normalize
from ..apps import PROXY, AppLoadError
from ..pipeline import EMPTY_PIPELINE, FINISH, HttpContext
from ..rewrite import (ABORT, CUSTOM, PROXY as PROXY_ACTION, REDIRECT, REWRITE, FileSystem, PatternError,
                       apply_outbound, compile_maps, compile_outbound, compile_rules, evaluate)
from .base import Module, ModuleConfig, items

log = logging.getLogger("poolhouse.worker")

FS = FileSystem(os.path.isfile, os.path.isdir)


def request_fs() -> FileSystem:
    """IsFile/IsDirectory for one request: one stat per path (the SPA rule asks both)."""
    modes: dict[str, int] = {}

    def mode(path: str) -> int:
        m = modes.get(path)
        if m is None:
            try:
                m = os.stat(path).st_mode
            except (OSError, ValueError):
                m = 0
            modes[path] = m
        return m

    return FileSystem(lambda p: stat.S_ISREG(mode(p)), lambda p: stat.S_ISDIR(mode(p)))
_SAFE = "/:@!$&'()*+,;=-._~"

# server variables that are constant for the process or derived from the requested URL:
# rules whose conditions read only these leave the response cache alone (URL Rewrite's
# "Interaction with IIS Output Caching"); any other makes the scope per client
CACHE_SAFE_VARIABLES = frozenset((
    "CACHE_URL", "DOCUMENT_ROOT", "HTTP_URL", "HTTP_HOST", "PATH_INFO", "PATH_TRANSLATED",
    "QUERY_STRING", "REQUEST_FILENAME", "REQUEST_URI", "SCRIPT_FILENAME", "SCRIPT_NAME",
    "SCRIPT_TRANSLATED", "UNENCODED_URL", "URL", "URL_PATH_INFO", "APP_POOL_ID",
    "APPL_MD_PATH", "APPL_PHYSICAL_PATH", "GATEWAY_INTERFACE", "SERVER_SOFTWARE",
    "SSI_EXEC_DISABLED",
))


def _reads_client(rules: list[Any]) -> bool:
    """Do any of these rules read a server variable outside CACHE_SAFE_VARIABLES (the
    client's address, a request header, HTTPS, ...) where it decides what is served —
    in a condition, in the URL of their action (``/tenants/{HTTP_X_TENANT}/...``), or
    (outbound rules) in the value they give a response header?  URL Rewrite's rule: a
    rule set that *uses* such a variable is unsafe for output caching.  Server variables
    a rule sets for the application (``X-Forwarded-For`` from ``{REMOTE_ADDR}``) do not
    count, as in URL Rewrite; an outbound rule's own ``RESPONSE_*`` variables come from
    the response, which is what is cached."""
    names: set[str] = set()
    for rule in rules:
        for cond in rule.conditions:
            names |= cond.input.variables
        url = getattr(rule, "url", None)
        if url is not None:
            names |= url.variables
        value = getattr(rule, "value", None)
        if value is not None:
            names |= value.variables
        pre = getattr(rule, "precondition", None)
        if pre is not None:
            for cond in pre.conditions:
                names |= cond.input.variables
    upper = {name.upper() for name in names}
    return any(name not in CACHE_SAFE_VARIABLES and not name.startswith("RESPONSE_") for name in upper)


class RewriteModule(Module):
    """URL Rewrite.  Errors in the rules (a pattern Python cannot compile, an unknown
    rewrite map) fail the requests of the scope with 500 naming the rule."""

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        try:
            self.maps = compile_maps(config.section("rewrite/rewriteMaps"))
            self.global_rules = compile_rules(items(config.section("rewrite/globalRules")), self.maps)
            self.rule_items = [i for i in items(config.section("rewrite/rules")) if i.get("enabled", True)]
            self.outbound = compile_outbound(config.section("rewrite/outboundRules"), self.maps)
            # distributed rules are compiled once their scopes are known (first request)
            distributed = compile_rules(self.rule_items, self.maps)
        except PatternError as exc:
            raise AppLoadError(f"URL Rewrite: {exc}") from None
        self.rules: list[Any] | None = None if self.rule_items else list(self.global_rules)
        self._per_client = (_reads_client(self.global_rules) or _reads_client(distributed)
                            or _reads_client(self.outbound))

    @property  # type: ignore[override]
    def per_client(self) -> bool:  # (a class attribute elsewhere: here it depends on the rules)
        return self._per_client

    def enabled(self) -> bool:
        return bool(self.global_rules or self.rule_items or self.outbound)

    @property
    def subscriptions(self) -> frozenset[str]:
        """BeginRequest only with inbound rules, SendResponse only with outbound ones: a
        scope with just one kind pays nothing for the other."""
        subs = set(super().subscriptions)
        if not (self.global_rules or self.rule_items):
            subs.discard("BeginRequest")
        if not self.outbound:
            subs.discard("SendResponse")
        return frozenset(subs)

    # ---- inbound -------------------------------------------------------------------------

    def _scoped_rules(self, ctx: HttpContext) -> list[Any]:
        """Distributed rules match the URL relative to the folder of the configuration
        level that defines them: found by resolving the folders along the URL once."""
        scopes: dict[str, str] = {}
        wanted = {str(i["name"]) for i in self.rule_items}
        folders = ["/"]
        parts = [p for p in ctx.path.split("/")[:-1] if p]
        for i in range(len(parts)):
            folders.append("/" + "/".join(parts[: i + 1]))
        resolver = ctx.app.resolver
        for folder in folders:
            if not wanted:
                break
            try:
                web = resolver.for_path(folder)
            except ConfigError:
                continue
            present = {str(r["name"]) for r in web.sections.get("system.webServer/rewrite/rules", {}).get("items", [])}
            for n in list(wanted):
                if n in present:
                    scopes[n] = folder
                    wanted.discard(n)
        self.rules = list(self.global_rules) + compile_rules(self.rule_items, self.maps, scopes)
        return self.rules

    def begin_request(self, ctx: HttpContext) -> Any:
        rules = self.rules if self.rules is not None else self._scoped_rules(ctx)
        if not rules:
            return None
        app = ctx.app

        def var(name: str) -> str:
            """A server variable, without computing them all for the common ones."""
            set_vars = ctx._set_vars
            if set_vars and name in set_vars:
                return set_vars[name]
            if name.startswith("HTTP_") and name not in _COMPUTED_HTTP:
                return ctx.headers.get(name[5:].lower().replace("_", "-"), "")
            fast = _FAST.get(name)
            if fast is not None:
                return str(fast(ctx))
            return ctx.server_variables.get(name, "")

        def url_var(name: str, path: str) -> str:
            if name in ("REQUEST_FILENAME", "PATH_TRANSLATED"):
                return app.physical(app.relative(path)) if _inside(app.base, path) else ""
            return path

        out = evaluate(rules, ctx.path, ctx.query, var, request_fs(), url_var)
        for name, value, replace in out.server_variables:
            if replace or not var(name):
                ctx.set_server_variable(name, value)
        action = out.action
        if action == REWRITE:
            if out.path == ctx.path and out.query == ctx.query:
                return None
            ctx.set_server_variable("HTTP_X_ORIGINAL_URL", ctx.raw_target.decode("latin-1"))
            return self._move(ctx, out.path, out.query)
        if action == PROXY_ACTION:
            ctx.set_server_variable("HTTP_X_ORIGINAL_URL", ctx.raw_target.decode("latin-1"))
            ctx.items["proxy_url"] = out.url
            sel = ctx.selection = ctx.selection._replace(kind=PROXY, target=out.url, status=0, substatus=0,
                                                         detail="")
            if sel.web is not None:
                # the rest of the request runs the pipeline of the proxy handler, not the one
                # the URL mapped to (dynamic compression, say, applies to proxied responses
                # but not to StaticFile's)
                try:
                    pipeline = ctx.app.pipeline_for(sel.web, PROXY)
                except AppLoadError as exc:
                    return ctx.fail(500, 0, str(exc))
                if ctx.pipeline.per_client:  # what ran so far decided per client
                    ctx.kernel_cache_disabled = True
                ctx.pipeline = pipeline if pipeline is not None else EMPTY_PIPELINE
            return None
        if action == REDIRECT:
            return ctx.redirect(out.url, out.status)
        if action == CUSTOM:
            if out.status >= 400:
                return ctx.fail(out.status, out.substatus, out.description or out.reason)
            return ctx.respond(out.status, [(b"Content-Type", b"text/plain; charset=utf-8")],
                               out.description.encode(), out.substatus)
        if action == ABORT:
            ctx.stream.reset()
            return FINISH
        return None

    def _move(self, ctx: HttpContext, path: str, query: str) -> Any:
        raw = quote(path, safe=_SAFE)
        try:
            path = normalize(raw)
        except BadPath:
            return ctx.fail(400, 0, f"URL Rewrite produced a bad path {raw!r}")
        app = ctx.app
        if not _inside(app.base, path):
            other = _application_for(ctx, path)
            if other is None:
                return ctx.fail(500, 50, f"URL Rewrite: {path!r} is outside the application and not served "
                                "by this application pool")
            app = ctx.app = other
        sel = app.select(ctx.method, path)
        ctx.selection = sel
        ctx.path = path
        ctx.raw_path = raw
        ctx.query = query
        ctx._vars = None  # URL-dependent server variables follow the new URL
        if ctx.pipeline.per_client:  # what ran so far decided per client
            ctx.kernel_cache_disabled = True
        ctx.pipeline = sel.pipeline if sel.pipeline is not None else EMPTY_PIPELINE
        return None

    # ---- outbound ------------------------------------------------------------------------

    def send_response(self, ctx: HttpContext) -> Any:
        if not self.outbound:
            return None
        resp = ctx.response
        assert resp is not None
        variables = ctx.server_variables
        resp.headers = apply_outbound(self.outbound, list(resp.headers), lambda n: variables.get(n, ""), FS)
        return None


_COMPUTED_HTTP = frozenset(("HTTP_URL", "HTTPS"))
_FAST: dict[str, Any] = {
    "HTTPS": lambda c: "on" if c.scheme == "https" else "off",
    "QUERY_STRING": lambda c: c.query,
    "REQUEST_URI": lambda c: c.raw_target.decode("latin-1"),
    "UNENCODED_URL": lambda c: c.raw_target.decode("latin-1"),
    "REQUEST_METHOD": lambda c: c.method,
    "REMOTE_ADDR": lambda c: c.client_addr,
    "SERVER_PORT": lambda c: str(c.stream.head.server_port),
    "SERVER_PORT_SECURE": lambda c: "1" if c.scheme == "https" else "0",
}
"""Server variables the rules ask most, read straight from the request."""


def _inside(base: str, path: str) -> bool:
    if not base:
        return True
    low, b = path.lower(), base.lower()
    return low == b or low.startswith(b + "/")


def _application_for(ctx: HttpContext, path: str) -> Any:
    """Another application of the same site, hosted by this worker, for ``path``."""
    best = None
    for wapp in getattr(ctx.worker, "apps", {}).values():
        if wapp.site.id != ctx.app.site.id or not _inside(wapp.base, path):
            continue
        if best is None or len(wapp.base) > len(best.base):
            best = wapp
    return best
