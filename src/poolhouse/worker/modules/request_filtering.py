"""RequestFilteringModule: ``system.webServer/security/requestFiltering`` at
BeginRequest, with IIS's sub-statuses.

| Check | Status |
|---|---|
| allowDoubleEscaping=false and the once-decoded URL still holds ``%`` or ``+`` | 404.11 |
| allowHighBitCharacters=false and a non-ASCII URL | 404.12 |
| requestLimits/@maxAllowedContentLength | 413.1 |
| requestLimits/@maxUrl, @maxQueryString | 404.14, 404.15 |
| requestLimits/headerLimits | 431 |
| verbs | 404.6 |
| fileExtensions | 404.7 |
| denyUrlSequences | 404.5 |
| hiddenSegments | 404.8 |
| denyQueryStringSequences | 404.18 |
| filteringRules | 404.19 |

``alwaysAllowedUrls`` (exact URL paths) skip the URL checks, ``alwaysAllowedQueryStrings``
the query-string checks.

The statuses are IIS 10's (its requestLimits reference; IIS 7–8.5 answered 404.13 for the
content length and 404.10 for a header).  The listener refuses requests over the
application's requestLimits before they are queued (``poolhouse.listener.request_filtering``);
this module still enforces the limits of each URL, which a ``<location>`` or a folder's
web.config may set tighter.  A chunked body has no length here: the listener counts it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ...config.request_limits import RequestLimits
from ..pipeline import HttpContext
from .base import HIGH, Module, ModuleConfig, items


class RequestFilteringModule(Module):
    priority = HIGH

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("security/requestFiltering")
        self.double_escaping = bool(sec.get("allowDoubleEscaping", False))
        self.high_bit = bool(sec.get("allowHighBitCharacters", True))
        self.unescape_query = bool(sec.get("unescapeQueryString", True))
        # the same reading of requestLimits as the listener's early check
        limits = RequestLimits.from_section(sec)
        self.max_content = limits.max_content
        self.max_url = limits.max_url
        self.max_query = limits.max_query
        self.header_limits = [(name.decode("latin-1"), size) for name, size in limits.headers]
        ext = sec.get("fileExtensions", {})
        self.ext_unlisted = bool(ext.get("allowUnlisted", True))
        self.extensions = {e["fileExtension"].lower(): bool(e["allowed"]) for e in items(sec, "fileExtensions")}
        verbs = sec.get("verbs", {})
        self.verbs_unlisted = bool(verbs.get("allowUnlisted", True))
        self.verbs = {v["verb"]: bool(v["allowed"]) for v in items(sec, "verbs")}
        self.hidden = frozenset(h["segment"].lower() for h in items(sec, "hiddenSegments"))
        self.deny_sequences = [d["sequence"].lower() for d in items(sec, "denyUrlSequences")]
        self.deny_query = [d["sequence"].lower() for d in items(sec, "denyQueryStringSequences")]
        self.always_urls = frozenset(u["url"].lower() for u in items(sec, "alwaysAllowedUrls"))
        self.always_queries = frozenset(q["queryString"] for q in items(sec, "alwaysAllowedQueryStrings"))
        self.rules = []
        for r in items(sec, "filteringRules"):
            self.rules.append((
                bool(r.get("scanUrl")), bool(r.get("scanQueryString")),
                [h["requestHeader"].lower() for h in items(r, "scanHeaders")],
                frozenset(a["fileExtension"].lower() for a in items(r, "appliesTo")),
                [d["string"].lower() for d in items(r, "denyStrings")],
            ))
        self.check_verbs = bool(self.verbs) or not self.verbs_unlisted
        self._verdicts: dict[str, tuple[int, int, str] | tuple[()]] = {}
        self.check_ext = bool(self.extensions) or not self.ext_unlisted

    def begin_request(self, ctx: HttpContext) -> Any:
        head = ctx.stream.head
        if head.body_length > self.max_content:
            return ctx.fail(413, 1, f"Content-Length {head.body_length} exceeds maxAllowedContentLength "
                            f"{self.max_content}.")
        if self.check_verbs:
            allowed = self.verbs.get(head.method)
            if allowed is False or (allowed is None and not self.verbs_unlisted):
                return ctx.fail(404, 6, f"The verb {head.method} is denied.")
        if self.header_limits:
            headers = ctx.headers
            for name, limit in self.header_limits:
                value = headers.get(name)
                if value is not None and len(value) > limit:
                    return ctx.fail(431, 0, f"The request header {name} is too long.")
        # the URL's verdict depends on the URL alone: computed once, cached
        raw_path = ctx.raw_path  # the decoded path is a function of it
        verdict = self._verdicts.get(raw_path)
        if verdict is None:
            verdict = self._url_verdict(ctx.path, raw_path)
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[raw_path] = verdict
        if verdict:
            return ctx.fail(*verdict)
        query = ctx.query
        if query and not (self.always_queries and query in self.always_queries):
            if len(query) > self.max_query:
                return ctx.fail(404, 15, "The query string is too long.")
            return self._query(ctx, query)
        if self.rules:
            low = ctx.path.lower()
            return self._rules(ctx, low, "", low[low.rfind("/") + 1:])
        return None

    def _url_verdict(self, path: str, raw_path: str) -> tuple[int, int, str] | tuple[()]:
        low = path.lower()
        if self.always_urls and low in self.always_urls:
            return ()
        if not self.double_escaping and ("%" in path or "+" in path):
            return (404, 11, "The request contained a double escape sequence.")
        if not self.high_bit and not (path.isascii() and raw_path.isascii()):
            return (404, 12, "The request contained high-bit characters.")
        if len(raw_path) > self.max_url:
            return (404, 14, "The request URL is too long.")
        last = low[low.rfind("/") + 1:]
        if self.check_ext:
            dot = last.rfind(".")
            ext = last[dot:] if dot >= 0 else "."
            allowed = self.extensions.get(ext)
            if allowed is None and dot >= 0:  # compound extensions such as ".dll.config"
                for listed, ok in self.extensions.items():
                    if listed.count(".") > 1 and last.endswith(listed):
                        allowed = ok
                        break
            if allowed is False or (allowed is None and not self.ext_unlisted):
                return (404, 7, f"The file extension {ext!r} is denied.")
        raw_low = raw_path.lower()
        for seq in self.deny_sequences:
            if seq in low or seq in raw_low:
                return (404, 5, f"The URL contains the denied sequence {seq!r}.")
        if self.hidden and not self.hidden.isdisjoint(low.split("/")):
            return (404, 8, "The URL contains a hidden segment.")
        return ()

    def _query(self, ctx: HttpContext, query: str) -> Any:
        if self.deny_query:
            forms = [query.lower()]
            if self.unescape_query:
                forms.append(unquote(query).lower())
            for seq in self.deny_query:
                if any(seq in f for f in forms):
                    return ctx.fail(404, 18, f"The query string contains the denied sequence {seq!r}.")
        if self.rules:
            low = ctx.path.lower()
            return self._rules(ctx, low, query, low[low.rfind("/") + 1:])
        return None

    def _rules(self, ctx: HttpContext, low: str, query: str, last: str) -> Any:
        dot = last.rfind(".")
        ext = last[dot:] if dot >= 0 else "."
        for scan_url, scan_query, headers, applies, deny in self.rules:
            if applies and ext not in applies:
                continue
            texts = []
            if scan_url:
                texts.append(low)
            if scan_query:
                texts.append(query.lower())
                texts.append(unquote(query).lower())
            for h in headers:
                texts.append(ctx.headers.get(h, "").lower())
            for s in deny:
                if any(s in t for t in texts):
                    return ctx.fail(404, 19, f"The request was denied by a filtering rule ({s!r}).")
        return None
