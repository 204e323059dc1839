"""The pools' cgroups go under the service's own cgroup when a service manager delegated
it (systemd's Delegate=yes), so the manager still sees every worker.  Fed a cgroup tree
made of plain files: the manager writes what the kernel would be asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolhouse.activation import limits


def _tree(tmp_path: Path) -> Path:
    own = tmp_path / "system.slice" / "poolhouse.service"
    own.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    return own


def test_delegated_cgroup_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = _tree(tmp_path)
    monkeypatch.setattr(limits, "_delegated", lambda path: path == str(own))
    manager = limits.CgroupManager(str(tmp_path), "/system.slice/poolhouse.service")
    assert manager.available and manager.delegated
    assert manager.base == str(own / "pools")
    # the service left its cgroup for a leaf; the controllers are handed down
    assert (own / "service" / "cgroup.procs").read_text().isdigit()
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (own / "pools" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    group = manager.pool_group("DefaultAppPool", 50_000, True, 0)
    assert group == str(own / "pools" / "DefaultAppPool")
    # nothing written at the root of the hierarchy, which belongs to the service manager
    assert (tmp_path / "cgroup.subtree_control").read_text() == ""
    assert not (tmp_path / "poolhouse").exists()


def test_undelegated_cgroup_keeps_the_shared_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    monkeypatch.setattr(limits, "_delegated", lambda path: False)
    manager = limits.CgroupManager(str(tmp_path), "/system.slice/poolhouse.service")
    assert manager.available and not manager.delegated
    assert manager.base == str(tmp_path / "poolhouse")


def test_delegated_without_controllers_is_measurement_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = _tree(tmp_path)
    (own / "cgroup.controllers").write_text("pids\n")
    monkeypatch.setattr(limits, "_delegated", lambda path: path == str(own))
    manager = limits.CgroupManager(str(tmp_path), "/system.slice/poolhouse.service")
    assert not manager.available and "does not offer cpu, memory" in manager.why
