"""The event log (the WAS side of the Windows event log): one JSON object per line in
``logs/events.jsonl``, and a readable line on stderr.  IIS's event ids are used where IIS
has one, so an IIS administrator can recognise what happened."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("poolhouse.activation")

# WAS event ids (ref. iis.md §5): reasons for recycling and failures
RECYCLE_TIME = 5074
RECYCLE_REQUESTS = 5075
RECYCLE_SCHEDULE = 5076
RECYCLE_VIRTUAL_MEMORY = 5077
RECYCLE_PRIVATE_MEMORY = 5117
RECYCLE_ADMIN = 5079
RECYCLE_CONFIG = 5080
IDLE_SHUTDOWN = 5186
RAPID_FAIL = 5002
WORKER_CRASHED = 5009      # a worker terminated unexpectedly
PING_FAILED = 5010         # a worker failed to respond to a ping
CHANNEL_FAILED = 5011      # fatal communication error with a worker
STARTUP_TIMEOUT = 5012     # a worker exceeded startupTimeLimit
SHUTDOWN_TIMEOUT = 5013    # a worker exceeded shutdownTimeLimit
ORPHAN_ACTION_FAILED = 5015

# recycle reason (as the CLI and events name it) -> event id, logEventOnRecycle flag
RECYCLE_REASONS: dict[str, tuple[int | None, str]] = {
    "time": (RECYCLE_TIME, "Time"),
    "requests": (RECYCLE_REQUESTS, "Requests"),
    "schedule": (RECYCLE_SCHEDULE, "Schedule"),
    "memory": (RECYCLE_VIRTUAL_MEMORY, "Memory"),
    "privateMemory": (RECYCLE_PRIVATE_MEMORY, "PrivateMemory"),
    "administrator": (RECYCLE_ADMIN, "OnDemand"),
    "configuration change": (RECYCLE_CONFIG, "ConfigChange"),
    "requestTimeout": (None, ""),  # Poolhouse: a request outlived <python requestTimeout>
    "signal": (None, ""),  # Poolhouse: SIGTERM/SIGINT sent to the worker alone
}


class EventLog:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "events.jsonl")
        self._fh = open(self.path, "a", buffering=1, encoding="utf-8")

    def emit(self, event: str, level: int = logging.INFO, event_id: int | None = None, **fields: Any) -> None:
        record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event}
        if event_id is not None:
            record["id"] = event_id
        record.update(fields)
        try:
            self._fh.write(json.dumps(record, default=str) + "\n")
        except (OSError, ValueError):
            pass
        # one event, one line: a value with a line break or another control character
        # (a worker's message, a path) is escaped, so it cannot pass for a line of its own
        text = " ".join(f"{k}={_one_line(v)}" for k, v in fields.items())
        log.log(level, "%s%s %s", event, f" [{event_id}]" if event_id else "", text)

    def close(self) -> None:
        self._fh.close()


def _one_line(value: Any) -> str:
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
