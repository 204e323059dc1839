"""``requestFiltering/requestLimits`` of one configuration scope, flat, and the check of
a request against them.

One definition for the two places that enforce them: the worker's
RequestFilteringModule (at BeginRequest, per URL) and the listener (before the request
is queued, per application; docs/listener.md).  Lengths are those IIS measures: the URL
path as sent, still percent-encoded, without the query (``maxUrl``); the query string
without its ``?`` (``maxQueryString``); a header's value, repeated headers joined with
``", "`` (``headerLimits``); the declared ``Content-Length`` (``maxAllowedContentLength``).

Statuses follow IIS 10's configuration reference (requestLimits, headerLimits):
404.14 URL too long, 404.15 query string too long, 413.1 content length too large, 431
header too long.  IIS 7–8.5 answered the last two as 404.13 and 404.10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..urlpath import BadPath, normalize

Verdict = tuple[int, int, str]
"""(status, substatus, reason) of a refusal."""

CONTENT_TOO_LARGE: Verdict = (
    413, 1, "The request filtering module is configured to deny a request that exceeds the "
            "request content length.")
URL_TOO_LONG: Verdict = (
    404, 14, "The request filtering module is configured to deny a request where the URL is "
             "too long.")
QUERY_TOO_LONG: Verdict = (
    404, 15, "The request filtering module is configured to deny a request where the query "
             "string is too long.")
HEADER_TOO_LONG: Verdict = (
    431, 0, "The request filtering module is configured to deny a request whose header is "
            "too long.")

DEFAULT_MAX_CONTENT = 30000000
DEFAULT_MAX_URL = 4096
DEFAULT_MAX_QUERY = 2048


def _items(node: Any, name: str) -> list[Mapping[str, Any]]:
    child = node.get(name, {}) if isinstance(node, Mapping) else {}
    return list(child.get("items", [])) if isinstance(child, Mapping) else []


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_content: int = DEFAULT_MAX_CONTENT
    max_url: int = DEFAULT_MAX_URL
    max_query: int = DEFAULT_MAX_QUERY
    headers: tuple[tuple[bytes, int], ...] = ()  # (lower-case name, sizeLimit)
    always_urls: frozenset[str] = frozenset()  # lower-case decoded paths: no URL checks
    always_queries: frozenset[str] = frozenset()  # exact query strings: no query checks

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> "RequestLimits":
        """From an effective ``system.webServer/security/requestFiltering`` section."""
        sec: Mapping[str, Any] = section or {}
        limits = sec.get("requestLimits") or {}
        return cls(
            max_content=int(limits.get("maxAllowedContentLength", DEFAULT_MAX_CONTENT)),
            max_url=int(limits.get("maxUrl", DEFAULT_MAX_URL)),
            max_query=int(limits.get("maxQueryString", DEFAULT_MAX_QUERY)),
            headers=tuple((h["header"].lower().encode("latin-1", "replace"), int(h["sizeLimit"]))
                          for h in _items(limits, "headerLimits")),
            always_urls=frozenset(u["url"].lower() for u in _items(sec, "alwaysAllowedUrls")),
            always_queries=frozenset(q["queryString"] for q in _items(sec, "alwaysAllowedQueryStrings")),
        )

    def header_verdict(self, headers: Sequence[bytes]) -> Verdict | None:
        """``headers`` as the listener holds them: name (lower case), value, name, …"""
        for name, limit in self.headers:
            size = -2
            for i in range(0, len(headers), 2):
                if headers[i] == name:
                    size += len(headers[i + 1]) + 2
            if size > limit:
                return HEADER_TOO_LONG
        return None

    def url_exempt(self, raw_path: str) -> bool:
        """An ``alwaysAllowedUrls`` entry (compared with the decoded path) skips the URL
        checks."""
        if not self.always_urls:
            return False
        try:
            return normalize(raw_path).lower() in self.always_urls
        except BadPath:
            return False

    def check(self, raw_path: str, query: str, headers: Sequence[bytes],
              content_length: int) -> Verdict | None:
        """The first limit the request breaks, in the worker's order (content length,
        headers, URL, query string), or None.  ``content_length`` is -1 for a chunked
        body (checked as it arrives, by the listener)."""
        if content_length > self.max_content:
            return CONTENT_TOO_LARGE
        if self.headers:
            verdict = self.header_verdict(headers)
            if verdict is not None:
                return verdict
        if len(raw_path) > self.max_url and not self.url_exempt(raw_path):
            return URL_TOO_LONG
        if len(query) > self.max_query and query not in self.always_queries:
            return QUERY_TOO_LONG
        return None

    def loosest(self, other: "RequestLimits") -> "RequestLimits":
        """Limits no stricter than either: what a request must break to break both.
        A header limited in only one of them is not limited."""
        theirs = dict(other.headers)
        return RequestLimits(
            max_content=max(self.max_content, other.max_content),
            max_url=max(self.max_url, other.max_url),
            max_query=max(self.max_query, other.max_query),
            headers=tuple((name, max(limit, theirs[name])) for name, limit in self.headers
                          if name in theirs),
            always_urls=self.always_urls | other.always_urls,
            always_queries=self.always_queries | other.always_queries,
        )


__all__ = ["CONTENT_TOO_LARGE", "HEADER_TOO_LONG", "QUERY_TOO_LONG", "URL_TOO_LONG",
           "RequestLimits", "Verdict"]
