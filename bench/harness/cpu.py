"""Where the CPU went while a load ran: the server, wrk, the runner, or someone else.

The benchmark machine may be shared (other test suites, other VMs on the host), and a
figure taken while something else was busy is not comparable. This accounts for the CPU
time of a measured interval: the machine's process time (/proc/stat user, nice, system)
minus the server tree's, wrk's (our reaped children) and the runner's own; what remains is
foreign load.
Steal time (the hypervisor giving our vCPUs to another guest) is reported as well.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import psutil

from .server import ServerProcess


def _busy_irq_steal() -> tuple[float, float, float]:
    """Process time (user, nice, system), interrupt time, steal time of all CPUs.

    Interrupt time is kept apart: it is mostly the loopback traffic of the benchmark
    itself (softirq network processing charged to no process), not someone else's load.
    """
    t = psutil.cpu_times()
    irq = getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return t.user + t.nice + t.system, irq, getattr(t, "steal", 0.0)


def _rusage_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _tree_cpu(server: ServerProcess) -> dict[int, float]:
    out = {}
    for p in server.tree():
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


@dataclass
class _Snapshot:
    wall: float
    busy: float
    irq: float
    steal: float
    tree: dict[int, float]
    children: float
    me: float


def _snapshot(server: ServerProcess) -> _Snapshot:
    busy, irq, steal = _busy_irq_steal()
    return _Snapshot(time.monotonic(), busy, irq, steal, _tree_cpu(server),
                     _rusage_seconds(resource.RUSAGE_CHILDREN),
                     _rusage_seconds(resource.RUSAGE_SELF))


class CpuAccount:
    """Use as a context manager around the measured runs; then read .figures."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.figures: dict[str, float] = {}

    def __enter__(self) -> CpuAccount:
        self._start = _snapshot(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        end = _snapshot(self.server)
        start = self._start
        capacity = (end.wall - start.wall) * (os.cpu_count() or 1)
        if capacity <= 0:
            return
        server = sum(cpu - start.tree.get(pid, 0.0) for pid, cpu in end.tree.items())
        wrk = end.children - start.children
        runner = end.me - start.me
        busy = end.busy - start.busy
        pct = 100.0 / capacity
        self.figures = {
            "server_cpu_pct": server * pct,
            "wrk_cpu_pct": wrk * pct,
            "runner_cpu_pct": runner * pct,
            "other_cpu_pct": max(0.0, busy - server - wrk - runner) * pct,
            "irq_pct": (end.irq - start.irq) * pct,
            "steal_pct": (end.steal - start.steal) * pct,
        }
