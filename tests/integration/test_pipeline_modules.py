"""The integrated pipeline and the standard modules through the whole server: one server
start, many sections (each configured in a folder's web.config or a <location>, as
IIS's documentation examples do), real requests; status, sub-status (in the detailed
error page, local requests), headers and bodies."""

from __future__ import annotations

import base64
import stat

import httpx

from poolhouse.worker.modules.authentication import hash_password

from .conftest import apphost

WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"

APP = """\
import json, os

LOG = os.path.join(os.path.dirname(__file__), "notifications.log")
BIG = ("lorem ipsum dolor sit amet " * 400).encode()

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/finish":
        open(LOG, "a").write("handler,")
    if path == "/env":
        keys = ("REMOTE_USER", "AUTH_USER", "AUTH_TYPE", "HTTPS", "URL", "APPL_PHYSICAL_PATH")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BIG)))])
        return [BIG]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (BIG[i:i + 1000] for i in range(0, len(BIG), 1000))
    if path == "/apperror":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"the application's own error page"]
    if path == "/empty404":
        start_response("404 Not Found", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from " + path.encode()]
"""

MODULE = """\
import os
from poolhouse.worker.pipeline import FINISH, HttpContext, Module

LOG = os.path.join(os.path.dirname(__file__), "notifications.log")

class TimingModule(Module):
    def begin_request(self, ctx: HttpContext):
        ctx.items["seen"] = "begin"
        if ctx.path.endswith("/finish"):
            open(LOG, "a").write("begin,")
            return ctx.respond(200, [(b"Content-Type", b"text/plain")], b"finished early")
        return None

    def log_request(self, ctx: HttpContext):
        if ctx.path.endswith("/finish"):
            open(LOG, "a").write("log,")

    def end_request(self, ctx: HttpContext):
        if ctx.path.endswith("/finish"):
            open(LOG, "a").write("end\\n")

    def send_response(self, ctx: HttpContext):
        ctx.response.add_header(b"X-Seen", ctx.items.get("seen", "none").encode())
        ctx.response.add_header(b"X-Server-Var-Url", ctx.server_variables["URL"].encode())
"""

CGI = """\
#!/bin/sh
printf 'Content-Type: text/plain\\r\\nX-Cgi: yes\\r\\n\\r\\n'
printf 'cgi %s %s %s' "$REQUEST_METHOD" "$QUERY_STRING" "$GATEWAY_INTERFACE"
"""

