"""How a target is measured, one function per scenario.

A scenario receives the running, answering server and returns the figures of its row.
Today there is one, "throughput"; cold-start latency, cache hit, recycle under load and
proxy benchmarks are meant to be added here as further entries of SCENARIOS.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import wrk
from .cpu import CpuAccount
from .server import RssSampler, ServerProcess, get
from .targets import Target


@dataclass(frozen=True)
class Settings:
    duration: float              # seconds per measured wrk run
    repetitions: int             # measured runs; the median one is reported
    warmup: float                # seconds of wrk load before measuring
    connections: int = 64
    threads: int = 1


@dataclass(frozen=True)
class Run:
    """What a scenario gets: the target, its server and where the load comes from."""
    target: Target
    server: ServerProcess
    port: int
    wrk_cpu: int | None          # CPU to pin wrk to, None when unpinned
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.target.path}"


class MeasureError(RuntimeError):
    """The server stopped answering or answered wrongly while being measured.

    `partial` holds the figures gathered before the failure, for the results file."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or {}


def warm_up(run: Run) -> None:
    """A few checked requests, then a short load at the measured concurrency, so that
    on-demand workers, thread pools and caches are up before the first figure."""
    for _ in range(10):
        status, body = get(run.port, run.target.path)
        if status != 200 or body != run.target.expect:
            raise MeasureError(f"warm-up answer HTTP {status}, {len(body)} bytes")
    if run.settings.warmup > 0:
        wrk.run(run.url, run.settings.warmup, connections=run.settings.connections,
                threads=run.settings.threads, cpu=run.wrk_cpu)


def throughput(run: Run) -> dict[str, Any]:
    """Median req/s of N wrk runs, the p99 of that same run, peak tree RSS under load."""
    s = run.settings
    warm_up(run)
    runs: list[wrk.WrkResult] = []
    peak_rss, peak_procs = 0, 0
    with CpuAccount(run.server) as cpu:
        for _ in range(s.repetitions):
            with RssSampler(run.server) as sampler:
                try:
                    result = wrk.run(run.url, s.duration, connections=s.connections,
                                     threads=s.threads, cpu=run.wrk_cpu)
                except wrk.WrkError as exc:
                    raise MeasureError(str(exc), _partial(runs)) from exc
            if not run.server.alive():
                raise MeasureError(f"server exited during the load ({run.server.exit_text()}): "
                                   f"{run.server.log_tail()}", _partial(runs, result))
            runs.append(result)
            rss, procs = sampler.peak
            if rss > peak_rss:
                peak_rss, peak_procs = rss, procs
    # The median run by req/s (for an even count, the lower middle one) gives both
    # figures, so that req/s and p99 come from the same run.
    ordered = sorted(runs, key=lambda r: r.requests_per_sec)
    median = ordered[(len(ordered) - 1) // 2]
    status, body = get(run.port, run.target.path)
    if status != 200 or body != run.target.expect:
        raise MeasureError(f"after the load: HTTP {status}, {len(body)} bytes", _partial(runs))
    return {
        **cpu.figures,
        "requests_per_sec": median.requests_per_sec,
        "p99_ms": median.p99_ms,
        "p50_ms": median.latency_ms.get("50"),
        "rss_mb": peak_rss / 1_048_576,
        "processes": peak_procs,
        "errors": sum(r.errors for r in runs),
        "spread_pct": _spread_pct([r.requests_per_sec for r in runs]),
        "runs": [r.to_json() for r in runs],
    }


def _partial(runs: list[wrk.WrkResult], *more: wrk.WrkResult) -> dict[str, Any]:
    return {"runs": [r.to_json() for r in [*runs, *more]]}


def _spread_pct(values: list[float]) -> float:
    """(max - min) / median, in percent: how much the repetitions disagree."""
    middle = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / middle if middle > 0 else 0.0


SCENARIOS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "throughput": throughput,
}
