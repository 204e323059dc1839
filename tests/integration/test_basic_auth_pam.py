"""BasicAuthenticationModule with PAM (``basicAuthentication/@pamService``), for real:
throwaway Unix users with known passwords, a PAM service of pam_unix written to
/etc/pam.d for the test, real requests; roles from Unix groups for URL authorization;
the worker keeps serving while a PAM check blocks (pam_unix delays a failure).

Needs root (useradd, chpasswd, /etc/pam.d); skipped otherwise."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import apphost

SERVICE = "poolhouse-test"
PAM_FILE = Path("/etc/pam.d") / SERVICE
PAM_UNIX = ("/lib/x86_64-linux-gnu/security/pam_unix.so", "/usr/lib/x86_64-linux-gnu/security/pam_unix.so",
            "/lib/security/pam_unix.so", "/usr/lib/security/pam_unix.so", "/lib64/security/pam_unix.so",
            "/usr/lib64/security/pam_unix.so", "/lib/aarch64-linux-gnu/security/pam_unix.so",
            "/usr/lib/aarch64-linux-gnu/security/pam_unix.so")


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True, timeout=30)


@pytest.fixture
def pam_accounts() -> Iterator[dict[str, str]]:
    """Two users with known passwords, the first in a fresh group; the PAM service."""
    if os.geteuid() != 0:
        pytest.skip("PAM test needs root: it creates Unix users and /etc/pam.d/" + SERVICE)
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "chpasswd"):
        if shutil.which(tool) is None:
            pytest.skip(f"PAM test needs {tool} (the passwd package)")
    if not any(os.path.exists(p) for p in PAM_UNIX):
        pytest.skip("PAM test needs pam_unix.so (libpam-modules)")
    pytest.importorskip("pamela", reason="PAM test needs the pamela package")
    tag = secrets.token_hex(3)
    acct = {"group": f"phg{tag}", "member": f"phm{tag}", "other": f"pho{tag}",
            "member_pw": "m-" + secrets.token_urlsafe(9), "other_pw": "o-" + secrets.token_urlsafe(9)}
    created: list[tuple[str, str]] = []
    try:
        _run("groupadd", acct["group"])
        created.append(("groupdel", acct["group"]))
        for who, extra in (("member", ["-G", acct["group"]]), ("other", [])):
            _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *extra, acct[who])
            created.append(("userdel", acct[who]))
            _run("chpasswd", stdin=f"{acct[who]}:{acct[who + '_pw']}\n")
        # pam_unix as the only module: a wrong password is refused after its delay
        PAM_FILE.write_text("auth required pam_unix.so\naccount required pam_unix.so\n")
        yield acct
    finally:
        PAM_FILE.unlink(missing_ok=True)
        for tool, name in reversed(created):
            subprocess.run([tool, name], capture_output=True, timeout=30)


WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_authentication_with_pam(poolhouse_server, pam_accounts: dict[str, str]) -> None:
    a = pam_accounts
    site = apphost(
        sites="""
    <site name="Pam" id="1">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
        # pam_unix reads /etc/shadow: the worker must run as root (or in the shadow group)
        pools='<add name="P"><processModel identityType="LocalSystem" /></add>',
        extra=f"""
  <location path="Pam/secure">
    <system.webServer><security><authentication>
      <anonymousAuthentication enabled="false" />
      <basicAuthentication enabled="true" realm="PAM realm" pamService="{SERVICE}" />
    </authentication></security></system.webServer>
  </location>""")
    files = {
        "www/open.txt": "open",
        "www/secure/index.txt": "secret",
        "www/secure/group/web.config": WEB.format(f"""
          <security><authorization>
            <remove users="*" roles="" verbs="" />
            <add accessType="Allow" roles="{a['group']}" />
          </authorization></security>"""),
        "www/secure/group/index.txt": "members only",
    }
    server = poolhouse_server(site, files)
    member, other = a["member"], a["other"]
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.get("/secure/index.txt", headers=basic(member, a["member_pw"]))
        assert r.status_code == 200 and r.text == "secret"
        r = c.get("/secure/index.txt", headers=basic(other, a["other_pw"]))
        assert r.status_code == 200

        r = c.get("/secure/index.txt", headers=basic(member, "not-the-password"))
        assert r.status_code == 401 and "401.1" in r.text
        assert r.headers["www-authenticate"] == 'Basic realm="PAM realm"'
        r = c.get("/secure/index.txt", headers=basic("no-such-user-" + a["group"], "x"))
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="PAM realm"'
        r = c.get("/secure/index.txt")
        assert r.status_code == 401 and "401.2" in r.text

        # roles are the Unix groups of a PAM user
        r = c.get("/secure/group/index.txt", headers=basic(member, a["member_pw"]))
        assert r.status_code == 200 and r.text == "members only"
        r = c.get("/secure/group/index.txt", headers=basic(other, a["other_pw"]))
        assert r.status_code == 401 and "401.3" in r.text

        # a PAM check blocks (pam_unix delays a refusal by ~2 s) off the event loop: the
        # same worker answers another request meanwhile
        done: dict[str, float] = {}

        def slow() -> None:
            with httpx.Client(base_url=server.base, timeout=30) as c2:
                r2 = c2.get("/secure/index.txt", headers=basic(other, "wrong-" + a["other_pw"]))
                done["status"] = r2.status_code
                done["at"] = time.monotonic()

        t0 = time.monotonic()
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        assert c.get("/open.txt").text == "open"
        served = time.monotonic()
        thread.join(30)
        assert done["status"] == 401
        if done["at"] - t0 > 1.0:  # the refusal was delayed: the other request was not
            assert served < done["at"], "the worker stopped serving during a PAM check"
