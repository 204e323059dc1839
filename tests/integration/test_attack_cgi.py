"""CGI under control, played by an attacker who can write a site's content and its
web.config files but not applicationHost.config.

- What runs is decided by ``isapiCgiRestriction`` alone (404.2 otherwise, on the page
  and in the W3C log): a sub-folder web.config that maps ``*.txt`` to ``/bin/sh``, a
  content symlink to ``/bin/sh``, the allowed name itself turned into a symlink to
  ``/bin/sh`` — none runs.  A symlink to an allowed program still runs it (the real
  path is what is compared).
- ``isapiCgiRestriction`` cannot be set from a web.config (500.19).
- A CGI program's whole process tree ends with the request: a child that calls
  ``setsid`` (or double-forks) and would write a marker later never does, whether the
  program ends by itself or is killed at ``cgi/@timeout``; nothing is left behind, no
  zombie either.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from .conftest import Server, apphost

WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"
CGI_HANDLER = """
  <handlers accessPolicy="Read, Script, Execute">
    <add name="cgi" path="*.cgi" verb="*" modules="CgiModule" resourceType="File" requireAccess="Execute" />
  </handlers>"""
HEAD = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"

# TOKEN is replaced per test: markers in /tmp, which every pool identity may write
SCRIPTS = {
    "cgi/real.cgi": HEAD + "printf 'real program ran'\n",
    # a child leaves the session and would write a marker in 3 s; the program answers at once
    "cgi/setsid.cgi": HEAD + (
        "setsid sh -c 'touch /tmp/TOKEN-early; sleep 3; touch /tmp/TOKEN-late' </dev/null >/dev/null 2>&1 &\n"
        "( ( sh -c 'sleep 3; touch /tmp/TOKEN-double' </dev/null >/dev/null 2>&1 & ) & )\n"
        "while [ ! -e /tmp/TOKEN-early ]; do sleep 0.05; done\n"
        "printf 'answered'\n"),
    # the child keeps the program's output open: the response must still end with the program
    "cgi/holds.cgi": HEAD + (
        "setsid sh -c 'sleep 8; touch /tmp/TOKEN-held' &\n"
        "printf 'answered, child holds stdout'\n"),
    "hang/hang.cgi": "#!/bin/sh\n" + (
        "setsid sh -c 'touch /tmp/TOKEN-early; sleep 4; touch /tmp/TOKEN-late' </dev/null >/dev/null 2>&1 &\n"
        "sleep 60\n"),
}

SITE = apphost(
    sites="""
    <site name="Attacked" id="5">
      <application path="/" applicationPool="CgiAttack">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="CgiAttack" />',
    extra="""
  <system.webServer><security><isapiCgiRestriction>
    <add path="{root}/www/cgi/real.cgi" allowed="true" description="the one real program" />
    <add path="{root}/www/cgi/listed.cgi" allowed="true" description="listed, then swapped for a symlink" />
    <add path="{root}/www/cgi/setsid.cgi" allowed="true" />
    <add path="{root}/www/cgi/holds.cgi" allowed="true" />
    <add path="{root}/www/hang/hang.cgi" allowed="true" />
    <add path="{root}/www/cgi/denied.cgi" allowed="false" />
  </isapiCgiRestriction></security></system.webServer>
  <location path="Attacked/hang"><system.webServer><cgi timeout="00:00:02" /></system.webServer></location>""",
)


def files(token: str) -> dict[str, str]:
    out = {f"www/{name}": text.replace("TOKEN", token) for name, text in SCRIPTS.items()}
    out["www/cgi/web.config"] = WEB.format(CGI_HANDLER + """
  <tracing><traceFailedRequests>
    <add path="denied.cgi"><failureDefinitions statusCodes="404.2" /></add>
  </traceFailedRequests></tracing>""")
    out["www/hang/web.config"] = WEB.format(CGI_HANDLER)
    out["www/cgi/denied.cgi"] = HEAD + f"touch /tmp/{token}-denied\n"
    # the classic: a sub-folder web.config maps *.txt to the shell
    out["www/upload/web.config"] = WEB.format("""
      <handlers accessPolicy="Read, Script, Execute">
        <add name="txt-as-shell" path="*.txt" verb="*" modules="CgiModule" scriptProcessor="/bin/sh"
             resourceType="File" requireAccess="Execute" />
      </handlers>""")
    out["www/upload/evil.txt"] = f"touch /tmp/{token}-shell\nprintf 'Content-Type: text/plain\\r\\n\\r\\nowned'\n"
    out["www/upload2/web.config"] = out["www/upload/web.config"].replace('"/bin/sh"', '"sh"')  # found on PATH
    out["www/upload2/evil.txt"] = out["www/upload/evil.txt"]
    # the web.config that tries to lift the restriction itself
    out["www/lift/web.config"] = WEB.format(CGI_HANDLER + """
      <security><isapiCgiRestriction notListedCgisAllowed="true" /></security>""")
    out["www/lift/any.cgi"] = HEAD + f"touch /tmp/{token}-lift\n"
    return out


