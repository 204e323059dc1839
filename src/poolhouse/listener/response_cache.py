"""The response cache: HTTP.sys's kernel cache, in the listener (ref. iis.md §4.3, §2.8).

A hit is answered here, with no round trip to a worker — even while the application's
pool is stopped or its worker is being replaced.  What gets in:

* a static file the worker marks (``X-Poolhouse-File: <physical path>``, stripped here)
  once it is *frequently hit* (``serverRuntime`` frequentHitThreshold hits within
  frequentHitTimePeriod; 2 in 10 s by default); it stays until the file changes
  (inotify), or for ``duration`` when the extension's ``caching`` profile says
  ``kernelCachePolicy="CacheForTimePeriod"``;
* a response whose extension has a profile with ``kernelCachePolicy`` CacheUntilChange /
  CacheForTimePeriod (frequent-hit rule as above);
* a response the application opts in with ``Cache-Control: public, s-maxage=N`` (RFC 9111
  shared-cache freshness; ``Age`` is sent on hits).

and never (HTTP.sys's exclusions): requests with a query string, a body, an
``Authorization`` header, ``Range``/``If-Range``, ``Translate: f``, an ``Expect`` other
than 100-continue, methods other than GET (HEAD is served from a GET's entry); responses
other than a whole 200 in one frame, empty or larger than ``maxResponseSize``, with
``Set-Cookie``, ``Cache-Control`` private/no-store/no-cache, ``Vary: *``, or a
``Content-Encoding`` their ``Vary`` does not cover; default documents (a URL ending in
``/``); and nothing the worker marks per client (``q.PER_CLIENT``: the URL's pipeline runs
IP restrictions, URL authorization other than allow-all, authentication other than
anonymous, or a module disabled the kernel cache) — a hit runs no pipeline, so it would
hand the next client what the pipeline granted the first.  ``Vary`` (and a profile's
``varyByHeaders``) key the variants; where the worker compresses the response's type, the
Accept-Encoding part of the key is the coding the worker picks (``Compression``), and only
the variant it would send is stored.  Preconditions are evaluated by the worker's own
code (``poolhouse.http.conditional``).  Settings come from each URL's configuration path.
A configuration change flushes the entries below the paths it affects before the
activation service reports it applied.  Memory is bounded by ``maxCacheSize`` (MB; 0:
64 MB) with LRU eviction.

Responses the worker's reverse proxy relays (marked ``X-Poolhouse-Upstream``) follow RFC
9111's shared-cache rules instead (``shared_cache.py``; ``upstream_response`` and
``_lookup_rfc`` here): any storable status, query strings, revalidation of stale entries
through the worker, request directives, invalidation by unsafe methods.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import struct
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import config_path
from ..http import conditional
from ..http.dates import parse_http_date
from ..http.encodings import choose_coding
from ..urlpath import BadPath, normalize, split_target
from . import shared_cache as sc

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("poolhouse.listener")

FILE_MARKER = b"X-Poolhouse-File"
MARKER = b"X-Poolhouse-"  # what both markers start with: one membership test on the hot path
# app keys of the applications with a kernelCachePolicy profile (one listener per process)
PROFILED: set[str] = set()
DEFAULT_MAX_CACHE = 64 * 1024 * 1024
# seconds after a configuration path is flushed for a web.config change during which
# nothing below it is stored: a worker applies the change on its next look at the file
# (the resolver's stat interval plus the handler choice's reuse, about two seconds), and
# an answer given under the old configuration meanwhile must not be kept
CONFIG_SETTLE = 3.0
MAX_HEADER_BLOCK = 4096
_REQUEST_EXCLUDED = (b"authorization", b"range", b"if-range")
_CONDITIONAL = frozenset((b"if-none-match", b"if-modified-since"))
UPSTREAM_MARKER = b"X-Poolhouse-Upstream"  # the worker's proxy relayed this response
_UPSTREAM_LINE = UPSTREAM_MARKER + b": 1\r\n"
_S_MAXAGE = re.compile(rb"s-maxage\s*=\s*\"?(\d+)", re.I)
_MAX_AGE = re.compile(rb"(?<![-\w])max-age\s*=\s*\"?(\d+)", re.I)


@dataclass
class Profile:
    policy: str  # CacheUntilChange | CacheForTimePeriod | DontCache | DisableCache
    duration: float
    vary: tuple[bytes, ...]


class Compression:
    """What the worker's Static- or DynamicCompressionModule does at one configuration
    path, as far as the cache must know to keep the variants apart: which response
    types it compresses, from what size, and which coding it picks for a request (the
    same negotiation: ``poolhouse.http.encodings``)."""

    __slots__ = ("codings", "types", "min_size", "no_http10", "no_proxies", "_chosen")

    def __init__(self, codings: tuple[str, ...], types: list[tuple[str, str, bool]], min_size: int,
                 no_http10: bool, no_proxies: bool) -> None:
        self.codings = codings
        self.types = types
        self.min_size = min_size
        self.no_http10 = no_http10
        self.no_proxies = no_proxies
        self._chosen: dict[bytes, bytes] = {}  # Accept-Encoding as received -> coding

    @classmethod
    def from_sections(cls, sections: dict[str, Any], dynamic: bool) -> "Compression | None":
        """None when the module is not in the scope's ``<modules>`` or compresses nothing."""
        name = "DynamicCompressionModule" if dynamic else "StaticCompressionModule"
        modules = sections.get("system.webServer/modules")
        if modules is not None and not any(m.get("name") == name for m in modules.get("items", [])):
            return None
        url = sections.get("system.webServer/urlCompression", {}) or {}
        if not url.get("doDynamicCompression" if dynamic else "doStaticCompression", True):
            return None
        sec = sections.get("system.webServer/httpCompression", {}) or {}
        flag = "doDynamicCompression" if dynamic else "doStaticCompression"
        codings = tuple(str(s["name"]).lower() for s in sec.get("items", [])
                        if str(s.get("name", "")).lower() in ("gzip", "deflate", "br") and s.get(flag, True))
        types = []
        for t in (sec.get("dynamicTypes" if dynamic else "staticTypes") or {}).get("items", []):
            major, _, minor = str(t.get("mimeType", "")).lower().partition("/")
            types.append((major, minor, bool(t.get("enabled", False))))
        if not codings or not any(t[2] for t in types):
            return None
        return cls(codings, types, int(sec.get("minFileSizeForComp", 2700)),
                   bool(sec.get("noCompressionForHttp10", True)), bool(sec.get("noCompressionForProxies", True)))

    def applies(self, block: bytes, size: int) -> bool:
        """Would the module compress this response for a client that accepts it?"""
        if size < self.min_size and b"content-encoding" not in block.lower():
            return False
        content_type = _header(block, b"content-type")
        if not content_type:
            return False
        major, _, minor = content_type.split(b";", 1)[0].strip().lower().decode("latin-1").partition("/")
        for t_major, t_minor, enabled in self.types:
            if t_major in ("*", major) and t_minor in ("*", minor):
                return enabled
        return False

    def coding(self, headers: tuple[bytes, ...], method: str, http_minor: int) -> bytes:
        """The coding the module would pick for this request (b"": identity)."""
        accept = _request_header(headers, b"accept-encoding")
        if not accept or method == "HEAD" or (self.no_http10 and http_minor < 1) or (
                self.no_proxies and b"via" in headers):
            return b""
        chosen = self._chosen.get(accept)
        if chosen is None:
            name = choose_coding(accept.decode("latin-1"), self.codings)
            chosen = name.encode() if name is not None else b""
            if len(self._chosen) > 1024:
                self._chosen.clear()
            self._chosen[accept] = chosen
        return chosen