SITE = apphost(
    sites="""
    <site name="Main" id="1">
      <application path="/" applicationPool="Static">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <application path="/app" applicationPool="Py">
        <virtualDirectory path="/" physicalPath="{root}/app" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="Static" /><add name="Py" />',
    extra="""
  <system.webServer><security><isapiCgiRestriction>
    <add path="{root}/www/cgi/hello.cgi" allowed="true" />
    <add path="{root}/www/cgi2/hello.cgi" allowed="true" />
  </isapiCgiRestriction></security></system.webServer>
  <location path="Main/ip">
    <system.webServer><security>
      <ipSecurity allowUnlisted="false"><add ipAddress="10.0.0.0" subnetMask="255.0.0.0" allowed="true" /></ipSecurity>
    </security></system.webServer>
  </location>
  <location path="Main/ip2">
    <system.webServer><security>
      <ipSecurity denyAction="NotFound"><add ipAddress="127.0.0.1" allowed="false" /></ipSecurity>
    </security></system.webServer>
  </location>
  <location path="Main/auth">
    <system.webServer><security><authentication>
      <anonymousAuthentication enabled="false" />
      <basicAuthentication enabled="true" realm="Poolhouse" usersFile="{root}/users.txt" />
    </authentication></security></system.webServer>
  </location>
  <location path="Main/app">
    <system.webServer><security><authentication>
      <basicAuthentication enabled="true" usersFile="{root}/users.txt" />
    </authentication></security></system.webServer>
  </location>""",
)

USERS = (f"# user:hash:groups\nalice:{hash_password('wonderland', 4)}:admins,editors\n"
         f"bob:{hash_password('builder', 4)}:editors\n")

FILES = {
    "users.txt": USERS,
    "www/index.html": "<h1>home</h1>\n",
    "www/big.txt": "static text that compresses well " * 200,
    "www/filter/web.config": WEB.format("""
      <security><requestFiltering allowHighBitCharacters="false">
        <fileExtensions allowUnlisted="false"><add fileExtension=".html" allowed="true" /></fileExtensions>
        <verbs allowUnlisted="false"><add verb="GET" allowed="true" /></verbs>
        <hiddenSegments><add segment="private" /></hiddenSegments>
        <denyUrlSequences><add sequence="xyz" /></denyUrlSequences>
        <denyQueryStringSequences><add sequence="drop table" /></denyQueryStringSequences>
        <requestLimits maxQueryString="40" />
      </requestFiltering></security>"""),
    "www/filter/a.html": "filtered ok",
    "www/filter/a.txt": "never",
    "www/filter/private/a.html": "never",
    "www/custom/web.config": WEB.format("""
      <httpErrors errorMode="Custom" existingResponse="Replace">
        <error statusCode="404" path="errors\\404.htm" responseMode="File" />
        <error statusCode="403" subStatusCode="14" path="/errors/forbidden.htm" responseMode="ExecuteURL" />
        <error statusCode="405" path="http://example.com/no-such-verb" responseMode="Redirect" />
      </httpErrors>"""),
    "www/custom/sub/.keep": "",
    "www/custom/page.txt": "a page",
    "www/errors/404.htm": "<p>custom not found</p>",
    "www/errors/forbidden.htm": "<p>custom forbidden</p>",
    "www/redir/web.config": WEB.format("""
      <httpRedirect enabled="true" destination="http://example.com/new" exactDestination="true"
                    httpResponseStatus="Permanent" />
      <httpProtocol><redirectHeaders><add name="X-Redirected-By" value="Poolhouse" /></redirectHeaders></httpProtocol>"""),
    "www/headers/web.config": WEB.format("""
      <httpProtocol><customHeaders><add name="X-Custom-Header" value="Poolhouse" /></customHeaders></httpProtocol>"""),
    "www/headers/a.txt": "with headers",
    "www/cache/web.config": WEB.format("""
      <staticContent><clientCache cacheControlMode="UseMaxAge" cacheControlMaxAge="01:00:00"
                                  cacheControlCustom="public" /></staticContent>"""),
    "www/cache/a.txt": "cached",
    "www/gz/web.config": WEB.format("""
      <httpCompression staticCompressionIgnoreHitFrequency="true"><scheme name="br" /></httpCompression>"""),
    "www/gz/big.txt": "static text that compresses well " * 200,
    "www/gz/small.txt": "tiny",
    "www/ip/a.txt": "ip",
    "www/ip2/a.txt": "ip",
    "www/auth/index.html": "secret home",
    "www/auth/admin/web.config": WEB.format("""
      <security><authorization>
        <remove users="*" roles="" verbs="" />
        <add accessType="Allow" roles="admins" />
      </authorization></security>"""),
    "www/auth/admin/index.html": "admins only",
    "www/cgi/web.config": WEB.format("""
      <handlers><add name="cgi" path="*.cgi" verb="*" modules="CgiModule" resourceType="File"
                     requireAccess="Execute" /></handlers>"""),
    "www/cgi/hello.cgi": CGI,
    "www/cgi2/web.config": WEB.format("""
      <handlers accessPolicy="Read, Script, Execute"><add name="cgi" path="*.cgi" verb="*" modules="CgiModule"
                     resourceType="File" requireAccess="Execute" /></handlers>"""),
    "www/cgi2/hello.cgi": CGI,
    "www/freb/web.config": WEB.format("""
      <tracing><traceFailedRequests>
        <add path="*"><failureDefinitions statusCodes="404" /></add>
      </traceFailedRequests></tracing>"""),
    "www/freb/a.txt": "fine",
    "app/app.py": APP,
    "app/timing.py": MODULE,
    "app/web.config": WEB.format("""
      <modules><add name="Timing" type="timing:TimingModule" /><add name="DynamicCompressionModule" /></modules>
      <handlers><add name="py" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" /></handlers>
      <httpErrors errorMode="Detailed" />"""),
}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def substatus(r: httpx.Response) -> str:
    """The status.substatus shown on the detailed error page."""
    marker = "HTTP Error "
    text = r.text
    i = text.index(marker) + len(marker)
    return text[i:text.index(" ", i)]


def test_standard_modules(poolhouse_server) -> None:
    server = poolhouse_server(SITE, FILES, writable=("app",))  # notifications.log
    for folder in ("cgi", "cgi2"):
        path = server.root / "www" / folder / "hello.cgi"
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)  # the pool's user runs it
    with httpx.Client(base_url=server.base, timeout=20) as c:
        # --- RequestFilteringModule (404.x), detailed error page for a local request
        assert c.get("/filter/a.html").text == "filtered ok"
        r = c.get("/filter/a.txt")
        assert r.status_code == 404 and substatus(r) == "404.7"
        assert "RequestFilteringModule" in r.text and "BeginRequest" in r.text
        assert substatus(c.get("/filter/private/a.html")) == "404.8"
        assert substatus(c.get("/filter/xyz.html")) == "404.5"
        assert substatus(c.post("/filter/a.html")) == "404.6"
        assert substatus(c.get("/filter/a%2541.html")) == "404.11"  # double escaped
        assert substatus(c.get("/filter/a+b.html")) == "404.11"
        assert substatus(c.get("/filter/%C3%A9.html")) == "404.12"
        assert substatus(c.get("/filter/a.html?q=" + "x" * 50)) == "404.15"
        assert substatus(c.get("/filter/a.html?q=drop%20table")) == "404.18"
        assert substatus(c.get("/web.config")) == "404.7"  # stock: .config denied
        assert substatus(c.get("/bin/x.txt")) == "404.8"  # stock hidden segment

        # --- CustomErrorModule: File, ExecuteURL, Redirect (errorMode Custom)
        r = c.get("/custom/missing.txt")
        assert r.status_code == 404 and r.text == "<p>custom not found</p>"
        r = c.get("/custom/sub/")
        assert r.status_code == 403 and r.text == "<p>custom forbidden</p>"
        r = c.post("/custom/page.txt")
        assert r.status_code == 302 and r.headers["location"] == "http://example.com/no-such-verb"

        # --- HttpRedirectionModule + ProtocolSupportModule redirectHeaders
        r = c.get("/redir/anything.html")
        assert r.status_code == 301 and r.headers["location"] == "http://example.com/new"
        assert r.headers["x-redirected-by"] == "Poolhouse"

        # --- ProtocolSupportModule: customHeaders on success and on errors; OPTIONS, TRACE
        assert c.get("/headers/a.txt").headers["x-custom-header"] == "Poolhouse"
        assert c.get("/headers/nope.txt").headers["x-custom-header"] == "Poolhouse"
        r = c.get("/headers/web.config")  # refused by a module (RequestFiltering 404.7), not a handler
        assert r.status_code == 404 and r.headers["x-custom-header"] == "Poolhouse"
        assert "x-custom-header" not in c.get("/index.html").headers
        r = c.options("/index.html")
        assert r.status_code == 200 and "OPTIONS" in r.headers["allow"]
        r = c.request("TRACE", "/index.html", headers={"X-Echo": "me", "Cookie": "secret=1"})
        assert r.status_code == 200 and r.headers["content-type"] == "message/http"
        assert b"x-echo: me" in r.content.lower() and b"secret" not in r.content

        # --- HttpCacheModule client side
        assert c.get("/cache/a.txt").headers["cache-control"] == "max-age=3600, public"
        assert "cache-control" not in c.get("/index.html").headers

        # --- Static and dynamic compression
        r = c.get("/gz/big.txt", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
        assert r.text == FILES["www/gz/big.txt"] and int(r.headers["content-length"]) < 1000
        r = c.get("/gz/big.txt", headers={"Accept-Encoding": "br;q=1, gzip;q=0.5"})
        assert r.headers["content-encoding"] == "br"
        assert r.text == FILES["www/gz/big.txt"]  # httpx decodes br with the brotli package
        assert "content-encoding" not in c.get("/gz/small.txt", headers={"Accept-Encoding": "gzip"}).headers
        assert "content-encoding" not in c.get("/gz/big.txt", headers={"Accept-Encoding": "identity"}).headers
        cached = list((server.state_dir / "temp" / "IIS Temporary Compressed Files" / "Static").glob("*.gzip"))
        assert cached, "compressed static files are cached on disk"
        # stock: static compression waits until a file is frequently hit (2 hits in 10 s)
        first = c.get("/big.txt", headers={"Accept-Encoding": "gzip"})
        second = c.get("/big.txt", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in first.headers and second.headers["content-encoding"] == "gzip"

        # --- IpRestrictionModule
        r = c.get("/ip/a.txt")
        assert r.status_code == 403 and substatus(r) == "403.503"
        assert substatus(c.get("/ip2/a.txt")) == "404.503"

        # --- Anonymous (disabled) + Basic authentication, URL authorization
        r = c.get("/auth/index.html")
        assert r.status_code == 401 and substatus(r) == "401.2"
        assert r.headers["www-authenticate"] == 'Basic realm="Poolhouse"'
        r = c.get("/auth/index.html", headers=basic("alice", "wrong"))
        assert r.status_code == 401 and substatus(r) == "401.1"
        assert c.get("/auth/index.html", headers=basic("alice", "wonderland")).text == "secret home"
        assert c.get("/auth/admin/index.html", headers=basic("alice", "wonderland")).text == "admins only"
        r = c.get("/auth/admin/index.html", headers=basic("bob", "builder"))
        assert r.status_code == 401 and substatus(r) == "401.3"

        # --- requireAccess vs accessPolicy; CgiModule (RFC 3875 environment)
        r = c.get("/cgi/hello.cgi")
        assert r.status_code == 403 and substatus(r) == "403.1"
        r = c.get("/cgi2/hello.cgi?x=1")
        assert r.status_code == 200 and r.text == "cgi GET x=1 CGI/1.1" and r.headers["x-cgi"] == "yes"

        # --- WSGI through the pipeline: auth into environ, compression, custom errors
        r = c.get("/app/env", headers=basic("alice", "wonderland"))
        env = r.json()
        assert env["REMOTE_USER"] == env["AUTH_USER"] == "alice" and env["AUTH_TYPE"] == "Basic"
        assert env["APPL_PHYSICAL_PATH"] == str(server.root / "app")
        assert r.headers["x-seen"] == "begin" and r.headers["x-server-var-url"] == "/app/env"
        assert c.get("/app/env").json()["REMOTE_USER"] is None  # anonymous still allowed there
        r = c.get("/app/big", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and len(r.text) == 27 * 400
        r = c.get("/app/stream", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and len(r.text) == 27 * 400
        r = c.get("/app/apperror")
        assert r.status_code == 500 and r.text == "the application's own error page"  # Auto keeps it
        r = c.get("/app/empty404")
        assert r.status_code == 404 and "Detailed Error" in r.text and "Handler" in r.text

        # --- ordering: a module finishing in BeginRequest skips the handler, still logs
        r = c.get("/app/finish")
        assert r.text == "finished early"
        log = server.root / "app" / "notifications.log"
        server.wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
        assert log.read_text() == "begin,log,end\n"

        # --- FailedRequestsTracingModule
        assert c.get("/freb/a.txt").status_code == 200
        assert c.get("/freb/missing.txt").status_code == 404
        traces = server.state_dir / "logs" / "FailedReqLogFiles" / "W3SVC1"
        server.wait_for(lambda: (traces / "fr000001.xml").exists())
        xml = (traces / "fr000001.xml").read_text()
        assert 'statusCode="404.0"' in xml and "/freb/missing.txt" in xml
        assert "RequestFilteringModule" in xml and "BeginRequest" in xml and "GENERAL_REQUEST_END" in xml
        assert (traces / "fr000001.htm").exists() and not (traces / "fr000002.xml").exists()
