"""HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime
forms a recipient must accept."""

from __future__ import annotations

import calendar
import time
from functools import lru_cache

__all__ = ["format_http_date", "parse_http_date"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = frozenset(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"))
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: i + 1 for i, name in enumerate(_MONTHS)}
_SHORT_DAYS = frozenset(_DAYS)


def format_http_date(seconds: float) -> bytes:
    """``seconds`` since the epoch as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    t = time.gmtime(int(seconds))
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode("ascii")


def _number(text: str, digits: int = 0) -> int:
    if not (text.isascii() and text.isdigit()) or (digits and len(text) != digits):
        raise ValueError(text)
    return int(text)


def _clock(hms: str) -> tuple[int, int, int]:
    parts = hms.split(":")
    if len(parts) != 3:
        raise ValueError(hms)
    hours, minutes, seconds = (_number(p, 2) for p in parts)
    if hours > 23 or minutes > 59 or seconds > 60:
        raise ValueError(hms)
    return hours, minutes, min(seconds, 59)


@lru_cache(maxsize=1024)
def _parse(value: str) -> int | None:
    fields = value.split()
    try:
        if len(fields) == 6 and fields[5] == "GMT" and fields[0].endswith(","):
            # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
            if fields[0][:-1] not in _SHORT_DAYS:
                return None
            mday, month, year = _number(fields[1], 2), _MONTH_NUMBER[fields[2]], _number(fields[3], 4)
            clock = _clock(fields[4])
        elif len(fields) == 4 and fields[3] == "GMT" and fields[0].endswith(","):
            # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
            if fields[0][:-1] not in _LONG_DAYS:
                return None
            day, month_name, short_year = fields[1].split("-")
            mday, month, year = _number(day, 2), _MONTH_NUMBER[month_name], _number(short_year, 2)
            # §5.6.7: a two-digit year more than 50 years in the future is in the past century
            now_year = time.gmtime().tm_year
            year += now_year - now_year % 100
            if year > now_year + 50:
                year -= 100
            clock = _clock(fields[2])
        elif len(fields) == 5 and fields[0] in _SHORT_DAYS:
            # asctime: Sun Nov  6 08:49:37 1994
            if len(fields[2]) > 2:
                return None
            month, mday, year = _MONTH_NUMBER[fields[1]], _number(fields[2]), _number(fields[4], 4)
            clock = _clock(fields[3])
        else:
            return None
        if not 1 <= mday <= calendar.monthrange(year, month)[1]:
            return None
        return calendar.timegm((year, month, mday, *clock))
    except (ValueError, KeyError, OverflowError, calendar.IllegalMonthError):
        return None


def parse_http_date(value: str | bytes) -> int | None:
    """Seconds since the epoch, or None when ``value`` is not an HTTP-date (a header
    holding an invalid date is then ignored: RFC 9110 §13.1.3, §13.1.4).  Names are
    case-sensitive, as the grammar says; surrounding whitespace is allowed."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > 64:
        return None
    return _parse(value.strip())