@dataclass
class AppCachePolicy:
    """The effective ``caching``, ``serverRuntime`` and compression settings at one
    configuration path, computed once (when the listener is configured, or the first
    time a response of that path is offered) rather than per response."""

    enabled: bool = True
    max_response_size: int = 262144
    frequent_hits: int = 2
    frequent_period: float = 10.0
    profiles: dict[str, Profile] = field(default_factory=dict)  # ".ext" -> profile
    static_compression: Compression | None = None
    dynamic_compression: Compression | None = None

    @classmethod
    def from_sections(cls, sections: dict[str, Any]) -> "AppCachePolicy":
        caching = sections.get("system.webServer/caching", {}) or {}
        runtime = sections.get("system.webServer/serverRuntime", {}) or {}
        profiles: dict[str, Profile] = {}
        for item in (caching.get("profiles") or {}).get("items", []):
            ext = str(item.get("extension", "")).lower()
            if not ext:
                continue
            policy = str(item.get("kernelCachePolicy", "DontCache"))
            duration = item.get("duration", 30.0)
            vary = tuple(v.strip().lower().encode("latin-1")
                         for v in str(item.get("varyByHeaders", "")).replace(";", ",").split(",") if v.strip())
            profiles[ext if ext.startswith(".") or ext == "*" else "." + ext] = Profile(
                policy, float(duration) if isinstance(duration, (int, float)) else 30.0, vary)
        return cls(
            enabled=bool(caching.get("enabled", True)) and bool(caching.get("enableKernelCache", True)),
            max_response_size=int(caching.get("maxResponseSize", 262144) or 262144),
            frequent_hits=max(1, int(runtime.get("frequentHitThreshold", 2) or 1)),
            frequent_period=float(runtime.get("frequentHitTimePeriod", 10.0) or 10.0),
            profiles=profiles,
            static_compression=Compression.from_sections(sections, False),
            dynamic_compression=Compression.from_sections(sections, True),
        )


class Entry:
    __slots__ = ("key", "vary_key", "app_key", "url", "status", "block", "body", "size",
                 "hits", "stored", "expires", "shared_age", "file", "etag", "last_modified", "tail",
                 "rfc", "validators")

    def __init__(self, key: tuple[int, bytes, bytes], vary_key: tuple[bytes, ...], app_key: str, block: bytes,
                 body: bytes, expires: float, shared_age: bool, file: str, status: int = 200) -> None:
        self.key = key
        self.vary_key = vary_key
        self.app_key = app_key
        self.url = key[1].decode("latin-1")
        self.status = status
        # an upstream's response under RFC 9111 rules (its freshness; None: IIS's rules)
        self.rfc: Rfc | None = None
        self.block = block
        self.body = body
        self.size = 2 * (len(block) + len(body)) + 300
        self.hits = 0
        self.stored = time.monotonic()
        self.expires = expires  # monotonic; 0: until the file changes / the flush
        self.shared_age = shared_age  # send Age (an s-maxage response)
        self.file = file
        self.etag = _header(block, b"etag")
        self.last_modified = _header(block, b"last-modified")
        # (ETag, Last-Modified in seconds) for preconditions, parsed once
        self.validators = _validators(self.etag, self.last_modified)
        # a 200 to a keep-alive HTTP/1.1 GET, after the status line and Date: prepared once
        self.tail = b"%sContent-Length: %d\r\n\r\n%s" % (block, len(body), body)


