"""sd_notify without libsystemd: the environment it reads (and takes away from children),
the watchdog interval, and the datagrams it sends."""

from __future__ import annotations

import socket
import uuid

from poolhouse.activation.sd_notify import Notifier, socket_address, watchdog_interval


def test_watchdog_interval() -> None:
    assert watchdog_interval(None, None, 1) is None
    assert watchdog_interval("1000000", None, 1) == 0.5  # half of WatchdogSec
    assert watchdog_interval("1000000", "2", 1) is None  # WATCHDOG_PID names another process
    assert watchdog_interval("1000000", "1", 1) == 0.5
    assert watchdog_interval("bogus", None, 1) is None
    assert watchdog_interval("0", None, 1) is None


def test_socket_address() -> None:
    assert socket_address("@x") == b"\0x"  # Linux's abstract namespace
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_environment_is_taken_away_from_children() -> None:
    env = {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    notifier = Notifier.from_environment(env)
    assert env == {"PATH": "/bin"}
    assert notifier.enabled and notifier.watchdog is None  # WATCHDOG_PID=1 is not us


def test_without_notify_socket_nothing_is_sent() -> None:
    env = {"WATCHDOG_USEC": "4000000"}
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled and notifier.watchdog is None and env == {}
    notifier.ready("x")  # no socket, no error


def test_datagrams() -> None:
    name = f"@poolhouse-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(socket_address(name))
        manager.settimeout(5)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog == 1.0
        notifier.ready("1/1 application pools started\nforged=1")
        ready = manager.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1"
        # a newline inside a value cannot add a line of its own
        assert ready[1] == "STATUS=1/1 application pools started forged=1"
        notifier.ping()
        assert manager.recv(4096) == b"WATCHDOG=1"
        notifier.reloading()
        reloading = manager.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        notifier.stopping("draining")
        assert manager.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        notifier.close()


def test_a_missing_manager_does_not_raise() -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": f"@poolhouse-nobody-{uuid.uuid4().hex}"})
    notifier.ready("x")
    notifier.ping()
    notifier.close()
