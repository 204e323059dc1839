"""Range requests (RFC 9110 §14): ``Range: bytes=…`` and ``If-Range``."""

from __future__ import annotations

from .dates import parse_http_date

__all__ = ["MAX_RANGES", "coalesce", "if_range_holds", "parse_ranges"]

MAX_RANGES = 64
"""More byte-range-specs than this in one ``Range`` header and the header is ignored
(a defence against many-small-ranges requests, §14.2's last paragraph)."""


def _number(text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def parse_ranges(value: str, size: int, max_ranges: int = MAX_RANGES) -> list[tuple[int, int]] | None:
    """The satisfiable ranges (first, last inclusive) of a ``Range`` field value for a
    representation of ``size`` bytes.  None when the header is to be ignored (another
    unit, bad syntax, too many ranges: the whole representation is sent, 200); [] when
    nothing in it is satisfiable (416).  Several ranges that overlap or touch are
    coalesced (§14.3 allows it)."""
    unit, equals, spec = value.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    count = 0
    try:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            count += 1
            if count > max_ranges:
                return None
            first_text, dash, last_text = item.partition("-")
            if not dash:
                return None
            if not first_text.strip():                 # suffix: the last N bytes
                suffix = _number(last_text)
                if suffix and size:
                    ranges.append((max(0, size - suffix), size - 1))
                continue
            first = _number(first_text)
            last = _number(last_text) if last_text.strip() else size - 1
            if last_text.strip() and last < first:
                return None
            if first < size:
                ranges.append((first, min(last, size - 1)))
    except ValueError:
        return None
    if not count:
        return None
    return coalesce(ranges) if len(ranges) > 1 else ranges


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or adjacent ranges (then in ascending order); the client's own
    order when none merge."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return ranges if len(merged) == len(ranges) else merged


def if_range_holds(value: str, etag: str, last_modified: int | None) -> bool:
    """§13.1.5: does ``If-Range`` let the range through?  An entity tag must match
    strongly (a weak one never does); a date must equal the Last-Modified exactly."""
    value = value.strip()
    if value.startswith('"'):
        return bool(etag) and value == etag and not etag.startswith("W/")
    if value.startswith("W/"):
        return False
    date = parse_http_date(value)
    return date is not None and last_modified is not None and date == last_modified
