"""Application pool state as WAS keeps it: a table of allowed transitions, the workers,
the demand from the listener and rapid-fail protection's crash window."""

from __future__ import annotations

import logging
import time
from collections import deque

from ..config.model import Pool
from .events import EventLog
from .workers import DEAD, DRAINING, INITIALIZING, READY, SPAWNING, WorkerHandle

log = logging.getLogger("poolhouse.activation")

STARTING = "Starting"
STARTED = "Started"
STOPPING = "Stopping"
STOPPED = "Stopped"
RAPID_FAIL = "RapidFail"  # stopped by rapid-fail protection (IIS shows it as Stopped)

# pool state -> states it may move to
POOL_TRANSITIONS: dict[str, frozenset[str]] = {
    STARTING: frozenset({STARTED, STOPPED}),
    STARTED: frozenset({STOPPING, STOPPED, RAPID_FAIL}),
    STOPPING: frozenset({STOPPED}),
    STOPPED: frozenset({STARTING, STARTED}),
    RAPID_FAIL: frozenset({STARTING, STARTED, STOPPED}),
}

# worker state -> states it may move to
WORKER_TRANSITIONS: dict[str, frozenset[str]] = {
    SPAWNING: frozenset({INITIALIZING, DEAD}),
    INITIALIZING: frozenset({READY, DRAINING, DEAD}),
    READY: frozenset({DRAINING, DEAD}),
    DRAINING: frozenset({DEAD}),
    DEAD: frozenset(),
}


class TransitionError(RuntimeError):
    pass


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
        self.spawning = 0

    def set_state(self, new: str, reason: str, event_id: int | None = None) -> None:
        old = self.state
        if new == old:
            return
        if new not in POOL_TRANSITIONS[old]:
            raise TransitionError(f"application pool {self.name!r} cannot go from {old} to {new}")
        self.state = new
        self.events.emit("apppool_state", logging.INFO if new != RAPID_FAIL else logging.ERROR,
                         event_id, apppool=self.name, old=old, new=new, reason=reason)

    @property
    def live_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state in (SPAWNING, INITIALIZING, READY)]

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
