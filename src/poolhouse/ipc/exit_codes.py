"""Worker exit codes: a contract between workers and the activation service, which
reports them in its event log and counts the failures for rapid-fail protection."""

from __future__ import annotations

STOPPED = 0            # stopped or recycled on request, after draining
BOOT_FAILED = 2        # bad arguments, no queue or control channel: could not boot
APP_LOAD_FAILED = 3    # an application failed to import or to start (lifespan)
QUEUE_LOST = 4         # the listener closed the queue socket
CONTROL_LOST = 5       # the activation service went away
CONFIG_ERROR = 6       # the configuration handed over could not be used

DESCRIPTIONS = {
    STOPPED: "stopped",
    BOOT_FAILED: "could not boot",
    APP_LOAD_FAILED: "application failed to load",
    QUEUE_LOST: "queue connection lost",
    CONTROL_LOST: "control channel lost",
    CONFIG_ERROR: "configuration error",
}

# exits that are not the worker's fault and must not count towards rapid-fail protection
CLEAN = frozenset({STOPPED})


def describe(returncode: int) -> str:
    """``Popen.returncode`` as a reason: negative numbers are signals."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {-returncode} ({name})"
    return DESCRIPTIONS.get(returncode, f"exited with code {returncode}")
