"""Running wrk and reading its report.

wrk is always run with one thread and a fixed number of keep-alive connections
(`-t1 -c64` by default) and `--latency`, so that its report carries the latency
percentiles; this module turns that text into numbers.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m)"
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+" + _DURATION + r"\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk failed to run or printed a report this module cannot read."""


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    latency_ms: dict[str, float]           # "50", "75", "90", "99" -> milliseconds
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def p99_ms(self) -> float:
        return self.latency_ms.get("99", float("nan"))

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    def to_json(self) -> dict[str, object]:
        return {
            "requests_per_sec": self.requests_per_sec,
            "requests": self.requests,
            "latency_ms": self.latency_ms,
            "socket_errors": self.socket_errors,
            "non_2xx": self.non_2xx,
        }


def command(url: str, duration: float, *, connections: int = 64, threads: int = 1,
            cpu: int | None = None) -> list[str]:
    """The wrk command line; `cpu` pins wrk to that CPU with taskset."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return argv


def parse(text: str) -> WrkResult:
    rps = _RPS.search(text)
    if rps is None:
        raise WrkError("no Requests/sec line in wrk output:\n" + text)
    latency = {m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)]
               for m in _PERCENTILE.finditer(text)}
    total = _TOTAL.search(text)
    errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        requests=int(total.group(1)) if total else 0,
        latency_ms=latency,
        socket_errors=(dict(zip(("connect", "read", "write", "timeout"),
                                map(int, errors.groups()))) if errors else {}),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run(url: str, duration: float, *, connections: int = 64, threads: int = 1,
        cpu: int | None = None) -> WrkResult:
    argv = command(url, duration, connections=connections, threads=threads, cpu=cpu)
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + 30:g}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)
