"""Conditional requests (RFC 9110 §13): entity-tag comparison and the evaluation of
If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since, in §13.2.2's order.

The representation is described by its entity tag (``"…"`` or ``W/"…"``, "" when it has
none) and its last-modification time in whole seconds (None when unknown).  Callers
look the header values up themselves (str, as received; None when absent) so that the
listener (header tuples of bytes) and the worker (a dict) share one evaluation.
"""

from __future__ import annotations

import re

from .dates import parse_http_date

__all__ = ["PROCEED", "NOT_MODIFIED", "PRECONDITION_FAILED", "etag_matches", "evaluate",
           "opaque_tag"]

PROCEED = 0
NOT_MODIFIED = 304
PRECONDITION_FAILED = 412

# one entity-tag of a list: optional weakness prefix, then the quoted opaque tag
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def opaque_tag(etag: str) -> str:
    """The quoted opaque-tag of an entity tag (``W/"x"`` -> ``"x"``)."""
    return etag[2:] if etag.startswith("W/") else etag


def etag_matches(header: str, etag: str, strong: bool) -> bool:
    """Does an If-Match / If-None-Match field value match ``etag``?  ``*`` matches any
    current representation (one with an entity tag or not: the caller only asks about
    a representation that exists).  ``strong``: §8.8.3.2's strong comparison (both
    tags strong and equal, If-Match), else the weak one (opaque tags equal,
    If-None-Match).  A malformed list matches nothing."""
    value = header.strip()
    if value == "*":
        return True
    if not etag:
        return False
    if strong and etag.startswith("W/"):
        return False
    want = opaque_tag(etag)
    pos = 0
    end = len(value)
    while pos < end:
        m = _ENTITY_TAG.match(value, pos)
        if m is None:
            return False  # not an entity-tag list
        if m.group(2) == want and not (strong and m.group(1)):
            return True
        pos = m.end()
        while pos < end and value[pos] in " \t,":
            pos += 1
    return False


def evaluate(method: str, etag: str, last_modified: int | None, if_match: str | None = None,
             if_unmodified_since: str | None = None, if_none_match: str | None = None,
             if_modified_since: str | None = None) -> int:
    """§13.2.2: PROCEED, NOT_MODIFIED (304, GET/HEAD only) or PRECONDITION_FAILED (412).

    If-Match wins over If-Unmodified-Since, If-None-Match over If-Modified-Since; a date
    that is not an HTTP-date makes its header ignored; If-Modified-Since is for GET and
    HEAD only.  A representation without a Last-Modified (``last_modified`` None)
    fails If-Unmodified-Since only through If-Match and is never "not modified since"."""
    if if_match is not None:
        if not etag_matches(if_match, etag, strong=True):
            return PRECONDITION_FAILED
    elif if_unmodified_since is not None and last_modified is not None:
        date = parse_http_date(if_unmodified_since)
        if date is not None and last_modified > date:
            return PRECONDITION_FAILED
    get_or_head = method == "GET" or method == "HEAD"
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, strong=False):
            return NOT_MODIFIED if get_or_head else PRECONDITION_FAILED
        return PROCEED
    if if_modified_since is not None and get_or_head and last_modified is not None:
        date = parse_http_date(if_modified_since)
        if date is not None and last_modified <= date:
            return NOT_MODIFIED
    return PROCEED
