"""RFC 9111 shared-cache rules, for the responses the worker relays from an HTTP upstream
(a URL Rewrite to an absolute URL — ARR's reverse proxy — and httpPlatform).

Pure functions over header blocks and request header tuples: no I/O, no clock of their
own (the caller passes the times).  The response cache (``response_cache.py``) applies
them; HTTP.sys's kernel-cache rules stay for everything else.

What is promised, by section of RFC 9111:

* §3 storing: GET only; a final status other than 206 and 304; not ``no-store`` (request
  or response), not ``private``; a request with ``Authorization`` only if the response
  says ``public``, ``s-maxage`` or ``must-revalidate`` (§3.5); and either explicit
  freshness (``s-maxage``, ``max-age``, ``Expires``), ``public``, or a heuristically
  cacheable status (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501).  ``Vary: *``
  is never stored.  Poolhouse's own rule on top: a response with ``Set-Cookie`` is stored
  only when it says ``public`` or ``s-maxage`` (a shared cache handing one user's cookie
  to another is the classic accident).
* §3.1 the stored header fields: without those ``Connection`` names (already dropped by
  the proxy), ``Proxy-Authentication-Info`` and ``Age`` (the cache sends its own); the
  origin's ``Date`` is kept and sent on hits (a cache does not update ``Date``).
* §4.2.1 freshness lifetime: ``s-maxage`` > ``max-age`` > ``Expires`` - ``Date``;
  else 10 % of ``Date`` - ``Last-Modified`` for a heuristically cacheable status (at most
  a day); an invalid ``Expires`` means already stale.  Directive values: digits only
  (leading zeros fine, a quoted token accepted), the first occurrence wins.
* §4.2.3 age: ``corrected_initial_age = max(apparent_age, Age + response_delay)``;
  an ``Age`` that is not a single non-negative integer makes the response stale.
* §4.2.4/§5.2: ``no-cache`` (any form) and a stale ``must-revalidate``,
  ``proxy-revalidate`` or ``s-maxage`` response are always revalidated; request
  ``no-cache`` (and ``Pragma: no-cache`` without ``Cache-Control``), ``max-age``,
  ``min-fresh``, ``max-stale``, ``only-if-cached`` (504 when nothing usable is stored).
* §3.2/§4.3.4 freshening on 304 (and §4.3.5 on a 200 to HEAD): the stored header
  fields are replaced by the new ones, except ``Content-Length``, ``Content-Encoding``,
  ``Content-MD5``, ``Content-Range`` and ``ETag``.
* RFC 5861 ``stale-if-error``: read by the response cache from these directives.
"""

from __future__ import annotations

from ..http.dates import parse_http_date

HEURISTIC_STATUS = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
MAX_DELTA = 2147483648  # §1.2.2: a larger delta-seconds is taken as this
MAX_HEURISTIC = 86400.0
NOT_UPDATED = frozenset((b"content-length", b"content-encoding", b"content-md5", b"content-range", b"etag"))
# not kept in a stored response: Age is the cache's to send (§5.1)
NOT_STORED = frozenset((b"proxy-authentication-info", b"age"))
# the statuses whose caching rules Poolhouse implements (for must-understand, §5.2.2.3)
UNDERSTOOD_STATUS = HEURISTIC_STATUS | {302, 303, 307, 400, 403, 500, 502, 503, 504}

Directives = dict[bytes, "bytes | None"]
Fields = list[tuple[bytes, bytes]]  # (lower-case name, the whole line with its CRLF)


def fields(block: bytes) -> Fields:
    """The lines of a header block as (lower-case name, line)."""
    out: Fields = []
    for line in block.split(b"\r\n"):
        name, sep, _ = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), line + b"\r\n"))
    return out


def values(lines: Fields, name: bytes) -> list[bytes]:
    return [line.partition(b":")[2].strip() for n, line in lines if n == name]


