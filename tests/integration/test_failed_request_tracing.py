"""Failed Request Tracing through the whole server: the site's
traceFailedRequestsLogging (directory, maxLogFiles, maxLogFileSizeKB) and each rule's
traceAreas (WWW Server areas, verbosity) and failureDefinitions, read back from the
trace files that real requests leave."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx

from poolhouse.worker.modules.authentication import hash_password

from .conftest import apphost

WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"


def rule(areas: str, verbosity: str, codes: str, fail: str = "") -> str:
    fail_attr = f' verbosity="{fail}"' if fail else ""
    return WEB.format(f"""
      <tracing><traceFailedRequests>
        <add path="*">
          <traceAreas>
            <add provider="ASPNET" areas="Infrastructure,Module,Page,AppServices" verbosity="Verbose" />
            <add provider="WWW Server" areas="{areas}" verbosity="{verbosity}" />
          </traceAreas>
          <failureDefinitions statusCodes="{codes}"{fail_attr} />
        </add>
      </traceFailedRequests></tracing>""")


SITES = apphost(
    sites="""
    <site name="Traced" id="1">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      <traceFailedRequestsLogging enabled="true" directory="{root}/freb" maxLogFiles="3" />
    </site>
    <site name="Small" id="2">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/small" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port1}:" /></bindings>
      <traceFailedRequestsLogging enabled="true" maxLogFileSizeKB="1" />
    </site>""",
    pools='<add name="P" />',
    extra="""
  <location path="Traced/auth">
    <system.webServer><security><authentication>
      <anonymousAuthentication enabled="false" />
      <basicAuthentication enabled="true" realm="T" usersFile="{root}/users.txt" />
    </authentication></security></system.webServer>
  </location>""",
)

FILES = {
    "users.txt": f"alice:{hash_password('wonderland', 4)}:staff\n",
    "www/verbose/web.config": rule("*", "Verbose", "404"),
    "www/verbose/a.txt": "a",
    "www/warn/web.config": rule("RequestNotifications", "Warning", "404"),
    "www/auth/web.config": rule("Authentication,Security", "Information", "401"),
    "www/auth/a.txt": "secret",
    "www/onlyaspnet/web.config": WEB.format("""
      <tracing><traceFailedRequests>
        <add path="*.txt">
          <traceAreas><add provider="ASP" areas="" verbosity="Verbose" /></traceAreas>
          <failureDefinitions statusCodes="404" />
        </add>
      </traceFailedRequests></tracing>"""),
    "www/plain/web.config": WEB.format("""
      <tracing><traceFailedRequests>
        <add path="*"><failureDefinitions statusCodes="400-599" /></add>
      </traceFailedRequests></tracing>"""),
    "small/web.config": rule("*", "Verbose", "404"),
    "www/gz/web.config": rule("Compression", "Information", "200").replace(
        "<tracing>", '<httpCompression staticCompressionIgnoreHitFrequency="true" /><tracing>'),
    "www/gz/big.txt": "static text that compresses well " * 200,
}


def events(xml: str) -> list[str]:
    return re.findall(r'<Event name="([A-Z_]+)"', xml)


def traces(folder: Path) -> list[Path]:
    return sorted(folder.glob("fr*.xml"))


def test_trace_areas_verbosity_and_the_file_cap(poolhouse_server) -> None:
    server = poolhouse_server(SITES, FILES, extra_ports=1)
    folder = server.root / "freb" / "W3SVC1"
    assert not (server.state_dir / "logs" / "FailedReqLogFiles" / "W3SVC1").exists()

    def one_more(path: str, **kw: object) -> str:
        before = len(list(folder.glob("fr*.xml"))) if folder.exists() else 0
        newest = traces(folder)[-1].name if before else ""
        r = httpx.get(server.url(path), timeout=20, **kw)  # type: ignore[arg-type]
        assert r.status_code in (200, 401, 404)
        server.wait_for(lambda: folder.exists() and traces(folder) and traces(folder)[-1].name != newest)
        return traces(folder)[-1].read_text()

    # areas="*" verbosity="Verbose": every event
    xml = one_more("/verbose/missing.txt")
    names = events(xml)
    assert names[0] == "GENERAL_REQUEST_START" and names[-1] == "GENERAL_REQUEST_END"
    assert "NOTIFY_MODULE_START" in names and "MODULE_SET_RESPONSE_ERROR_STATUS" in names
    assert 'level="Verbose"' in xml and 'area="RequestNotifications"' in xml

    # RequestNotifications at Warning: the error status, not the Verbose module starts
    names = events(one_more("/warn/bin/x.txt"))  # RequestFilteringModule: hidden segment
    assert "MODULE_SET_RESPONSE_ERROR_STATUS" in names and "NOTIFY_MODULE_START" not in names
    assert names[0] == "GENERAL_REQUEST_START" and names[-1] == "GENERAL_REQUEST_END"

    # Authentication,Security at Information: the logon, not the notifications
    bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
    names = events(one_more("/auth/a.txt", headers={"Authorization": bad}))
    assert "AUTH_START" in names and "AUTH_FAILED" in names
    assert "NOTIFY_MODULE_START" not in names and "MODULE_SET_RESPONSE_ERROR_STATUS" not in names

    # a rule that traces only another provider: the request's frame alone
    assert events(one_more("/onlyaspnet/missing.txt")) == ["GENERAL_REQUEST_START", "GENERAL_REQUEST_END"]

    # maxLogFiles="3": the oldest traces were deleted, numbering goes on
    files = traces(folder)
    assert [f.name for f in files] == ["fr000002.xml", "fr000003.xml", "fr000004.xml"]
    assert sorted(p.name for p in folder.glob("fr*.htm")) == ["fr000002.htm", "fr000003.htm", "fr000004.htm"]
    one_more("/plain/missing.txt")  # no traceAreas: everything, as before
    assert [f.name for f in traces(folder)] == ["fr000003.xml", "fr000004.xml", "fr000005.xml"]
    assert "NOTIFY_MODULE_START" in events(traces(folder)[-1].read_text())
    assert "<th>area</th>" in (folder / "fr000005.htm").read_text()

    # a 200 traced for its compression: only the Compression area's event
    names = events(one_more("/gz/big.txt", headers={"Accept-Encoding": "gzip"}))
    assert names == ["GENERAL_REQUEST_START", "STATIC_COMPRESSION_SUCCESS", "GENERAL_REQUEST_END"]

    # site 2: maxLogFileSizeKB="1" cuts a verbose trace, which says so and keeps its end
    small = server.state_dir / "logs" / "FailedReqLogFiles" / "W3SVC2"
    assert httpx.get(f"http://127.0.0.1:{server.ports[1]}/missing.txt", timeout=20).status_code == 404
    server.wait_for(lambda: (small / "fr000001.xml").exists())
    xml = (small / "fr000001.xml").read_text()
    names = events(xml)
    assert "TRACE_TRUNCATED" in names and names[-1] == "GENERAL_REQUEST_END"
    assert len(xml) < 1024 + 600
