"""A pool's request queue: bounded, first in first out, dispatched by free credits.

Requests wait here while the pool has no worker with a free credit (none started yet,
all busy, one being recycled or replaced).  The queue outlives every worker: a worker
that dies or drains only takes its credits away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exchange import Exchange
    from .worker_link import WorkerLink

# pool states as the listener sees them, and the HTTPERR reason for refusing a request
STARTED = "Started"
STOPPED_REASONS = {
    "Stopped": "Disabled",
    "Disabled": "Disabled",
    "RapidFail": "AppOffline",
    "AppShutdown": "AppShutdown",
}


class PoolQueue:
    __slots__ = (
        "name", "limit", "state", "waiting", "workers", "demand_pending",
        "_demand", "load_balancer_capabilities", "rejected", "at_capacity", "requests",
    )

    def __init__(self, name: str, limit: int, demand: Callable[[str], None]) -> None:
        self.name = name
        self.limit = limit
        self.state = STARTED
        self.waiting: deque[Exchange] = deque()
        self.workers: list[WorkerLink] = []
        self.demand_pending = False
        self._demand = demand
        self.load_balancer_capabilities = "HttpLevel"
        self.rejected: dict[str, int] = {}
        self.at_capacity = False  # the activation service runs all the workers it may
        self.requests = 0  # answered by this pool's workers

    def _pick(self) -> "WorkerLink | None":
        workers = self.workers
        if len(workers) == 1:
            w = workers[0]
            return w if w.credits > 0 and not w.write_paused else None
        best = None
        most = 0
        for w in workers:
            if w.credits > most and not w.write_paused:
                best, most = w, w.credits
        return best

    def submit(self, exch: "Exchange") -> str | None:
        """Dispatch or queue ``exch``; returns an HTTPERR reason if it is refused."""
        if self.state != STARTED:
            reason = STOPPED_REASONS.get(self.state, "Disabled")
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return reason
        exch.pool = self
        if not self.waiting:
            worker = self._pick()
            if worker is not None:
                worker.assign(exch)
                return None
        if len(self.waiting) >= self.limit:
            self.rejected["QueueFull"] = self.rejected.get("QueueFull", 0) + 1
            return "QueueFull"
        self.waiting.append(exch)
        self._want_worker()
        return None

    def requeue(self, exch: "Exchange") -> None:
        """A request whose worker died goes back to the front of the line."""
        self.waiting.appendleft(exch)
        self.drain_into_free_workers()
        if self.waiting:
            self._want_worker()

    def give_back(self, exchanges: list["Exchange"]) -> None:
        """Requests a worker gave back unstarted (q.STALLED) go to the front of the line,
        in their order: they are not retries, they never ran."""
        self.waiting.extendleft(reversed(exchanges))
        self.drain_into_free_workers()
        if self.waiting:
            self._want_worker()

    def forget(self, exch: "Exchange") -> None:
        try:
            self.waiting.remove(exch)
        except ValueError:
            pass

    def _want_worker(self) -> None:
        if not self.demand_pending and not self.at_capacity:
            self.demand_pending = True
            self._demand(self.name)

    def worker_ready(self, worker: "WorkerLink") -> None:
        if worker not in self.workers:
            self.workers.append(worker)
        self.demand_pending = False
        self.drain_into_free_workers()
        if self.waiting and self.state == STARTED:
            self._want_worker()  # still more than the workers take: busy (web garden)

    def drain_into_free_workers(self) -> None:
        waiting = self.waiting
        while waiting:
            worker = self._pick()
            if worker is None:
                return
            worker.assign(waiting.popleft())

    def worker_free(self, worker: "WorkerLink") -> None:
        waiting = self.waiting
        while waiting and worker.credits > 0 and not worker.draining and not worker.write_paused:
            worker.assign(waiting.popleft())

    def remove_worker(self, worker: "WorkerLink") -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self.at_capacity = False
        if self.waiting:
            self._want_worker()

    def demand_done(self, at_capacity: bool, starting: bool = False) -> None:
        """The activation service answered a demand: it started a worker, could not, or
        already runs as many as the pool may have (then it is not asked again until a
        worker goes away).  ``starting``: a worker of the pool is attached and its READY
        has not arrived yet (the answer can overtake it): its readiness decides."""
        self.demand_pending = False
        self.at_capacity = at_capacity
        if starting:
            return
        if not at_capacity and self.waiting and self.state == STARTED and self._pick() is None:
            # a worker went away meanwhile, or a start failed: ask again (the activation
            # service backs off and rapid-fail protection bounds the retries)
            self._want_worker()

    def set_state(self, state: str) -> list["Exchange"]:
        """Returns the queued requests that must now be refused (pool stopped)."""
        self.state = state
        if state == STARTED:
            if self.waiting:
                self._want_worker()
            return []
        refused = list(self.waiting)
        self.waiting.clear()
        return refused

    @property
    def in_flight(self) -> int:
        return sum(len(w.streams) for w in self.workers)
