"""The Python a pool's workers run on (``<python executable>``, by default the service's
own), checked before the first worker of the pool starts on it, for the pool's identity:
can it execute the interpreter, read its standard library and Poolhouse's worker
runtime, and read the pool's folders.  A pool's own ``<python executable>`` is started
once as the identity (the kernel answers); the service's own interpreter is checked by
the files' modes and ACLs (``acl.blocking``), which costs no process on every pool's
first request.

A pool may run its workers in its own virtualenv: any Python >= 3.11 with Poolhouse's
worker runtime (the ``poolhouse`` package of the service's own version, and its
dependencies) installed.  Without the check a missing interpreter or runtime would show
as workers dying at boot with an anonymous exit code 1 until rapid-fail protection
stopped the pool (or, before, as workers silently running as root); with it the pool is
stopped at once with the reason (the file or folder that stops the identity, the import
that failed, the version that differs).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from .. import __version__
from . import acl

if TYPE_CHECKING:
    from .identity import Identity

MIN_PYTHON = (3, 11)
CHECK_TIMEOUT = 60.0

# What ``python -m poolhouse.worker`` needs before it can serve: the package, its
# configuration model (lxml) and its event loop (uvloop).
_PROBE = (
    "import json, sys\n"
    "info = {'python': list(sys.version_info[:3]), 'prefix': sys.prefix, 'path': sys.path}\n"
    "try:\n"
    "    import poolhouse, poolhouse.worker.process, uvloop\n"
    "    info['version'] = poolhouse.__version__\n"
    "    info['location'] = poolhouse.__file__\n"
    "except Exception as exc:\n"
    "    info['error'] = f'{type(exc).__name__}: {exc}'\n"
    "    info['blocked'] = getattr(exc, 'filename', None)\n"
    "import os\n"
    "for want in sys.argv[1:]:\n"
    "    if 'error' in info:\n"
    "        break\n"
    "    if not os.access(want, os.R_OK | (os.X_OK if os.path.isdir(want) else 0)):\n"
    "        parts = os.path.realpath(want).split(os.sep)\n"
    "        stop = next((os.sep.join(parts[:i]) for i in range(2, len(parts))\n"
    "                     if not os.access(os.sep.join(parts[:i]), os.X_OK)), want)\n"
    "        info['error'] = f'cannot read {want}'\n"
    "        info['blocked'] = stop\n"
    "print(json.dumps(info))\n"
)


class InterpreterError(Exception):
    """The pool's interpreter cannot run a worker; the message says why.  ``blocked``:
    the file or folder the pool's identity cannot reach, when that is the reason."""

    def __init__(self, message: str, blocked: str | None = None) -> None:
        super().__init__(message)
        self.blocked = blocked


