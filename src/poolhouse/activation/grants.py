"""What the service grants pool identities on files it does not own, and how to take it
back (``poolhouse grants --revoke``).

IIS gives every worker the ``IIS_IUSRS`` group (setup grants it read access to IIS's own
files) and lets an administrator grant ``IIS AppPool\\<pool>`` access to a site's
content.  Poolhouse does both as POSIX ACL entries (``acl.py``), only where the identity
lacks the access, and records each entry it adds in ``<state dir>/grants.json`` (mode
0600) so that it can be removed exactly:

- ``IIS_IUSRS`` (gid ``IUSRS_GID``, a supplementary group of every worker that does not
  run as root): search (``--x``) on the folders above Poolhouse's runtime — its package,
  the interpreter and the environment it runs in — that the group cannot search, e.g. a
  checkout under a 0700 home folder;
- ``IIS AppPool\\<pool>`` (its uid): search on the folders above each physical folder of
  the pool's applications, read (``r-x``, and the same as default ACL of folders so new
  files inherit it) on a physical folder it cannot read and everything below it, and read
  on the users files applicationHost.config gives the pool's applications.

Accounts the administrator names (SpecificUser, LocalService and NetworkService, i.e.
``nobody``) get nothing beyond IIS_IUSRS: they are given what they need by whoever chose
them, and a pool whose account cannot reach its folders does not start (event 5059, with
the command that fixes it).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

from . import acl

log = logging.getLogger("poolhouse.activation")

IUSRS_GID = 809999  # just below the ApplicationPoolIdentity uids; no /etc/group entry needed
IUSRS = "IIS_IUSRS"

_TAGS = {"user": acl.USER, "group": acl.GROUP}
_WHICH = {"access": acl.ACCESS, "default": acl.DEFAULT}


class Grants:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "grants.json")
        self.records: list[dict[str, Any]] = []
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, list):
                self.records = [r for r in data if isinstance(r, dict)]
        except (OSError, ValueError):
            pass

    # -- granting ----------------------------------------------------------------------

    def add(self, path: str, kind: str, ident: int, perm: int, holder: str, which: str = "access") -> bool:
        """Adds ``perm`` for the user or group ``ident`` on ``path``'s ACL if it lacks
        it; True when something was added (and recorded)."""
        attr = _WHICH[which]
        tag = _TAGS[kind]
        st = os.stat(path)
        if which == "access":
            entries = acl.effective(path, st)
        else:
            entries = acl.read(path, attr) or acl.from_mode(st.st_mode)
        current = next((e for e in entries if e.tag == tag and e.id == ident), None)
        have = current.perm if current is not None else 0
        if have & perm == perm:
            mask = next((e.perm for e in entries if e.tag == acl.MASK), 7)
            if mask & perm != perm:  # a chmod narrowed the mask since: widen it again
                acl.write(path, entries, attr)
            return False
        entries = [e for e in entries if e is not current] + [acl.Entry(tag, ident, have | perm)]
        acl.write(path, entries, attr)
        self.records.append({"path": path, "which": which, "kind": kind, "id": ident,
                             "added": perm & ~have, "created": current is None, "for": holder})
        self._save()
        return True

    def open_path(self, path: str, kind: str, ident: int, uid: int, gids: tuple[int, ...], holder: str) -> list[str]:
        """Search on every folder above ``path`` (resolved) that ``uid``/``gids`` cannot
        search; returns the folders changed."""
        changed = []
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        for i in range(1, len(parts)):
            folder = os.sep.join(parts[:i]) or os.sep
            try:
                if acl.can(folder, uid, gids, acl.X):
                    continue
            except OSError:
                break  # missing: the check that follows names it
            if self.add(folder, kind, ident, acl.X, holder):
                changed.append(folder)
        return changed

    def open_tree(self, root: str, uid: int, gids: tuple[int, ...], holder: str) -> list[str]:
        """Read for the user ``uid`` on ``root`` and everything below it (files ``r``,
        folders ``r-x`` as access and default ACL), when it cannot read ``root``."""
        real = os.path.realpath(root)
        if not os.path.isdir(real) or acl.can(real, uid, gids, acl.R | acl.X):
            return []
        changed = []
        for folder, dirs, files in os.walk(real):
            self.add(folder, "user", uid, acl.R | acl.X, holder)
            self.add(folder, "user", uid, acl.R | acl.X, holder, "default")
            changed.append(folder)
            for name in files:
                p = os.path.join(folder, name)
                if stat.S_ISREG(os.lstat(p).st_mode):
                    self.add(p, "user", uid, acl.R, holder)
        return changed

    def open_file(self, path: str, uid: int, gids: tuple[int, ...], holder: str) -> bool:
        real = os.path.realpath(path)
        if not os.path.isfile(real) or acl.can(real, uid, gids, acl.R):
            return False
        return self.add(real, "user", uid, acl.R, holder)

    # -- revoking ----------------------------------------------------------------------

    def revoke(self, holder: str | None = None) -> list[dict[str, Any]]:
        """Takes back what was granted (to ``holder`` only, or everything), newest first;
        returns the records undone (a file gone since is skipped)."""
        undone, kept = [], []
        for record in reversed(self.records):
            if holder is not None and record.get("for", "").lower() != holder.lower():
                kept.append(record)
                continue
            try:
                self._undo(record)
            except (OSError, acl.AclError) as exc:
                log.warning("cannot revoke %s on %s: %s", record.get("for"), record.get("path"), exc)
            undone.append(record)
        self.records = list(reversed(kept))
        self._save()
        return undone

    def _undo(self, record: dict[str, Any]) -> None:
        path, which = str(record["path"]), _WHICH[str(record["which"])]
        tag, ident = _TAGS[str(record["kind"])], int(record["id"])
        entries = acl.read(path, which)
        if entries is None:
            return
        out = []
        for e in entries:
            if e.tag == tag and e.id == ident:
                if record.get("created"):
                    continue
                e = acl.Entry(e.tag, e.id, e.perm & ~int(record["added"]))
            out.append(e)
        if which == acl.DEFAULT and not any(e.tag in (acl.USER, acl.GROUP) for e in out):
            os.removexattr(path, which)
            return
        acl.write(path, out, which)

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.records, fh, indent=1)
        os.replace(tmp, self.path)
