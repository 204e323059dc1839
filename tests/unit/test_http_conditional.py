"""One table for the HTTP semantics the listener's response cache and the worker's
static file handler share (``poolhouse.http``): HTTP-dates, preconditions, ranges and
If-Range, content-coding negotiation.  Each row is what both must answer."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from poolhouse.http import conditional, dates, encodings, ranges

T = calendar.timegm((1994, 11, 6, 8, 49, 37))  # the RFC's example instant
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
TAG = '"5a:1f"'
WEAK = 'W/"5a:1f"'

DATES: list[tuple[str, int | None]] = [
    (IMF, T),                                       # IMF-fixdate
    ("  " + IMF + " ", T),                          # surrounding whitespace
    ("Sunday, 06-Nov-94 08:49:37 GMT", T),          # RFC 850
    ("Sun Nov  6 08:49:37 1994", T),                # asctime
    ("Sun Nov 6 08:49:37 1994", T),                 # asctime, single space
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),        # not GMT
    ("Sun, 06 Nov 1994 08:49:37 +0000", None),
    ("Sun, 6 Nov 1994 08:49:37 GMT", None),         # IMF-fixdate day is two digits
    ("Sun, 31 Feb 1994 08:49:37 GMT", None),        # no such day
    ("Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("Sun, 06 Nov 1994 08:49 GMT", None),
    ("Sun, 06 nov 1994 08:49:37 GMT", None),        # month names are case-sensitive
    ("Xyz, 06 Nov 1994 08:49:37 GMT", None),
    ("Sunday, 06-Nov-1994 08:49:37 GMT", None),     # RFC 850 years have two digits
    ("1994-11-06T08:49:37Z", None),
    ("", None),
    ("garbage", None),
    ("Sun, 06 Nov 1994 08:49:37 GMT" + " " * 80, None),  # absurdly long
]


@pytest.mark.parametrize(("value", "expected"), DATES)
def test_http_date_parsing(value: str, expected: int | None) -> None:
    assert dates.parse_http_date(value) == expected
    assert dates.parse_http_date(value.encode("latin-1")) == expected


def test_http_date_formatting_round_trips() -> None:
    assert dates.format_http_date(T) == IMF.encode()
    assert dates.parse_http_date(dates.format_http_date(T + 0.9)) == T
    assert dates.parse_http_date(b"\xff\xfe") is None


def test_rfc850_two_digit_years_are_not_more_than_50_years_ahead() -> None:
    # (RFC 9110 §5.6.7; true of every year from 2000 to 2048)
    assert dates.parse_http_date("Saturday, 01-Jan-00 00:00:00 GMT") == calendar.timegm((2000, 1, 1, 0, 0, 0))
    assert dates.parse_http_date("Friday, 01-Jan-99 00:00:00 GMT") == calendar.timegm((1999, 1, 1, 0, 0, 0))


# (method, etag, last_modified, If-Match, If-Unmodified-Since, If-None-Match,
#  If-Modified-Since) -> verdict
P, N, F = conditional.PROCEED, conditional.NOT_MODIFIED, conditional.PRECONDITION_FAILED
PRECONDITIONS: list[tuple[str, tuple[Any, ...], int]] = [
    ("no conditionals", ("GET", TAG, T, None, None, None, None), P),
    # If-None-Match: weak comparison, lists, *
    ("INM same tag", ("GET", TAG, T, None, None, TAG, None), N),
    ("INM same tag, HEAD", ("HEAD", TAG, T, None, None, TAG, None), N),
    ("INM weak form of the tag", ("GET", TAG, T, None, None, WEAK, None), N),
    ("INM strong form of a weak tag", ("GET", WEAK, T, None, None, TAG, None), N),
    ("INM other tag", ("GET", TAG, T, None, None, '"other"', None), P),
    ("INM list containing the tag", ("GET", TAG, T, None, None, f'"a", W/"b",{TAG}', None), N),
    ("INM list without it", ("GET", TAG, T, None, None, '"a", "b"', None), P),
    ("INM *", ("GET", TAG, T, None, None, "*", None), N),
    ("INM * without an ETag", ("GET", "", T, None, None, "*", None), N),
    ("INM tag without an ETag", ("GET", "", T, None, None, TAG, None), P),
    ("INM unquoted (malformed)", ("GET", TAG, T, None, None, "5a:1f", None), P),
    ("INM on PUT fails", ("PUT", TAG, T, None, None, TAG, None), F),
    ("INM wins over IMS", ("GET", TAG, T, None, None, '"other"', LATER), P),
    ("INM match with stale IMS", ("GET", TAG, T, None, None, TAG, EARLIER), N),
    # If-Modified-Since
    ("IMS equal", ("GET", TAG, T, None, None, None, IMF), N),
    ("IMS later", ("GET", TAG, T, None, None, None, LATER), N),
    ("IMS earlier", ("GET", TAG, T, None, None, None, EARLIER), P),
    ("IMS rfc850", ("GET", TAG, T, None, None, None, "Sunday, 06-Nov-94 08:49:37 GMT"), N),
    ("IMS asctime", ("GET", TAG, T, None, None, None, "Sun Nov  6 08:49:37 1994"), N),
    ("IMS invalid is ignored", ("GET", TAG, T, None, None, None, "yesterday"), P),
    ("IMS on POST is ignored", ("POST", TAG, T, None, None, None, LATER), P),
    ("IMS without Last-Modified", ("GET", TAG, None, None, None, None, LATER), P),
    # If-Match: strong comparison
    ("IM same tag", ("GET", TAG, T, TAG, None, None, None), P),
    ("IM weak tag never matches", ("GET", TAG, T, WEAK, None, None, None), F),
    ("IM against a weak ETag", ("GET", WEAK, T, WEAK, None, None, None), F),
    ("IM other tag", ("GET", TAG, T, '"x"', None, None, None), F),
    ("IM list", ("GET", TAG, T, f'"x", {TAG}', None, None, None), P),
    ("IM *", ("GET", TAG, T, "*", None, None, None), P),
    ("IM wins over IUS", ("GET", TAG, T, TAG, EARLIER, None, None), P),
    ("IM passes, INM matches", ("GET", TAG, T, TAG, None, TAG, None), N),
    ("IM fails before INM", ("GET", TAG, T, '"x"', None, TAG, None), F),
    # If-Unmodified-Since
    ("IUS equal", ("GET", TAG, T, None, IMF, None, None), P),
    ("IUS later", ("GET", TAG, T, None, LATER, None, None), P),
    ("IUS earlier", ("GET", TAG, T, None, EARLIER, None, None), F),
    ("IUS invalid is ignored", ("GET", TAG, T, None, "never", None, None), P),
    ("IUS without Last-Modified", ("GET", TAG, None, None, EARLIER, None, None), P),
]


@pytest.mark.parametrize(("args", "expected"), [(a, e) for _, a, e in PRECONDITIONS],
                         ids=[name for name, _, _ in PRECONDITIONS])
def test_preconditions(args: tuple[Any, ...], expected: int) -> None:
    assert conditional.evaluate(*args) == expected


SIZE = 100
RANGES: list[tuple[str, list[tuple[int, int]] | None]] = [
    ("bytes=0-9", [(0, 9)]),                         # single
    ("bytes=90-", [(90, 99)]),                       # open-ended
    ("bytes=95-200", [(95, 99)]),                    # last clipped to the size
    ("bytes=-10", [(90, 99)]),                       # suffix
    ("bytes=-500", [(0, 99)]),                       # suffix longer than the file
    ("bytes=0-9,20-29", [(0, 9), (20, 29)]),         # multiple, client's order kept
    ("bytes=20-29,0-9", [(20, 29), (0, 9)]),
    ("bytes=0-9,5-14", [(0, 14)]),                   # overlapping: coalesced
    ("bytes=10-19,0-9", [(0, 19)]),                  # adjacent: coalesced, ascending
    ("bytes= 0-9 , , 20-29", [(0, 9), (20, 29)]),    # empty elements and spaces
    ("Bytes=0-0", [(0, 0)]),                         # the unit is case-insensitive
    ("bytes=100-", []),                              # unsatisfiable: 416
    ("bytes=200-300", []),
    ("bytes=-0", []),
    ("bytes=100-,200-", []),
    ("bytes=100-, 0-0", [(0, 0)]),                   # one satisfiable is enough
    ("bytes=9-0", None),                             # invalid: ignored, 200
    ("bytes=a-b", None),
    ("bytes=0-9;x", None),
    ("bytes=5", None),
    ("bytes=", None),
    ("bytes=-", None),
    ("items=0-9", None),                             # another unit
    ("0-9", None),
    ("bytes=" + ",".join(["0-0"] * (ranges.MAX_RANGES + 1)), None),  # too many
]


@pytest.mark.parametrize(("value", "expected"), RANGES)
def test_ranges(value: str, expected: list[tuple[int, int]] | None) -> None:
    assert ranges.parse_ranges(value, SIZE) == expected


def test_no_range_of_an_empty_representation_is_satisfiable() -> None:
    assert ranges.parse_ranges("bytes=-5", 0) == []
    assert ranges.parse_ranges("bytes=0-", 0) == []


IF_RANGE: list[tuple[str, str, bool]] = [
    (TAG, TAG, True),                 # strong match
    (WEAK, WEAK, False),              # a weak tag never lets a range through
    (TAG, WEAK, False),
    ('"other"', TAG, False),
    (IMF, TAG, True),                 # the exact Last-Modified date
    (LATER, TAG, False),              # any other date does not
    (EARLIER, TAG, False),
    ("Sunday, 06-Nov-94 08:49:37 GMT", TAG, True),
    ("not a date", TAG, False),
]


@pytest.mark.parametrize(("value", "etag", "expected"), IF_RANGE)
def test_if_range(value: str, etag: str, expected: bool) -> None:
    assert ranges.if_range_holds(value, etag, T) is expected


def test_if_range_date_without_last_modified() -> None:
    assert ranges.if_range_holds(IMF, TAG, None) is False


CODINGS = ["gzip", "deflate", "br"]
ACCEPT: list[tuple[str, str | None]] = [
    ("", None),
    ("gzip", "gzip"),
    ("gzip, deflate, br", "gzip"),                  # equal q: the server's order
    ("br, deflate", "deflate"),
    ("br;q=1, gzip;q=0.5", "br"),
    ("GZIP", "gzip"),
    ("gzip;q=0", None),                             # explicitly refused
    ("identity", None),
    ("*", "gzip"),
    ("*;q=0.5, gzip;q=0", "deflate"),
    ("gzip;q=abc, deflate;q=0.1", "deflate"),       # a bad qvalue counts as 0
    ("gzip;q=2", None),                             # out of range
    ("gzip ; Q=0.3, deflate;q=0.2", "gzip"),
    (",,,", None),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPT)
def test_accept_encoding(accept: str, expected: str | None) -> None:
    assert encodings.choose_coding(accept, CODINGS) == expected