@pytest.fixture
def token() -> str:
    value = f"poolhouse-cgi-{uuid.uuid4().hex[:12]}"
    yield value
    for path in Path("/tmp").glob(value + "*"):
        path.unlink()


@pytest.fixture
def server(poolhouse_server, token: str) -> Server:
    srv = poolhouse_server(SITE, files(token))
    www = srv.root / "www"
    for path in www.rglob("*"):
        if path.is_file():
            path.chmod(0o755 if path.suffix in (".cgi", ".txt") else 0o644)
        elif path.is_dir():
            path.chmod(0o755)
    (www / "cgi" / "alias.cgi").symlink_to(www / "cgi" / "real.cgi")  # to an allowed program: fine
    (www / "cgi" / "shell.cgi").symlink_to("/bin/sh")  # content that is the shell
    (www / "cgi" / "listed.cgi").symlink_to("/bin/sh")  # the allowed name, made a shell
    return srv


def marker(token: str, name: str) -> Path:
    return Path(f"/tmp/{token}-{name}")


def substatus(r: httpx.Response) -> str:
    text = r.text
    i = text.index("HTTP Error ") + len("HTTP Error ")
    return text[i:text.index(" ", i)]


def w3c_rows(server: Server, site_id: int = 5) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted((server.state_dir / "logs" / f"W3SVC{site_id}").glob("u_ex*.log")):
        fields: list[str] = []
        for line in path.read_text().splitlines():
            if line.startswith("#Fields:"):
                fields = line.split()[1:]
            elif line and not line.startswith("#"):
                rows.append(dict(zip(fields, line.split())))
    return rows


