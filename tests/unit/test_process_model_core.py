"""Pure parts of the process model: the state tables, schedule times, jitter, identity
checks and the /proc measurements."""

from __future__ import annotations

import datetime
import os

import pytest

from poolhouse.activation import states
from poolhouse.activation.limits import cpu_seconds, memory_kb
from poolhouse.activation.monitor import Monitor, next_schedule
from poolhouse.activation.workers import JITTER, jittered


def test_tables_are_closed_and_dead_is_final() -> None:
    for table in (states.POOL_TRANSITIONS, states.WORKER_TRANSITIONS):
        for targets in table.values():
            assert targets <= set(table)
    assert states.WORKER_TRANSITIONS[states.DEAD] == frozenset()
    # every live state can die (a crash can happen anywhere)
    assert all(states.DEAD in t for s, t in states.WORKER_TRANSITIONS.items() if s != states.DEAD)


@pytest.mark.parametrize("old,new", [("Ready", "Initializing"), ("Draining", "Ready"), ("Dead", "Ready"),
                                     ("Orphaned", "Ready"), ("Spawning", "Ready")])
def test_worker_transitions_refused(old: str, new: str) -> None:
    with pytest.raises(states.TransitionError):
        states.check(states.WORKER_TRANSITIONS, "worker", old, new)


def test_pool_transitions() -> None:
    states.check(states.POOL_TRANSITIONS, "pool", states.RAPID_FAIL, states.STARTED)
    with pytest.raises(states.TransitionError):
        states.check(states.POOL_TRANSITIONS, "pool", states.STOPPING, states.STARTED)


def test_next_schedule_today_then_tomorrow() -> None:
    now = datetime.datetime(2026, 11, 24, 10, 30, 0).timestamp()
    at = next_schedule(["03:00:00", "11:15:00"], now)
    assert at == datetime.datetime(2026, 11, 24, 11, 15).timestamp()
    at = next_schedule(["03:00:00"], now)
    assert at == datetime.datetime(2026, 11, 25, 3, 0).timestamp()
    assert next_schedule([], now) is None


def test_jitter_only_lowers_and_stays_small() -> None:
    values = [jittered(1000.0) for _ in range(200)]
    assert all(1000 * (1 - JITTER) <= v <= 1000 for v in values)
    assert len(set(values)) > 1
    assert jittered(0) == 0


def test_proc_measurements_of_this_process() -> None:
    virtual, private = memory_kb(os.getpid()) or (0, 0)
    assert virtual > private > 0
    assert cpu_seconds(os.getpid()) > 0
    assert memory_kb(2 ** 22 + 12345) is None


class _Events:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict]] = []

    def emit(self, event: str, *args: object, **fields: object) -> None:
        self.emitted.append((event, fields))


class _Worker:
    pid = 0
    cpu_last = 0.0

    def __init__(self) -> None:
        self.drained = ""

    def drain(self, limit: float, reason: str = "", event_id: object = None) -> None:
        self.drained = reason


def test_cpu_limit_kill_w3wp_by_measurement() -> None:
    from types import SimpleNamespace

    from poolhouse.activation.pools import PoolRuntime
    from poolhouse.config.model import Pool

    events = _Events()
    pool = PoolRuntime(Pool(name="P", cpu_limit=50_000, cpu_action="KillW3wp", cpu_reset_interval=60.0),
                       events)  # type: ignore[arg-type]
    worker = _Worker()
    pool.workers = [worker]  # type: ignore[list-item]
    monitor = Monitor(SimpleNamespace(events=events))  # type: ignore[arg-type]
    # a window that has run its 60 s with 100 CPU-seconds used: far above 50 %
    pool.cpu_window = (1000.0, 100.0 * (os.cpu_count() or 1))
    monitor.account_cpu(pool, 1061.0)
    assert events.emitted and events.emitted[0][0] == "apppool_cpu_limit"
    assert worker.drained.startswith("cpu limit") and pool.cpu_blocked_until == 1061.0 + 60.0
    # under the limit: nothing
    events.emitted.clear()
    pool.cpu_window = (2000.0, 0.0)
    monitor.account_cpu(pool, 2061.0)
    assert events.emitted == []
