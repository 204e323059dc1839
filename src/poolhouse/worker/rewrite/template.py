"""Substitution strings (``{R:1}``, ``{C:2}``, ``{HTTP_HOST}``, ``{ToLower:…}``,
``{MapName:{R:1}}``) parsed once into parts and expanded per request."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Union

from .patterns import PatternError

Variables = Callable[[str], str]


class RewriteMap:
    """``<rewriteMap name defaultValue ignoreCase>`` of ``<add key value>``."""

    __slots__ = ("name", "default", "ignore_case", "entries")

    def __init__(self, name: str, entries: Mapping[str, str], default: str = "", ignore_case: bool = True) -> None:
        self.name = name
        self.default = default
        self.ignore_case = ignore_case
        self.entries = {k.lower(): v for k, v in entries.items()} if ignore_case else dict(entries)

    def lookup(self, key: str) -> str:
        return self.entries.get(key.lower() if self.ignore_case else key, self.default)


def _url_encode(text: str) -> str:
    return urllib.parse.quote(text, safe="")


FUNCTIONS: dict[str, Callable[[str], str]] = {
    "tolower": str.lower,
    "urlencode": _url_encode,
    "urldecode": urllib.parse.unquote,
}
"""The string functions of URL Rewrite (names case-insensitive)."""


class _Ref:
    __slots__ = ("kind", "index")

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind  # "R" | "C"
        self.index = index


class _Var:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Call:
    __slots__ = ("fn", "inner")

    def __init__(self, fn: Callable[[str], str], inner: "Template") -> None:
        self.fn = fn
        self.inner = inner


Part = Union[str, _Ref, _Var, _Call]
_REF = re.compile(r"([RC]):(\d)$", re.IGNORECASE)


class Template:
    """A parsed substitution string."""

    __slots__ = ("parts", "text", "constant")

    def __init__(self, parts: list[Part], text: str) -> None:
        self.parts = parts
        self.text = text
        self.constant = all(isinstance(p, str) for p in parts)

    def expand(self, rule: Sequence[str], cond: Sequence[str], variables: Variables) -> str:
        if self.constant:
            return self.text
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, _Ref):
                refs = rule if p.kind == "R" else cond
                out.append(refs[p.index] if p.index < len(refs) else "")
            elif isinstance(p, _Var):
                out.append(variables(p.name))
            else:
                out.append(p.fn(p.inner.expand(rule, cond, variables)))
        return "".join(out)

    @property
    def variables(self) -> set[str]:
        """The server variables it reads (for callers that precompute)."""
        names: set[str] = set()
        for p in self.parts:
            if isinstance(p, _Var):
                names.add(p.name)
            elif isinstance(p, _Call):
                names |= p.inner.variables
        return names


def parse(text: str, maps: Mapping[str, RewriteMap] | None = None) -> Template:
    """Parse ``text``; ``{Name:…}`` is a function if Name is one, else a rewrite map
    (unknown names are an error, as IIS rejects them)."""
    parts, end = _parse(text, 0, maps or {}, nested=False)
    return Template(parts, text)


def _parse(text: str, i: int, maps: Mapping[str, RewriteMap], nested: bool) -> tuple[list[Part], int]:
    parts: list[Part] = []
    buf: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "}" and nested:
            break
        if ch != "{":
            buf.append(ch)
            i += 1
            continue
        close = _find_close(text, i)
        if close < 0:  # a lone brace is literal
            buf.append(ch)
            i += 1
            continue
        body = text[i + 1:close]
        if buf:
            parts.append("".join(buf))
            buf = []
        parts.append(_item(body, maps))
        i = close + 1
    if buf:
        parts.append("".join(buf))
    return parts, i


def _find_close(text: str, start: int) -> int:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _item(body: str, maps: Mapping[str, RewriteMap]) -> Part:
    m = _REF.match(body)
    if m:
        return _Ref(m.group(1).upper(), int(m.group(2)))
    if ":" in body:
        name, _, inner_text = body.partition(":")
        inner, _ = _parse(inner_text, 0, maps, nested=False)
        inner_t = Template(inner, inner_text)
        fn = FUNCTIONS.get(name.strip().lower())
        if fn is not None:
            return _Call(fn, inner_t)
        found = maps.get(name.strip()) or next((mp for k, mp in maps.items() if k.lower() == name.strip().lower()), None)
        if found is None:
            raise PatternError(f"{{{body}}}: no rewrite map or function named {name!r}")
        return _Call(found.lookup, inner_t)
    return _Var(body.strip().upper())
