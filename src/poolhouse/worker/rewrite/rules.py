"""Inbound rules: compiled once from the merged ``rewrite/rules`` (and ``globalRules``)
sections, evaluated per request by :func:`evaluate`, which does no I/O itself — server
variables and the file-system checks of ``IsFile``/``IsDirectory`` come from the caller.

IIS's algorithm: rules in order (global rules first, then the distributed ones, parent
configuration levels before child ones); each rule matches its pattern against the URL
path relative to the folder that defines the rule, without the leading slash and the
query string; if the pattern (and then the conditions) match, the rule's server
variables are set and its action runs.  A Rewrite changes the URL that later rules see;
Redirect, CustomResponse and AbortRequest end the evaluation; ``stopProcessing`` ends it
after the rule's action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .patterns import ECMASCRIPT, Captures, Matcher, PatternError, compile_pattern
from .template import RewriteMap, Template, Variables, parse

REDIRECT_STATUS = {"Permanent": 301, "Found": 302, "SeeOther": 303, "Temporary": 307}

NONE, REWRITE, PROXY, REDIRECT, CUSTOM, ABORT = "None", "Rewrite", "Proxy", "Redirect", "CustomResponse", "AbortRequest"


@dataclass(slots=True)
class Condition:
    input: Template
    match_type: str  # Pattern | IsFile | IsDirectory
    matcher: Matcher | None
    negate: bool


@dataclass(slots=True)
class Rule:
    name: str
    scope: str  # URL path of the folder that defines the rule ("" = site root)
    matcher: Matcher
    negate: bool
    conditions: list[Condition]
    match_any: bool
    track_all: bool
    server_variables: list[tuple[str, Template, bool]]
    action: str
    url: Template | None
    append_query: bool
    status: int = 0
    substatus: int = 0
    reason: str = ""
    description: str = ""
    stop: bool = False


@dataclass(slots=True)
class Outcome:
    """What the rules decided.  ``action`` is NONE when no rule changed anything, or a
    terminal action; for REWRITE/PROXY, ``path``/``query`` (a local URL) or ``url`` (an
    absolute http(s) URL: the reverse proxy)."""

    action: str = NONE
    path: str = ""
    query: str = ""
    url: str = ""
    status: int = 0
    substatus: int = 0
    reason: str = ""
    description: str = ""
    rules: list[str] = field(default_factory=list)  # the rules that matched, in order
    server_variables: list[tuple[str, str, bool]] = field(default_factory=list)
    rewritten: bool = False


class FileSystem:
    """``IsFile``/``IsDirectory`` checks; the worker passes ``os.path``'s."""

    def __init__(self, is_file: Callable[[str], bool], is_dir: Callable[[str], bool]) -> None:
        self.is_file = is_file
        self.is_dir = is_dir


def compile_maps(section: Mapping[str, Any] | None) -> dict[str, RewriteMap]:
    maps: dict[str, RewriteMap] = {}
    for m in (section or {}).get("items", []):
        entries = {e["key"]: e["value"] for e in m.get("items", [])}
        maps[m["name"]] = RewriteMap(m["name"], entries, m.get("defaultValue", ""), bool(m.get("ignoreCase", True)))
    return maps


def compile_conditions(section: Mapping[str, Any], syntax: str, maps: Mapping[str, RewriteMap]) -> list[Condition]:
    out = []
    for c in section.get("items", []):
        match_type = str(c.get("matchType", "Pattern"))
        matcher = (compile_pattern(str(c.get("pattern", "")), syntax, bool(c.get("ignoreCase", True)))
                   if match_type == "Pattern" else None)
        out.append(Condition(parse(str(c.get("input", "")), maps), match_type, matcher, bool(c.get("negate", False))))
    return out


def compile_rule(item: Mapping[str, Any], maps: Mapping[str, RewriteMap], scope: str = "") -> Rule:
    """One ``<rule>`` as the schema merged it (every default filled in).  Raises
    PatternError naming the rule."""
    name = str(item["name"])
    try:
        syntax = str(item.get("patternSyntax", ECMASCRIPT))
        match = item.get("match", {})
        conds = item.get("conditions", {})
        action = item.get("action", {})
        kind = str(action.get("type", NONE))
        url_text = str(action.get("url", ""))
        server_vars = [(str(s["name"]).upper(), parse(str(s.get("value", "")), maps), bool(s.get("replace", True)))
                       for s in item.get("serverVariables", {}).get("items", [])]
        status = 0
        if kind == REDIRECT:
            status = REDIRECT_STATUS.get(str(action.get("redirectType", "Permanent")), 301)
        elif kind == CUSTOM:
            status = int(action.get("statusCode", 0) or 0)
        return Rule(
            name=name, scope=scope.strip("/"),
            matcher=compile_pattern(str(match.get("url", "")), syntax, bool(match.get("ignoreCase", True))),
            negate=bool(match.get("negate", False)),
            conditions=compile_conditions(conds, syntax, maps),
            match_any=str(conds.get("logicalGrouping", "MatchAll")) == "MatchAny",
            track_all=bool(conds.get("trackAllCaptures", False)),
            server_variables=server_vars, action=kind,
            url=parse(url_text, maps) if kind in (REWRITE, REDIRECT) else None,
            append_query=bool(action.get("appendQueryString", True)),
            status=status, substatus=int(action.get("subStatusCode", 0) or 0),
            reason=str(action.get("statusReason", "")), description=str(action.get("statusDescription", "")),
            stop=bool(item.get("stopProcessing", False)),
        )
    except PatternError as exc:
        raise PatternError(f"rewrite rule {name!r}: {exc}") from None


