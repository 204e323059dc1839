"""Basic authentication against a users file never blocks the worker's event loop: the
bcrypt check runs on a thread, so wrong passwords cost their own requests only, and a
verified user and password are remembered briefly (never a failure, and never past a
change of the users file)."""

from __future__ import annotations

import base64
import statistics
import threading
import time
from pathlib import Path

import httpx

from poolhouse.worker.modules.authentication import check_password, hash_password

from .conftest import Server, apphost

APP = '''
def app(environ, start_response):
    body = ("user=%s" % environ.get("REMOTE_USER", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

WEB = '''<?xml version="1.0" encoding="UTF-8"?>
<configuration><system.webServer><handlers>
  <add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="auth_loop_app:app" />
</handlers></system.webServer></configuration>
'''

SITE = apphost(
    sites="""
    <site name="A" id="1">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/app" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="P" />',
    extra="""
  <location path="A/auth">
    <system.webServer><security><authentication>
      <anonymousAuthentication enabled="false" />
      <basicAuthentication enabled="true" realm="Loop" usersFile="{root}/users.txt" />
    </authentication></security></system.webServer>
  </location>""",
)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def costly_hash(password: str) -> tuple[str, float]:
    """A bcrypt hash whose check takes at least a quarter of a second here and now (the
    machine's speed and load vary): the hash and the measured cost of one check."""
    for rounds in range(10, 16):
        digest = hash_password(password, rounds)
        times = []
        for _ in range(3):
            t = time.monotonic()
            check_password("wrong", digest)
            times.append(time.monotonic() - t)
        cost = statistics.median(times)
        if cost >= 0.25:
            break
    return digest, cost


def timed_get(client: httpx.Client, url: str, **kw) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    t = time.monotonic()
    r = client.get(url, **kw)
    return r, time.monotonic() - t


def test_wrong_passwords_do_not_stall_the_pool(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    digest, cost = costly_hash("right")
    server: Server = poolhouse_server(SITE, {"app/auth_loop_app.py": APP, "app/web.config": WEB,
                                            "users.txt": f"alice:{digest}:staff\n"})
    with httpx.Client(timeout=120) as client:
        assert client.get(server.url("/plain")).text == "user="  # the worker is up
    results: list[httpx.Response] = []

    def wrong(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            results.append(c.get(server.url(f"/auth/{i}"), headers=basic("alice", f"wrong{i}")))

    threads = [threading.Thread(target=wrong, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(min(cost / 2, 0.5))  # the checks are under way
    with httpx.Client(timeout=120) as client:
        plain, took = timed_get(client, server.url("/plain"))
    for t in threads:
        t.join(120)
    assert plain.status_code == 200
    # on the event loop the eight checks ran one after another: the plain request waited
    # for most of 8 x cost; off it, it is answered at once
    assert took < 3 * cost, f"plain request took {took:.2f}s with bcrypt at {cost:.2f}s a check"
    assert len(results) == 8
    assert all(r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="Loop"' for r in results)


def test_verified_credentials_are_remembered_until_the_users_file_changes(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    digest, cost = costly_hash("right")
    server: Server = poolhouse_server(SITE, {"app/auth_loop_app.py": APP, "app/web.config": WEB,
                                            "users.txt": f"alice:{digest}:staff\n"})
    users: Path = server.root / "users.txt"
    with httpx.Client(timeout=120) as client:
        first = client.get(server.url("/auth/a"), headers=basic("alice", "right"))
        assert first.status_code == 200 and first.text == "user=alice"
        hits = []
        for _ in range(5):
            r, took = timed_get(client, server.url("/auth/a"), headers=basic("alice", "right"))
            assert r.status_code == 200
            hits.append(took)
        assert statistics.median(hits) < cost / 2, (hits, cost)
        # a failure is never remembered: the right password right after a wrong one works
        assert client.get(server.url("/auth/a"), headers=basic("alice", "nope")).status_code == 401
        assert client.get(server.url("/auth/a"), headers=basic("alice", "right")).status_code == 200
        # the password changes in the users file: the remembered one stops working
        users.write_text(f"alice:{hash_password('changed', 4)}:staff\n# changed\n")
        server.wait_for(lambda: client.get(server.url("/auth/a"),
                                           headers=basic("alice", "right")).status_code == 401, timeout=20)
        assert client.get(server.url("/auth/a"), headers=basic("alice", "changed")).status_code == 200