def token_processes(token: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(token in part for part in p.info["cmdline"] or ()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def zombies_under(server: Server) -> list[int]:
    assert server.proc is not None
    found = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_programs_outside_the_restriction_list_get_404_2(server: Server, token: str) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/cgi/real.cgi")
        assert r.status_code == 200 and r.text == "real program ran"
        r = c.get("/cgi/alias.cgi")  # a symlink to the allowed program runs it
        assert r.status_code == 200 and r.text == "real program ran"

        attempts = {
            "/upload/evil.txt": "shell",  # *.txt -> scriptProcessor=/bin/sh from a sub-folder web.config
            "/upload2/evil.txt": "shell",  # the same with scriptProcessor="sh"
            "/cgi/shell.cgi": "shell",  # content symlink to /bin/sh; the body would be its commands
            "/cgi/listed.cgi": "shell",  # the listed name, now a symlink to /bin/sh
            "/cgi/denied.cgi": "denied",  # listed with allowed="false"
        }
        for url, name in attempts.items():
            r = c.post(url, content=f"touch /tmp/{token}-{name}\n")
            assert r.status_code == 404, (url, r.status_code, r.text)
            assert substatus(r) == "404.2", url
            assert "ISAPI and CGI Restriction" in r.text
        assert not marker(token, "shell").exists() and not marker(token, "denied").exists()

    rows = server.wait_for(lambda: [row for row in w3c_rows(server) if row.get("cs-uri-stem") == "/cgi/denied.cgi"],
                           timeout=10)
    assert (rows[0]["sc-status"], rows[0]["sc-substatus"]) == ("404", "2")
    freb = server.state_dir / "logs" / "FailedReqLogFiles" / "W3SVC5"
    trace = server.wait_for(lambda: sorted(freb.glob("fr*.xml")), timeout=10)[-1].read_text()
    assert 'statusCode="404.2"' in trace and 'url="/cgi/denied.cgi"' in trace
    assert '<Event name="CGI_RESTRICTION_DENIED"' in trace and 'area="Security"' in trace
    log = server.stderr()
    assert "is not allowed by isapiCgiRestriction" in log
    assert f"real path {os.path.realpath('/bin/sh')}" in log


def test_web_config_cannot_lift_the_restriction(server: Server, token: str) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/lift/any.cgi")
    assert r.status_code == 500 and substatus(r) == "500.19"
    assert "isapiCgiRestriction" in r.text
    assert not marker(token, "lift").exists()


def test_setsid_children_end_with_the_request(server: Server, token: str) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/cgi/setsid.cgi")
        assert r.status_code == 200 and r.text == "answered"
        assert marker(token, "early").exists()  # the child ran, and could write its markers

        # a child that holds the output open does not hold the response: the program's
        # end is the request's end (the child would sleep 8 s)
        t0 = time.monotonic()
        r = c.get("/cgi/holds.cgi")
        assert r.status_code == 200 and r.text == "answered, child holds stdout"
        assert time.monotonic() - t0 < 6

    server.wait_for(lambda: not token_processes(token), timeout=10)
    time.sleep(4)  # past the moment the children would have written
    assert not marker(token, "late").exists(), "the setsid child outlived the request"
    assert not marker(token, "double").exists(), "the double-forked child outlived the request"
    assert not marker(token, "held").exists()
    assert not token_processes(token)
    server.wait_for(lambda: not zombies_under(server), timeout=10)


def test_setsid_children_end_at_the_cgi_timeout(server: Server, token: str) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        t0 = time.monotonic()
        r = c.get("/hang/hang.cgi")
        assert r.status_code == 502 and substatus(r) == "502.1"
        assert time.monotonic() - t0 < 10
    assert marker(token, "early").exists()
    server.wait_for(lambda: not token_processes(token), timeout=10)
    time.sleep(4.5)
    assert not marker(token, "late").exists(), "the setsid child outlived cgi/@timeout"
    assert not token_processes(token)
    server.wait_for(lambda: not zombies_under(server), timeout=10)


def test_containment_path_in_use(server: Server) -> None:
    """Which containment the worker uses is said once in its log; where this machine has
    a writable cgroup v2 hierarchy it is the cgroup one, and each run's cgroup is gone
    after it."""
    with httpx.Client(base_url=server.base, timeout=30) as c:
        assert c.get("/cgi/real.cgi").status_code == 200
    log = server.wait_for(lambda: "CGI runs are contained by" in server.stderr() and server.stderr())
    wp = server.workers("CgiAttack")[0]
    group = None
    with open(f"/proc/{wp['pid']}/cgroup") as fh:
        for line in fh:
            if line.startswith("0::"):
                group = line.strip()[3:]
    if group and os.path.basename(group) == f"w{wp['pid']}":
        assert "a cgroup each under" in log
        mount = next(line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "cgroup2")
        folder = Path(mount) / group.lstrip("/")
        assert folder.stat().st_uid == wp_uid(wp["pid"])
        server.wait_for(lambda: not [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("cgi-")])
    else:
        assert "a subreaper (no delegated cgroup" in log


def wp_uid(pid: int) -> int:
    return psutil.Process(pid).uids().real


def test_a_dead_worker_takes_its_cgi_trees_along(server: Server, token: str) -> None:
    """The worker is killed (SIGKILL) while a CGI program hangs: the launcher's parent-death
    signal and, where there is one, the service's kill of the worker's cgroup end the
    program and its setsid child."""
    import threading

    def request() -> None:
        try:
            httpx.get(server.url("/hang/hang.cgi"), timeout=30)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=request)
    t.start()
    server.wait_for(lambda: marker(token, "early").exists(), timeout=20)
    pid = server.workers("CgiAttack")[0]["pid"]
    os.kill(pid, 9)
    t.join(30)
    server.wait_for(lambda: not token_processes(token), timeout=10)
    time.sleep(4.5)
    assert not marker(token, "late").exists(), "the setsid child outlived its worker"
    assert not token_processes(token)
