"""URL Rewrite core: rules read through the real configuration loader (so every schema
default is IIS's) and evaluated against requests given as data — IIS's documented
examples and the real-world patterns (SPA fallback, HTTPS and trailing-slash redirects,
front controller, rewrite maps, outbound header rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poolhouse.config import WebConfigResolver, load_server_config
from poolhouse.worker.rewrite import (ABORT, CUSTOM, NONE, PROXY, REDIRECT, REWRITE, FileSystem, PatternError,
                                      apply_outbound, compile_maps, compile_outbound, compile_pattern,
                                      compile_rules, evaluate, parse, translate_ecmascript)

APPHOST = """<configuration>
  <system.applicationHost>
    <applicationPools><add name="P" /></applicationPools>
    <sites>
      <site name="S" id="1">
        <application path="/" applicationPool="P">
          <virtualDirectory path="/" physicalPath="{root}/www" />
        </application>
        <bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>
</configuration>"""


def sections(tmp_path: Path, rewrite_xml: str) -> dict[str, Any]:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "web.config").write_text(
        f"<configuration><system.webServer><rewrite>{rewrite_xml}</rewrite></system.webServer></configuration>")
    path = tmp_path / "applicationHost.config"
    path.write_text(APPHOST.replace("{root}", str(tmp_path)))
    return WebConfigResolver(load_server_config(str(path)), "S", "/").for_path("/").sections


class Request:
    """Server variables of a request, as a dict; files/dirs that exist, as sets."""

    def __init__(self, files: set[str] = set(), dirs: set[str] = set(), **variables: str) -> None:
        self.vars = {"HTTP_HOST": "example.com", "HTTPS": "off", **variables}
        self.fs = FileSystem(lambda p: p in files, lambda p: p in dirs)

    def var(self, name: str) -> str:
        return self.vars.get(name, "")

    @staticmethod
    def url_var(name: str, path: str) -> str:
        return "/srv/www" + path if name == "REQUEST_FILENAME" else path


def run(tmp_path: Path, rules_xml: str, path: str, query: str = "", maps_xml: str = "", req: Request | None = None):
    secs = sections(tmp_path, f"<rules>{rules_xml}</rules>{maps_xml}")
    maps = compile_maps(secs["system.webServer/rewrite/rewriteMaps"])
    rules = compile_rules(secs["system.webServer/rewrite/rules"]["items"], maps)
    req = req or Request()
    req.vars.setdefault("REQUEST_URI", path + ("?" + query if query else ""))
    return evaluate(rules, path, query, req.var, req.fs, req.url_var)


# ---- patterns ----------------------------------------------------------------------------

def test_back_references_ecmascript_documented_example() -> None:
    m = compile_pattern(r"([0-9]+)/([a-z]+)\.html", "ECMAScript", True)
    assert m("07/article.html") == ("07/article.html", "07", "article")


def test_back_references_wildcard_documented_example() -> None:
    m = compile_pattern("*/*.html", "Wildcard", True)
    assert m("contoso/test.html") == ("contoso/test.html", "contoso", "test")
    q = compile_pattern("a?c", "Wildcard", True)
    assert q("abc") == ("abc",) and q("abbc") is None  # ? captures nothing, whole input


def test_exact_match_and_ignore_case() -> None:
    assert compile_pattern("Index.HTML", "ExactMatch", True)("index.html") == ("index.html",)
    assert compile_pattern("Index.HTML", "ExactMatch", False)("index.html") is None
    assert compile_pattern("^ABC$", "ECMAScript", False)("abc") is None
    assert compile_pattern("^ABC$", "ECMAScript", True)("abc") == ("abc",)


def test_ecmascript_translation() -> None:
    assert translate_ecmascript(r"(?<year>\d{4})/\k<year>") == r"(?P<year>\d{4})/(?P=year)"
    assert translate_ecmascript(r"(?<=a)b(?<!c)") == r"(?<=a)b(?<!c)"  # look-behind untouched
    m = compile_pattern(r"^(?<id>\d+)$", "ECMAScript", True)
    assert m("42") == ("42", "42")
    assert m("٤٢") is None  # \d is ASCII, as in ECMAScript
    for bad in ("[^]", r"\cA", r"\p{L}", "(unclosed"):
        with pytest.raises(PatternError):
            compile_pattern(bad, "ECMAScript", True)


def test_templates_functions_and_maps() -> None:
    from poolhouse.worker.rewrite import RewriteMap
    maps = {"Ids": RewriteMap("Ids", {"/Old": "/new"}, default="/missing")}
    t = parse("{ToLower:{R:1}}-{UrlEncode:{C:1}}-{Ids:{REQUEST_URI}}-{HTTP_HOST}", maps)
    assert t.expand(("x", "ABC"), ("=a b", "a b"), {"REQUEST_URI": "/old", "HTTP_HOST": "h"}.__getitem__) == "abc-a%20b-/new-h"
    assert parse("{Ids:/nope}", maps).expand((), (), lambda n: "") == "/missing"
    assert parse("{R:5}{C:0}", maps).expand(("a",), (), lambda n: "") == ""  # missing refs are empty
    with pytest.raises(PatternError):
        parse("{NoSuchMap:{R:1}}", maps)


# ---- inbound rules -----------------------------------------------------------------------

def test_rewrite_with_back_references(tmp_path: Path) -> None:
    out = run(tmp_path, """<rule name="article"><match url="^article/([0-9]+)/([_0-9a-z-]+)" />
        <action type="Rewrite" url="article.aspx?id={R:1}&amp;title={R:2}" /></rule>""",
              "/article/234/some-title", "lang=en")
    assert (out.action, out.path, out.query) == (REWRITE, "/article.aspx", "id=234&title=some-title&lang=en")


def test_append_query_string_false(tmp_path: Path) -> None:
    out = run(tmp_path, """<rule name="r"><match url="^a$" />
        <action type="Rewrite" url="/b?x=1" appendQueryString="false" /></rule>""", "/a", "y=2")
    assert (out.path, out.query) == ("/b", "x=1")


def test_subdomain_redirect_documented_example(tmp_path: Path) -> None:
    out = run(tmp_path, r"""<rule name="Subdomain redirect" stopProcessing="true"><match url=".*" />
        <conditions>
          <add input="{HTTP_HOST}" pattern="^www\.localtest\.me$" negate="true" />
          <add input="{HTTP_HOST}" pattern="^([^\.]+)\.localtest\.me$" />
        </conditions>
        <action type="Redirect" url="http://localtest.me/{C:1}/{R:0}" /></rule>""",
              "/article.aspx", req=Request(HTTP_HOST="sub.localtest.me"))
    assert (out.action, out.status, out.url) == (REDIRECT, 301, "http://localtest.me/sub/article.aspx")
    assert run(tmp_path, r"""<rule name="Subdomain redirect"><match url=".*" /><conditions>
          <add input="{HTTP_HOST}" pattern="^www\.localtest\.me$" negate="true" /></conditions>
        <action type="Redirect" url="/x" /></rule>""", "/a", req=Request(HTTP_HOST="www.localtest.me")).action == NONE


HTTPS_RULE = """<rule name="HTTP to HTTPS" stopProcessing="true"><match url="(.*)" />
  <conditions><add input="{HTTPS}" pattern="^OFF$" /></conditions>
  <action type="Redirect" url="https://{HTTP_HOST}/{R:1}" redirectType="Found" /></rule>"""


def test_https_redirect(tmp_path: Path) -> None:
    out = run(tmp_path, HTTPS_RULE, "/shop/cart", "id=3")
    assert (out.action, out.status, out.url) == (REDIRECT, 302, "https://example.com/shop/cart?id=3")
    assert run(tmp_path, HTTPS_RULE, "/shop/cart", req=Request(HTTPS="on")).action == NONE


TRAILING = """<rule name="Add trailing slash" stopProcessing="true"><match url="(.*[^/])$" />
  <conditions>
    <add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" />
    <add input="{REQUEST_FILENAME}" matchType="IsDirectory" negate="true" />
  </conditions>
  <action type="Redirect" redirectType="Permanent" url="{R:1}/" /></rule>"""


def test_trailing_slash_redirect(tmp_path: Path) -> None:
    out = run(tmp_path, TRAILING, "/blog/post")
    assert (out.action, out.status, out.url) == (REDIRECT, 301, "/blog/post/")
    assert run(tmp_path, TRAILING, "/style.css", req=Request(files={"/srv/www/style.css"})).action == NONE
    assert run(tmp_path, TRAILING, "/blog/").action == NONE


SPA = """<rule name="Static Assets" stopProcessing="true">
  <match url="([\\S]+[.](html|htm|svg|js|css|png|gif|jpg|jpeg|ico|woff2?))" />
  <action type="Rewrite" url="/{R:1}" /></rule>
