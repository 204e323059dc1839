"""RFC 9111 rules of the listener's cache for relayed upstream responses, fed header
blocks (listener/shared_cache.py)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from poolhouse.listener import shared_cache as sc
from poolhouse.listener.response_cache import Entry, ResponseCache

NOW = 1_800_000_000.0


def block(*lines: str) -> sc.Fields:
    return sc.fields("".join(line + "\r\n" for line in lines).encode())


def cc(*lines: str) -> sc.Directives:
    return sc.directives([line.encode() for line in lines])


def date(offset: float = 0) -> str:
    return formatdate(NOW + offset, usegmt=True)


def test_directives_parse_quotes_case_and_broken_syntax() -> None:
    d = cc('Max-Age=60, no-cache="Set-Cookie, X-A", foo="max-age=1, s-maxage=2"', "max-age=5")
    assert d[b"max-age"] == b"60"  # the first occurrence wins
    assert d[b"no-cache"] == b"Set-Cookie, X-A"
    assert b"s-maxage" not in d  # inside a quoted string
    assert b"max-age" not in cc("max-age =60") and b"max-age" not in cc("max-age= 60")
    assert sc.delta_seconds(b"003600") == 3600
    assert sc.delta_seconds(b"'60'") is None and sc.delta_seconds(b"60a") is None
    assert sc.delta_seconds(cc('max-age="60"')[b"max-age"]) == 60
    assert sc.delta_seconds(b"99999999999") == sc.MAX_DELTA


def fresh_of(*lines: str, status: int = 200) -> sc.Freshness:
    f = block(*lines)
    return sc.freshness(f, sc.directives(sc.values(f, b"cache-control")), status, NOW, NOW)


@pytest.mark.parametrize("lines, lifetime", [
    ((f"Date: {date()}", "Cache-Control: max-age=60, s-maxage=10"), 10),   # s-maxage wins
    ((f"Date: {date()}", "Cache-Control: max-age=60", f"Expires: {date(5)}"), 60),
    ((f"Date: {date()}", f"Expires: {date(30)}"), 30),
    ((f"Date: {date()}", "Expires: 0"), 0),  # invalid Expires: already stale
    ((f"Date: {date()}", f"Last-Modified: {date(-1000)}"), 100),  # heuristic: 10 %
    ((f"Date: {date()}", "Cache-Control: max-age=abc"), 0),
])
def test_freshness_lifetime(lines: tuple[str, ...], lifetime: float) -> None:
    assert fresh_of(*lines).lifetime == pytest.approx(lifetime)


def test_heuristic_only_for_heuristically_cacheable_status() -> None:
    assert fresh_of(f"Date: {date()}", f"Last-Modified: {date(-1000)}", status=302).lifetime == 0


def test_age_calculation() -> None:
    f = block(f"Date: {date(-10)}", "Age: 30", "Cache-Control: max-age=60")
    got = sc.freshness(f, cc("max-age=60"), 200, NOW - 2, NOW)
    assert got.initial_age == pytest.approx(32)  # max(apparent 10, Age 30 + delay 2)
    assert fresh_of(f"Date: {date()}", "Age: 0, 0", "Cache-Control: max-age=60").lifetime == 0
    assert fresh_of(f"Date: {date()}", "Age: -5", "Cache-Control: max-age=60").lifetime == 0


def test_storable() -> None:
    def ok(*lines: str, status: int = 200, method: str = "GET", req: tuple[bytes, ...] = ()) -> bool:
        f = block(*lines)
        return sc.storable(method, status, sc.directives(sc.values(f, b"cache-control")), f, req, None)

    assert ok("Cache-Control: max-age=60")
    assert ok("ETag: \"a\"")  # heuristically cacheable status: stored, revalidated on use
    assert not ok("ETag: \"a\"", status=302) and ok("Cache-Control: max-age=5", status=302)
    assert not ok("Cache-Control: max-age=60", method="POST")
    assert not ok("Cache-Control: max-age=60", status=206)
    assert not ok("Cache-Control: No-Store, max-age=60")
    assert not ok("Cache-Control: private, max-age=60") and ok('Cache-Control: private="X-A", max-age=60')
    assert not ok("Cache-Control: max-age=60", "Vary: Foo, *")
    auth = (b"authorization", b"Basic x")
    assert not ok("Cache-Control: max-age=60", req=auth)
    assert ok("Cache-Control: max-age=60, public", req=auth) and ok("Cache-Control: s-maxage=60", req=auth)
    assert ok("Cache-Control: max-age=60, must-revalidate", req=auth)
    assert not ok("Cache-Control: max-age=60", "Set-Cookie: a=b") and ok("Cache-Control: public, max-age=60", "Set-Cookie: a=b")
    assert not ok("Cache-Control: max-age=60, must-understand", status=599)
    assert ok("Cache-Control: max-age=60, no-store, must-understand")


def test_usable_with_request_directives() -> None:
    assert sc.usable(60, 10, False, False, None)
    assert not sc.usable(60, 70, False, False, None)
    assert not sc.usable(60, 10, True, False, None)  # response no-cache
    assert not sc.usable(60, 10, False, False, {b"no-cache": None})
    assert not sc.usable(60, 10, False, False, {b"max-age": b"5"})
    assert not sc.usable(60, 10, False, False, {b"min-fresh": b"55"})
    assert sc.usable(60, 70, False, False, {b"max-stale": None})
    assert sc.usable(60, 70, False, False, {b"max-stale": b"20"})
    assert not sc.usable(60, 90, False, False, {b"max-stale": b"20"})
    assert not sc.usable(60, 70, False, True, {b"max-stale": None})  # must-revalidate
    assert sc.request_directives((b"pragma", b"no-cache")) == {b"no-cache": None}
    assert sc.request_directives((b"pragma", b"no-cache", b"cache-control", b"max-stale")) == {b"max-stale": None}


def test_freshen_keeps_what_a_304_may_not_change() -> None:
    stored = block("ETag: \"a\"", "Content-Length: 5", "X-A: 1", "Cache-Control: max-age=1", "Content-Type: text/plain")
    update = block("ETag: \"b\"", "X-A: 2", "Cache-Control: max-age=60", "Content-Length: 0")
    out = dict((n, line) for n, line in sc.freshen(stored, update))
    assert out[b"etag"] == b'ETag: "a"\r\n' and out[b"content-length"] == b"Content-Length: 5\r\n"
    assert out[b"x-a"] == b"X-A: 2\r\n" and out[b"cache-control"] == b"Cache-Control: max-age=60\r\n"
    assert out[b"content-type"] == b"Content-Type: text/plain\r\n"


def test_vary_and_invalidation_targets() -> None:
    f = block("Vary: accept-language", "Vary: Accept-Encoding, accept-language")
    assert sc.vary_names(f) == (b"accept-encoding", b"accept-language")
    headers = (b"accept-language", b"en", b"accept-language", b"fr")
    assert sc.vary_key(headers, (b"accept-language", b"x")) == (b"en,fr", b"\0")
    assert sc.same_origin_target(b"/a?b#c", b"h:1", "http") == b"/a?b"
    assert sc.same_origin_target(b"http://H:1/x", b"h:1", "http") == b"/x"
    assert sc.same_origin_target(b"http://other/x", b"h:1", "http") is None
    # a stored response without Last-Modified: its Date stands in (RFC 9110 §13.1.3)
    entry = Entry((1, b"/a"), (), "1/", b"Date: %s\r\n" % date().encode(), b"x", 0.0, True, "")
    assert ResponseCache().stored_not_modified(entry, (b"if-modified-since", date(5).encode()))
    entry = Entry((1, b"/a"), (), "1/", b"Last-Modified: %s\r\n" % date(10).encode(), b"x", 0.0, True, "")
    assert not ResponseCache().stored_not_modified(entry, (b"if-modified-since", date(5).encode()))
