"""Pool identities: which Unix user a pool's workers run as (processModel/@identityType).

Only when the service runs as root; otherwise every worker runs as the service's user
and this module says so once.

| identityType | Unix identity |
|---|---|
| ApplicationPoolIdentity (default) | a per-pool uid/gid allocated by Poolhouse (below) |
| SpecificUser | ``userName`` looked up in the password database (its primary group) |
| LocalService, NetworkService | ``nobody`` |
| LocalSystem | root (as IIS's LocalSystem: every privilege; logged as a warning) |

Every worker that does not run as root also has the supplementary group ``IIS_IUSRS``
(``grants.IUSRS_GID``), as IIS adds that group to every worker's token: it is what lets
workers reach Poolhouse's own runtime (``grants.py``).  A SpecificUser keeps its own
groups besides.  No identity ever falls back to the service's: a pool whose identity
cannot start its worker does not start (``service.worker_identity``).

ApplicationPoolIdentity uids are allocated from ``APPPOOL_UID_BASE`` upwards, one per pool
name, the first time a pool runs, and recorded in ``<state dir>/identities.json`` so a
pool keeps its uid across restarts (the files its workers wrote stay theirs); the table is
readable by the service alone.  The gid is the same number.  Such a uid has no
password-database entry.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
from dataclasses import dataclass, field

from ..config.model import Pool
from . import acl
from .grants import IUSRS_GID

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
    groups: tuple[int, ...] = field(default=())  # supplementary groups of its workers
    kind: str = "ApplicationPoolIdentity"  # processModel/@identityType

    @property
    def gids(self) -> tuple[int, ...]:
        return (self.gid, *self.groups)


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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
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
            own = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
            return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, True, (*own, IUSRS_GID), kind)
        if kind in ("LocalService", "NetworkService"):
            entry = pwd.getpwnam("nobody")
            return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, True, (IUSRS_GID,), kind)
        if kind == "LocalSystem":
            return Identity("root", 0, 0, False, (), kind)
        uid = self._allocate(pool.name)
        return Identity(f"IIS APPPOOL\\{pool.name}", uid, uid, True, (IUSRS_GID,), kind)


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
    # and its folder of the static compression cache (IIS: "IIS Temporary Compressed
    # Files\<pool>", httpCompression/@directory's default)
    compressed = os.path.join(state_dir, "temp", "IIS Temporary Compressed Files", pool)
    for folder in (path, compressed):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if identity.switch:
            os.chown(folder, identity.uid, identity.gid)
            # workers may traverse the folders above to reach their own folder only
            os.chmod(os.path.dirname(folder), 0o711)
            os.chmod(os.path.dirname(os.path.dirname(folder)), 0o711)
        os.chmod(folder, 0o700)
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
            # keep the group bits of a folder with an ACL: they are its mask, and the
            # entries granted on it (a pool's search of logs/ for its failed request
            # traces) must stay effective
            mode = os.stat(path).st_mode
            os.chmod(path, 0o700 | (mode & 0o070 if acl.read(path) else 0))
    # what is created in logs/ (access logs, HTTPERR, events) is the service's alone,
    # whoever may search logs/ to reach its own failed request traces
    logs = os.path.join(state_dir, "logs")
    if os.path.isdir(logs):
        try:
            os.setxattr(logs, acl.DEFAULT, acl.encode(acl.from_mode(0o700)))
        except OSError:
            pass  # no ACLs on this file system: logs/ stays 0700 and nothing is granted on it
        for name in os.listdir(logs):
            path = os.path.join(logs, name)
            if name != "FailedReqLogFiles" and not os.path.islink(path):
                os.chmod(path, 0o700 if os.path.isdir(path) else 0o600)
    for name in ("identities.json", "grants.json"):  # written 0600; older ones too
        path = os.path.join(state_dir, name)
        if os.path.isfile(path):
            os.chmod(path, 0o600)
