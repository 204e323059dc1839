"""Resource limits of a pool's workers: the `cpu` element and a memory cap.

Where the machine lets us write a cgroup v2 hierarchy with the ``cpu`` and ``memory``
controllers (a writable cgroup2 mount whose subtree we may delegate), each pool gets
``poolhouse/<pool>`` there:

- ``cpu/@action="Throttle"`` (and ThrottleUnderLoad) -> ``cpu.max`` = ``limit`` (IIS's unit:
  1/1000 of a percent of the machine's CPU time) over a 100 ms period: a hard cap;
- ``periodicRestart/@privateMemory`` -> ``memory.max`` = twice that, per pool and worker
  count, a kernel backstop for a runaway allocation between two measurements (the
  recycle itself still happens by measurement at the configured value).

Under a service manager that delegated the service's own cgroup to it (systemd's
``Delegate=yes``, which the packaged unit sets), the pools' cgroups go beneath that one
instead, so the service manager still sees (and, at the end of a stop, kills) every
worker: the service moves itself to ``<own>/service`` (a cgroup with processes cannot
also hand controllers to children) and the pools get ``<own>/pools/<pool>``.

Otherwise (no cgroup v2, controllers not delegated, read-only) everything is done by
measurement: CPU time of the pool's workers is summed over ``resetInterval`` and
``KillW3wp`` stops them; ``Throttle`` cannot be enforced and is logged as such; memory is
measured every few seconds and the worker recycled.  Which of the two applies is said
once at start-up.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("poolhouse.activation")

CPU_PERIOD_US = 100_000


def _cgroup2_root() -> str | None:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def _own_cgroup() -> str:
    """This process's cgroup v2 path ("/" at the top; ``/system.slice/poolhouse.service``
    under systemd), from /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line.strip()[3:] or "/"
    except OSError:
        pass
    return "/"


