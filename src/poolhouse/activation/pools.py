"""Application pool state as WAS keeps it: a table of allowed transitions, the workers,
the demand from the listener and rapid-fail protection's crash window."""

from __future__ import annotations

import logging
import time
from collections import deque

from ..config.model import Pool
from .events import EventLog
from .states import (
    DRAINING, LIVE_WORKER_STATES, POOL_TRANSITIONS, RAPID_FAIL, READY, STARTED, STARTING, STOPPED,
    STOPPING, WORKER_TRANSITIONS, TransitionError, check,
)
from .workers import WorkerHandle

log = logging.getLogger("poolhouse.activation")

# the tables live in states.py; these names are kept for the modules that import them here
__all__ = ["POOL_TRANSITIONS", "WORKER_TRANSITIONS", "STARTING", "STARTED", "STOPPING", "STOPPED",
           "RAPID_FAIL", "TransitionError", "PoolRuntime"]


class PoolRuntime:
    def __init__(self, config: Pool, events: EventLog) -> None:
        self.config = config
        self.name = config.name
        self.events = events
        self.state = STARTED if config.auto_start else STOPPED
        self.workers: list[WorkerHandle] = []
        self.demand = False  # the listener asked for a worker and has not been answered
        self.answered_at_capacity = False
        self.crashes: deque[float] = deque()
        self.consecutive_failures = 0
        self.spawning = 0  # start_worker calls not finished
        self.pre_spawn = 0  # of those, the ones that have no WorkerHandle yet
        self.next_schedule: float | None = None  # next periodicRestart/schedule time (epoch)
        self.cpu_window: tuple[float, float] | None = None  # (window start, cpu seconds then)
        self.cpu_blocked_until = 0.0  # cpu action KillW3wp: no new worker before this

    def set_state(self, new: str, reason: str, event_id: int | None = None) -> None:
        old = self.state
        if new == old:
            return
        check(POOL_TRANSITIONS, f"application pool {self.name!r}", old, new)
        self.state = new
        self.events.emit("apppool_state", logging.INFO if new != RAPID_FAIL else logging.ERROR,
                         event_id, apppool=self.name, old=old, new=new, reason=reason)

    @property
    def live_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state in LIVE_WORKER_STATES]

    @property
    def slots_used(self) -> int:
        """Workers that count against maxProcesses when deciding to start one: the live
        ones, and with disallowOverlappingRotation also the recycled ones still draining
        (stop-then-start: the replacement waits for the old worker's exit)."""
        n = len(self.live_workers) + self.pre_spawn
        if self.config.disallow_overlapping_rotation:
            n += sum(1 for w in self.workers if w.state == DRAINING and w.recycle_reason)
        return n

    @property
    def max_processes(self) -> int:
        # maxProcesses="0" means one per NUMA node in IIS; Linux boxes here have one
        return max(1, self.config.max_processes)

    @property
    def ready_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state == READY]

    def record_crash(self) -> bool:
        """Count a failure; True if rapid-fail protection now stops the pool."""
        now = time.monotonic()
        self.consecutive_failures += 1
        if not self.config.rapid_fail_protection:
            return False
        window = self.config.rapid_fail_protection_interval
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > window:
            self.crashes.popleft()
        return len(self.crashes) >= self.config.rapid_fail_protection_max_crashes

    def respawn_delay(self) -> float:
        """Back off when workers keep failing, so a broken application does not spin."""
        if self.consecutive_failures <= 1:
            return 0.0
        return float(min(5.0, 0.1 * (2 ** (self.consecutive_failures - 2))))