class Rfc:
    """The RFC 9111 side of an entry stored from an upstream's response."""

    __slots__ = ("lines", "fresh", "revalidations")

    def __init__(self, lines: sc.Fields, fresh: sc.Freshness) -> None:
        self.lines = lines  # the stored header fields, the origin's Date included
        self.fresh = fresh
        self.revalidations = 0

    def age(self, entry: Entry, now: float) -> float:
        """§4.2.3 current_age (``now`` monotonic)."""
        return self.fresh.initial_age + (now - entry.stored)


class Slot:
    """The variants of one URL and the request headers that select them."""

    __slots__ = ("vary", "variants", "rfc", "coding")

    def __init__(self, vary: tuple[bytes, ...], rfc: bool = False, coding: "Compression | None" = None) -> None:
        self.vary = vary
        self.variants: dict[tuple[bytes, ...], Entry] = {}
        self.rfc = rfc  # variants keyed by RFC 9111's Vary matching (all lines of a name)
        # the URL's responses are compressed by the worker: the Accept-Encoding part of
        # the key is the coding the worker would pick, not the header as received
        self.coding = coding


def _vary_key(exch: "Exchange", vary: tuple[bytes, ...], coding: Compression | None) -> tuple[bytes, ...]:
    headers = exch.headers
    if coding is None:
        return tuple(_request_header(headers, n) for n in vary)
    return tuple(coding.coding(headers, exch.method, exch.http_minor) if n == b"accept-encoding"
                 else _request_header(headers, n) for n in vary)


def _validators(etag: bytes, last_modified: bytes) -> tuple[str, int | None]:
    return etag.decode("latin-1"), parse_http_date(last_modified) if last_modified else None


def _field(headers: tuple[bytes, ...], name: bytes) -> str | None:
    """A request header's value as text, or None when absent."""
    for i in range(0, len(headers), 2):
        if headers[i] == name:
            return headers[i + 1].decode("latin-1")
    return None


def precondition(method: str, etag: str, last_modified: int | None, headers: tuple[bytes, ...]) -> int:
    """RFC 9110 §13.2.2 for a stored response, exactly as the worker evaluates it
    (``poolhouse.http.conditional``): 0 (send it), 304 or 412."""
    return conditional.evaluate(method, etag, last_modified, _field(headers, b"if-match"),
                                _field(headers, b"if-unmodified-since"), _field(headers, b"if-none-match"),
                                _field(headers, b"if-modified-since"))


def _key(site_id: int, exch: "Exchange", target: bytes | None = None) -> tuple[int, bytes, bytes]:
    """The key of a URL's entries: the site, the request target and the host it was
    asked of, since HTTP.sys keys its cache on the whole URL (a site bound to every host
    name may serve each its own page: URL Rewrite counts ``{HTTP_HOST}`` cache-safe for
    that reason, and RFC 9111's cache key is the target URI, authority included)."""
    return (site_id, exch.target if target is None else target, exch.host.lower())


def _folder_key(target: bytes) -> str:
    """The configuration path of a request target's folder."""
    try:
        url = normalize(split_target(target)[0])
    except (BadPath, ValueError):
        return "/"
    path = config_path(url)
    return path if url.endswith("/") else path.rsplit("/", 1)[0] or "/"


def _under(target: bytes, prefix: str) -> bool:
    """Is the (raw) request target at or below the configuration path ``prefix``
    (already through ``config_path``)?"""
    try:
        path = config_path(normalize(split_target(target)[0]))
    except (BadPath, ValueError):
        return True  # cannot tell: flushed
    return prefix in ("", "/") or path == prefix or path.startswith(prefix + "/")


_MARKER_LINE = re.compile(rb"(?im)^X-Poolhouse-File:[ \t]*([^\r\n]*)\r\n")


def strip_file_marker(block: bytes) -> tuple[bytes, str]:
    """(the header block without the worker's file marker, the file's path)."""
    m = _MARKER_LINE.search(block)
    if m is None:
        return block, ""
    return block[:m.start()] + block[m.end():], os.fsdecode(m.group(1))


def _header(block: bytes, name: bytes) -> bytes:
    for line in block.split(b"\r\n"):
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name:
            return v.strip()
    return b""


def _drop_field(block: bytes, lower: bytes, name: bytes) -> bytes:
    """``block`` without its ``name:`` lines (``lower``: the block in lower case)."""
    while True:
        if lower.startswith(name):
            start = 0
        else:
            start = lower.find(b"\n" + name) + 1
            if start == 0:
                return block
        end = lower.find(b"\n", start) + 1 or len(lower)
        block, lower = block[:start] + block[end:], lower[:start] + lower[end:]


def _request_header(headers: tuple[bytes, ...], name: bytes) -> bytes:
    for i in range(0, len(headers), 2):
        if headers[i] == name:
            return headers[i + 1]
    return b""