class InterpreterCheck:
    """Checks interpreters once: a good one is remembered until its file changes
    (a bad one is checked again on the pool's next start)."""

    def __init__(self) -> None:
        self._good: dict[tuple[Any, ...], tuple[int, int]] = {}

    async def check(self, path: str, env: dict[str, str], identity: "Identity | None" = None,
                    folders: tuple[str, ...] = ()) -> None:
        """Raises InterpreterError unless ``path`` (empty: this service's interpreter)
        can run this service's workers with ``env`` (the environment the workers get)
        and, when given, as ``identity`` reading ``folders``."""
        switch = identity is not None and identity.switch
        if not path or path == sys.executable:
            if switch and identity is not None:
                _check_own(identity, folders)
            return
        if not os.path.isabs(path):
            raise InterpreterError(f"python/@executable {path!r} is not an absolute path")
        try:
            st = os.stat(path)  # follows a venv's symlink to its base interpreter
        except OSError as exc:
            raise InterpreterError(f"python/@executable {path}: {exc.strerror or exc}") from None
        if not os.access(path, os.X_OK) or not os.path.isfile(path):
            raise InterpreterError(f"python/@executable {path} is not an executable file")
        key = (path, identity.uid if switch and identity else None, identity.gids if switch and identity else None,
               folders)
        stamp = (st.st_mtime_ns, st.st_ino)
        if self._good.get(key) == stamp:
            return
        kw: dict[str, Any] = {}
        if switch and identity is not None:
            blocked = acl.blocking(path, identity.uid, identity.gids, acl.X)
            if blocked is not None:
                raise InterpreterError(f"{identity.name} (uid {identity.uid}) cannot execute {path}: "
                                       f"{blocked} is closed to it", blocked)
            kw["preexec_fn"] = _switch_to(identity)
        try:
            proc = await asyncio.create_subprocess_exec(
                path, "-c", _PROBE, *(folders if switch else ()), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **kw)
        except OSError as exc:
            who = f" as {identity.name} (uid {identity.uid})" if switch and identity else ""
            raise InterpreterError(f"python/@executable {path} cannot be started{who}: {exc.strerror or exc}",
                                   _runtime_block(path, identity) if switch else None) from None
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
            who = f" as {identity.name} (uid {identity.uid})" if switch and identity else ""
            raise InterpreterError(f"python/@executable {path} is not a working Python{who}: {tail[0]}",
                                   _runtime_block(path, identity) if switch else None) from None
        version = tuple(info.get("python", ()))
        if version < MIN_PYTHON:
            raise InterpreterError(f"python/@executable {path} is Python {'.'.join(map(str, version))}; "
                                   f"workers need Python >= {'.'.join(map(str, MIN_PYTHON))}")
        if "error" in info:
            blocked = info.get("blocked")
            if switch and identity is not None and not blocked:
                # an import path the identity cannot search looks like a missing package
                blocked = next((b for b in (acl.blocking(p, identity.uid, identity.gids)
                                            for p in info.get("path", []) if p and os.path.isdir(p)) if b), None)
            if switch and identity is not None and blocked:
                raise InterpreterError(f"{identity.name} (uid {identity.uid}) {info['error']}: "
                                       f"{blocked} is closed to it", str(blocked))
            raise InterpreterError(
                f"python/@executable {path} lacks Poolhouse's worker runtime ({info['error']}); install it into "
                f"{info.get('prefix')}: {info.get('prefix')}/bin/pip install poolhouse=={__version__} "
                "(or the path of Poolhouse's source)")
        if info.get("version") != __version__:
            raise InterpreterError(
                f"python/@executable {path} has Poolhouse {info.get('version')} ({info.get('location')}); "
                f"the service is {__version__}: install the same version into {info.get('prefix')}")
        self._good[key] = stamp


def _check_own(identity: "Identity", folders: tuple[str, ...]) -> None:
    """This service's own interpreter and runtime, and ``folders``, as ``identity``
    would reach them (by their modes and ACLs: no process to start on each pool's
    first request; whatever this misses makes the worker fail its boot, which rapid-fail
    protection counts — never a worker as root)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = os.path.dirname(os.__file__)  # the standard library
    wanted = [(sys.executable, acl.X), (lib, 0), (package, 0)]
    wanted += [(p, 0) for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]
    for path, extra in wanted:
        blocked = acl.blocking(path, identity.uid, identity.gids, extra)
        if blocked is not None:
            raise InterpreterError(f"{identity.name} (uid {identity.uid}) cannot use Poolhouse's runtime "
                                   f"{path}: {blocked} is closed to it", blocked)
    for path in folders:
        blocked = acl.blocking(path, identity.uid, identity.gids)
        if blocked is not None:
            raise InterpreterError(f"{identity.name} (uid {identity.uid}) cannot read {path}: "
                                   f"{blocked} is closed to it", blocked)


def _switch_to(identity: "Identity") -> Any:
    uid, gid, groups = identity.uid, identity.gid, list(identity.groups)

    def switch() -> None:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    return switch


def _runtime_block(path: str, identity: "Identity | None") -> str | None:
    """The folder that keeps ``identity`` from the interpreter's own files, if any."""
    if identity is None:
        return None
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(path))), "lib")
    return acl.blocking(path, identity.uid, identity.gids, acl.X) or acl.blocking(lib, identity.uid, identity.gids)
