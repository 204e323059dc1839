"""FailedRequestsTracingModule: ``system.webServer/tracing/traceFailedRequests``.

Each ``<add path>`` rule (``*``, ``*.ext`` or a file name, matched like handler paths)
with its ``failureDefinitions`` (``statusCodes`` such as ``404,500-599`` or ``401.3``,
``timeTaken``, ``verbosity``: an event at least that severe — Warning, Error,
CriticalError; a rule with none of them never fires) decides, once a request has ended,
whether its trace is written: ``<directory>/W3SVC<site id>/fr000001.xml`` (every
notification, module start and end with its result, the handler, status changes and
timings) and the same trace rendered as ``fr000001.htm``.  The first rule that matches
also says what goes into the file: its ``traceAreas`` entry for the ``WWW Server``
provider names the areas (``Authentication,Security,…`` or ``*``) and the ``verbosity``
(General .. Verbose) of the events kept; a rule without traceAreas keeps every event.

The site's ``traceFailedRequestsLogging`` says where and how much: ``directory``
(default ``<state dir>/logs/FailedReqLogFiles``), ``maxLogFiles`` traces kept per site
(the oldest are deleted first; IIS's default 50) and ``maxLogFileSizeKB`` (events past
it are left out of the file, and the file says so).
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ..pipeline import HttpContext
from ..tracing import GENERAL_AREA, LEVEL_NAMES, LEVELS, VERBOSE, WWW_SERVER_AREAS, Event, Trace
from .base import LAST, Module, ModuleConfig, wildcard_regex

log = logging.getLogger("poolhouse.worker")

MAX_LOG_FILES = 50  # traceFailedRequestsLogging/@maxLogFiles's default
MAX_LOG_FILE_SIZE_KB = 1024
_lock = threading.Lock()
_AREAS = {a.lower(): a for a in WWW_SERVER_AREAS}


@dataclass(frozen=True)
class TraceRule:
    path: str
    codes: tuple[tuple[int, int, int], ...]
    time_taken: float
    pattern: "re.Pattern[str] | None"
    areas: frozenset[str] | None  # None: every area (no traceAreas for WWW Server)
    verbosity: int
    fail_level: int  # failureDefinitions/@verbosity; 0 = Ignore

    def keeps(self, event: Event) -> bool:
        area = event[5]
        if area == GENERAL_AREA or self.areas is None:
            return True
        return area in self.areas and event[6] <= self.verbosity


def _trace_areas(items: list[dict[str, Any]]) -> tuple[frozenset[str] | None, int]:
    """The areas and verbosity of the rule's ``WWW Server`` provider entry."""
    for entry in items:
        if str(entry.get("provider", "")).strip().lower() != "www server":
            continue  # ASP, ASPNET, ISAPI Extension: nothing of theirs runs here
        names = [a.strip().lower() for a in str(entry.get("areas", "")).split(",") if a.strip()]
        if "*" in names:
            areas = frozenset(WWW_SERVER_AREAS)
        else:
            unknown = [n for n in names if n not in _AREAS]
            if unknown:
                log.warning("traceFailedRequests: unknown WWW Server trace areas %s", ", ".join(unknown))
            areas = frozenset(_AREAS[n] for n in names if n in _AREAS)
        return areas, LEVELS.get(str(entry.get("verbosity", "Warning")).lower(), VERBOSE)
    return (frozenset(), VERBOSE) if items else (None, VERBOSE)


def _status_ranges(text: str) -> list[tuple[int, int, int]]:
    """``"404,500-599,401.3"`` -> [(low, high, substatus or -1)]"""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        sub = -1
        if "." in part and "-" not in part:
            part, _, s = part.partition(".")
            sub = int(s)
        low, _, high = part.partition("-")
        out.append((int(low), int(high or low), sub))
    return out