<rule name="ReactRouter Routes" stopProcessing="true"><match url=".*" />
  <conditions logicalGrouping="MatchAll">
    <add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" />
    <add input="{REQUEST_FILENAME}" matchType="IsDirectory" negate="true" />
    <add input="{REQUEST_URI}" pattern="^/(api)" negate="true" />
  </conditions>
  <action type="Rewrite" url="/index.html" /></rule>"""


def test_spa_fallback(tmp_path: Path) -> None:
    assert run(tmp_path, SPA, "/users/42").path == "/index.html"
    assert run(tmp_path, SPA, "/api/users").action == NONE
    assert run(tmp_path, SPA, "/app.js").path == "/app.js"
    assert run(tmp_path, SPA, "/assets", req=Request(dirs={"/srv/www/assets"})).action == NONE


def test_front_controller(tmp_path: Path) -> None:
    rules = """<rule name="front"><match url="^(.*)$" />
      <conditions><add input="{REQUEST_FILENAME}" matchType="IsFile" negate="true" /></conditions>
      <action type="Rewrite" url="index.py/{R:1}" /></rule>"""
    out = run(tmp_path, rules, "/products/7", "a=1")
    assert (out.path, out.query) == ("/index.py/products/7", "a=1")


def test_rules_chain_and_stop_processing(tmp_path: Path) -> None:
    rules = """<rule name="one"><match url="^a$" /><action type="Rewrite" url="b" /></rule>
      <rule name="two" stopProcessing="true"><match url="^b$" /><action type="Rewrite" url="c" /></rule>
      <rule name="three"><match url="^c$" /><action type="Rewrite" url="d" /></rule>"""
    out = run(tmp_path, rules, "/a")
    assert (out.path, out.rules) == ("/c", ["one", "two"])


def test_none_action_sets_server_variables_and_stops(tmp_path: Path) -> None:
    rules = """<rule name="tag" stopProcessing="true"><match url="^api/(.*)" />
      <serverVariables><set name="HTTP_X_API_PATH" value="{R:1}" /></serverVariables>
      <action type="None" /></rule>
      <rule name="never"><match url=".*" /><action type="Rewrite" url="/x" /></rule>"""
    out = run(tmp_path, rules, "/api/v1/users")
    assert out.action == NONE and out.server_variables == [("HTTP_X_API_PATH", "v1/users", True)]


def test_negate_match_and_match_any(tmp_path: Path) -> None:
    rules = """<rule name="block"><match url="^public/" negate="true" />
      <conditions logicalGrouping="MatchAny">
        <add input="{HTTP_USER_AGENT}" pattern="badbot" />
        <add input="{QUERY_STRING}" pattern="(^|&amp;)evil=1" />
      </conditions>
      <action type="CustomResponse" statusCode="403" subStatusCode="6" statusReason="Forbidden"
              statusDescription="Go away" /></rule>"""
    out = run(tmp_path, rules, "/private/x", "evil=1")
    assert (out.action, out.status, out.substatus, out.description) == (CUSTOM, 403, 6, "Go away")
    assert run(tmp_path, rules, "/public/x", "evil=1").action == NONE
    assert run(tmp_path, rules, "/private/x", "ok=1").action == NONE


def test_abort_request(tmp_path: Path) -> None:
    rules = """<rule name="abort"><match url="\\.php$" /><action type="AbortRequest" /></rule>"""
    assert run(tmp_path, rules, "/wp-login.php").action == ABORT


def test_track_all_captures(tmp_path: Path) -> None:
    rules = """<rule name="t"><match url=".*" />
      <conditions trackAllCaptures="true">
        <add input="{HTTP_HOST}" pattern="^(\\w+)\\." />
        <add input="{QUERY_STRING}" pattern="id=(\\d+)" />
      </conditions>
      <action type="Rewrite" url="/{C:1}/{C:3}" appendQueryString="false" /></rule>"""
    out = run(tmp_path, rules, "/x", "id=9", req=Request(HTTP_HOST="shop.example.com"))
    assert out.path == "/shop/9"


def test_rewrite_map_documented_example(tmp_path: Path) -> None:
    maps = """<rewriteMaps><rewriteMap name="StaticRewrites" defaultValue="">
        <add key="/article1" value="/article.aspx?id=1&amp;title=some-title" />
        <add key="/some-title" value="/article.aspx?id=1&amp;title=some-title" />
      </rewriteMap></rewriteMaps>"""
    rules = """<rule name="Rewrite Rule"><match url=".*" />
      <conditions><add input="{StaticRewrites:{REQUEST_URI}}" pattern="(.+)" /></conditions>
      <action type="Rewrite" url="{C:1}" /></rule>"""
    out = run(tmp_path, rules, "/Article1", maps_xml=maps)
    assert (out.path, out.query) == ("/article.aspx", "id=1&title=some-title")
    assert run(tmp_path, rules, "/other", maps_xml=maps).action == NONE


def test_reverse_proxy_rewrite(tmp_path: Path) -> None:
    rules = """<rule name="api" stopProcessing="true"><match url="^api/(.*)" />
      <action type="Rewrite" url="http://127.0.0.1:5000/{R:1}" /></rule>"""
    out = run(tmp_path, rules, "/api/users", "page=2")
    assert (out.action, out.url) == (PROXY, "http://127.0.0.1:5000/users?page=2")


def test_scope_of_distributed_rules(tmp_path: Path) -> None:
    """A rule defined in /blog's web.config sees 'post/1', and relative targets stay in /blog."""
    secs = sections(tmp_path, """<rules><rule name="r"><match url="^post/(\\d+)$" />
        <action type="Rewrite" url="index.py?p={R:1}" /></rule></rules>""")
    rules = compile_rules(secs["system.webServer/rewrite/rules"]["items"], {}, {"r": "/blog"})
    req = Request()
    out = evaluate(rules, "/blog/post/1", "", req.var, req.fs, req.url_var)
    assert (out.path, out.query) == ("/blog/index.py", "p=1")
    assert evaluate(rules, "/post/1", "", req.var, req.fs, req.url_var).action == NONE


