"""FailedRequestsTracingModule: ``system.webServer/tracing/traceFailedRequests``.

Each ``<add path>`` rule (``*``, ``*.ext`` or a file name, matched like handler paths)
with its ``failureDefinitions`` (``statusCodes`` such as ``404,500-599`` or ``401.3``,
``timeTaken``; a rule with neither never fires) decides, once a request has ended,
whether its trace is written: ``<state dir>/logs/FailedReqLogFiles/W3SVC<site id>/
fr000001.xml`` (every notification, module start and end with its result, the handler,
status changes and timings) and the same trace rendered as ``fr000001.htm``.  At most
``MAX_LOG_FILES`` (50, IIS's ``traceFailedRequestsLogging/@maxLogFiles`` default)
traces are kept per site; the oldest go first.
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import time
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ..pipeline import HttpContext
from ..tracing import Trace
from .base import LAST, Module, ModuleConfig, wildcard_regex

log = logging.getLogger("poolhouse.worker")

MAX_LOG_FILES = 50
_lock = threading.Lock()


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
        self.rules = []
        for r in config.section("tracing/traceFailedRequests").get("items", []):
            path = str(r.get("path", "*")).strip().lower() or "*"
            fd = r.get("failureDefinitions", {})
            try:
                codes = _status_ranges(fd.get("statusCodes", ""))
            except ValueError:
                log.error("traceFailedRequests: bad statusCodes %r", fd.get("statusCodes"))
                continue
            taken = float(fd.get("timeTaken", 0) or 0)
            self.rules.append((path, codes, taken, wildcard_regex(path) if "/" in path else None))
        state = config.state_dir
        self.directory = os.path.join(state or ".", "logs", "FailedReqLogFiles", f"W3SVC{config.site_id}")

    def enabled(self) -> bool:
        return bool(self.rules)

    def end_request(self, ctx: HttpContext) -> Any:  # subscribes, so the trace shows EndRequest
        return None

    def matches(self, ctx: HttpContext, status: int, substatus: int, taken: float) -> bool:
        last = ctx.path.lower().rsplit("/", 1)[-1]
        for path, codes, min_time, pattern in self.rules:
            if path not in ("*", "*.*"):
                if path.startswith("*."):
                    if not last.endswith(path[1:]):
                        continue
                elif pattern is not None:
                    if not pattern.fullmatch(ctx.path):
                        continue
                elif last != path:
                    continue
            hit = any(low <= status <= high and sub in (-1, substatus) for low, high, sub in codes)
            if hit or (min_time > 0 and taken >= min_time):
                return True
        return False

    def request_done(self, ctx: HttpContext, trace: Trace) -> None:
        resp = ctx.response
        status = resp.status if resp is not None else 0
        substatus = resp.substatus if resp is not None else 0
        taken = time.monotonic() - trace.t0
        if not self.matches(ctx, status, substatus, taken):
            return
        try:
            self.write(ctx, trace, status, substatus, taken)
        except OSError as exc:
            log.error("cannot write a failed request trace in %s: %s", self.directory, exc)

    def write(self, ctx: HttpContext, trace: Trace, status: int, substatus: int, taken: float) -> str:
        with _lock:
            os.makedirs(self.directory, exist_ok=True)
            existing = sorted(f for f in os.listdir(self.directory) if re.fullmatch(r"fr\d{6}\.xml", f))
            number = int(existing[-1][2:8]) + 1 if existing else 1
            while len(existing) >= MAX_LOG_FILES:
                old = existing.pop(0)
                for ext in (".xml", ".htm"):
                    try:
                        os.unlink(os.path.join(self.directory, old[:-4] + ext))
                    except OSError:
                        pass
            name = os.path.join(self.directory, f"fr{number:06d}")
            head = ctx.stream.head
            url = head.target.decode("latin-1")
            attrs = {
                "url": url, "siteId": str(ctx.app.site.id), "appPoolId": ctx.app.app.pool,
                "processId": str(os.getpid()), "verb": head.method, "authenticationType": ctx.auth_type or "anonymous",
                "userName": ctx.user, "activityId": f"{os.getpid()}-{ctx.stream.sid}",
                "failureReason": "STATUS_CODE", "statusCode": f"{status}.{substatus}",
                "triggerStatusCode": f"{status}.{substatus}", "timeTaken": str(round(taken * 1000)),
                "handler": ctx.handler,
            }
            xml = ['<?xml version="1.0" encoding="UTF-8"?>',
                   '<?xml-stylesheet type="text/xsl" href="freb.xsl"?>',
                   "<failedRequest " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items()) + ">"]
            for t, ev, notification, module, data in trace.events:
                extra = " ".join(f"{k}={quoteattr(str(v))}" for k, v in data.items())
                xml.append(f' <Event name={quoteattr(ev)} time="{t * 1000:.3f}" notification={quoteattr(notification)}'
                           f" module={quoteattr(module)} {extra}/>")
            xml.append("</failedRequest>\n")
            with open(name + ".xml", "w", encoding="utf-8") as fh:
                fh.write("\n".join(xml))
            rows = "".join(
                f"<tr><td>{t * 1000:.3f}</td><td>{html.escape(ev)}</td><td>{html.escape(notification)}</td>"
                f"<td>{html.escape(module)}</td><td>{html.escape(', '.join(f'{k}={v}' for k, v in data.items()))}</td></tr>"
                for t, ev, notification, module, data in trace.events)
            summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in attrs.items())
            with open(name + ".htm", "w", encoding="utf-8") as fh:
                fh.write("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Failed request "
                         f"{escape(url)} {status}.{substatus}</title></head><body>"
                         f"<h1>Request Summary</h1><table>{summary}</table><h2>Events</h2>"
                         "<table><tr><th>ms</th><th>event</th><th>notification</th><th>module</th><th>data</th></tr>"
                         f"{rows}</table></body></html>\n")
            return name + ".xml"