def directives(field_values: list[bytes]) -> Directives:
    """Cache-Control directives (lower-case names; a quoted value unquoted; the first
    occurrence of each kept).  A directive whose syntax is broken (``max-age = 5``) is
    left out; commas inside quoted strings do not split."""
    out: Directives = {}
    for value in field_values:
        for item in _split(value):
            name, eq, arg = item.partition(b"=")
            name = name.lower()
            if not name or b" " in name or b"\t" in name or b'"' in name:
                continue
            if eq:
                if not arg or arg[:1] in (b" ", b"\t"):
                    continue
                if arg[:1] == b'"':
                    if len(arg) < 2 or arg[-1:] != b'"':
                        continue
                    arg = arg[1:-1].replace(b"\\", b"")
                out.setdefault(name, arg)
            else:
                out.setdefault(name, None)
    return out


def _split(value: bytes) -> list[bytes]:
    items: list[bytes] = []
    start = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i:i + 1]
        if quoted and c == b"\\":
            i += 2
            continue
        if c == b'"':
            quoted = not quoted
        elif c == b"," and not quoted:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    items.append(value[start:].strip())
    return [item for item in items if item]


def delta_seconds(arg: bytes | None) -> int | None:
    """A directive's delta-seconds, or None when absent or invalid."""
    if arg is None or not arg.isdigit():
        return None
    return min(int(arg), MAX_DELTA)


def http_date(value: bytes) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime) as a POSIX time, or None."""
    when = parse_http_date(value)
    return float(when) if when is not None else None


def age_value(lines: Fields) -> int | None:
    """The ``Age`` in seconds; 0 when absent; None when it is not exactly one
    non-negative integer (the response is then treated as stale)."""
    ages = values(lines, b"age")
    if not ages:
        return 0
    if len(ages) != 1 or not ages[0].isdigit():
        return None
    return min(int(ages[0]), MAX_DELTA)


class Freshness:
    """What a response says about its reuse (computed from its header fields)."""

    __slots__ = ("lifetime", "initial_age", "date", "no_cache", "no_stale")

    def __init__(self, lifetime: float, initial_age: float, date: float, no_cache: bool, no_stale: bool) -> None:
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.date = date
        self.no_cache = no_cache  # revalidate on every use
        self.no_stale = no_stale  # must-revalidate / proxy-revalidate / s-maxage: never served stale


def freshness(lines: Fields, cc: Directives, status: int, request_time: float, response_time: float) -> Freshness:
    """§4.2.1 lifetime and §4.2.3 corrected initial age; times are POSIX seconds."""
    dates = values(lines, b"date")
    date = http_date(dates[0]) if len(dates) == 1 else None
    if date is None:
        date = response_time
    lifetime = 0.0
    s_maxage = delta_seconds(cc.get(b"s-maxage")) if b"s-maxage" in cc else None
    max_age = delta_seconds(cc.get(b"max-age")) if b"max-age" in cc else None
    if s_maxage is not None:
        lifetime = float(s_maxage)
    elif max_age is not None:
        lifetime = float(max_age)
    elif b"s-maxage" in cc or b"max-age" in cc:
        lifetime = 0.0  # present but invalid: stale
    else:
        expires = values(lines, b"expires")
        if expires:
            when = http_date(expires[0]) if len(expires) == 1 else None
            lifetime = max(0.0, when - date) if when is not None else 0.0
        elif status in HEURISTIC_STATUS:
            modified = values(lines, b"last-modified")
            when = http_date(modified[0]) if len(modified) == 1 else None
            if when is not None and when < date:
                lifetime = min(MAX_HEURISTIC, 0.1 * (date - when))
    age = age_value(lines)
    if age is None:
        lifetime, age = 0.0, 0
    apparent_age = max(0.0, response_time - date)
    corrected_age = age + max(0.0, response_time - request_time)
    return Freshness(lifetime, max(apparent_age, corrected_age), date,
                     no_cache=b"no-cache" in cc and not cc[b"no-cache"],
                     no_stale=b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc)


def storable(method: str, status: int, cc: Directives, lines: Fields, request_headers: tuple[bytes, ...],
             request_cc: Directives | None) -> bool:
    """§3: may a shared cache store this response?"""
    if method != "GET" or status < 200 or status in (206, 304):
        return False
    if b"must-understand" in cc:
        if status not in UNDERSTOOD_STATUS:
            return False
    elif b"no-store" in cc:
        return False
    if (b"private" in cc and not cc[b"private"]) or (request_cc is not None and b"no-store" in request_cc):
        return False
    shared_ok = b"public" in cc or b"s-maxage" in cc
    if b"authorization" in request_headers and not (shared_ok or b"must-revalidate" in cc):
        return False
    if any(n == b"set-cookie" for n, _ in lines) and not shared_ok:
        return False
    for vary in values(lines, b"vary"):
        if any(v.strip() == b"*" for v in vary.split(b",")):
            return False
    return (b"s-maxage" in cc or b"max-age" in cc or b"public" in cc or status in HEURISTIC_STATUS
            or any(n == b"expires" for n, _ in lines))


def omitted_fields(cc: Directives) -> frozenset[bytes]:
    """The field names a qualified ``no-cache="…"`` or ``private="…"`` keeps out of a
    shared cache (§5.2.2.4, §5.2.2.7): the rest of the response may be stored and reused."""
    names: set[bytes] = set()
    for directive in (b"no-cache", b"private"):
        arg = cc.get(directive)
        if arg:
            names.update(n.strip().lower() for n in arg.split(b",") if n.strip())
    return frozenset(names)


def vary_names(lines: Fields) -> tuple[bytes, ...]:
    return tuple(sorted({v.strip().lower() for line in values(lines, b"vary") for v in line.split(b",") if v.strip()}))


def vary_key(headers: tuple[bytes, ...], names: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The request's values of the ``Vary`` names (lines of one name joined, whitespace
    after commas normalised)."""
    out = []
    for name in names:
        found = [headers[i + 1].strip() for i in range(0, len(headers), 2) if headers[i] == name]
        out.append(b",".join(p.strip() for p in b",".join(found).split(b",")) if found else b"\0")
    return tuple(out)


