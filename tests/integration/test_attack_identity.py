"""The pool boundary, attacked from inside a pool (as root, real uids): a hostile
application tries to reach the service's files, another pool's files and configuration,
other processes; every attempt must fail.  Plus: no pool ever runs as root unless it says
LocalSystem, the default configuration gives per-pool users, and a pool whose identity
cannot reach its folder does not start (event 5059, 503) instead of running as root."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from poolhouse.activation.grants import IUSRS_GID
from poolhouse.config.server import DEFAULT_CONFIG
from poolhouse.worker.modules.authentication import hash_password

from .conftest import Server, apphost
from .test_process_model import WSGI_WEBCONFIG

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pool identities are switched only as root")

# The attacker: every probe answers what happened, as JSON.
EVIL = r'''
import ctypes, gc, json, os, signal, urllib.parse

def attempt(fn):
    try:
        return {"ok": True, "result": fn()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": getattr(exc, "errno", None)}

def read(path):
    with open(path, "rb") as fh:
        return fh.read(64).decode("latin-1")

def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
    return "attached"

def my_configuration():
    worker = next(o for o in gc.get_objects() if type(o).__name__ == "WorkerProcess")
    return json.dumps(worker.init_msg)

def app(environ, start_response):
    q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    path = environ["PATH_INFO"]
    if path == "/read":
        out = attempt(lambda: read(q["path"]))
    elif path == "/list":
        out = attempt(lambda: os.listdir(q["path"]))
    elif path == "/kill":
        out = attempt(lambda: os.kill(int(q["pid"]), signal.SIGTERM))
    elif path == "/ptrace":
        out = attempt(lambda: ptrace(int(q["pid"])))
    elif path == "/config":
        out = attempt(my_configuration)
    else:
        out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "pid": os.getpid()}
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

PLAIN = r'''
import os
def app(environ, start_response):
    body = ("%d %d" % (os.getuid(), os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

VICTIM_AUTH = """
  <location path="Victim">
    <system.webServer>
      <security><authentication>
        <anonymousAuthentication enabled="false" />
        <basicAuthentication enabled="true" realm="V" usersFile="{root}/victim-users.txt" />
      </authentication></security>
    </system.webServer>
  </location>"""


def two_pools() -> str:
    return apphost(
        sites="""
        <site name="Evil" id="1">
          <application path="/" applicationPool="EvilPool"><virtualDirectory path="/" physicalPath="{root}/evil" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port0}:" /></bindings>
        </site>
        <site name="Victim" id="2">
          <application path="/" applicationPool="VictimPool"><virtualDirectory path="/" physicalPath="{root}/victim" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port1}:" /></bindings>
        </site>""",
        pools='<add name="EvilPool" /><add name="VictimPool" />', extra=VICTIM_AUTH)


def ask(server: Server, probe: str, **query: Any) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}{probe}"
    r = httpx.get(url, params=query, timeout=60)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def listener_pid(server: Server) -> int:
    assert server.proc is not None
    for child in psutil.Process(server.proc.pid).children():
        if "poolhouse.listener" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no listener process")


def test_a_hostile_application_cannot_reach_beyond_its_pool(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    users = f"victim:{hash_password('secret', 4)}:\n"
    server = poolhouse_server(two_pools(), {
        "evil/app.py": EVIL, "evil/web.config": WSGI_WEBCONFIG,
        "victim/app.py": PLAIN, "victim/web.config": WSGI_WEBCONFIG,
        "victim-users.txt": users,
    }, extra_ports=1)
    # the documented recommendation: the master file and the users file are root's
    # alone, each pool's content closed to others (the service grants each its own)
    server.config.chmod(0o600)
    (server.root / "victim-users.txt").chmod(0o600)
    (server.root / "victim").chmod(0o700)
    (server.root / "evil").chmod(0o700)
    victim_port = server.ports[1]
    # the victim pool works, its users file included (granted to its identity only)
    assert httpx.get(f"http://127.0.0.1:{victim_port}/", timeout=60).status_code == 401
    r = httpx.get(f"http://127.0.0.1:{victim_port}/", auth=("victim", "secret"), timeout=60)
    assert r.status_code == 200
    victim_uid, victim_pid = map(int, r.text.split())
    me = ask(server, "/whoami")
    assert me["uid"] >= 810000 and me["uid"] != victim_uid and me["groups"] == [IUSRS_GID]

    secrets = {
        "master applicationHost.config": server.config,
        "the other pool's users file": server.root / "victim-users.txt",
        "the identity table": server.state_dir / "identities.json",
        "the grants table": server.state_dir / "grants.json",
        "the event log": server.state_dir / "logs" / "events.jsonl",
        "the other pool's application": server.root / "victim" / "app.py",
    }
    for what, path in secrets.items():
        assert path.exists(), what
        out = ask(server, "/read", path=str(path))
        assert not out["ok"] and out["error"] == "PermissionError", (what, out)
    for folder in (server.state_dir / "temp" / "apppools" / "VictimPool", server.state_dir / "config",
                   server.state_dir / "run", server.root / "victim"):
        out = ask(server, "/list", path=str(folder))
        assert not out["ok"] and out["error"] == "PermissionError", (folder, out)

    # its own configuration holds nothing of the other pool
    mine = ask(server, "/config")
    assert mine["ok"]
    for secret in ("VictimPool", "victim-users", str(server.root / "victim"), '"Victim"'):
        assert secret not in mine["result"], secret

    # no signal to the other pool's worker, the listener or the service
    for pid in (victim_pid, listener_pid(server), server.proc.pid):
        out = ask(server, "/kill", pid=pid)
        assert not out["ok"] and out["error"] == "PermissionError", (pid, out)
    assert psutil.pid_exists(victim_pid)
    # the victim still serves
    assert httpx.get(f"http://127.0.0.1:{victim_port}/", auth=("victim", "secret"), timeout=60).status_code == 200


def test_pools_sharing_nobody_cannot_trace_each_other(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """LocalService and NetworkService are both ``nobody``: same uid, yet neither can
    read the other's memory or environment nor attach to it (workers are not dumpable)."""
    config = apphost(
        sites="""
        <site name="A" id="1">
          <application path="/" applicationPool="Local"><virtualDirectory path="/" physicalPath="{root}/evil" /></application>
          <application path="/net" applicationPool="Network"><virtualDirectory path="/" physicalPath="{root}/net" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools='<add name="Local"><processModel identityType="LocalService" /></add>'
              '<add name="Network"><processModel identityType="NetworkService" /></add>')
    server = poolhouse_server(config, {"evil/app.py": EVIL, "evil/web.config": WSGI_WEBCONFIG,
                                       "net/app.py": PLAIN,
                                       "net/web.config": WSGI_WEBCONFIG.replace('name="app"', 'name="net"')})
    # nobody is an account the administrator chose: the administrator opens the way
    opened = {d: d.stat().st_mode for d in [server.root, *server.root.parents] if str(d).startswith("/tmp/")}
    for d, mode in opened.items():
        d.chmod(mode | 0o711)
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        uid, pid = map(int, httpx.get(server.url("/net/"), timeout=60).text.split())
        me = ask(server, "/whoami")
        assert uid == me["uid"] == nobody and pid != me["pid"]
        for name in ("environ", "mem", "maps", "auxv"):
            out = ask(server, "/read", path=f"/proc/{pid}/{name}")
            assert not out["ok"] and out["error"] == "PermissionError", (name, out)
        out = ask(server, "/ptrace", pid=pid)
        assert not out["ok"] and out["errno"] == 1, out  # EPERM
        # the /proc files are root's, not the shared uid's
        assert os.stat(f"/proc/{pid}/environ").st_uid == 0
        assert os.stat(f"/proc/{me['pid']}/mem").st_uid == 0
    finally:
        for d, mode in opened.items():
            d.chmod(mode & 0o7777)


def test_default_configuration_gives_per_pool_users(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """The embedded default configuration (on a free port) served as root: its workers
    run as IIS APPPOOL\\DefaultAppPool's uid, as /proc says of the pid ``poolhouse list
    wp --json`` reports."""
    text = Path(DEFAULT_CONFIG).read_text().replace("127.0.0.1:8080:", "127.0.0.1:{port}:")
    server = poolhouse_server(text)
    assert httpx.get(server.url("/"), timeout=60).status_code == 200
    assert httpx.get(server.url("/hello/"), timeout=60).status_code == 200
    out = server.cli("list", "wp", "--json")
    assert out.returncode == 0, out.stderr
    [wp] = json.loads(out.stdout)
    assert wp["user"] == "IIS APPPOOL\\DefaultAppPool"
    status = Path(f"/proc/{wp['pid']}/status").read_text()
    uids = [int(x) for x in next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]]
    assert all(u >= 810000 for u in uids), uids  # real, effective, saved, filesystem
    table = server.cli("list", "wp")
    assert "IIS APPPOOL\\DefaultAppPool" in table.stdout and "USER" in table.stdout


def test_a_pool_that_cannot_reach_its_folder_does_not_start(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    """SpecificUser ``nobody`` on a folder closed to it: no worker, and certainly none as
    root — the pool is stopped with event 5059 naming the identity, the folder and the
    command to run, and its requests get 503 (HTTPERR AppOffline)."""
    config = apphost(
        sites="""
        <site name="S" id="1">
          <application path="/" applicationPool="Named"><virtualDirectory path="/" physicalPath="{root}/closed/site" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools='<add name="Named"><processModel identityType="SpecificUser" userName="nobody" /></add>')
    server = poolhouse_server(config, {"closed/site/app.py": PLAIN, "closed/site/web.config": WSGI_WEBCONFIG})
    (server.root / "closed").chmod(0o700)
    r = httpx.get(server.url("/"), timeout=60)
    assert r.status_code == 503
    [event] = server.wait_for(lambda: [e for e in server.events() if e["event"] == "apppool_worker_start_failed"])
    assert event["id"] == 5059 and event["apppool"] == "Named" and event["user"] == "nobody"
    blocked = event["path"]
    assert blocked in {str(d) for d in [server.root / "closed", *server.root.parents]}, blocked
    assert "setfacl -m u:%d:rX" % pwd.getpwnam("nobody").pw_uid in event["action"]
    assert not server.workers("Named")
    [pool] = [p for p in server.api("list", what="apppools") if p["name"] == "Named"]
    assert pool["state"] != "Started"
    assert "AppOffline" in server.wait_for(server.httperr)
    # nothing ran as root, ever
    assert not [e for e in server.events() if e["event"] == "worker_started"]


