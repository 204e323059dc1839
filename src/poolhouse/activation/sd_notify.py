"""systemd's service notification protocol (sd_notify(3)), without libsystemd: datagrams
of ``KEY=VALUE`` lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an
abstract name written with a leading ``@``).

Under ``Type=notify`` the activation service says ``READY=1`` once the listener listens
and the management socket answers, ``RELOADING=1`` .. ``READY=1`` around a configuration
reload, ``STOPPING=1`` when it starts to drain, ``STATUS=`` a one-line summary of pools
and workers, and ``WATCHDOG=1`` every half ``WatchdogSec`` when the unit sets one.

The variables are taken out of the environment when read, so neither the listener nor
any worker (application code) inherits them: only the service speaks for the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("poolhouse.activation")

VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET as a socket address: ``@name`` is Linux's abstract namespace."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when no watchdog applies to this process."""
    if not usec:
        return None
    if pid and pid.strip() != str(own_pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Sends notifications; does nothing when the service was not started with
    $NOTIFY_SOCKET.  A failed send is logged once and never stops the service."""

    def __init__(self, address: str | bytes | None, watchdog: float | None) -> None:
        self.address = address
        self.watchdog = watchdog
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET") or None
        watchdog = watchdog_interval(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid())
        for key in VARIABLES:
            env.pop(key, None)
        return cls(socket_address(name) if name else None, watchdog if name else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at $NOTIFY_SOCKET: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
