"""Health and protection of the process model: hung workers found by ping (killed or
orphaned), startup time limit, rapid-fail protection at TCP level, web gardens, the
request timeout, application initialization, the requests list, and pool identities."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pwd
import time
from pathlib import Path

import httpx
import psutil
import pytest

from poolhouse.activation import acl
from poolhouse.activation.grants import IUSRS_GID

from .conftest import apphost
from .test_process_model import WSGI_WEBCONFIG

APP = """\
import os, time

def app(environ, start_response):
    path = environ["PATH_INFO"]
    flag = os.path.join(os.environ["TMPDIR"], "blocked-once")  # the pool's private folder
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/uid":
        body = ("%d %d %s" % (os.getuid(), os.getgid(), sorted(os.getgroups()))).encode()
    elif path == "/block" and not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(30)  # the event loop of an inline worker is stuck
        body = b"woke"
    elif path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 0.5))
        body = str(os.getpid()).encode()
    elif path == "/init":
        open(os.path.join(os.environ["TMPDIR"], "init-%d" % os.getpid()), "w").close()
        body = b"initialized"
    else:
        body = b"hello " + path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

FILES = {"app/app.py": APP, "app/web.config": WSGI_WEBCONFIG}


def site(pool_attrs: str = "", inner: str = "", app_attrs: str = "") -> str:
    return apphost(
        sites=f"""
        <site name="Main" id="1">
          <application path="/" applicationPool="AppPool" {app_attrs}>
            <virtualDirectory path="/" physicalPath="{{root}}/app" />
          </application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" /></bindings>
        </site>""",
        pools=f'<add name="AppPool" {pool_attrs}>{inner}</add>',
    )


PING = '<processModel pingInterval="00:00:01" pingResponseTime="00:00:01" />'


def events(server, name: str) -> list[dict]:
    return [e for e in server.events() if e["event"] == name]


def test_stuck_worker_is_detected_by_ping_and_replaced(poolhouse_server) -> None:
    server = poolhouse_server(site(inner=PING), FILES)
    pid = int(httpx.get(server.url("/pid"), timeout=10).text)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        blocked = pool.submit(lambda: httpx.get(server.url("/block"), timeout=30))
        unhealthy = server.wait_for(lambda: events(server, "worker_unhealthy"), timeout=10)[0]
        detected = time.monotonic() - started
        # the GET the worker hung in is not replayed (it would hang the replacement too)
        r = blocked.result()
    assert r.status_code == 502
    assert unhealthy["id"] == 5010 and unhealthy["pid"] == pid
    assert detected < 1 + 1 + 1.5, f"detected after {detected:.1f} s"
    server.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                    timeout=5)
    assert int(httpx.get(server.url("/pid"), timeout=10).text) != pid


def test_orphaned_worker_is_kept_and_the_action_runs(poolhouse_server) -> None:
    inner = PING + ('<failure orphanWorkerProcess="true" orphanActionExe="/usr/bin/touch" '
                    'orphanActionParams="{root}/orphaned-%1%" />')
    server = poolhouse_server(site(inner=inner), FILES)
    pid = int(httpx.get(server.url("/pid"), timeout=10).text)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(lambda: httpx.get(server.url("/block"), timeout=30))
        assert blocked.result().status_code == 502  # what it hung in is not replayed
    server.wait_for(lambda: (server.root / f"orphaned-{pid}").exists(), timeout=5)
    orphan = [w for w in server.workers("AppPool") if w["pid"] == pid]
    assert orphan and orphan[0]["state"] == "Orphaned"
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # left running for debugging
    assert int(httpx.get(server.url("/pid"), timeout=10).text) != pid
    # the fixture checks that the orphan does not outlive the server


def test_startup_time_limit_counts_for_rapid_fail(poolhouse_server) -> None:
    files = dict(FILES)
    files["app/app.py"] = "import time\ntime.sleep(20)\n" + APP
    server = poolhouse_server(site(inner='<processModel startupTimeLimit="00:00:01" />'
                                         '<failure rapidFailProtectionMaxCrashes="2" />'), files)
    r = httpx.get(server.url("/pid"), timeout=30)
    assert r.status_code == 503
    timeouts = events(server, "worker_startup_timeout")
    assert len(timeouts) == 2 and all(e["id"] == 5012 for e in timeouts)
    assert any(e.get("id") == 5002 for e in events(server, "apppool_state"))