def test_disabled_rule_and_redirect_types(tmp_path: Path) -> None:
    rules = """<rule name="off" enabled="false"><match url=".*" /><action type="AbortRequest" /></rule>
      <rule name="r"><match url="^old$" /><action type="Redirect" url="/new" redirectType="Temporary" /></rule>"""
    out = run(tmp_path, rules, "/old")
    assert (out.action, out.status) == (REDIRECT, 307)
    out = run(tmp_path, rules.replace("Temporary", "SeeOther"), "/old")
    assert out.status == 303


# ---- outbound ----------------------------------------------------------------------------

def test_outbound_header_rules(tmp_path: Path) -> None:
    secs = sections(tmp_path, """<outboundRules>
        <preConditions><preCondition name="IsHTML">
          <add input="{RESPONSE_CONTENT_TYPE}" pattern="^text/html" /></preCondition></preConditions>
        <rule name="Remove Server"><match serverVariable="RESPONSE_Server" pattern=".+" />
          <action type="Rewrite" value="" /></rule>
        <rule name="Powered" preCondition="IsHTML"><match serverVariable="RESPONSE_X_Powered_By" pattern=".*" />
          <action type="Rewrite" value="Poolhouse ({R:0})" /></rule>
        <rule name="Body" ><match filterByTags="A" pattern="^/(.*)" /><action type="Rewrite" value="/app/{R:1}" /></rule>
      </outboundRules>""")
    rules = compile_outbound(secs["system.webServer/rewrite/outboundRules"], {})
    assert [r.name for r in rules] == ["Remove Server", "Powered"]  # body rewriting skipped
    fs = FileSystem(lambda p: False, lambda p: False)
    html = [(b"Server", b"Werkzeug"), (b"Content-Type", b"text/html"), (b"X-Powered-By", b"Flask")]
    assert apply_outbound(rules, html, lambda n: "", fs) == [
        (b"Content-Type", b"text/html"), (b"X-Powered-By", b"Poolhouse (Flask)")]
    js = [(b"Content-Type", b"application/json"), (b"X-Powered-By", b"Flask")]
    assert apply_outbound(rules, js, lambda n: "", fs) == js


