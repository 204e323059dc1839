"""Outbound rules on response headers: ``<match serverVariable="RESPONSE_X_Powered_By"
pattern=".+" />`` with ``<action type="Rewrite" value="…" />``, preconditions and
conditions.  Rules that rewrite the response body (``match`` without
``serverVariable``: ``filterByTags``) are not supported: they are skipped with one
warning when the configuration is compiled."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .patterns import ECMASCRIPT, Matcher, PatternError, compile_pattern
from .rules import Condition, FileSystem, check_conditions, compile_conditions
from .template import RewriteMap, Template, Variables, parse

log = logging.getLogger("poolhouse.worker")


@dataclass(slots=True)
class PreCondition:
    conditions: list[Condition]
    match_any: bool


@dataclass(slots=True)
class OutboundRule:
    name: str
    header: str  # the response header the rule rewrites ("X-Powered-By")
    matcher: Matcher
    negate: bool
    precondition: PreCondition | None
    conditions: list[Condition]
    match_any: bool
    track_all: bool
    rewrite: bool
    value: Template
    replace: bool
    stop: bool


def header_of(variable: str) -> str:
    """``RESPONSE_X_Powered_By`` -> ``X-Powered-By``."""
    return variable[len("RESPONSE_"):].replace("_", "-")


def compile_outbound(section: Mapping[str, Any] | None, maps: Mapping[str, RewriteMap],
                     where: str = "") -> list[OutboundRule]:
    section = section or {}
    pre: dict[str, PreCondition] = {}
    for p in section.get("preConditions", {}).get("items", []):
        syntax = str(p.get("patternSyntax", ECMASCRIPT))
        pre[p["name"]] = PreCondition(compile_conditions(p, syntax, maps),
                                      str(p.get("logicalGrouping", "MatchAll")) == "MatchAny")
    out = []
    for r in section.get("items", []):
        if not r.get("enabled", True):
            continue
        name = str(r["name"])
        match = r.get("match", {})
        variable = str(match.get("serverVariable", ""))
        if not variable.upper().startswith("RESPONSE_"):
            log.warning("%soutbound rule %r rewrites the response body (filterByTags): not supported, skipped",
                        where, name)
            continue
        try:
            syntax = str(r.get("patternSyntax", ECMASCRIPT))
            conds = r.get("conditions", {})
            action = r.get("action", {})
            pname = str(r.get("preCondition", ""))
            if pname and pname not in pre:
                raise PatternError(f"no preCondition named {pname!r}")
            out.append(OutboundRule(
                name=name, header=header_of(variable),
                matcher=compile_pattern(str(match.get("pattern", "")), syntax, bool(match.get("ignoreCase", True))),
                negate=bool(match.get("negate", False)), precondition=pre.get(pname) if pname else None,
                conditions=compile_conditions(conds, syntax, maps),
                match_any=str(conds.get("logicalGrouping", "MatchAll")) == "MatchAny",
                track_all=bool(conds.get("trackAllCaptures", True)),
                rewrite=str(action.get("type", "None")) == "Rewrite",
                value=parse(str(action.get("value", "")), maps), replace=bool(action.get("replace", True)),
                stop=bool(r.get("stopProcessing", False)),
            ))
        except PatternError as exc:
            raise PatternError(f"outbound rule {name!r}: {exc}") from None
    return out


def apply_outbound(rules: Sequence[OutboundRule], headers: list[tuple[bytes, bytes]],
                   variables: Variables, fs: FileSystem) -> list[tuple[bytes, bytes]]:
    """The response headers after the rules.  ``variables`` answers request server
    variables; ``RESPONSE_*`` ones are read from ``headers`` as they are at each rule."""

    def lookup(hs: list[tuple[bytes, bytes]], name: str) -> bytes | None:
        low = name.lower().encode("latin-1")
        for k, v in hs:
            if k.lower() == low:
                return v
        return None

    def make_vars(hs: list[tuple[bytes, bytes]]) -> Variables:
        def get(name: str) -> str:
            if name.startswith("RESPONSE_"):
                v = lookup(hs, header_of(name))
                return v.decode("latin-1") if v is not None else ""
            return variables(name)
        return get

    for rule in rules:
        current = make_vars(headers)
        if rule.precondition is not None:
            if check_conditions(rule.precondition.conditions, rule.precondition.match_any, False, (), current, fs) is None:
                continue
        raw = lookup(headers, rule.header)
        text = raw.decode("latin-1") if raw is not None else ""
        caps = rule.matcher(text)
        if (caps is not None) == rule.negate:
            continue
        caps = caps if not rule.negate and caps is not None else ()
        cond_caps = check_conditions(rule.conditions, rule.match_any, rule.track_all, caps, current, fs)
        if cond_caps is None:
            continue
        if rule.rewrite:
            value = rule.value.expand(caps, cond_caps, current)
            if raw is None or rule.replace:
                low = rule.header.lower().encode("latin-1")
                headers = [h for h in headers if h[0].lower() != low]
                if value:
                    headers.append((rule.header.encode("latin-1"), value.encode("latin-1", "replace")))
        if rule.stop:
            break
    return headers