def request_directives(headers: tuple[bytes, ...]) -> Directives | None:
    """The request's Cache-Control directives (``Pragma: no-cache`` counts as ``no-cache``
    when there is no Cache-Control); None when it has neither field."""
    cc = [headers[i + 1] for i in range(0, len(headers), 2) if headers[i] == b"cache-control"]
    if cc:
        return directives(cc)
    pragma = [headers[i + 1] for i in range(0, len(headers), 2) if headers[i] == b"pragma"]
    if any(b"no-cache" in p.lower() for p in pragma):
        return {b"no-cache": None}
    return None


def usable(lifetime: float, age: float, no_cache: bool, no_stale: bool, req: Directives | None) -> bool:
    """§4.2 and §5.2.1: may a stored response of this age be sent without validation?"""
    fresh = lifetime - age
    ok = fresh > 0
    if req is None:
        return ok and not no_cache
    if not ok and b"max-stale" in req and not no_stale:
        limit = req[b"max-stale"]
        if limit is None:
            ok = True
        else:
            stale_limit = delta_seconds(limit)
            ok = stale_limit is not None and -fresh <= stale_limit
    if no_cache or b"no-cache" in req:
        return False
    if b"max-age" in req:
        max_age = delta_seconds(req[b"max-age"])
        if max_age is None or age > max_age:
            return False
    if b"min-fresh" in req:
        min_fresh = delta_seconds(req[b"min-fresh"])
        if min_fresh is None or fresh < min_fresh:
            return False
    return ok


def freshen(stored: Fields, update: Fields) -> Fields:
    """§3.2: the stored header fields updated from a 304 (or a HEAD response)."""
    names = {n for n, _ in update if n not in NOT_UPDATED and n not in NOT_STORED}
    kept = [(n, line) for n, line in stored if n not in names]
    return kept + [(n, line) for n, line in update if n in names]


def same_origin_target(location: bytes, host: bytes, scheme: str) -> bytes | None:
    """The request target a ``Location``/``Content-Location`` names on this host, or None
    (§4.4: only same-origin URIs are invalidated)."""
    location = location.strip()
    if location.startswith(b"/") and not location.startswith(b"//"):
        return location.split(b"#", 1)[0]
    for prefix in (scheme.encode() + b"://", b"//"):
        if location.lower().startswith(prefix):
            rest = location[len(prefix):]
            authority, slash, path = rest.partition(b"/")
            if authority.lower() != host.lower():
                return None
            return (slash + path).split(b"#", 1)[0] or b"/"
    return None
