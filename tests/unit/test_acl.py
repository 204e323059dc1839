"""POSIX ACLs as the kernel stores and checks them (activation/acl.py), and the grants
the service records and revokes (activation/grants.py).  The evaluation is checked
against the kernel itself: a child process switched to the uid says what it can open."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolhouse.activation import acl
from poolhouse.activation.grants import Grants

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ACLs for other uids are set as root")
UID = 810977  # an ApplicationPoolIdentity-range uid no test server uses


def test_codec_round_trip_and_order() -> None:
    entries = [acl.Entry(acl.OTHER, acl.UNDEFINED_ID, 0), acl.Entry(acl.USER, 20, 5),
               acl.Entry(acl.USER_OBJ, acl.UNDEFINED_ID, 7), acl.Entry(acl.USER, 10, 4),
               acl.Entry(acl.GROUP_OBJ, acl.UNDEFINED_ID, 5)]
    data = acl.encode(acl.with_mask(entries))
    decoded = acl.decode(data)
    assert [e.tag for e in decoded] == [acl.USER_OBJ, acl.USER, acl.USER, acl.GROUP_OBJ, acl.MASK, acl.OTHER]
    assert [e.id for e in decoded if e.tag == acl.USER] == [10, 20]
    assert next(e.perm for e in decoded if e.tag == acl.MASK) == 5  # union of the group class
    with pytest.raises(acl.AclError):
        acl.decode(data[:-1])
    with pytest.raises(acl.AclError):
        acl.decode(b"\x01\x00\x00\x00")


def test_permits_follows_the_kernel_order() -> None:
    base = acl.from_mode(0o750)
    assert acl.permits(base, 0, 0, 0, (0,), acl.R | acl.X)
    assert acl.permits(base, 0, 5, 99, (5,), acl.R | acl.X)  # owning group
    assert not acl.permits(base, 0, 5, 99, (6,), acl.X)  # other: nothing
    named = acl.with_mask(base + [acl.Entry(acl.USER, 99, acl.X)])
    assert acl.permits(named, 0, 5, 99, (6,), acl.X) and not acl.permits(named, 0, 5, 99, (6,), acl.R)
    # the mask limits named entries
    masked = [e if e.tag != acl.MASK else acl.Entry(acl.MASK, acl.UNDEFINED_ID, 0) for e in named]
    assert not acl.permits(masked, 0, 5, 99, (6,), acl.X)
    # the owner's entry decides for the owner even if a named entry would grant more
    assert not acl.permits(acl.with_mask(acl.from_mode(0o077) + [acl.Entry(acl.USER, 99, 7)]), 99, 0, 99, (), acl.R)


def _as(uid: int, code: str, *args: str) -> str:
    def switch() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code, *args], preexec_fn=switch,
                         capture_output=True, text=True, timeout=60, cwd="/")
    return out.stdout.strip()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder other users can reach (pytest's own are 0700 all the way up)."""
    path = Path(tempfile.mkdtemp(prefix="poolhouse-acl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@root_only
def test_grants_open_a_closed_tree_and_revoke_restores_it(open_tmp: Path) -> None:
    tmp_path = open_tmp
    outer = tmp_path / "closed"
    site = outer / "inner" / "site"
    (site / "sub").mkdir(parents=True)
    (site / "sub" / "page.txt").write_text("hello")
    (site / "secret.txt").write_text("s")
    os.chmod(site / "secret.txt", 0o600)
    for d in (outer, outer / "inner", site):
        os.chmod(d, 0o700)
    before = {p: (stat.S_IMODE(os.stat(p).st_mode), acl.read(str(p))) for p in [outer, outer / "inner", site,
                                                                               site / "secret.txt"]}
    state = tmp_path / "state"
    state.mkdir()
    grants = Grants(str(state))
    assert acl.blocking(str(site), UID, (UID,)) == str(outer)
    opened = grants.open_path(str(site), "user", UID, UID, (UID,), "Pool")
    assert opened == [str(outer), str(outer / "inner")]
    assert acl.blocking(str(site), UID, (UID,)) == str(site)
    tree = grants.open_tree(str(site), UID, (UID,), "Pool")
    assert str(site / "sub") in tree
    assert acl.blocking(str(site / "sub" / "page.txt"), UID, (UID,)) is None
    # the kernel agrees: the uid reads the content but cannot list the folders above it
    probe = "import os, sys; print(open(sys.argv[1]).read(), os.access(sys.argv[2], os.R_OK))"
    assert _as(UID, probe, str(site / "sub" / "page.txt"), str(outer)) == "hello False"
    # a file created later inherits the default ACL
    (site / "sub" / "new.txt").write_text("new")
    assert _as(UID, "import sys; print(open(sys.argv[1]).read())", str(site / "sub" / "new.txt")) == "new"
    # a second pass adds nothing; the records are private to the service
    assert grants.open_path(str(site), "user", UID, UID, (UID,), "Pool") == []
    assert stat.S_IMODE(os.stat(state / "grants.json").st_mode) == 0o600
    recorded = json.loads((state / "grants.json").read_text())
    assert {r["for"] for r in recorded} == {"Pool"} and all(r["id"] == UID for r in recorded)
    # revoke: every entry goes, the modes come back
    undone = Grants(str(state)).revoke("Pool")
    assert len(undone) == len(recorded)
    for p, (mode, entries) in before.items():
        assert stat.S_IMODE(os.stat(p).st_mode) == mode and acl.read(str(p)) == entries
    assert acl.read(str(site / "sub"), acl.DEFAULT) is None
    assert _as(UID, probe, str(site / "sub" / "page.txt"), str(outer)) == ""  # PermissionError again
    assert json.loads((state / "grants.json").read_text()) == []


@root_only
def test_revoke_keeps_what_was_there(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir(mode=0o700)
    # an entry an administrator made (read only) is widened, then narrowed back
    acl.write(str(folder), acl.from_mode(0o700) + [acl.Entry(acl.USER, UID, acl.R)])
    grants = Grants(str(tmp_path))
    assert grants.add(str(folder), "user", UID, acl.X, "Pool")
    assert next(e.perm for e in acl.read(str(folder)) or [] if e.tag == acl.USER) == acl.R | acl.X
    grants.revoke()
    assert [e for e in acl.read(str(folder)) or [] if e.tag == acl.USER] == [acl.Entry(acl.USER, UID, acl.R)]


@root_only
def test_grants_command_lists_and_revokes(open_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from poolhouse.admin.cli import main

    folder = open_tmp / "site"
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    state = open_tmp / "state"
    state.mkdir()
    Grants(str(state)).open_tree(str(folder), UID, (UID,), "Shop")
    assert main(["--state-dir", str(state), "grants", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(r["for"], r["entry"], r["acl"], r["path"]) for r in listed} == {
        ("Shop", f"u:{UID}:r-x", "access", str(folder)), ("Shop", f"u:{UID}:r-x", "default", str(folder))}
    assert main(["--state-dir", str(state), "grants", "--revoke", "--apppool", "other"]) == 0
    assert "revoked 0 entries" in capsys.readouterr().out
    assert main(["--state-dir", str(state), "grants", "--revoke", "--apppool", "shop"]) == 0
    assert "revoked 2 entries" in capsys.readouterr().out
    assert acl.read(str(folder)) is None and acl.read(str(folder), acl.DEFAULT) is None
