"""A handler's <environmentVariables> (Poolhouse extension) and appSettings reaching the
applications: two applications of one pool, so one worker, with a variable they set
differently — each request carries its application's own value, os.environ only the
first one — and a name the WSGI environ reserves for request headers refused."""

from __future__ import annotations

import httpx

from .conftest import apphost

WSGI_APP = """
import json
import os

AT_IMPORT = {name: os.environ.get(name) for name in ("APP_NAME", "DATABASE_URL")}


def app(environ, start_response):
    body = json.dumps({
        "at_import": AT_IMPORT,
        "environ": {name: environ.get(name) for name in ("APP_NAME", "DATABASE_URL", "REQUEST_METHOD")},
        "environment": dict(environ["poolhouse.environment"]),
        "appsettings": dict(environ["poolhouse.appsettings"]),
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""

ASGI_APP = """
import json
import os

AT_IMPORT = {name: os.environ.get(name) for name in ("APP_NAME", "ONLY_B")}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({
        "at_import": AT_IMPORT,
        "environment": dict(scope["poolhouse.environment"]),
        "appsettings": dict(scope["poolhouse.appsettings"]),
        "pid": os.getpid(),
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def web(module: str, variables: dict[str, str], settings: dict[str, str]) -> str:
    env = "".join(f'<add name="{k}" value="{v}" />' for k, v in variables.items())
    apps = "".join(f'<add key="{k}" value="{v}" />' for k, v in settings.items())
    return f"""<configuration>
  <appSettings>{apps}</appSettings>
  <system.webServer><handlers>
    <add name="py" path="*" verb="*" modules="{module}" scriptProcessor="app:app">
      <environmentVariables>{env}</environmentVariables>
    </add>
  </handlers></system.webServer>
</configuration>"""


SITE = """
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <application path="/a" applicationPool="Shared">
    <virtualDirectory path="/" physicalPath="{root}/a" />
  </application>
  <application path="/b" applicationPool="Shared">
    <virtualDirectory path="/" physicalPath="{root}/b" />
  </application>
  <application path="/bad" applicationPool="Shared">
    <virtualDirectory path="/" physicalPath="{root}/bad" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


def test_environment_variables_per_application(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    pools = '<add name="DefaultAppPool" /><add name="Shared" />'
    server = poolhouse_server(apphost(SITE, pools), files={
        "www/index.html": "home",
        "a/app.py": WSGI_APP,
        "a/web.config": web("WsgiModule", {"APP_NAME": "alpha", "DATABASE_URL": "sqlite:///a.db",
                                           "REQUEST_METHOD": "ignored"}, {"GREETING": "hello from a"}),
        "b/app.py": ASGI_APP,
        "b/web.config": web("AsgiModule", {"APP_NAME": "beta", "ONLY_B": "yes"}, {"GREETING": "hello from b"}),
        "bad/app.py": WSGI_APP,
        "bad/web.config": web("WsgiModule", {"HTTP_X_ADMIN": "1"}, {}),
    })
    with httpx.Client(base_url=server.base, timeout=30) as c:
        a = c.get("/a/", headers={"X-Admin": "spoofed"}).json()
        b = c.get("/b/").json()
        assert a["pid"] == b["pid"]  # one worker hosts both
        assert a["environ"] == {"APP_NAME": "alpha", "DATABASE_URL": "sqlite:///a.db", "REQUEST_METHOD": "GET"}
        assert a["environment"]["APP_NAME"] == "alpha" and a["environment"]["REQUEST_METHOD"] == "ignored"
        assert b["environment"] == {"APP_NAME": "beta", "ONLY_B": "yes"}
        assert a["appsettings"] == {"GREETING": "hello from a"} and b["appsettings"] == {"GREETING": "hello from b"}
        # os.environ is the worker's: the first application to load set APP_NAME there
        first = a["at_import"]["APP_NAME"]
        assert first in ("alpha", "beta") and b["at_import"]["APP_NAME"] == first
        assert a["at_import"]["DATABASE_URL"] == "sqlite:///a.db" and b["at_import"]["ONLY_B"] == "yes"

        r = c.get("/bad/")
        assert r.status_code == 500
    log = server.stderr()
    second = "/b" if first == "alpha" else "/a"
    assert f"environment variable APP_NAME: S{second} (handler py) sets" in log
    assert "'HTTP_X_ADMIN' is the name of a request header in the WSGI environ" in log
