"""Rule patterns: IIS URL Rewrite's three syntaxes compiled once into matchers.

A matcher takes the input string and returns the captures (group 0 = the whole match,
then the groups) or None.  ``negate`` is applied by the caller: a negated match has no
captures.

ECMAScript patterns run on Python's ``re`` after a small translation:

* compiled with ``re.ASCII`` (``\\d``, ``\\w``, ``\\s``, ``\\b`` are ASCII as in
  ECMAScript) and ``re.IGNORECASE`` when ``ignoreCase`` (the default);
* searched, not anchored: ``^``/``$`` anchor as written (``$`` also matches before a
  trailing newline in Python; URLs and header values have none);
* ``(?<name>…)`` becomes ``(?P<name>…)`` and ``\\k<name>`` becomes ``(?P=name)``;
* not supported (an error naming the rule): ``[^]``, ``\\cX``, ``\\u{…}`` and Unicode
  property escapes ``\\p{…}``; look-behind must be fixed-width (Python's rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Optional

Captures = tuple[str, ...]
Matcher = Callable[[str], Optional[Captures]]

ECMASCRIPT = "ECMAScript"
WILDCARD = "Wildcard"
EXACT = "ExactMatch"


class PatternError(ValueError):
    """A pattern that cannot be compiled (names the pattern and the reason)."""


_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
_NAMED_BACKREF = re.compile(r"\\k<([A-Za-z_][A-Za-z0-9_]*)>")
_UNSUPPORTED = (("[^]", "[^] (matches any character in ECMAScript)"), ("\\c", "\\cX control escapes"),
                ("\\u{", "\\u{…} code point escapes"), ("\\p{", "\\p{…} Unicode properties"),
                ("\\P{", "\\P{…} Unicode properties"))


def translate_ecmascript(pattern: str) -> str:
    """The Python ``re`` spelling of an ECMAScript pattern (see the module doc)."""
    for token, what in _UNSUPPORTED:
        if token in pattern:
            raise PatternError(f"pattern {pattern!r}: {what} are not supported")
    out = _NAMED_GROUP.sub("(?P<", pattern)
    return _NAMED_BACKREF.sub(r"(?P=\1)", out)


def _regex(pattern: str, ignore_case: bool) -> Matcher:
    try:
        rx = re.compile(translate_ecmascript(pattern), re.ASCII | (re.IGNORECASE if ignore_case else 0))
    except re.error as exc:
        raise PatternError(f"pattern {pattern!r}: {exc}") from None
    search = rx.search

    def match(text: str) -> Captures | None:
        m = search(text)
        if m is None:
            return None
        return (m.group(0),) + tuple(g if g is not None else "" for g in m.groups())

    return match


def _wildcard(pattern: str, ignore_case: bool) -> Matcher:
    """``*`` matches any run of characters and captures it; ``?`` matches one character
    and captures nothing; the whole input must match."""
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append("(.*)")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    rx = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    full = rx.fullmatch

    def match(text: str) -> Captures | None:
        m = full(text)
        if m is None:
            return None
        return (m.group(0),) + m.groups()

    return match


def _exact(pattern: str, ignore_case: bool) -> Matcher:
    if ignore_case:
        want = pattern.casefold()
        return lambda text: (text,) if text.casefold() == want else None
    return lambda text: (text,) if text == pattern else None


def compile_pattern(pattern: str, syntax: str, ignore_case: bool) -> Matcher:
    """A matcher for ``pattern`` in ``syntax`` (ECMAScript, Wildcard or ExactMatch)."""
    if syntax == WILDCARD:
        return _wildcard(pattern, ignore_case)
    if syntax == EXACT:
        return _exact(pattern, ignore_case)
    return _regex(pattern, ignore_case)