def test_bad_pattern_names_the_rule(tmp_path: Path) -> None:
    secs = sections(tmp_path, """<rules><rule name="broken"><match url="(" /><action type="None" /></rule></rules>""")
    with pytest.raises(PatternError, match="broken"):
        compile_rules(secs["system.webServer/rewrite/rules"]["items"], compile_maps(None))


def test_golden_spa_web_config_replayed(tmp_path: Path) -> None:
    """tests/data/webconfig/spa-rewrite.config as it is (a React/Angular deployment)."""
    golden = Path(__file__).parent.parent / "data" / "webconfig" / "spa-rewrite.config"
    www = tmp_path / "www"
    www.mkdir()
    (www / "web.config").write_text(golden.read_text())
    (tmp_path / "applicationHost.config").write_text(APPHOST.replace("{root}", str(tmp_path)))
    secs = WebConfigResolver(load_server_config(str(tmp_path / "applicationHost.config")), "S", "/").for_path("/").sections
    rules = compile_rules(secs["system.webServer/rewrite/rules"]["items"], {})
    req = Request(dirs={"/srv/www/static"})

    def go(path: str) -> tuple[str, str]:
        req.vars["REQUEST_URI"] = path
        out = evaluate(rules, path, "", req.var, req.fs, req.url_var)
        return out.action, out.path

    assert go("/dashboard/settings") == (REWRITE, "/index.html")
    assert go("/static/js/main.3f2a.js") == (REWRITE, "/static/js/main.3f2a.js")  # "Static Assets"
    assert go("/api/orders") == (NONE, "/api/orders")
    assert go("/static") == (NONE, "/static")  # a folder