class ResponseCache:
    def __init__(self, max_size: int = DEFAULT_MAX_CACHE) -> None:
        self.max_size = max_size
        self.size = 0
        self.slots: dict[tuple[int, bytes, bytes], Slot] = {}
        self.lru: OrderedDict[int, Entry] = OrderedDict()  # id(entry) -> entry, oldest first
        self.candidates: dict[tuple[int, bytes, bytes], tuple[float, int]] = {}
        self.policies: dict[str, AppCachePolicy] = {}
        # application key -> the effective configuration at a URL path (its sections)
        self.resolvers: dict[str, Callable[[str], dict[str, Any]]] = {}
        self.path_policies: dict[tuple[str, bytes], AppCachePolicy] = {}
        self.profiled = PROFILED  # applications with kernel cache profiles
        self.hits = 0
        self.fast_hits = 0  # hits answered without parsing (the listener's fast path; in hits too)
        self.misses = 0
        self.stores = 0
        self.evictions = 0
        self.invalidations = 0
        self.revalidated = 0
        self.stale_served = 0
        self.upstream_apps: set[str] = set()  # applications seen relaying upstream responses
        self.watcher: FileWatcher | None = None
        # (until, site id, configuration path): recently flushed for a web.config change
        self.settling: list[tuple[float, int | None, str]] = []
        # worker links still running a configuration that was replaced (their pool is
        # being recycled for it): their answers are not stored
        self.stale_workers: weakref.WeakSet[Any] = weakref.WeakSet()

    # ---- configuration and management -------------------------------------------------

    def configure(self, policies: dict[str, AppCachePolicy], max_size: int,
                  resolvers: dict[str, Callable[[str], dict[str, Any]]] | None = None) -> None:
        """A new configuration: every entry goes (an application's settings may have
        changed, and its pool is recycled for it).  ``resolvers``: application key ->
        the sections in effect at a URL path (web.config files included), for the
        settings of each URL's own configuration path."""
        self.policies = policies
        self.resolvers = resolvers or {}
        self.path_policies = {}
        self.profiled.clear()  # the same set object: exchanges read it without a lookup chain
        self.profiled.update(k for k, p in policies.items() if p.enabled and any(
            pr.policy in ("CacheUntilChange", "CacheForTimePeriod") for pr in p.profiles.values()))
        self.max_size = max_size or DEFAULT_MAX_CACHE
        self.upstream_apps.clear()
        self.flush()

    def flush(self, site_id: int | None = None, url: str | None = None, path: str | None = None) -> int:
        """Remove the entries of a site (all sites: None), of one URL, or at and below
        a configuration path (``path``: a URL path, matched as IIS matches configuration
        paths).  Returns how many went."""
        prefix = config_path(path) if path is not None else None
        doomed = [e for e in self.lru.values()
                  if (site_id is None or e.key[0] == site_id)
                  and (url is None or e.url.lower() == url.lower())
                  and (prefix is None or _under(e.key[1], prefix))]
        for entry in doomed:
            self._remove(entry)
        if prefix is not None:
            now = time.monotonic()
            self.settling = [s for s in self.settling if s[0] > now]
            self.settling.append((now + CONFIG_SETTLE, site_id, prefix))
        if url is None:
            # the settings of the paths may have changed with their configuration
            self.path_policies.clear()
            if site_id is None:
                self.candidates.clear()
            else:
                self.candidates = {k: v for k, v in self.candidates.items() if k[0] != site_id}
        return len(doomed)

    def policy_at(self, app_key: str, target: bytes) -> AppCachePolicy | None:
        """The settings at a URL's configuration path (memoised until the next flush)."""
        path = target.split(b"?", 1)[0]
        key = (app_key, path)
        found = self.path_policies.get(key)
        if found is not None:
            return found
        resolver = self.resolvers.get(app_key)
        if resolver is None:
            return self.policies.get(app_key)
        try:
            found = AppCachePolicy.from_sections(resolver(normalize(split_target(path)[0])))
        except Exception as exc:  # a broken web.config: the worker answers 500.19; nothing cached
            log.debug("response cache: no settings for %r: %s", path[:200], exc)
            found = AppCachePolicy(enabled=False)
        if len(self.path_policies) > 10000:
            self.path_policies.clear()
        self.path_policies[key] = found
        return found

    def _settling(self, site_id: int, target: bytes) -> bool:
        now = time.monotonic()
        self.settling = [s for s in self.settling if s[0] > now]
        return any((site is None or site == site_id) and _under(target, prefix) for _, site, prefix in self.settling)

    def per_client(self, exch: "Exchange") -> None:
        """The worker answered ``exch`` per client (q.PER_CLIENT): nothing of its URL
        stays (an entry stored before its configuration changed, say)."""
        route = exch.route
        if route is None or not self.slots:
            return
        key = _key(route.site_id, exch)
        self.candidates.pop(key, None)
        slot = self.slots.get(key)
        if slot is not None:
            for entry in list(slot.variants.values()):
                self._remove(entry)
                self.invalidations += 1

    def listing(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"site_id": e.key[0], "url": e.url, "application": e.app_key, "size": e.size, "hits": e.hits,
             "vary": [v.decode("latin-1") for v in e.vary_key],
             "expires_in": round(e.expires - now, 1) if e.expires else (
                 round(e.rfc.fresh.lifetime - e.rfc.age(e, now), 1) if e.rfc is not None else None),
             "status": e.status, "rfc9111": e.rfc is not None,
             "file": e.file or None}
            for e in reversed(self.lru.values())
        ]

    def stats(self) -> dict[str, int]:
        return {"count": len(self.lru), "size": self.size, "max_size": self.max_size, "hits": self.hits,
                "fast_hits": self.fast_hits, "misses": self.misses, "stores": self.stores, "evictions": self.evictions,
                "invalidations": self.invalidations, "revalidated": self.revalidated,
                "stale_served": self.stale_served}

    # ---- the request side -------------------------------------------------------------

    def lookup(self, site_id: int, exch: "Exchange") -> Entry | None:
        """The fresh entry for ``exch``, or None (a miss)."""
        slot = self.slots.get(_key(site_id, exch))
        if slot is None:
            self.misses += 1
            return None
        headers = exch.headers
        if (exch.body_length != 0 or b"authorization" in headers or b"range" in headers
                or b"if-range" in headers or (b"translate" in headers
                                              and _request_header(headers, b"translate").lower() == b"f")):
            self.misses += 1
            return None
        if slot.rfc:
            return self._lookup_rfc(slot, exch)
        vary_key = _vary_key(exch, slot.vary, slot.coding) if slot.vary else ()
        entry = slot.variants.get(vary_key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires and time.monotonic() >= entry.expires:
            self._remove(entry)
            self.misses += 1
            return None
        entry.hits += 1
        self.hits += 1
        self.lru.move_to_end(id(entry))
        return entry

    def _lookup_rfc(self, slot: Slot, exch: "Exchange") -> Entry | None:
        """A stored upstream response (RFC 9111 §4): the entry when it may be sent as is;
        None otherwise — after turning the request into a revalidation of a stale entry
        that has a validator (``exch.revalidating``; the worker's proxy sends the
        conditional request, ``upstream_response`` freshens the entry on 304)."""
        headers = exch.headers
        entry = slot.variants.get(sc.vary_key(headers, slot.vary) if slot.vary else ())
        if entry is None or entry.rfc is None:
            self.misses += 1
            return None
        rfc = entry.rfc
        fresh = rfc.fresh
        req = sc.request_directives(headers) if b"cache-control" in headers or b"pragma" in headers else None
        age = rfc.age(entry, time.monotonic())
        if sc.usable(fresh.lifetime, age, fresh.no_cache, fresh.no_stale, req):
            entry.hits += 1
            self.hits += 1
            self.lru.move_to_end(id(entry))
            return entry
        self.misses += 1
        if req is not None and b"only-if-cached" in req:
            return None  # the caller answers 504
        conditional: list[bytes] = []
        if entry.etag:
            conditional += [b"if-none-match", entry.etag]
        if entry.last_modified:
            conditional += [b"if-modified-since", entry.last_modified]
        if not conditional and exch.method != "HEAD" and b"stale-if-error" not in entry.block.lower():
            self._remove(entry)  # stale, and nothing to revalidate it with
            return None
        # (without a validator the request goes unconditional: the entry stays as the
        # stale-if-error fallback, or for a HEAD's answer to freshen, §4.3.5)
        exch.headers = tuple(h for i in range(0, len(headers), 2) if headers[i] not in _CONDITIONAL
                             for h in (headers[i], headers[i + 1])) + tuple(conditional)
        exch.revalidating = entry
        exch.client_headers = headers  # the client's own conditionals, for the answer
        return None

    def only_if_cached(self, exch: "Exchange") -> bool:
        """§5.2.1.7: nothing usable is stored for a request with ``only-if-cached`` to an
        application whose responses come from an upstream (it gets a 504 rather than
        going to the upstream).  Other applications are origins: the directive is not
        addressed to them (HTTP.sys ignores it)."""
        route = exch.route
        if route is None or route.app_key not in self.upstream_apps:
            return False
        req = sc.request_directives(exch.headers)
        return req is not None and b"only-if-cached" in req

    def stored_not_modified(self, entry: Entry, headers: tuple[bytes, ...]) -> bool:
        """For an upstream's stored response (RFC 9111 §4.3.2): is it "not modified"
        for this request?  The ``Date`` stands in for a missing ``Last-Modified``."""
        etag, modified = entry.validators
        if modified is None:
            modified = parse_http_date(_header(entry.block, b"date"))
        return conditional.evaluate("GET", etag, modified, None, None, _field(headers, b"if-none-match"),
                                    _field(headers, b"if-modified-since")) == conditional.NOT_MODIFIED

    @staticmethod
    def precondition(entry: Entry, exch: "Exchange") -> int:
        """RFC 9110 §13.2.2 for a stored response, as the worker would evaluate it:
        0 (send it), 304 or 412."""
        etag, modified = entry.validators
        return precondition(exch.method, etag, modified, exch.headers)

    # ---- the response side ------------------------------------------------------------

    def consider(self, exch: "Exchange", block: bytes, body: bytes, file: str) -> None:
        """A whole 200 response to a GET from a worker (``block`` without the file marker)."""
        route = exch.route
        if route is None:
            return
        target = exch.target
        policy = self.policy_at(route.app_key, target)
        if policy is None or not policy.enabled or (self.stale_workers and exch.worker in self.stale_workers):
            return
        if self.settling and self._settling(route.site_id, target):
            return
        if (b"?" in target or target.endswith(b"/") or exch.body_length != 0
                or exch.http_minor < 0 or not body or len(body) > policy.max_response_size
                or len(block) > MAX_HEADER_BLOCK):
            return
        headers = exch.headers
        if any(n in headers for n in _REQUEST_EXCLUDED) or b"translate" in headers:
            return
        if b"expect" in headers and _request_header(headers, b"expect").lower() != b"100-continue":
            return
        lower = block.lower()
        if b"set-cookie" in lower:
            return
        cache_control = _header(block, b"cache-control").lower()
        if any(d in cache_control for d in (b"private", b"no-store", b"no-cache")):
            return
        vary_header = _header(block, b"vary").lower()
        vary = tuple(sorted({v.strip() for v in vary_header.split(b",") if v.strip()}))
        if b"*" in vary:
            return
        if b"content-encoding" in lower and b"accept-encoding" not in vary:
            return
        compression = policy.static_compression if file else policy.dynamic_compression
        coding: Compression | None = None
        if compression is not None and compression.applies(block, len(body)):
            # the worker compresses this type here: the variants are kept apart by the
            # coding it picks for each request, and only the variant it would send to
            # this request is stored (not the identity answer a gzip client got while
            # the file was not yet frequently hit, say)
            if _header(block, b"content-encoding").lower() != compression.coding(headers, exch.method,
                                                                                 exch.http_minor):
                return
            coding = compression
            if b"accept-encoding" not in vary:
                vary = tuple(sorted(set(vary) | {b"accept-encoding"}))
        now = time.monotonic()
        expires = 0.0
        shared = False
        m = _S_MAXAGE.search(cache_control) if b"s-maxage" in cache_control else None
        if m is not None and b"public" in cache_control:
            # the application opted in (RFC 9111 shared-cache freshness)
            if int(m.group(1)) <= 0:
                return
            expires = now + int(m.group(1))
            shared = True
        else:
            ext = os.path.splitext(target.decode("latin-1").rsplit("/", 1)[-1])[1].lower()
            profile = policy.profiles.get(ext) or policy.profiles.get("*")
            if profile is not None and profile.policy in ("DontCache", "DisableCache"):
                return
            if profile is not None and profile.policy in ("CacheUntilChange", "CacheForTimePeriod"):
                if profile.policy == "CacheForTimePeriod":
                    expires = now + profile.duration
                vary = tuple(sorted(set(vary) | set(profile.vary)))
            elif not file:
                return  # neither a static file nor a kernel cache policy
            # the frequent-hit rule (serverRuntime frequentHitThreshold/TimePeriod)
            key = _key(route.site_id, exch)
            first, count = self.candidates.get(key, (now, 0))
            if now - first > policy.frequent_period:
                first, count = now, 0
            count += 1
            if count < policy.frequent_hits:
                if len(self.candidates) > 10000:
                    self.candidates.clear()
                self.candidates[key] = (first, count)
                return
            self.candidates.pop(key, None)
        self._store(route.site_id, exch, block, body, vary, expires, shared, file, coding)

    def upstream_response(self, exch: "Exchange", status: int, block: bytes, body: bytes, end: bool,
                          per_client: bool = False) -> bytes:
        """A response the worker's proxy relayed (``block`` carries the marker): RFC 9111
        storing, freshening and invalidation.  Returns the header block for the client,
        without the marker and the origin's ``Date`` (the listener writes its own) — or
        b"" after answering the client from a freshened entry itself."""
        # the proxy appends the marker last
        block = block[:-len(_UPSTREAM_LINE)] if block.endswith(_UPSTREAM_LINE) else block.replace(_UPSTREAM_LINE, b"")
        lower = block.lower()
        client_block = _drop_field(block, lower, b"date:")
        route = exch.route
        policy = self.policies.get(route.app_key) if route is not None else None
        if route is None or policy is None or not policy.enabled:
            return client_block
        if route.app_key not in self.upstream_apps:
            self.upstream_apps.add(route.app_key)
        method = exch.method
        if method not in sc.SAFE_METHODS:
            if 200 <= status < 400:
                self._invalidate(route.site_id, exch, sc.fields(block))
            return client_block
        entry: Entry | None = exch.revalidating
        if entry is not None and end and (status == 304 or (status >= 500 and self._stale_if_error(entry, exch))):
            if status == 304:
                self._freshen(exch, entry, sc.fields(block))
            else:
                self.stale_served += 1  # RFC 5861 stale-if-error: the stored answer, not the error
            exch.headers = exch.client_headers
            exch.conn.listener.serve_cached(exch.conn, exch, entry)
            return b""
        if per_client:
            return client_block  # never stored (the stored variants went in per_client)
        if method == "HEAD" and status == 200:
            self._head_update(route.site_id, exch, sc.fields(block))
        if method != "GET":
            return client_block
        if entry is not None:
            self._remove(entry)  # replaced by this answer, or no longer right
        if (not end or len(body) > policy.max_response_size or len(block) > MAX_HEADER_BLOCK
                or not (b"cache-control" in lower or b"expires" in lower or b"last-modified" in lower
                        or b"etag" in lower)):
            # nothing to store: neither freshness nor a validator (the usual proxied answer)
            return client_block
        lines = sc.fields(block)
        headers = exch.client_headers if entry is not None else exch.headers
        cc = sc.directives(sc.values(lines, b"cache-control"))
        req = sc.request_directives(headers) if b"cache-control" in headers or b"pragma" in headers else None
        if exch.body_length != 0 or not sc.storable(method, status, cc, lines, headers, req):
            return client_block
        omitted = sc.omitted_fields(cc)
        stored = [(n, line) for n, line in lines if n not in sc.NOT_STORED and n not in omitted]
        now = time.time()
        fresh = sc.freshness(lines, cc, status, now - (time.monotonic() - exch.started_at), now)
        if ((fresh.no_cache or fresh.lifetime <= 0)
                and not any(n == b"etag" or n == b"last-modified" for n, _ in stored)):
            return client_block  # never fresh and nothing to revalidate it with
        vary = sc.vary_names(stored)
        key = _key(route.site_id, exch)
        slot = self.slots.get(key)
        if slot is None or slot.vary != vary or not slot.rfc:
            if slot is not None:
                for old in list(slot.variants.values()):
                    self._remove(old)
            slot = Slot(vary, rfc=True)
        new = Entry(key, sc.vary_key(headers, vary) if vary else (), route.app_key,
                    b"".join(line for _, line in stored), body, 0.0, True, "", status)
        new.rfc = Rfc(stored, fresh)
        self._insert(slot, new)
        return client_block

    def _freshen(self, exch: "Exchange", entry: Entry, lines: sc.Fields) -> None:
        """§4.3.4: a 304 to our conditional request; the stored fields take the 304's."""
        assert entry.rfc is not None
        etags = sc.values(lines, b"etag")
        if etags and entry.etag and etags[0].removeprefix(b"W/") != entry.etag.removeprefix(b"W/"):
            return  # a 304 for another representation: the stored one is sent unchanged
        stored = sc.freshen(entry.rfc.lines, lines)
        if not sc.values(lines, b"date"):
            stored = [(n, line) for n, line in stored if n != b"date"]  # the origin's Date is now stale
        cc = sc.directives(sc.values(stored, b"cache-control"))
        omitted = sc.omitted_fields(cc)
        stored = [(n, line) for n, line in stored if n not in omitted]
        now = time.time()
        entry.rfc.lines = stored
        with_age = stored + [(n, line) for n, line in lines if n == b"age"]
        entry.rfc.fresh = sc.freshness(with_age, cc, entry.status, now - (time.monotonic() - exch.started_at), now)
        entry.rfc.revalidations += 1
        entry.block = b"".join(line for _, line in stored)
        entry.etag = _header(entry.block, b"etag")
        entry.last_modified = _header(entry.block, b"last-modified")
        entry.stored = time.monotonic()
        self.revalidated += 1

    def _stale_if_error(self, entry: Entry, exch: "Exchange") -> bool:
        """May a stale entry answer instead of the upstream's 5xx?  Only within a
        ``stale-if-error=N`` of the stored response or the request (RFC 5861), and never
        past ``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` or ``no-cache``."""
        assert entry.rfc is not None
        fresh = entry.rfc.fresh
        if fresh.no_stale or fresh.no_cache:
            return False
        staleness = entry.rfc.age(entry, time.monotonic()) - fresh.lifetime
        for cc in (sc.directives(sc.values(entry.rfc.lines, b"cache-control")),
                   sc.request_directives(exch.client_headers)):
            limit = sc.delta_seconds(cc.get(b"stale-if-error")) if cc else None
            if limit is not None and staleness <= limit:
                return True
        return False

    def _head_update(self, site_id: int, exch: "Exchange", lines: sc.Fields) -> None:
        """§4.3.5: a 200 to HEAD freshens the stored GET response it describes (same
        validators, or neither has one) and removes one it no longer describes."""
        slot = self.slots.get(_key(site_id, exch))
        if slot is None or not slot.rfc:
            return
        headers = exch.client_headers if exch.revalidating is not None else exch.headers
        entry = slot.variants.get(sc.vary_key(headers, slot.vary) if slot.vary else ())
        if entry is None or entry.rfc is None:
            return
        etags = sc.values(lines, b"etag")
        modified = sc.values(lines, b"last-modified")
        if etags or entry.etag:
            same = bool(etags) and etags[0] == entry.etag and not entry.etag.startswith(b"W/")
        elif modified or entry.last_modified:
            same = bool(modified) and modified[0] == entry.last_modified
        else:
            same = True
        if same:
            self._freshen(exch, entry, lines)
        else:
            self._remove(entry)

    def _invalidate(self, site_id: int, exch: "Exchange", lines: sc.Fields) -> None:
        """§4.4: an unsafe method's non-error answer invalidates the target URI and the
        same-origin ``Location``/``Content-Location``."""
        targets = {exch.target}
        for name in (b"location", b"content-location"):
            for value in sc.values(lines, name):
                target = sc.same_origin_target(value, exch.host, exch.conn.scheme)
                if target is not None:
                    targets.add(target)
        for target in targets:
            slot = self.slots.get(_key(site_id, exch, target))
            if slot is not None:
                for entry in list(slot.variants.values()):
                    self._remove(entry)
                    self.invalidations += 1

    def _store(self, site_id: int, exch: "Exchange", block: bytes, body: bytes, vary: tuple[bytes, ...],
               expires: float, shared: bool, file: str, coding: Compression | None = None) -> None:
        assert exch.route is not None
        key = _key(site_id, exch)
        slot = self.slots.get(key)
        if slot is None or slot.vary != vary or slot.rfc or slot.coding is not coding:
            if slot is not None:
                for old in list(slot.variants.values()):
                    self._remove(old)
            slot = self.slots[key] = Slot(vary, coding=coding)
        vary_key = _vary_key(exch, vary, coding) if vary else ()
        entry = Entry(key, vary_key, exch.route.app_key, block, body, expires, shared, file)
        self._insert(slot, entry)

    def _insert(self, slot: Slot, entry: Entry) -> None:
        """``entry`` into ``slot`` (replacing its variant), within the memory bound."""
        key = entry.key
        old = slot.variants.get(entry.vary_key)
        if old is not None:
            self._remove(old)
        if entry.size > self.max_size:
            return
        while self.size + entry.size > self.max_size and self.lru:
            _, victim = self.lru.popitem(last=False)
            self.lru[id(victim)] = victim
            self._remove(victim)
            self.evictions += 1
        slot.variants[entry.vary_key] = entry
        self.slots[key] = slot
        self.lru[id(entry)] = entry
        self.size += entry.size
        self.stores += 1
        if entry.file and self.watcher is not None and not self.watcher.watch(entry.file, entry):
            self._remove(entry)  # a file whose changes cannot be seen is not kept

    def _remove(self, entry: Entry) -> None:
        if self.lru.pop(id(entry), None) is None:
            return
        self.size -= entry.size
        slot = self.slots.get(entry.key)
        if slot is not None and slot.variants.get(entry.vary_key) is entry:
            del slot.variants[entry.vary_key]
            if not slot.variants:
                del self.slots[entry.key]
        if entry.file and self.watcher is not None:
            self.watcher.unwatch(entry.file, entry)

    def file_changed(self, path: str) -> None:
        if self.watcher is None:
            return
        if os.path.basename(path).lower() == "web.config":
            # the configuration of the folder changed: its files' entries go, and none is
            # stored again until the workers have applied it
            folder = os.path.dirname(path) + "/"
            doomed = [e for e in self.lru.values() if e.file.startswith(folder)]
            now = time.monotonic()
            for entry in doomed:
                self._remove(entry)
                self.invalidations += 1
                self.settling.append((now + CONFIG_SETTLE, entry.key[0], _folder_key(entry.key[1])))
            return
        for entry in list(self.watcher.entries.get(path, ())):
            self._remove(entry)
            self.invalidations += 1


# ---- file change notification ----------------------------------------------------------

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_DIR_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
             | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF)