class FailedRequestsTracingModule(Module):
    traces = True
    priority = LAST

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        self.rules: list[TraceRule] = []
        for r in config.section("tracing/traceFailedRequests").get("items", []):
            path = str(r.get("path", "*")).strip().lower() or "*"
            fd = r.get("failureDefinitions", {})
            try:
                codes = _status_ranges(fd.get("statusCodes", ""))
            except ValueError:
                log.error("traceFailedRequests: bad statusCodes %r", fd.get("statusCodes"))
                continue
            taken = float(fd.get("timeTaken", 0) or 0)
            fail = str(fd.get("verbosity", "Ignore")).lower()
            areas, verbosity = _trace_areas(list(r.get("traceAreas", {}).get("items", [])))
            self.rules.append(TraceRule(path, tuple(codes), taken, wildcard_regex(path) if "/" in path else None,
                                        areas, verbosity, 0 if fail == "ignore" else LEVELS.get(fail, 0)))
        site = getattr(config.app, "site", None)
        logging_ = getattr(site, "trace_failed_requests", None)
        root = getattr(logging_, "directory", "") or os.path.join(config.state_dir or ".", "logs",
                                                                  "FailedReqLogFiles")
        self.directory = os.path.join(root, f"W3SVC{config.site_id}")
        self.max_log_files = max(1, int(getattr(logging_, "max_log_files", MAX_LOG_FILES)))
        self.max_size = int(getattr(logging_, "max_log_file_size_kb", MAX_LOG_FILE_SIZE_KB)) * 1024

    def enabled(self) -> bool:
        return bool(self.rules)

    def end_request(self, ctx: HttpContext) -> Any:  # subscribes, so the trace shows EndRequest
        return None

    def matches(self, ctx: HttpContext, status: int, substatus: int, taken: float,
                worst: int = VERBOSE + 1) -> TraceRule | None:
        """The first rule whose path matches and whose failure definitions hold."""
        last = ctx.path.lower().rsplit("/", 1)[-1]
        for rule in self.rules:
            path, pattern = rule.path, rule.pattern
            if path not in ("*", "*.*"):
                if path.startswith("*."):
                    if not last.endswith(path[1:]):
                        continue
                elif pattern is not None:
                    if not pattern.fullmatch(ctx.path):
                        continue
                elif last != path:
                    continue
            if (any(low <= status <= high and sub in (-1, substatus) for low, high, sub in rule.codes)
                    or (rule.time_taken > 0 and taken >= rule.time_taken)
                    or (rule.fail_level and worst <= rule.fail_level)):
                return rule
        return None

    def request_done(self, ctx: HttpContext, trace: Trace) -> None:
        resp = ctx.response
        status = resp.status if resp is not None else 0
        substatus = resp.substatus if resp is not None else 0
        taken = time.monotonic() - trace.t0
        rule = self.matches(ctx, status, substatus, taken, trace.worst)
        if rule is None:
            return
        try:
            self.write(ctx, trace, status, substatus, taken, rule)
        except OSError as exc:
            log.error("cannot write a failed request trace in %s: %s", self.directory, exc)

    def write(self, ctx: HttpContext, trace: Trace, status: int, substatus: int, taken: float,
              rule: TraceRule | None = None) -> str:
        head = ctx.stream.head
        url = head.target.decode("latin-1")
        reason = "STATUS_CODE"
        if rule is not None and not any(low <= status <= high and sub in (-1, substatus)
                                        for low, high, sub in rule.codes):
            reason = "TIME_TAKEN" if rule.time_taken > 0 and taken >= rule.time_taken else "VERBOSITY"
        attrs = {
            "url": url, "siteId": str(ctx.app.site.id), "appPoolId": ctx.app.app.pool,
            "processId": str(os.getpid()), "verb": head.method, "authenticationType": ctx.auth_type or "anonymous",
            "userName": ctx.user, "activityId": f"{os.getpid()}-{ctx.stream.sid}",
            "failureReason": reason, "statusCode": f"{status}.{substatus}",
            "triggerStatusCode": f"{status}.{substatus}", "timeTaken": str(round(taken * 1000)),
            "handler": ctx.handler,
        }
        events = [e for e in trace.events if rule.keeps(e)] if rule is not None else list(trace.events)
        xml = ['<?xml version="1.0" encoding="UTF-8"?>',
               '<?xml-stylesheet type="text/xsl" href="freb.xsl"?>',
               "<failedRequest " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items()) + ">"]
        size = sum(len(line) + 1 for line in xml)
        kept: list[Event] = []
        for ev in events:
            t, name, notification, module, data, area, level = ev
            extra = " ".join(f"{k}={quoteattr(str(v))}" for k, v in data.items())
            line = (f' <Event name={quoteattr(name)} time="{t * 1000:.3f}" area={quoteattr(area or "General")}'
                    f' level="{LEVEL_NAMES.get(level, level)}" notification={quoteattr(notification)}'
                    f" module={quoteattr(module)} {extra}/>")
            if self.max_size and size + len(line) > self.max_size and name != "GENERAL_REQUEST_END":
                left = len(events) - len(kept) - 1
                xml.append(f' <Event name="TRACE_TRUNCATED" area="General" level="Warning" events_left_out="{left}"'
                           f' maxLogFileSizeKB="{self.max_size // 1024}"/>')
                end = events[-1]
                if end[1] == "GENERAL_REQUEST_END":
                    kept.append(end)
                    xml.append(f' <Event name="GENERAL_REQUEST_END" time="{end[0] * 1000:.3f}" area="General"'
                               ' level="Information" notification="" module="" '
                               + " ".join(f"{k}={quoteattr(str(v))}" for k, v in end[4].items()) + "/>")
                break
            size += len(line) + 1
            kept.append(ev)
            xml.append(line)
        xml.append("</failedRequest>\n")
        rows = "".join(
            f"<tr><td>{t * 1000:.3f}</td><td>{html.escape(ev)}</td><td>{html.escape(area or 'General')}</td>"
            f"<td>{html.escape(str(LEVEL_NAMES.get(level, level)))}</td><td>{html.escape(notification)}</td>"
            f"<td>{html.escape(module)}</td><td>{html.escape(', '.join(f'{k}={v}' for k, v in data.items()))}</td></tr>"
            for t, ev, notification, module, data, area, level in kept)
        summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in attrs.items())
        page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Failed request "
                f"{escape(url)} {status}.{substatus}</title></head><body>"
                f"<h1>Request Summary</h1><table>{summary}</table><h2>Events</h2>"
                "<table><tr><th>ms</th><th>event</th><th>area</th><th>level</th><th>notification</th>"
                f"<th>module</th><th>data</th></tr>{rows}</table></body></html>\n")
        with _lock:
            os.makedirs(self.directory, exist_ok=True)
            existing = sorted(f for f in os.listdir(self.directory) if re.fullmatch(r"fr\d{6}\.xml", f))
            number = int(existing[-1][2:8]) + 1 if existing else 1
            while len(existing) >= self.max_log_files:
                old = existing.pop(0)
                for ext in (".xml", ".htm"):
                    try:
                        os.unlink(os.path.join(self.directory, old[:-4] + ext))
                    except OSError:
                        pass
            name = os.path.join(self.directory, f"fr{number:06d}")
            with open(name + ".xml", "w", encoding="utf-8") as fh:
                fh.write("\n".join(xml))
            with open(name + ".htm", "w", encoding="utf-8") as fh:
                fh.write(page)
            return name + ".xml"