def test_an_interpreter_the_identity_cannot_execute_stops_the_pool(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A ``<python executable>`` behind a folder closed to the pool's own uid: 5059 with the
    folder, 503 — where the old code ran the worker as root."""
    hidden = tmp_path / "private-python"
    hidden.mkdir(mode=0o700)
    hidden.chmod(0o700)
    python = hidden / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    config = apphost(
        sites="""
        <site name="S" id="1">
          <application path="/" applicationPool="P"><virtualDirectory path="/" physicalPath="{root}/app" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools=f'<add name="P"><python executable="{python}" /></add>')
    server = poolhouse_server(config, {"app/app.py": PLAIN, "app/web.config": WSGI_WEBCONFIG})
    assert httpx.get(server.url("/"), timeout=60).status_code == 503
    [event] = server.wait_for(lambda: [e for e in server.events() if e["event"] == "apppool_worker_start_failed"])
    assert event["id"] == 5059 and event["user"] == "IIS APPPOOL\\P" and event["path"] == str(hidden)
    assert not [e for e in server.events() if e["event"] == "worker_started"]


def test_local_system_runs_as_root_with_a_warning(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    config = apphost(
        sites="""
        <site name="S" id="1">
          <application path="/" applicationPool="Sys"><virtualDirectory path="/" physicalPath="{root}/app" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools='<add name="Sys"><processModel identityType="LocalSystem" /></add>')
    server = poolhouse_server(config, {"app/app.py": PLAIN, "app/web.config": WSGI_WEBCONFIG})
    uid, pid = map(int, httpx.get(server.url("/"), timeout=60).text.split())
    assert uid == 0
    [warning] = [e for e in server.events() if e["event"] == "apppool_identity_local_system"]
    assert warning["apppool"] == "Sys" and "WARNING apppool_identity_local_system" in server.stderr()
    assert [w["user"] for w in server.workers("Sys")] == ["root"]
    assert psutil.Process(pid).uids().real == 0
