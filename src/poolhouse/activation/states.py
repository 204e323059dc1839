"""The two state machines of the process model, as tables: application pools and worker
processes.  Every change of state goes through ``check`` and is logged with its reason
(and IIS's event id where IIS has one) by the object that changes state."""

from __future__ import annotations

# ---- application pools (appcmd shows RapidFail as Stopped) --------------------------

STARTING = "Starting"
STARTED = "Started"
STOPPING = "Stopping"
STOPPED = "Stopped"
RAPID_FAIL = "RapidFail"  # stopped by rapid-fail protection (IIS shows it as Stopped)

POOL_TRANSITIONS: dict[str, frozenset[str]] = {
    STARTING: frozenset({STARTED, STOPPED}),
    STARTED: frozenset({STOPPING, STOPPED, RAPID_FAIL}),
    STOPPING: frozenset({STOPPED}),
    STOPPED: frozenset({STARTING, STARTED}),
    RAPID_FAIL: frozenset({STARTING, STARTED, STOPPED}),
}

# ---- worker processes -------------------------------------------------------------

SPAWNING = "Spawning"          # process being created, channels being handed over
INITIALIZING = "Initializing"  # loading applications, running initialization pages
READY = "Ready"                # taking requests from the pool's queue
SUSPENDED = "Suspended"        # idleTimeoutAction="Suspend": SIGSTOPped, detached from the queue
ORPHANED = "Orphaned"          # failed a health check, left running for debugging, detached
DRAINING = "Draining"          # takes no new requests, finishing the ones in flight
DEAD = "Dead"                  # exited (the exit code says why)

WORKER_TRANSITIONS: dict[str, frozenset[str]] = {
    SPAWNING: frozenset({INITIALIZING, DEAD}),
    INITIALIZING: frozenset({READY, DRAINING, ORPHANED, DEAD}),
    READY: frozenset({SUSPENDED, DRAINING, ORPHANED, DEAD}),
    SUSPENDED: frozenset({READY, DRAINING, DEAD}),
    ORPHANED: frozenset({DEAD}),
    DRAINING: frozenset({DEAD}),
    DEAD: frozenset(),
}

# states in which a worker counts towards processModel/@maxProcesses
LIVE_WORKER_STATES = frozenset({SPAWNING, INITIALIZING, READY, SUSPENDED})


class TransitionError(RuntimeError):
    pass


def check(table: dict[str, frozenset[str]], what: str, old: str, new: str) -> None:
    if new not in table[old]:
        raise TransitionError(f"{what} cannot go from {old} to {new}")