def _delegated(path: str) -> bool:
    """systemd marks a cgroup it delegated (Delegate=yes) with this extended attribute."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


class CgroupManager:
    """Per-pool cgroups when possible; ``available`` False means measurement only."""

    def __init__(self, root: str | None = None, own: str | None = None) -> None:
        self.available = False
        self.delegated = False
        self.base = ""
        self.why = ""
        # CGI containment (docs/pipeline.md): each worker gets a cgroup of its own, owned
        # by its pool identity, in which it creates one cgroup per CGI run.  This needs
        # a writable cgroup v2 hierarchy, not the cpu and memory controllers.
        self.delegation = ""
        self.delegation_why = ""
        self.workers: dict[int, str] = {}
        self.leftovers: list[str] = []
        root = root if root is not None else _cgroup2_root()
        if root is None:
            self.why = self.delegation_why = "no cgroup v2 hierarchy is mounted"
            return
        own = own if own is not None else _own_cgroup()
        here = os.path.join(root, own.strip("/")) if own.strip("/") else root
        managed = here != root and os.path.isdir(here) and _delegated(here)
        if managed:
            self._use_delegated(here)  # the pools' limits beneath our own unit
        # the workers' own groups go below the service's own cgroup (under systemd, the
        # unit's: a stop still reaches every worker), beside the pools' limit groups
        delegation = self.base if self.available else os.path.join(here, "poolhouse")
        try:
            os.makedirs(delegation, exist_ok=True)
            self.delegation = delegation
        except OSError as exc:
            self.delegation_why = f"cannot create {delegation}: {exc.strerror}"
        if managed:
            return  # a delegated unit's cgroup, with or without its controllers: never the top
        self._hand_down(root, os.path.join(root, "poolhouse"), None, "the cgroup v2 hierarchy")

    def _use_delegated(self, here: str) -> None:
        """Our own delegated cgroup: move into a leaf, then hand cpu and memory down."""
        self._hand_down(here, os.path.join(here, "pools"), os.path.join(here, "service"), "the delegated cgroup")
        self.delegated = self.available

    def _hand_down(self, group: str, base: str, leaf: str | None, what: str) -> None:
        """Hand the cpu and memory controllers from ``group`` down to ``base``, the parent
        of the pools' groups; with ``leaf``, this process moves there first (a cgroup that
        holds processes cannot also hand controllers to its children).  Sets
        ``available`` and ``base``, or ``why``."""
        try:
            with open(os.path.join(group, "cgroup.controllers"), encoding="utf-8") as fh:
                controllers = set(fh.read().split())
        except OSError as exc:
            self.why = f"cannot read {group}/cgroup.controllers: {exc.strerror}"
            return
        missing = {"cpu", "memory"} - controllers
        if missing:
            self.why = f"{what} at {group} does not offer {', '.join(sorted(missing))}"
            return
        try:
            os.makedirs(base, exist_ok=True)
            if leaf is not None:
                os.makedirs(leaf, exist_ok=True)
                _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            _write(os.path.join(group, "cgroup.subtree_control"), "+cpu +memory")
            _write(os.path.join(base, "cgroup.subtree_control"), "+cpu +memory")
        except OSError as exc:
            self.why = f"cannot delegate cpu and memory under {group}: {exc.strerror}"
            return
        self.available = True
        self.base = base

    def describe(self) -> str:
        if self.available:
            limits = f"cgroup v2 at {self.base}: CPU throttling and a memory cap by the kernel"
        else:
            limits = f"measurement only ({self.why}): CPU and memory are measured, Throttle is not enforced"
        if self.delegation:
            cgi = f"CGI process trees contained by a cgroup per run under {self.delegation} and a subreaper"
        else:
            cgi = f"CGI process trees contained by a subreaper ({self.delegation_why})"
        return f"{limits}; {cgi}"

    def pool_group(self, pool: str, cpu_limit: int, throttle: bool, memory_max: int) -> str | None:
        """The pool's cgroup with its limits written; None when unavailable."""
        if not self.available:
            return None
        path = os.path.join(self.base, _folder_name(pool))
        try:
            os.makedirs(path, exist_ok=True)
            quota = "max"
            if throttle and cpu_limit > 0:
                # IIS: limit in 1/1000 % of the machine's CPU time
                quota = str(max(1000, int(CPU_PERIOD_US * (os.cpu_count() or 1) * cpu_limit / 100_000)))
            _write(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            _write(os.path.join(path, "memory.max"), str(memory_max) if memory_max > 0 else "max")
        except OSError as exc:
            log.warning("cannot set up the cgroup of application pool %s: %s", pool, exc)
            return None
        return path

    def place_worker(self, pool_group: str | None, pool: str, pid: int, uid: int, gid: int) -> None:
        """Move a new worker into ``<pool group>/w<pid>``, delegated to its identity
        (the directory and its cgroup.procs, cgroup.threads and cgroup.subtree_control
        owned by ``uid``, as the kernel's delegation model has it): the worker can then
        create a cgroup per CGI run below it and move the program there, but cannot
        leave its own group nor touch the pool's limits.  Without a usable hierarchy
        the worker stays where it is (or in ``pool_group``, for the limits alone)."""
        self._sweep()
        if not self.delegation:
            if pool_group is not None:
                self.add(pool_group, pid)
            return
        parent = pool_group or os.path.join(self.delegation, _folder_name(pool))
        group = os.path.join(parent, f"w{pid}")
        try:
            os.makedirs(group, exist_ok=True)
            if uid != os.geteuid() or gid != os.getegid():
                for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
                    os.chown(os.path.join(group, name), uid, gid)
            _write(os.path.join(group, "cgroup.procs"), str(pid))
        except OSError as exc:
            log.warning("cannot give worker %d of application pool %s a cgroup of its own (%s): its CGI "
                        "runs are contained by a subreaper alone", pid, pool, exc)
            if pool_group is not None:
                self.add(pool_group, pid)
            return
        self.workers[pid] = group

    def release_worker(self, pid: int) -> None:
        """A worker exited: kill whatever is left in its cgroup (a CGI program whose
        launcher died with the worker) and remove it."""
        group = self.workers.pop(pid, None)
        if group is None:
            return
        try:
            _write(os.path.join(group, "cgroup.kill"), "1")
        except OSError:
            for child in _subgroups(group):
                for victim in _procs(child):
                    try:
                        os.kill(victim, 9)
                    except OSError:
                        pass
        if not _drop_worker_group(group):
            self.leftovers.append(group)

    def _sweep(self) -> None:
        """Retry the removal of groups that were still busy when their worker exited."""
        if self.leftovers:
            self.leftovers = [g for g in self.leftovers if not _drop_worker_group(g)]

    def add(self, group: str, pid: int) -> None:
        try:
            _write(os.path.join(group, "cgroup.procs"), str(pid))
        except OSError as exc:
            log.warning("cannot move worker %d into %s: %s", pid, group, exc)


def _folder_name(pool: str) -> str:
    """A pool's cgroup folder name: never a path, never "." or "..", never the name of one
    of the hierarchy's own files (``cgroup.procs``, ``cpu.max``: they all hold a dot)."""
    name = pool.replace("/", "_").replace("\0", "_")
    return name if name and "." not in name else "pool-" + name


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(value)


def _subgroups(group: str) -> list[str]:
    """``group`` and every cgroup below it, deepest first."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(group, topdown=False):
        out.append(dirpath)
    return out


def _procs(group: str) -> list[int]:
    try:
        with open(os.path.join(group, "cgroup.procs"), encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []


def _drop_worker_group(group: str) -> bool:
    """Remove a worker's group, and its pool's folder once no worker is left in it."""
    if not _remove_tree(group):
        return False
    try:
        os.rmdir(os.path.dirname(group))
    except OSError:
        pass  # other workers' groups, or the pool's limits group in use: kept
    return True


def _remove_tree(group: str) -> bool:
    """rmdir ``group`` and its sub-groups (processes leave a killed cgroup as they exit:
    a few short retries)."""
    for _ in range(5):
        try:
            for path in _subgroups(group):
                os.rmdir(path)
            return True
        except FileNotFoundError:
            continue
        except OSError:
            time.sleep(0.01)
    return not os.path.exists(group)


# ---- measurement ----------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(virtual KB, private KB) of a process: private = resident minus shared pages, the
    nearest cheap Linux figure to Windows' private bytes (one read of /proc/PID/statm)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            size, resident, shared = (int(x) for x in fh.read().split()[:3])
    except (OSError, ValueError):
        return None
    return size * _PAGE // 1024, max(0, resident - shared) * _PAGE // 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return 0.0