def test_rapid_fail_tcp_level_closes_connections(poolhouse_server) -> None:
    files = dict(FILES)
    files["app/app.py"] = "import no_such_module_anywhere\n"
    server = poolhouse_server(site(inner='<failure rapidFailProtectionMaxCrashes="2" '
                                         'loadBalancerCapabilities="TcpLevel" />'), files)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url("/pid"), timeout=30)
    server.wait_for(lambda: [p for p in server.api("list", what="apppools") if p["rapid_fail_stopped"]])
    [pool] = json.loads(server.cli("list", "apppools", "--json").stdout)
    assert pool["state"] == "Stopped" and pool["rapid_fail_count"] == 2
    with pytest.raises(httpx.TransportError):  # still refused at TCP level: no HTTP answer
        httpx.get(server.url("/pid"), timeout=5)
    (server.root / "app" / "app.py").write_text(APP)
    assert server.cli("start", "apppool", "AppPool").returncode == 0
    assert httpx.get(server.url("/pid"), timeout=10).status_code == 200


def test_web_garden_starts_workers_as_the_queue_backs_up(poolhouse_server) -> None:
    server = poolhouse_server(site(pool_attrs="", inner='<processModel maxProcesses="3" /><python threads="1" />'),
                              FILES)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pids: set[int] = set()
        for _ in range(4):
            pids |= {int(r.text) for r in pool.map(lambda i: httpx.get(server.url("/slow?0.3"), timeout=20),
                                                   range(6))}
    assert len(pids) == 3, pids
    assert len([w for w in server.workers("AppPool") if w["state"] == "Ready"]) == 3


def test_request_timeout_and_requests_list(poolhouse_server) -> None:
    server = poolhouse_server(site(inner='<processModel shutdownTimeLimit="00:00:03" />'
                                         '<python threads="2" requestTimeout="00:00:02" />'), FILES)
    pid = int(httpx.get(server.url("/pid"), timeout=10).text)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        slow = pool.submit(lambda: httpx.get(server.url("/slow?8"), timeout=30))
        time.sleep(0.8)
        listed = json.loads(server.cli("list", "requests", "--json", "--elapsed", "500").stdout)
        assert [r["url"] for r in listed] == ["/slow?8"]
        [row] = listed
        assert row["apppool"] == "AppPool" and row["pid"] == pid and row["elapsed_ms"] >= 500
        assert row["stage"] in ("MapRequestHandler", "ExecuteRequestHandler")
        assert json.loads(server.cli("list", "requests", "--json", "--elapsed", "60000").stdout) == []
        text = server.cli("list", "requests").stdout
        assert "/slow?8" in text and "ELAPSED_MS" in text
        r = slow.result()
    assert r.status_code == 504 and time.monotonic() - started < 5
    server.wait_for(lambda: "Timer_Response" in server.httperr(), timeout=3)
    # the worker still holds the request: it is recycled, and the pool keeps serving
    recycle = server.wait_for(lambda: events(server, "worker_recycle"), timeout=10)[0]
    assert recycle["reason"] == "requestTimeout" and recycle["pid"] == pid
    server.wait_for(lambda: int(httpx.get(server.url("/pid"), timeout=10).text) != pid, timeout=10)


def test_always_running_preloads_and_warms_up(poolhouse_server) -> None:
    files = dict(FILES)
    files["app/web.config"] = WSGI_WEBCONFIG.replace(
        "</system.webServer>",
        '<applicationInitialization><add initializationPage="/init" /></applicationInitialization>'
        "</system.webServer>")
    server = poolhouse_server(site(pool_attrs='startMode="AlwaysRunning"', app_attrs='preloadEnabled="true"'), files)
    # a worker exists before any request, and its initialization page was requested
    [wp] = server.wait_for(lambda: [w for w in server.workers("AppPool") if w["state"] == "Ready"], timeout=10)
    assert (server.state_dir / "temp" / "apppools" / "AppPool" / f"init-{wp['pid']}").exists()
    ready = events(server, "worker_ready")[0]
    assert ready["initialization_pages"] == 1
    assert httpx.get(server.url("/pid"), timeout=10).text == str(wp["pid"])
    # an overlapped recycle warms the replacement up before it takes traffic
    assert server.cli("recycle", "apppool", "AppPool").returncode == 0
    new = server.wait_for(lambda: [w for w in server.workers("AppPool")
                                   if w["state"] == "Ready" and w["pid"] != wp["pid"]], timeout=10)[0]
    assert (server.state_dir / "temp" / "apppools" / "AppPool" / f"init-{new['pid']}").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="identities are switched only as root")
