"""What WAS watches while workers run, once per tick of the activation service:

- health: a ping every ``pingInterval`` over the control channel; no answer within
  ``pingResponseTime`` -> the worker is killed (SIGTERM, then SIGKILL) or orphaned
  (event 5010), and replaced on demand;
- recycling: ``periodicRestart`` ``time`` (5074), ``schedule`` (5076), ``memory``
  (virtual KB, 5077) and ``privateMemory`` (KB, 5117), measured every few seconds
  (``requests`` (5075) is counted by the worker itself, which asks to be recycled);
- idle timeout: a worker that served nothing for ``idleTimeout`` is shut down (5186) or,
  with ``idleTimeoutAction="Suspend"``, stopped with SIGSTOP until the next request;
- CPU: ``cpu/@limit`` over ``resetInterval`` by measurement (``KillW3wp`` stops the
  pool's workers until the interval ends; ``Throttle`` is the cgroup's job).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import TYPE_CHECKING

from .events import IDLE_SHUTDOWN, PING_FAILED
from .limits import cpu_seconds, memory_kb
from .states import READY, STARTED

if TYPE_CHECKING:
    from .pools import PoolRuntime
    from .service import ActivationService
    from .workers import WorkerHandle

log = logging.getLogger("poolhouse.activation")

TICK = 0.5
MEMORY_INTERVAL = 2.0  # seconds between two memory measurements of a worker
IDLE_POLL = 5.0        # seconds between two activity polls of a worker with idleTimeout


def next_schedule(times: list[str], now: float) -> float | None:
    """The next local time of day in ``times`` ("hh:mm:ss") after ``now`` (epoch)."""
    if not times:
        return None
    today = datetime.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    best: float | None = None
    for t in times:
        try:
            h, m, s = (int(float(x)) for x in t.split(":"))
        except ValueError:
            continue
        for day in (0, 1):
            at = (today + datetime.timedelta(days=day, hours=h, minutes=m, seconds=s)).timestamp()
            if at > now and (best is None or at < best):
                best = at
    return best


class Monitor:
    def __init__(self, service: "ActivationService") -> None:
        self.service = service
        self.last_memory = 0.0

    async def run(self) -> None:
        svc = self.service
        while not svc.stopping:
            await asyncio.sleep(TICK)
            try:
                self.tick()
            except Exception:
                log.exception("process-model monitor failed")

    def tick(self) -> None:
        svc = self.service
        now = time.monotonic()
        wall = time.time()
        measure_memory = now - self.last_memory >= MEMORY_INTERVAL
        if measure_memory:
            self.last_memory = now
        for pool in list(svc.pools.values()):
            cfg = pool.config
            if pool.state != STARTED:
                continue
            if cfg.periodic_restart_schedule:
                if pool.next_schedule is None:
                    pool.next_schedule = next_schedule(cfg.periodic_restart_schedule, wall)
                elif wall >= pool.next_schedule:
                    pool.next_schedule = next_schedule(cfg.periodic_restart_schedule, wall + 1)
                    for w in list(pool.ready_workers):
                        svc.recycle_worker(pool, w, "schedule")
            for w in list(pool.ready_workers):
                if (cfg.ping_enabled and not w.condemned
                        and now - max(w.last_ping, w.started_mono) >= cfg.ping_interval):
                    w.last_ping = now
                    svc.loop.create_task(self.ping(pool, w))
                if w.recycle_reason:
                    continue  # its replacement is starting
                if w.recycle_after_seconds and now - w.started_mono >= w.recycle_after_seconds:
                    svc.recycle_worker(pool, w, "time")
                    continue
                if measure_memory and (cfg.periodic_restart_memory_kb or cfg.periodic_restart_private_memory_kb):
                    mem = memory_kb(w.pid)
                    if mem is not None:
                        virtual, private = mem
                        if cfg.periodic_restart_private_memory_kb and private > cfg.periodic_restart_private_memory_kb:
                            svc.recycle_worker(pool, w, "privateMemory", private_memory_kb=private)
                            continue
                        if cfg.periodic_restart_memory_kb and virtual > cfg.periodic_restart_memory_kb:
                            svc.recycle_worker(pool, w, "memory", virtual_memory_kb=virtual)
                            continue
                if cfg.idle_timeout > 0 and now - w.last_idle_poll >= min(IDLE_POLL, cfg.idle_timeout / 4):
                    w.last_idle_poll = now
                    svc.loop.create_task(self.check_idle(pool, w))
            if cfg.cpu_limit > 0:
                self.account_cpu(pool, now)

    async def ping(self, pool: "PoolRuntime", worker: "WorkerHandle") -> None:
        if await worker.ping(pool.config.ping_response_time):
            return
        if worker.state != READY:
            return
        self.service.worker_unhealthy(pool, worker, "did not answer a ping within "
                                      f"{pool.config.ping_response_time:g} s", PING_FAILED)

    async def check_idle(self, pool: "PoolRuntime", worker: "WorkerHandle") -> None:
        await worker.stats(2.0)
        cfg = pool.config
        if (worker.state == READY and not worker.recycle_reason and worker.in_flight_seen == 0
                and time.monotonic() - worker.last_activity >= cfg.idle_timeout):
            minutes = cfg.idle_timeout / 60
            if cfg.idle_timeout_action == "Suspend":
                await self.service.suspend_worker(pool, worker)
            else:
                worker.drain(cfg.shutdown_time_limit, f"idle for {minutes:g} minute(s)", IDLE_SHUTDOWN)
                self.service.events.emit("worker_idle_shutdown", logging.INFO, IDLE_SHUTDOWN, apppool=pool.name,
                                         worker=worker.id, pid=worker.pid, idle_timeout_minutes=minutes)

    def account_cpu(self, pool: "PoolRuntime", now: float) -> None:
        cfg = pool.config
        used = 0.0
        for w in pool.workers:
            if w.pid:
                c = cpu_seconds(w.pid)
                used += max(0.0, c - w.cpu_last)
                w.cpu_last = c
        if pool.cpu_window is None:
            pool.cpu_window = (now, 0.0)
            return
        start, total = pool.cpu_window
        total += used
        interval = cfg.cpu_reset_interval or 300.0
        if now - start < interval:
            pool.cpu_window = (start, total)
            return
        pool.cpu_window = (now, 0.0)
        share = total / ((now - start) * (os.cpu_count() or 1)) * 100_000
        if share <= cfg.cpu_limit:
            return
        self.service.events.emit("apppool_cpu_limit", logging.WARNING, None, apppool=pool.name,
                                 used=round(share), limit=cfg.cpu_limit, action=cfg.cpu_action)
        if cfg.cpu_action == "KillW3wp":
            pool.cpu_blocked_until = now + interval
            for w in list(pool.workers):
                w.drain(0.5, "cpu limit exceeded (KillW3wp)")
