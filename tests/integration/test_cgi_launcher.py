"""The CGI launcher on its own, as real processes: both of its containment paths — the
subreaper alone, and a cgroup per run (as root, and as a non-root identity to which the
cgroup parent is delegated the way the activation service delegates a worker's) — end
the whole tree of a program whose children leave its session, double-fork, or move out
of the run's cgroup; it reports the program's outcome as its own; it ends the tree when
its parent dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from poolhouse.worker.handlers import cgi_launcher
from poolhouse.worker.handlers.cgi import LAUNCHER

NOBODY = 65534


def cgroup2_mount() -> str | None:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    return None


@pytest.fixture
def token() -> str:
    value = f"poolhouse-launch-{uuid.uuid4().hex[:12]}"
    yield value
    for path in Path("/tmp").glob(value + "*"):
        path.unlink()


@pytest.fixture
def cgroup_parent():
    """A fresh cgroup under the cgroup v2 hierarchy, or a skip where none can be made."""
    mount = cgroup2_mount()
    if mount is None or os.geteuid() != 0:
        pytest.skip("no cgroup v2 hierarchy, or not root: the cgroup path cannot be exercised here")
    path = Path(mount) / f"poolhouse-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {mount}: {exc}")
    yield path
    for _ in range(100):
        try:
            for sub in sorted(path.glob("cgi-*"), reverse=True):
                sub.rmdir()
            path.rmdir()
            break
        except OSError:
            time.sleep(0.05)


def script(tmp_path: Path, token: str, body: str) -> Path:
    path = tmp_path / "prog.sh"
    path.write_text("#!/bin/sh\n" + body.replace("TOKEN", token))
    path.chmod(0o755)
    tmp_path.chmod(0o755)
    return path


ESCAPES = (
    "setsid sh -c 'sleep 2; touch /tmp/TOKEN-setsid' </dev/null >/dev/null 2>&1 &\n"
    "( ( sh -c 'sleep 2; touch /tmp/TOKEN-double' </dev/null >/dev/null 2>&1 & ) & )\n"
    "touch /tmp/TOKEN-ran\n"
)


def alive(token: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(token in part for part in p.info["cmdline"] or ()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def launch(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", LAUNCHER, *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def settle(token: str) -> None:
    deadline = time.monotonic() + 10
    while alive(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(token), "descendants of the program are still running"
    time.sleep(2.5)  # past the moment the children would have written


def test_subreaper_alone_ends_children_that_left_the_session(tmp_path: Path, token: str) -> None:
    prog = script(tmp_path, token, ESCAPES + "echo done\nexit 7\n")
    proc = launch(["--parent", str(os.getpid()), "--", str(prog)])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7 and out == b"done\n", err  # the program's own outcome
    assert Path(f"/tmp/{token}-ran").exists()
    settle(token)
    assert not Path(f"/tmp/{token}-setsid").exists(), "the setsid child outlived the program"
    assert not Path(f"/tmp/{token}-double").exists(), "the double-forked child outlived the program"


def test_outcomes_are_reported_as_the_program_had_them(tmp_path: Path) -> None:
    for body, code in (("kill -9 $$\n", -signal.SIGKILL), ("kill -SEGV $$\n", -signal.SIGSEGV), ("exit 0\n", 0)):
        prog = script(tmp_path, "x", body)
        proc = launch(["--", str(prog)])
        proc.communicate(timeout=30)
        assert proc.returncode == code, body
    proc = launch(["--", str(tmp_path / "missing")])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 127 and b"cannot execute" in err


def test_sigterm_ends_a_hanging_program_and_its_tree(tmp_path: Path, token: str) -> None:
    prog = script(tmp_path, token, ESCAPES + "sleep 60\n")
    proc = launch(["--", str(prog)])
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/{token}-ran").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what the worker does at cgi/@timeout or when the client left
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # the program was killed
    settle(token)
    assert not Path(f"/tmp/{token}-setsid").exists() and not Path(f"/tmp/{token}-double").exists()


def test_the_tree_ends_when_the_worker_dies(tmp_path: Path, token: str) -> None:
    """PR_SET_PDEATHSIG: a parent (here a shell standing for the worker) killed with
    SIGKILL takes the program's tree with it."""
    prog = script(tmp_path, token, ESCAPES + "sleep 60\n")
    parent = subprocess.Popen(
        ["/bin/sh", "-c", f'"{sys.executable}" -I -S "{LAUNCHER}" --parent $$ -- "{prog}" & wait'],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/{token}-ran").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(token)
    parent.kill()
    parent.wait()
    settle(token)
    assert not Path(f"/tmp/{token}-setsid").exists() and not Path(f"/tmp/{token}-double").exists()


def test_cgroup_per_run(tmp_path: Path, token: str, cgroup_parent: Path) -> None:
    """The program runs in <parent>/cgi-<launcher pid>; a child that moves itself back to
    the parent group (allowed: the parent is writable) still dies with the run; the
    run's cgroup is removed."""
    prog = script(tmp_path, token, ESCAPES + (
        "cat /proc/self/cgroup | grep '^0::'\n"
        f"sh -c 'echo $$ > {cgroup_parent}/cgroup.procs; sleep 2; touch /tmp/TOKEN-moved' "
        "</dev/null >/dev/null 2>&1 &\n"
        "sleep 0.3\n"))
    proc = launch(["--cgroup", str(cgroup_parent), "--", str(prog)])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rel = "/" + str(cgroup_parent.relative_to(cgroup2_mount())) + f"/cgi-{proc.pid}"
    assert out.decode().strip() == f"0::{rel}"
    settle(token)
    for name in ("setsid", "double", "moved"):
        assert not Path(f"/tmp/{token}-{name}").exists(), name
    assert not list(cgroup_parent.glob("cgi-*")), "the run's cgroup was left behind"


def test_cgroup_delegated_to_a_non_root_identity(tmp_path: Path, token: str, cgroup_parent: Path) -> None:
    """As the activation service delegates a worker's group: the directory and its
    cgroup.procs, cgroup.threads and cgroup.subtree_control owned by the identity."""
    for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(cgroup_parent / name, NOBODY, NOBODY)
    python = python_for(NOBODY)
    if python is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may execute")
    folder = Path(tempfile.mkdtemp(prefix="poolhouse-launch-"))  # reachable by the identity
    folder.chmod(0o755)
    launcher = folder / "cgi_launcher.py"
    launcher.write_text(Path(LAUNCHER).read_text())
    prog = script(folder, token, ESCAPES + "id -u\ncat /proc/self/cgroup | grep '^0::'\nsleep 60\n")

    def into_group_then_drop() -> None:  # the launcher starts in the delegated group, as a worker's does
        with open(cgroup_parent / "cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    proc = subprocess.Popen([python, "-I", "-S", str(launcher), "--cgroup", str(cgroup_parent), "--", str(prog)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=into_group_then_drop)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/{token}-ran").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    runs: list[Path] = []
    while not runs and time.monotonic() < deadline:
        runs = list(cgroup_parent.glob("cgi-*"))
    assert len(runs) == 1 and runs[0].stat().st_uid == NOBODY
    assert runs[0].name == f"cgi-{proc.pid}"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    lines = out.decode().split()
    assert lines[0] == str(NOBODY) and lines[1].endswith(f"/cgi-{proc.pid}"), (out, err)
    settle(token)
    assert not Path(f"/tmp/{token}-setsid").exists() and not Path(f"/tmp/{token}-double").exists()
    assert not list(cgroup_parent.glob("cgi-*"))
    shutil.rmtree(folder)


def python_for(uid: int) -> str | None:
    """An interpreter ``uid`` can run (this test's own may sit in a folder only root
    reaches)."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            if subprocess.run([candidate, "-I", "-S", "-c", "pass"], preexec_fn=drop, timeout=30,
                              capture_output=True).returncode == 0:
                return candidate
        except OSError:
            continue
    return None


def test_descendants_walk_finds_grandchildren_by_parent_pids() -> None:
    """The walk the subreaper uses where /proc/<pid>/task/*/children is missing (this
    kernel option is often off), checked against a real tree."""
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(child.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        found = set(cgi_launcher.descendants(os.getpid()))
        expected = {child.pid} | {p.pid for p in psutil.Process(child.pid).children()}
        assert expected <= found
        table = cgi_launcher._children_map()
        assert child.pid in table[os.getpid()]
    finally:
        for p in psutil.Process(child.pid).children():
            p.kill()
        child.kill()
        child.wait()


def test_service_delegates_a_group_to_each_worker_and_clears_it_at_exit() -> None:
    """The activation service's side (activation/limits.py): a worker (here a process
    running as a non-root identity) is moved into poolhouse/<pool>/w<pid>, owned by its
    identity; when it exits, what it left in the group dies and the group goes."""
    from poolhouse.activation.limits import CgroupManager

    if os.geteuid() != 0:
        pytest.skip("the service delegates cgroups as root")
    manager = CgroupManager()
    if not manager.delegation:
        pytest.skip(f"no writable cgroup v2 hierarchy here: {manager.delegation_why}")

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    pool = f"poolhouse-test-{uuid.uuid4().hex[:8]}"
    # it starts its child only once it has been placed (a process moved to a cgroup takes
    # along none of the children it already has)
    worker = subprocess.Popen(["/bin/sh", "-c", "read go; sleep 60 & sleep 60"], preexec_fn=drop,
                              stdin=subprocess.PIPE)
    try:
        manager.place_worker(None, pool, worker.pid, NOBODY, NOBODY)
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        worker.stdin.close()
        group = Path(manager.workers[worker.pid])
        assert group == Path(manager.delegation) / pool / f"w{worker.pid}"
        assert group.stat().st_uid == NOBODY and (group / "cgroup.procs").stat().st_uid == NOBODY
        assert (group / "cgroup.kill").stat().st_uid == 0  # not delegated: only what the kernel's model hands over
        with open(f"/proc/{worker.pid}/cgroup") as fh:
            assert any(line.strip().endswith(f"/{pool}/w{worker.pid}") for line in fh if line.startswith("0::"))
        deadline = time.monotonic() + 10
        while len(psutil.Process(worker.pid).children()) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        left = psutil.Process(worker.pid).children()[0]
        # as the worker's own launcher would: a run's group below, created by the identity
        run = subprocess.run(["/bin/sh", "-c", f'mkdir "{group}/cgi-1"'], preexec_fn=drop)
        assert run.returncode == 0
        worker.kill()
        worker.wait()
        assert left.is_running() and left.status() != psutil.STATUS_ZOMBIE  # the worker's orphan
        manager.release_worker(worker.pid)
        deadline = time.monotonic() + 10
        while left.is_running() and left.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left.is_running() or left.status() == psutil.STATUS_ZOMBIE
        manager._sweep()
        deadline = time.monotonic() + 10
        while group.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
            manager._sweep()
        assert not group.exists()
        assert not group.parent.exists(), "the pool's folder outlived its last worker"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        try:
            (Path(manager.delegation) / pool).rmdir()
        except OSError:
            pass