def compile_rules(items: Iterable[Mapping[str, Any]], maps: Mapping[str, RewriteMap],
                  scopes: Mapping[str, str] | None = None) -> list[Rule]:
    """The enabled rules, in order; ``scopes`` maps a rule name to the URL folder of the
    configuration level that defines it (default: the site root)."""
    scopes = scopes or {}
    return [compile_rule(i, maps, scopes.get(str(i["name"]), "")) for i in items if i.get("enabled", True)]


def check_conditions(rule_conditions: Sequence[Condition], match_any: bool, track_all: bool,
                     rule_caps: Captures, variables: Variables, fs: FileSystem) -> Captures | None:
    """The condition back-references ({C:n}) if the conditions hold, else None."""
    cond_caps: Captures = ()
    tracked: list[str] = []
    if not rule_conditions:
        return ()
    for cond in rule_conditions:
        text = cond.input.expand(rule_caps, cond_caps, variables)
        caps: Captures | None
        if cond.matcher is not None:
            caps = cond.matcher(text)
            ok = (caps is not None) != cond.negate
            if cond.negate:
                caps = ()
        else:
            exists = fs.is_file(text) if cond.match_type == "IsFile" else fs.is_dir(text)
            ok = exists != cond.negate
            caps = ()
        if ok:
            if caps:
                if track_all:
                    tracked.extend(caps)
                    cond_caps = tuple(tracked)
                else:
                    cond_caps = caps
            if match_any:
                return cond_caps
        elif not match_any:
            return None
    return None if match_any else cond_caps


def _split(url: str) -> tuple[str, str, bool]:
    path, sep, query = url.partition("?")
    return path, query, bool(sep)


def _join_query(subst_query: str, has_q: bool, original: str, append: bool) -> str:
    if append and original:
        return f"{subst_query}&{original}" if has_q and subst_query else original
    return subst_query


URL_VARIABLES = frozenset(("URL", "PATH_INFO", "SCRIPT_NAME", "REQUEST_FILENAME", "PATH_TRANSLATED"))
"""Server variables that follow the URL as rules rewrite it."""


def evaluate(rules: Sequence[Rule], path: str, query: str, variables: Variables, fs: FileSystem,
             url_variable: Callable[[str, str], str] | None = None) -> Outcome:
    """Run ``rules`` on the request ``path`` (decoded, with its leading slash) and
    ``query``.  ``variables(NAME)`` returns a server variable of the request;
    ``url_variable(NAME, path)`` those of URL_VARIABLES for the URL as rewritten so far
    (``QUERY_STRING`` follows the rewritten query)."""
    out = Outcome(path=path, query=query)
    original_query = query
    for rule in rules:
        if rule.scope:
            prefix = "/" + rule.scope
            if not (out.path.lower() == prefix.lower() or out.path.lower().startswith(prefix.lower() + "/")):
                continue
            rel = out.path[len(prefix) + 1:]
        else:
            rel = out.path[1:]
        caps = rule.matcher(rel)
        if (caps is not None) == rule.negate:
            continue
        if rule.negate:
            caps = ()
        assert caps is not None

        def current(name: str, _out: Outcome = out) -> str:
            if name == "QUERY_STRING":
                return _out.query
            if url_variable is not None and name in URL_VARIABLES:
                return url_variable(name, _out.path)
            return variables(name)

        cond_caps = check_conditions(rule.conditions, rule.match_any, rule.track_all, caps, current, fs)
        if cond_caps is None:
            continue
        out.rules.append(rule.name)
        for name, value, replace in rule.server_variables:
            out.server_variables.append((name, value.expand(caps, cond_caps, current), replace))
        kind = rule.action
        if kind == REWRITE:
            assert rule.url is not None
            target = rule.url.expand(caps, cond_caps, current)
            low = target[:8].lower()
            if low.startswith("http://") or low.startswith("https://"):
                spath, squery, has_q = _split(target)
                q = _join_query(squery, has_q, original_query, rule.append_query)
                out.action, out.url = PROXY, spath + ("?" + q if q else "")
                return out
            spath, squery, has_q = _split(target)
            if not spath.startswith("/"):
                spath = ("/" + rule.scope + "/" if rule.scope else "/") + spath
            out.path = spath
            out.query = _join_query(squery, has_q, original_query, rule.append_query)
            out.action = REWRITE
            out.rewritten = True
        elif kind == REDIRECT:
            assert rule.url is not None
            target = rule.url.expand(caps, cond_caps, current)
            spath, squery, has_q = _split(target)
            if "://" not in spath and not spath.startswith("/"):
                spath = ("/" + rule.scope + "/" if rule.scope else "/") + spath
            q = _join_query(squery, has_q, original_query, rule.append_query)
            out.action, out.url, out.status = REDIRECT, spath + ("?" + q if q else ""), rule.status
            return out
        elif kind == CUSTOM:
            out.action, out.status, out.substatus = CUSTOM, rule.status, rule.substatus
            out.reason, out.description = rule.reason, rule.description
            return out
        elif kind == ABORT:
            out.action = ABORT
            return out
        if rule.stop:
            break
    if out.action == NONE and out.rewritten:
        out.action = REWRITE
    return out
