"""The W3C log's custom fields (logFile/customFields) through the whole server: a custom
module's values (response.log_fields, ctx.set_server_variable), a server variable of
the request, a response header and a request header, each under its logFieldName in
the #Fields line of u_ex…_x.log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from .conftest import apphost

APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "v1")])
    return [b"hello"]
"""

MODULE = """\
from poolhouse.worker.pipeline import HttpContext, Module


class TenantModule(Module):
    def begin_request(self, ctx: HttpContext):
        ctx.set_server_variable("REGION", "eu west")

    def send_response(self, ctx: HttpContext):
        ctx.response.add_log_field("Tenant", ctx.headers.get("x-tenant", "none"))
"""

WEB = """<configuration><system.webServer>
  <modules><add name="Tenant" type="tenant:TenantModule" /></modules>
  <handlers><add name="py" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" /></handlers>
</system.webServer></configuration>"""

SITE = apphost(
    sites="""
    <site name="Logged" id="4">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      <logFile logExtFileFlags="Date, Time, UriStem, HttpStatus">
        <customFields maxCustomFieldLength="64">
          <add logFieldName="X-Forwarded-For" sourceName="X-Forwarded-For" sourceType="RequestHeader" />
          <add logFieldName="Tenant" sourceName="TENANT" sourceType="ServerVariable" />
          <add logFieldName="Region" sourceName="REGION" sourceType="ServerVariable" />
          <add logFieldName="x-app" sourceName="X-App" sourceType="ResponseHeader" />
          <add logFieldName="c-port" sourceName="REMOTE_PORT" sourceType="ServerVariable" />
        </customFields>
      </logFile>
    </site>""",
    pools='<add name="P" />',
)


def test_a_module_field_and_the_configured_custom_fields_reach_the_w3c_log(poolhouse_server) -> None:
    server = poolhouse_server(SITE, {"www/app.py": APP, "www/tenant.py": MODULE, "www/web.config": WEB})
    with httpx.Client(base_url=server.base, timeout=20) as c:
        r = c.get("/hello", headers={"X-Tenant": "acme", "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200 and r.text == "hello"
        r = c.get("/other")
        assert r.status_code == 200
    folder = server.state_dir / "logs" / "W3SVC4"
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        files = sorted(Path(folder).glob("u_ex*_x.log")) if folder.exists() else []
        if files:
            lines = [ln for ln in files[-1].read_text().splitlines() if ln]
            if len([ln for ln in lines if not ln.startswith("#")]) >= 2:
                break
        time.sleep(0.1)
    assert "#Fields: date time cs-uri-stem sc-status X-Forwarded-For Tenant Region x-app c-port" in lines
    rows = [ln.split(" ") for ln in lines if not ln.startswith("#")]
    first, second = rows[-2], rows[-1]
    assert first[2:8] == ["/hello", "200", "203.0.113.7", "acme", "eu+west", "v1"]
    assert first[8].isdigit()  # the client's port, a server variable of the request
    assert second[2:8] == ["/other", "200", "-", "none", "eu+west", "v1"]
