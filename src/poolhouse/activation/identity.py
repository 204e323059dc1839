"""Pool identities: which Unix user a pool's workers run as (processModel/@identityType).

Only when the service runs as root; otherwise every worker runs as the service's user
and this module says so once.

| identityType | Unix identity |
|---|---|
| ApplicationPoolIdentity (default) | a per-pool uid/gid allocated by Poolhouse (below) |
| SpecificUser | ``userName`` looked up in the password database (its primary group) |
| LocalService, NetworkService | ``nobody`` |
| LocalSystem | root (as IIS's LocalSystem: every privilege; logged as a warning) |

ApplicationPoolIdentity uids are allocated from ``APPPOOL_UID_BASE`` upwards, one per pool
name, the first time a pool runs, and recorded in ``<state dir>/identities.json`` so a
pool keeps its uid across restarts (the files its workers wrote stay theirs).  The gid is
the same number.  Such a uid has no password-database entry and no supplementary group.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import stat
from dataclasses import dataclass

from ..config.model import Pool

log = logging.getLogger("poolhouse.activation")

APPPOOL_UID_BASE = 810000  # above every distribution's and systemd's dynamic ranges
APPPOOL_UID_MAX = 819999


class IdentityError(Exception):
    """The pool's identity cannot be used (unknown user): the pool cannot start."""


@dataclass(frozen=True)
class Identity:
    name: str  # as shown: "IIS APPPOOL\\<pool>", a user name, "root"
    uid: int
    gid: int
    switch: bool  # False: run as the service's own user (not root, or LocalSystem)


class IdentityAllocator:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "identities.json")
        self.is_root = os.geteuid() == 0
        self._table: dict[str, int] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict):
                self._table = {str(k): int(v) for k, v in data.items()}
        except (OSError, ValueError):
            pass

    def _allocate(self, pool: str) -> int:
        key = pool.lower()
        uid = self._table.get(key)
        if uid is None:
            used = set(self._table.values())
            uid = next(u for u in range(APPPOOL_UID_BASE, APPPOOL_UID_MAX + 1) if u not in used)
            self._table[key] = uid
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._table, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return uid

    def for_pool(self, pool: Pool) -> Identity:
        uid, gid = os.geteuid(), os.getegid()
        if not self.is_root:
            return Identity(pwd.getpwuid(uid).pw_name if _known(uid) else str(uid), uid, gid, False)
        kind = pool.identity_type
        if kind == "SpecificUser":
            try:
                entry = pwd.getpwnam(pool.user_name)
            except KeyError:
                raise IdentityError(f"application pool {pool.name!r}: no user named "
                                    f"{pool.user_name!r} (processModel/@userName)") from None
            return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, True)
        if kind in ("LocalService", "NetworkService"):
            entry = pwd.getpwnam("nobody")
            return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, True)
        if kind == "LocalSystem":
            return Identity("root", 0, 0, False)
        uid = self._allocate(pool.name)
        return Identity(f"IIS APPPOOL\\{pool.name}", uid, uid, True)


def can_read(path: str, identity: Identity) -> bool:
    """Could ``identity`` reach and read ``path`` by its mode bits (every parent folder
    searchable, the path itself readable)?  ACLs are not consulted, so a False may be
    wrong in the safe direction only (the identity is not used)."""
    return blocking_folder(path, identity) is None


def blocking_folder(path: str, identity: Identity) -> str | None:
    """The first component of ``path`` (symbolic links resolved) that ``identity`` may
    not search or read, or None."""
    path = os.path.realpath(path)  # the folders that matter are those of the real file
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        current = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(current)
        except OSError:
            return current
        need = 0o4 if i == len(parts) else 0o1
        if i == len(parts) and stat.S_ISDIR(st.st_mode):
            need = 0o5
        if st.st_uid == identity.uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid == identity.gid:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & need != need:
            return current
    return None


def unreadable(paths: list[str], identity: Identity) -> str | None:
    """Of the first of ``paths`` the identity cannot read, the folder (or file) that
    stops it; None if it can read them all."""
    for path in paths:
        if path:
            blocked = blocking_folder(path, identity)
            if blocked is not None:
                return blocked
    return None


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def prepare_pool_dirs(state_dir: str, pool: str, identity: Identity) -> str:
    """The pool's private temporary folder (TMPDIR of its workers), owned by its identity
    and closed to other pools; the rest of the state directory stays the service's."""
    path = os.path.join(state_dir, "temp", "apppools", pool)
    os.makedirs(path, mode=0o700, exist_ok=True)
    if identity.switch:
        os.chown(path, identity.uid, identity.gid)
        # workers may traverse temp/ and temp/apppools/ to reach their own folder only
        for d in (os.path.join(state_dir, "temp"), os.path.join(state_dir, "temp", "apppools")):
            os.chmod(d, 0o711)
    os.chmod(path, 0o700)
    return path


def lock_down_state_dir(state_dir: str) -> None:
    """As root: the service's files (configuration, logs, sockets) are not readable by
    the pool identities."""
    if os.geteuid() != 0:
        return
    os.chmod(state_dir, 0o711)
    for sub in ("config", "logs", "run"):
        path = os.path.join(state_dir, sub)
        if os.path.isdir(path):
            os.chmod(path, 0o700)
