"""The Python a pool's workers run on (``<python executable>``), checked before the
first worker of the pool starts on it.

A pool may run its workers in its own virtualenv: any Python >= 3.11 with Poolhouse's
worker runtime (the ``poolhouse`` package of the service's own version, and its
dependencies) installed.  Without the check a missing interpreter or runtime would show
as workers dying at boot with an anonymous exit code 1 until rapid-fail protection
stopped the pool; with it the pool is stopped at once with the reason (the file, the
import that failed, the version that differs).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from .. import __version__

MIN_PYTHON = (3, 11)
CHECK_TIMEOUT = 60.0

# What ``python -m poolhouse.worker`` needs before it can serve: the package, its
# configuration model (lxml) and its event loop (uvloop).
_PROBE = (
    "import json, sys\n"
    "info = {'python': list(sys.version_info[:3]), 'prefix': sys.prefix}\n"
    "try:\n"
    "    import poolhouse, poolhouse.worker.process, uvloop\n"
    "    info['version'] = poolhouse.__version__\n"
    "    info['location'] = poolhouse.__file__\n"
    "except Exception as exc:\n"
    "    info['error'] = f'{type(exc).__name__}: {exc}'\n"
    "print(json.dumps(info))\n"
)


class InterpreterError(Exception):
    """The pool's interpreter cannot run a worker; the message says why."""


class InterpreterCheck:
    """Checks interpreters once: a good one is remembered until its file changes
    (a bad one is checked again on the pool's next start)."""

    def __init__(self) -> None:
        self._good: dict[str, tuple[int, int]] = {}

    async def check(self, path: str, env: dict[str, str]) -> None:
        """Raises InterpreterError unless ``path`` can run this service's workers
        (with ``env``, the environment the workers get)."""
        if not path or path == sys.executable:
            return
        if not os.path.isabs(path):
            raise InterpreterError(f"python/@executable {path!r} is not an absolute path")
        try:
            st = os.stat(path)  # follows a venv's symlink to its base interpreter
        except OSError as exc:
            raise InterpreterError(f"python/@executable {path}: {exc.strerror or exc}") from None
        if not os.access(path, os.X_OK) or not os.path.isfile(path):
            raise InterpreterError(f"python/@executable {path} is not an executable file")
        stamp = (st.st_mtime_ns, st.st_ino)
        if self._good.get(path) == stamp:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                path, "-c", _PROBE, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise InterpreterError(f"python/@executable {path} cannot be started: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise InterpreterError(f"python/@executable {path} did not answer within {CHECK_TIMEOUT:.0f} s") from None
        try:
            info = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise InterpreterError(f"python/@executable {path} is not a working Python: {tail[0]}") from None
        version = tuple(info.get("python", ()))
        if version < MIN_PYTHON:
            raise InterpreterError(f"python/@executable {path} is Python {'.'.join(map(str, version))}; "
                                   f"workers need Python >= {'.'.join(map(str, MIN_PYTHON))}")
        if "error" in info:
            raise InterpreterError(
                f"python/@executable {path} lacks Poolhouse's worker runtime ({info['error']}); install it into "
                f"{info.get('prefix')}: {info.get('prefix')}/bin/pip install poolhouse=={__version__} "
                "(or the path of Poolhouse's source)")
        if info.get("version") != __version__:
            raise InterpreterError(
                f"python/@executable {path} has Poolhouse {info.get('version')} ({info.get('location')}); "
                f"the service is {__version__}: install the same version into {info.get('prefix')}")
        self._good[path] = stamp