_EVENT = struct.Struct("iIII")


MAX_WATCHED_DIRS = 8192  # folders watched at once; a file in another one is not cached


class FileWatcher:
    """inotify on the directories of cached files (a directory watch also sees a file
    replaced by rename); ``on_change(path)`` runs on the event loop.

    The file a response comes from is named by the worker (the marker), so the folders
    watched are a worker's choice: a watch lasts only while an entry needs it, and at
    most ``MAX_WATCHED_DIRS`` are held (root's watches are counted against a limit that
    every root process on the machine shares, ``fs.inotify.max_user_watches``)."""

    def __init__(self, loop: Any, on_change: Any) -> None:
        self.entries: dict[str, set[Entry]] = {}
        self._in_dir: dict[str, int] = {}  # directory -> files with entries in it
        self._full_logged = False
        self._dirs: dict[str, int] = {}  # directory -> watch descriptor
        self._wds: dict[int, str] = {}
        self._on_change = on_change
        self._loop = loop
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        loop.add_reader(self.fd, self._read)

    def watch(self, path: str, entry: Entry) -> bool:
        """Watch ``path`` for ``entry``; False (nothing kept) if its folder cannot be
        watched: the entry would never learn that the file changed."""
        directory = os.path.dirname(path)
        if directory not in self._dirs:
            if len(self._dirs) >= MAX_WATCHED_DIRS:
                if not self._full_logged:
                    self._full_logged = True
                    log.warning("response cache: %d folders watched already; files in other folders are "
                                "not cached until entries go", MAX_WATCHED_DIRS)
                return False
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _DIR_MASK)
            if wd < 0:
                if not self._full_logged:
                    self._full_logged = True
                    log.warning("response cache: cannot watch %s (errno %d): its files are not cached",
                                directory, ctypes.get_errno())
                return False
            self._dirs[directory] = wd
            self._wds[wd] = directory
        entries = self.entries.setdefault(path, set())
        if not entries:
            self._in_dir[directory] = self._in_dir.get(directory, 0) + 1
        entries.add(entry)
        return True

    def unwatch(self, path: str, entry: Entry) -> None:
        """``entry`` no longer needs ``path``; the folder's watch goes with the last
        entry that needed it."""
        entries = self.entries.get(path)
        if entries is None or entry not in entries:
            return
        entries.discard(entry)
        if entries:
            return
        del self.entries[path]
        directory = os.path.dirname(path)
        left = self._in_dir.get(directory, 1) - 1
        if left > 0:
            self._in_dir[directory] = left
            return
        self._in_dir.pop(directory, None)
        wd = self._dirs.pop(directory, None)
        if wd is not None:
            self._wds.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)
        self._full_logged = False

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        pos = 0
        changed: set[str] = set()
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            name = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            directory = self._wds.get(wd)
            if directory is None:
                continue
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                changed.update(p for p in self.entries if os.path.dirname(p) == directory)
                self._wds.pop(wd, None)
                if self._dirs.get(directory) == wd:
                    del self._dirs[directory]
                if mask & _IN_MOVE_SELF:  # (a deleted folder's watch goes by itself)
                    self._libc.inotify_rm_watch(self.fd, wd)
            elif name:
                changed.add(os.path.join(directory, os.fsdecode(name)))
        for path in changed:
            if path in self.entries or os.path.basename(path).lower() == "web.config":
                self._on_change(path)

    def close(self) -> None:
        try:
            self._loop.remove_reader(self.fd)
        except Exception:
            pass
        os.close(self.fd)
