"""Parsing and validating attribute values: the IIS value types.

IIS stores ``bool``, ``int``/``uint``/``int64``, ``string``, ``timeSpan``, ``enum`` and
``flags`` attributes.  These functions turn the XML text into Python values (TimeSpans
become seconds as float, flags a canonical ``"A, B"`` string) or raise ``ValueError``
with a message that names the allowed values; the loader adds file and line.
"""

from __future__ import annotations

import re

_TIMESPAN = re.compile(r"^\s*(-)?(?:(\d+)\.)?(\d+):(\d+)(?::(\d+)(?:\.(\d{1,7}))?)?\s*$")

UINT_MAX = 4294967295
INT_MIN, INT_MAX = -2147483648, 2147483647
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_timespan(text: str) -> float:
    """``[-][d.]hh:mm[:ss[.fffffff]]`` -> seconds.  Hours may exceed 23 (``29:00:00``);
    minutes and seconds must be below 60, as in .NET's TimeSpan."""
    m = _TIMESPAN.match(text)
    if not m:
        raise ValueError(
            f"'{text}' is not a valid TimeSpan; expected hh:mm:ss or d.hh:mm:ss"
        )
    neg, days, hours, minutes, seconds, fraction = m.groups()
    if int(minutes) >= 60 or (seconds is not None and int(seconds) >= 60):
        raise ValueError(
            f"'{text}' is not a valid TimeSpan; minutes and seconds must be 0-59"
        )
    total = (
        int(days or 0) * 86400
        + int(hours) * 3600
        + int(minutes) * 60
        + int(seconds or 0)
        + (float("0." + fraction) if fraction else 0.0)
    )
    return -float(total) if neg else float(total)


def format_timespan(seconds: float) -> str:
    """Seconds -> IIS's TimeSpan text (``1.00:00:00``, ``00:20:00``)."""
    whole = int(seconds)
    sign = "-" if whole < 0 else ""
    whole = abs(whole)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{sign}{days}.{text}" if days else f"{sign}{text}"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError(f"'{text}' is not a valid boolean; expected true or false")


def parse_integer(text: str, lo: int, hi: int, type_name: str) -> int:
    stripped = text.strip()
    try:
        value = int(stripped, 16) if stripped.lower().startswith("0x") else int(stripped)
    except ValueError:
        raise ValueError(f"'{text}' is not a valid {type_name}") from None
    if not lo <= value <= hi:
        raise ValueError(f"'{text}' is out of range for {type_name} ({lo}-{hi})")
    return value


def parse_enum(text: str, choices: tuple[tuple[str, int], ...]) -> str:
    """A name (case-insensitive) or its number -> the canonical name."""
    stripped = text.strip()
    for name, number in choices:
        if name.lower() == stripped.lower():
            return name
    if stripped.lstrip("-").isdigit():
        for name, number in choices:
            if number == int(stripped):
                return name
    allowed = ", ".join(name for name, _ in choices)
    raise ValueError(f"'{text}' is not a valid value; allowed: {allowed}")


def parse_flags(text: str, choices: tuple[tuple[str, int], ...]) -> str:
    """Comma-separated names (or a number) -> canonical ``"A, B"`` in declaration order."""
    stripped = text.strip()
    if stripped.isdigit():
        bits = int(stripped)
    else:
        bits = 0
        by_name = {name.lower(): number for name, number in choices}
        for part in stripped.split(","):
            token = part.strip().lower()
            if not token:
                continue
            if token not in by_name:
                allowed = ", ".join(name for name, _ in choices)
                raise ValueError(f"'{part.strip()}' is not a valid flag; allowed: {allowed}")
            bits |= by_name[token]
    names = [name for name, number in choices if number and bits & number == number]
    covered = 0
    for name, number in choices:
        if number and bits & number == number:
            covered |= number
    if covered != bits:
        raise ValueError(f"'{text}' contains unknown flag bits")
    if not names:
        zero = [name for name, number in choices if number == 0]
        return zero[0] if zero else ""
    return ", ".join(names)


def flags_value(text: str, choices: tuple[tuple[str, int], ...]) -> int:
    """The integer value of a canonical flags string."""
    by_name = {name.lower(): number for name, number in choices}
    bits = 0
    for part in text.split(","):
        token = part.strip().lower()
        if token:
            bits |= by_name.get(token, 0)
    return bits


# String validators of the IIS schema (validationType).
_POOL_BAD = set('|<>&\\"/[]+=;:,?*@')


def validate_string(kind: str, value: str) -> None:
    if kind == "nonEmptyString":
        if not value:
            raise ValueError("the value must not be empty")
    elif kind == "requireTrimmedString":
        if value != value.strip():
            raise ValueError("the value must not start or end with white space")
    elif kind == "applicationPoolName":
        bad = sorted(set(value) & _POOL_BAD)
        if bad:
            raise ValueError(
                f"'{value}' is not a valid application pool name; it must not contain "
                + " ".join(bad)
            )
        if len(value) > 64:
            raise ValueError(f"'{value}' is longer than 64 characters")
    elif kind == "environmentVariableName":
        # a handler's environmentVariables also reach the WSGI environ, where HTTP_* and
        # CONTENT_* are the client's headers: such a name could be supplied by a client.
        # Environ keys are case-sensitive: http_proxy is not a header's key, HTTP_PROXY is.
        if not value or "=" in value or "\0" in value or "." in value:
            raise ValueError(f"'{value}' is not a valid environment variable name")
        if value.startswith("HTTP_") or value in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            raise ValueError(f"'{value}' is the name of a request header in the WSGI environ")
    elif kind == "siteName":
        if "/" in value or "?" in value:
            raise ValueError(f"'{value}' is not a valid site name; it must not contain / or ?")
    elif kind in ("applicationPath", "virtualDirectoryPath"):
        if not value.startswith("/"):
            raise ValueError(f"'{value}' must start with '/'")
        if value != "/" and value.endswith("/"):
            raise ValueError(f"'{value}' must not end with '/'")
        if any(seg in (".", "..") for seg in value.split("/")):
            raise ValueError(f"'{value}' must not contain '.' or '..' segments")
