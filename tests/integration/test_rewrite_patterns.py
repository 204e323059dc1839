"""URL Rewrite through the whole server: the web.config files IIS users deploy — SPA
fallback with an /api exclusion, HTTPS-forcing and trailing-slash redirects, a front
controller rewriting to a Python handler, rewrite maps, CustomResponse, AbortRequest and
outbound header rules — one server start, real requests."""

from __future__ import annotations

import httpx
import pytest

from .conftest import apphost
from .upstream import SITE

WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"

ROOT_RULES = WEB.format("""
<rewrite>
  <rewriteMaps>
    <rewriteMap name="Legacy">
      <add key="/old-about.htm" value="/spa/about" />
    </rewriteMap>
  </rewriteMaps>
  <rules>
    <rule name="legacy" stopProcessing="true">
      <match url=".*" />
      <conditions><add input="{Legacy:{REQUEST_URI}}" pattern="(.+)" /></conditions>
      <action type="Redirect" url="{C:1}" redirectType="Permanent" />
    </rule>
    <rule name="no php" stopProcessing="true">
      <match url="\\.php$" />
      <action type="AbortRequest" />
    </rule>
    <rule name="blocked" stopProcessing="true">
      <match url="^blocked/" />
      <action type="CustomResponse" statusCode="403" subStatusCode="502" statusReason="Forbidden"
              statusDescription="Blocked by rule" />
    </rule>
  </rules>
</rewrite>""")

SPA_RULES = WEB.format("""
<rewrite>
  <rules>
    <rule name="SPA fallback" stopProcessing="true">
      <match url=".*" />
      <conditions logicalGrouping="MatchAll">
        <add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" />
        <add input="{REQUEST_FILENAME}" matchType="IsDirectory" negate="true" />
        <add input="{REQUEST_URI}" pattern="^/spa/api" negate="true" />
      </conditions>
      <action type="Rewrite" url="index.html" />
    </rule>
  </rules>
</rewrite>""")

SECURE_RULES = WEB.format("""
<rewrite>
  <rules>
    <rule name="Force HTTPS" stopProcessing="true">
      <match url="(.*)" />
      <conditions><add input="{HTTPS}" pattern="^OFF$" /></conditions>
      <action type="Redirect" url="https://{HTTP_HOST}{REQUEST_URI}" appendQueryString="false" />
    </rule>
  </rules>
</rewrite>""")

BLOG_RULES = WEB.format("""
<rewrite>
  <rules>
    <rule name="Add trailing slash" stopProcessing="true">
      <match url="(.*[^/])$" />
      <conditions>
        <add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" />
        <add input="{REQUEST_FILENAME}" matchType="IsDirectory" negate="true" />
      </conditions>
      <action type="Redirect" redirectType="Permanent" url="{R:1}/" />
    </rule>
  </rules>
</rewrite>""")

SHOP_RULES = WEB.format("""
<handlers>
  <add name="shop" path="index.py" verb="*" modules="WsgiModule" scriptProcessor="shop.index:app" />
</handlers>
<rewrite>
  <rules>
    <rule name="front controller" stopProcessing="true">
      <match url="^(.*)$" />
      <conditions>
        <add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" />
      </conditions>
      <serverVariables><set name="HTTP_X_ROUTE" value="{R:1}" /></serverVariables>
      <action type="Rewrite" url="index.py?route={R:1}" />
    </rule>
  </rules>
  <outboundRules>
    <rule name="hide framework">
      <match serverVariable="RESPONSE_X_Powered_By" pattern=".+" />
      <action type="Rewrite" value="Poolhouse" />
    </rule>
  </outboundRules>
</rewrite>""")

SHOP_APP = """\
import json

def app(environ, start_response):
    keys = ("PATH_INFO", "QUERY_STRING", "HTTP_X_ROUTE", "HTTP_X_ORIGINAL_URL", "REQUEST_URI")
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Powered-By", "SomeFramework/1.0")])
    return [body]
"""

@pytest.fixture
def server(poolhouse_server):  # type: ignore[no-untyped-def]
    return poolhouse_server(apphost(SITE), files={
        "www/web.config": ROOT_RULES,
        "www/spa/web.config": SPA_RULES,
        "www/spa/index.html": "<html>spa shell</html>",
        "www/spa/app.js": "console.log('app')",
        "www/spa/assets/logo.txt": "logo",
        "www/secure/web.config": SECURE_RULES,
        "www/secure/page.html": "secure page",
        "www/blog/web.config": BLOG_RULES,
        "www/blog/style.css": "body{}",
        "www/blog/post/index.html": "a post",
        "www/shop/web.config": SHOP_RULES,
        "www/shop/index.py": SHOP_APP,
        "www/shop/logo.txt": "shop logo",
    })


def test_real_world_rewrite_patterns(server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.base, timeout=10, follow_redirects=False) as c:
        # SPA: deep links get the shell, files and folders are themselves, /api is excluded
        r = c.get("/spa/users/42")
        assert (r.status_code, r.text) == (200, "<html>spa shell</html>")
        assert r.headers["content-type"].startswith("text/html")
        assert c.get("/spa/app.js").text == "console.log('app')"
        assert c.get("/spa/assets/logo.txt").text == "logo"
        assert c.get("/spa/api/users").status_code == 404

        # HTTPS-forcing redirect keeps host, path and query
        r = c.get("/secure/page.html?x=1", headers={"Host": "shop.example.test"})
        assert r.status_code == 301
        assert r.headers["location"] == "https://shop.example.test/secure/page.html?x=1"

        # trailing slash: only for what is neither a file nor a folder
        r = c.get("/blog/archive")
        assert (r.status_code, r.headers["location"]) == (301, "/blog/archive/")
        assert c.get("/blog/style.css").status_code == 200
        r = c.get("/blog/post")
        assert r.status_code == 301  # a folder without its slash: the static handler's own redirect
        assert c.get("/blog/post/").text == "a post"

        # front controller: to a Python handler, query appended, server variable as header
        r = c.get("/shop/products/7?color=red")
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["PATH_INFO"] == "/shop/index.py"
        assert data["QUERY_STRING"] == "route=products/7&color=red"
        assert data["HTTP_X_ROUTE"] == "products/7"
        assert data["HTTP_X_ORIGINAL_URL"] == "/shop/products/7?color=red"
        assert r.headers["x-powered-by"] == "Poolhouse"  # outbound rule
        assert c.get("/shop/logo.txt").text == "shop logo"  # a file: not rewritten

        # rewrite map, CustomResponse, AbortRequest
        r = c.get("/old-about.htm")
        assert (r.status_code, r.headers["location"]) == (301, "/spa/about")
        r = c.get("/blocked/x")
        assert r.status_code == 403
        assert "Blocked by rule" in r.text
        # AbortRequest resets the stream; today the listener answers such a reset with
        # 502 (HTTPERR Connection_Abandoned_By_AppPool) rather than dropping the connection
        try:
            assert c.get("/index.php").status_code == 502
        except httpx.HTTPError:
            pass
        assert c.get("/spa/app.js").status_code == 200  # the server is fine afterwards
