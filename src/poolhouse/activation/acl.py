"""POSIX access control lists, read and written as the kernel stores them (the
``system.posix_acl_access`` / ``system.posix_acl_default`` extended attributes), and the
kernel's access check over them.

Poolhouse grants pool identities what they need the way IIS grants ``IIS_IUSRS`` and
``IIS AppPool\\<pool>`` read access to content: by adding one entry for the identity to
the file's ACL, never by changing its owner, group or mode bits.  This module is the pure
part (encode, decode, evaluate) plus the two calls that read and write the attributes;
``grants.py`` decides what to grant and remembers it so it can be revoked.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclError(Exception):
    """An ACL could not be read or written (the file system may not support them)."""


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int  # UNDEFINED_ID for the *_OBJ, MASK and OTHER entries
    perm: int


def decode(data: bytes) -> list[Entry]:
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise AclError("malformed ACL attribute")
    (version,) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise AclError(f"ACL attribute version {version}")
    out = []
    for off in range(_HEADER.size, len(data), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(data, off)
        out.append(Entry(tag, ident, perm))
    return out


def encode(entries: list[Entry]) -> bytes:
    """The attribute's bytes: entries sorted by tag then id, as the kernel requires."""
    ordered = sorted(entries, key=lambda e: (e.tag, e.id))
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm & 7, e.id) for e in ordered)


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL equivalent to the mode bits (a file without an ACL attribute)."""
    return [Entry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7), Entry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
            Entry(OTHER, UNDEFINED_ID, mode & 7)]


def with_mask(entries: list[Entry]) -> list[Entry]:
    """``entries`` with the mask recomputed as the union of the group class (what
    ``setfacl`` does), so adding a named entry never narrows the owning group's access;
    no mask when there is no named entry."""
    base = [e for e in entries if e.tag != MASK]
    named = [e for e in base if e.tag in (USER, GROUP)]
    if not named:
        return base
    union = 0
    for e in base:
        if e.tag in (GROUP_OBJ, USER, GROUP):
            union |= e.perm
    return base + [Entry(MASK, UNDEFINED_ID, union)]


def permits(entries: list[Entry], owner: int, group: int, uid: int, gids: tuple[int, ...], need: int) -> bool:
    """The kernel's check (``posix_acl_permission``): owner, then named user, then the
    groups (any matching entry that grants), then other; named and group entries are
    limited by the mask."""
    mask = next((e.perm for e in entries if e.tag == MASK), 7)
    if uid == owner:
        return next((e.perm for e in entries if e.tag == USER_OBJ), 0) & need == need
    for e in entries:
        if e.tag == USER and e.id == uid:
            return e.perm & mask & need == need
    found = False
    for e in entries:
        if (e.tag == GROUP_OBJ and group in gids) or (e.tag == GROUP and e.id in gids):
            if e.perm & mask & need == need:
                return True
            found = True
    if found:
        return False
    return next((e.perm for e in entries if e.tag == OTHER), 0) & need == need


def read(path: str, which: str = ACCESS) -> list[Entry] | None:
    """The ACL stored on ``path`` (None: it has none, only its mode bits)."""
    try:
        return decode(os.getxattr(path, which))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise AclError(f"{path}: {exc.strerror}") from None


def effective(path: str, st: os.stat_result | None = None) -> list[Entry]:
    """The access ACL of ``path``, from its attribute or its mode bits."""
    st = st if st is not None else os.stat(path)
    return read(path) or from_mode(st.st_mode)


def write(path: str, entries: list[Entry], which: str = ACCESS) -> None:
    """Stores ``entries`` (mask recomputed); an ACL left with no named entry is removed
    and, for the access ACL, the mode's group bits given back to the owning group."""
    entries = with_mask(entries)
    try:
        if any(e.tag in (USER, GROUP) for e in entries):
            os.setxattr(path, which, encode(entries))
            return
        if which == ACCESS:
            group = next(e.perm for e in entries if e.tag == GROUP_OBJ)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            os.chmod(path, (mode & ~0o070) | (group << 3))
        try:
            os.removexattr(path, which)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    except OSError as exc:
        raise AclError(f"{path}: cannot set its access control list: {exc.strerror}") from None


def can(path: str, uid: int, gids: tuple[int, ...], need: int) -> bool:
    """Would ``uid`` with ``gids`` be granted ``need`` on ``path`` itself?"""
    st = os.stat(path)
    return permits(effective(path, st), st.st_uid, st.st_gid, uid, gids, need)


def blocking(path: str, uid: int, gids: tuple[int, ...], need_last: int = 0) -> str | None:
    """The first folder on the way to ``path`` that ``uid`` may not search, or ``path``
    itself if it may not read it (and list it, for a folder; ``need_last``: other
    permissions wanted on it, e.g. X for a program); None when it can.  Both ways count:
    the folders of the path as written (a symbolic link is reached through them) and
    those of its target.  A missing component is returned as blocking."""
    written = os.path.abspath(path)
    real = os.path.realpath(path)
    for walk in ((written, real) if written != real else (real,)):
        parts = walk.split(os.sep)
        for i in range(1, len(parts) + 1):
            current = os.sep.join(parts[:i]) or os.sep
            last = i == len(parts)
            try:
                st = os.stat(current)
            except OSError:
                return current
            need = X
            if last:
                need = (R | X if stat.S_ISDIR(st.st_mode) else R) | need_last
            if not permits(effective(current, st), st.st_uid, st.st_gid, uid, gids, need):
                return current
    return None
