"""Failed Request Tracing: the events of one request, recorded by the pipeline when the
FailedRequestsTracingModule is enabled at its URL (otherwise nothing is recorded).

Every event belongs to one of the areas of IIS's "WWW Server" trace provider and has a
level (IIS's verbosity scale); a rule's ``traceAreas`` chooses, when the trace is
written, which of them go into the file (see ``EVENTS``).  Custom modules add their
own events with ``ctx.trace_event`` (area Module)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .pipeline import HttpContext

# IIS's verbosity levels (traceAreas/@verbosity, failureDefinitions/@verbosity)
GENERAL, CRITICAL_ERROR, ERROR, WARNING, INFORMATION, VERBOSE = 0, 1, 2, 3, 4, 5
LEVELS: Final = {"general": GENERAL, "criticalerror": CRITICAL_ERROR, "error": ERROR,
                 "warning": WARNING, "information": INFORMATION, "verbose": VERBOSE}
LEVEL_NAMES: Final = {v: k for k, v in {
    "General": GENERAL, "CriticalError": CRITICAL_ERROR, "Error": ERROR, "Warning": WARNING,
    "Information": INFORMATION, "Verbose": VERBOSE}.items()}

WWW_SERVER_AREAS: Final = ("Authentication", "Security", "Filter", "StaticFile", "CGI", "Compression",
                           "Cache", "RequestNotifications", "Module", "FastCGI", "WebSocket", "Rewrite",
                           "RequestRouting")
"""The areas of the WWW Server provider (IIS's names); ``*`` in ``areas`` is all of them."""

GENERAL_AREA: Final = ""
"""The request's frame (start, end): in every trace, whatever the rule's areas."""

EVENTS: Final[dict[str, tuple[str, int]]] = {
    "GENERAL_REQUEST_START": (GENERAL_AREA, INFORMATION),
    "GENERAL_REQUEST_END": (GENERAL_AREA, INFORMATION),
    "NOTIFY_MODULE_START": ("RequestNotifications", VERBOSE),
    "NOTIFY_MODULE_END": ("RequestNotifications", VERBOSE),
    "HANDLER_CHANGED": ("RequestNotifications", INFORMATION),
    "HANDLER_START": ("RequestNotifications", INFORMATION),
    "MODULE_SET_RESPONSE_ERROR_STATUS": ("RequestNotifications", WARNING),
    "AUTH_START": ("Authentication", INFORMATION),
    "AUTH_SUCCEEDED": ("Authentication", INFORMATION),
    "AUTH_FAILED": ("Authentication", WARNING),
    "URL_AUTHORIZATION_DENIED": ("Security", WARNING),
    "CGI_RESTRICTION_DENIED": ("Security", WARNING),
    "CGI_LAUNCH": ("CGI", INFORMATION),
    "CGI_HEADERS": ("CGI", VERBOSE),
    "CGI_END": ("CGI", INFORMATION),
    "CGI_TIMEOUT": ("CGI", ERROR),
    "CGI_PREMATURE_TERMINATION": ("CGI", ERROR),
    "DYNAMIC_COMPRESSION_SUCCESS": ("Compression", INFORMATION),
    "STATIC_COMPRESSION_SUCCESS": ("Compression", INFORMATION),
}
"""Each built-in event's (area, level); an event not listed is area Module, Information."""

Event = tuple[float, str, str, str, dict[str, Any], str, int]
"""(ms since the start, name, notification, module, data, area, level)"""


class Trace:
    __slots__ = ("ctx", "events", "t0", "wall", "worst")

    def __init__(self, ctx: "HttpContext") -> None:
        self.ctx = ctx
        self.t0 = time.monotonic()
        self.wall = time.time()
        self.worst = VERBOSE + 1  # the most severe level recorded (failureDefinitions/@verbosity)
        head = ctx.stream.head
        self.events: list[Event] = []
        self.event("GENERAL_REQUEST_START", "", "", url=head.target.decode("latin-1"), verb=head.method,
                   site=str(ctx.app.site.id), client=head.client_addr)

    def event(self, name: str, notification: str, module: str, **data: Any) -> None:
        area, level = EVENTS.get(name, ("Module", INFORMATION))
        self.add(name, notification, module, data, area, level)

    def add(self, name: str, notification: str, module: str, data: dict[str, Any], area: str,
            level: int) -> None:
        if area and level < self.worst:
            self.worst = level
        self.events.append((time.monotonic() - self.t0, name, notification, module, data, area, level))

    def complete(self) -> None:
        ctx = self.ctx
        resp = ctx.response
        status = resp.status if resp is not None else 0
        substatus = resp.substatus if resp is not None else 0
        self.event("GENERAL_REQUEST_END", "", "", status=status, substatus=substatus,
                   time_taken_ms=round((time.monotonic() - self.t0) * 1000, 3))
        tracer = ctx.pipeline.tracer
        if tracer is not None:
            tracer.request_done(ctx, self)  # type: ignore[attr-defined]
