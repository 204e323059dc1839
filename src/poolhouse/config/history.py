"""Configuration history and backups (IIS's AppHostSvc and ``appcmd add/restore backup``).

Each accepted applicationHost.config is copied to
``<history>/CFGHISTORY_NNNNNNNNNN/applicationHost.config`` (10-digit serial; the folder
is ``configHistory/@path`` or ``<state dir>/config/history``), keeping the newest
``maxHistories``; a copy identical to the newest one is not taken again.  Named backups
live in ``<state dir>/config/backup/NAME/applicationHost.config``.  Restoring writes a
copy back over the served file (atomically, by rename), which the activation service's
watcher then validates and applies like any other edit.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

FILE = "applicationHost.config"
PREFIX = "CFGHISTORY_"
_SERIAL = re.compile(r"^CFGHISTORY_(\d{10})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass
class Snapshot:
    name: str
    kind: str  # "history" | "backup"
    path: str  # the applicationHost.config copy
    time: float
    size: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "path": self.path,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
                "size": self.size}


def history_dir(state_dir: str, configured: str = "") -> str:
    return configured or os.path.join(state_dir, "config", "history")


def backup_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "config", "backup")


def _serials(folder: str) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SERIAL.match(n)))


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one rename (readers see the old or the new file)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".poolhouse-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def snapshot(folder: str, data: bytes, max_histories: int) -> str | None:
    """Store ``data`` as the next CFGHISTORY_ copy unless it equals the newest one;
    delete the oldest beyond ``max_histories``.  Returns the new copy's path or None."""
    os.makedirs(folder, exist_ok=True)
    serials = _serials(folder)
    if serials:
        newest = os.path.join(folder, f"{PREFIX}{serials[-1]:010d}", FILE)
        try:
            with open(newest, "rb") as fh:
                if fh.read() == data:
                    return None
        except OSError:
            pass
    serial = (serials[-1] + 1) if serials else 1
    target = os.path.join(folder, f"{PREFIX}{serial:010d}")
    os.makedirs(target)
    path = os.path.join(target, FILE)
    write_atomic(path, data)
    serials.append(serial)
    for old in serials[: max(0, len(serials) - max(1, max_histories))]:
        shutil.rmtree(os.path.join(folder, f"{PREFIX}{old:010d}"), ignore_errors=True)
    return path


def backup(state_dir: str, name: str, data: bytes) -> str:
    """A named backup; refuses a name that exists or is not a plain folder name."""
    if not _NAME.match(name):
        raise ValueError(f"invalid backup name '{name}'; use letters, digits, '.', '_', '-'")
    target = os.path.join(backup_dir(state_dir), name)
    if os.path.exists(target):
        raise ValueError(f"a backup named '{name}' already exists")
    os.makedirs(target)
    path = os.path.join(target, FILE)
    write_atomic(path, data)
    return path


def list_snapshots(state_dir: str, configured_history: str = "") -> list[Snapshot]:
    out: list[Snapshot] = []
    hist = history_dir(state_dir, configured_history)
    for serial in _serials(hist):
        name = f"{PREFIX}{serial:010d}"
        out.append(_snap(name, "history", os.path.join(hist, name, FILE)))
    folder = backup_dir(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        names = []
    for name in names:
        path = os.path.join(folder, name, FILE)
        if os.path.isfile(path):
            out.append(_snap(name, "backup", path))
    return [s for s in out if s.size >= 0]


def _snap(name: str, kind: str, path: str) -> Snapshot:
    try:
        st = os.stat(path)
        return Snapshot(name, kind, path, st.st_mtime, st.st_size)
    except OSError:
        return Snapshot(name, kind, path, 0.0, -1)


def find(state_dir: str, name: str, configured_history: str = "") -> Snapshot:
    for snap in list_snapshots(state_dir, configured_history):
        if snap.name == name:
            return snap
    raise KeyError(f"no backup or history snapshot named '{name}'")


__all__ = ["Snapshot", "backup", "backup_dir", "find", "history_dir", "list_snapshots",
           "snapshot", "write_atomic"]
