"""Failed Request Tracing: the events of one request, recorded by the pipeline when the
FailedRequestsTracingModule is enabled at its URL (otherwise nothing is recorded)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import HttpContext


class Trace:
    __slots__ = ("ctx", "events", "t0", "wall")

    def __init__(self, ctx: "HttpContext") -> None:
        self.ctx = ctx
        self.t0 = time.monotonic()
        self.wall = time.time()
        head = ctx.stream.head
        self.events: list[tuple[float, str, str, str, dict[str, Any]]] = []
        self.event("GENERAL_REQUEST_START", "", "", url=head.target.decode("latin-1"), verb=head.method,
                   site=str(ctx.app.site.id), client=head.client_addr)

    def event(self, name: str, notification: str, module: str, **data: Any) -> None:
        self.events.append((time.monotonic() - self.t0, name, notification, module, data))

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