def test_pool_identities_as_root(poolhouse_server, tmp_path: Path) -> None:
    """ApplicationPoolIdentity gets a uid of its own, SpecificUser the named user; both
    with the IIS_IUSRS group (and the named user's own groups).  The service grants the
    virtual account what it needs (its folder, and search on pytest's 0700 folders
    above it); the named account gets what its administrator gives it (here: the test
    opens the folders above for search)."""
    config = apphost(
        sites="""
        <site name="Main" id="1">
          <application path="/" applicationPool="Isolated"><virtualDirectory path="/" physicalPath="{root}/app" /></application>
          <application path="/named" applicationPool="Named"><virtualDirectory path="/" physicalPath="{root}/named" /></application>
          <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
        </site>""",
        pools='<add name="Isolated" /><add name="Named"><processModel identityType="SpecificUser" userName="nobody" /></add>')
    server = poolhouse_server(config, {**FILES, "named/app.py": APP, "named/web.config": WSGI_WEBCONFIG.replace('name="app"', 'name="named"')})
    uid, gid, groups = httpx.get(server.url("/uid"), timeout=30).text.split(" ", 2)
    assert int(uid) >= 810000 and int(gid) == int(uid) and groups in (f"[{IUSRS_GID}]", f"[{gid}, {IUSRS_GID}]")
    opened = {d: d.stat().st_mode for d in [server.root, *server.root.parents] if str(d).startswith("/tmp/")}
    for d, mode in opened.items():
        d.chmod(mode | 0o711)
    try:
        nobody = pwd.getpwnam("nobody")
        named = httpx.get(server.url("/named/uid"), timeout=30).text.split(" ", 2)
        assert int(named[0]) == nobody.pw_uid and int(named[1]) == nobody.pw_gid and str(IUSRS_GID) in named[2]
    finally:
        for d, mode in opened.items():
            d.chmod(mode & 0o7777)
    wps = {w["apppool"]: w for w in server.workers()}
    assert wps["Isolated"]["user"] == "IIS APPPOOL\\Isolated" and wps["Named"]["user"] == "nobody"
    assert psutil.Process(wps["Isolated"]["pid"]).uids().real == int(uid)
    # the service's files are closed to the pool identities
    logs = server.state_dir / "logs"
    assert (os.stat(logs).st_mode & 0o007) == 0
    # pools may only search logs/ (to reach their failed request traces), not list it
    named = [e for e in acl.read(str(logs)) or [] if e.tag in (acl.USER, acl.GROUP)]
    assert named and all(e.tag == acl.USER and e.perm == acl.X for e in named)
    assert (os.stat(server.state_dir / "identities.json").st_mode & 0o077) == 0
    assert json.loads((server.state_dir / "identities.json").read_text())["isolated"] == int(uid)


def test_failed_overlapped_recycle_keeps_the_old_worker(poolhouse_server) -> None:
    server = poolhouse_server(site(), FILES)
    pid = int(httpx.get(server.url("/pid"), timeout=10).text)
    (server.root / "app" / "app.py").write_text("import no_such_module_anywhere\n")
    server.api("recycle", what="apppool", name="AppPool")
    failed = server.wait_for(lambda: events(server, "worker_recycle_failed"), timeout=10)[0]
    assert failed["id"] == 5093 and failed["pid"] == pid
    # the old worker never stopped taking requests
    assert int(httpx.get(server.url("/pid"), timeout=10).text) == pid
    [wp] = [w for w in server.workers("AppPool") if w["state"] == "Ready"]
    assert wp["pid"] == pid and wp["recycle_reason"] is None
