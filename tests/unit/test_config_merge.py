"""The hierarchy merge: applicationHost.config, <location> tags and web.config files
along the URL path, with IIS's collection, override and locking rules."""

import os
import time
from pathlib import Path

import pytest

from poolhouse.config import ConfigError, WebConfigResolver, load_server_config
from poolhouse.config import resolver as resolver_module


class Site:
    """A site in tmp_path: root app at www/, application /app at app/ (pool P2), a
    virtual directory /app/v at vdir/."""

    def __init__(self, tmp_path: Path, extra: str = "", app_attrs: str = "",
                 vdir_attrs: str = "", pool_attrs: str = "") -> None:
        self.root = tmp_path
        for d in ("www", "www/sub/deeper", "app", "app/inner", "vdir", "vdir/below"):
            (tmp_path / d).mkdir(parents=True, exist_ok=True)
        self.path = tmp_path / "applicationHost.config"
        self.path.write_text(f"""<configuration>
  <system.applicationHost>
    <applicationPools><add name="DefaultAppPool" /><add name="P2" {pool_attrs} /></applicationPools>
    <sites>
      <site name="S" id="1">
        <application path="/"><virtualDirectory path="/" physicalPath="{tmp_path}/www" /></application>
        <application path="/app" applicationPool="P2" {app_attrs}>
          <virtualDirectory path="/" physicalPath="{tmp_path}/app" />
          <virtualDirectory path="/v" physicalPath="{tmp_path}/vdir" {vdir_attrs} />
        </application>
        <bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>{extra}
</configuration>
""")

    def web_config(self, folder: str, body: str) -> Path:
        path = self.root / folder / "web.config"
        path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<configuration>{body}\n</configuration>\n')
        return path

    def resolver(self, app: str = "/") -> WebConfigResolver:
        return WebConfigResolver(load_server_config(str(self.path)), "S", app)


def handler_names(wc) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.name for h in wc.handlers]


BASE_HANDLERS = ["CGI-exe", "TRACEVerbHandler", "OPTIONSVerbHandler", "StaticFile"]


def test_minimal_config_serves_static_files(tmp_path: Path) -> None:
    wc = Site(tmp_path).resolver().for_path("/index.html")
    assert handler_names(wc) == BASE_HANDLERS
    static = wc.handlers[-1]
    assert (static.path, static.verb, static.resource_type, static.require_access) == (
        "*", "*", "Either", "Read")
    assert static.modules == "StaticFileModule,DefaultDocumentModule,DirectoryListingModule"
    assert wc.default_documents == ["Default.htm", "Default.asp", "index.htm", "index.html",
                                    "iisstart.htm", "default.aspx"]
    assert wc.mime_maps[".html"] == "text/html" and wc.mime_maps[".ivf"] == "video/x-ivf"
    assert wc.access_policy == "Read, Script"
    assert "StaticFileModule" in wc.modules and "WsgiModule" in wc.modules
    rf = wc.sections["system.webServer/security/requestFiltering"]
    assert rf["requestLimits"]["maxAllowedContentLength"] == 30000000
    assert {"segment": "bin"} in rf["hiddenSegments"]["items"]
    assert wc.sections["system.webServer/webSocket"]["enabled"] is True


def test_web_config_with_system_web_wsgi_handler_and_handler_clear(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("app", """
  <system.web><compilation debug="true" targetFramework="4.8" /></system.web>
  <appSettings>
    <add key="WSGI_HANDLER" value="myapp.app" />
    <add key="PYTHONPATH" value="." />
  </appSettings>
  <system.webServer>
    <handlers>
      <remove name="CGI-exe" />
      <remove name="NotThere" />
      <add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule"
           scriptProcessor="/usr/bin/python3|/srv/wfastcgi.py" resourceType="Unspecified" />
    </handlers>
  </system.webServer>""")
    wc = site.resolver("/app").for_path("/app/anything")
    assert wc.app_settings == {"WSGI_HANDLER": "myapp.app", "PYTHONPATH": "."}
    assert handler_names(wc) == ["Python FastCGI", "TRACEVerbHandler", "OPTIONSVerbHandler",
                                 "StaticFile"]
    assert wc.handlers[0].script_processor == "/usr/bin/python3|/srv/wfastcgi.py"
    assert any("system.web" in w for w in wc.warnings)
    site.web_config("app/inner", """
  <system.webServer><handlers><clear />
    <add name="hello" path="*" verb="*" modules="WsgiModule" scriptProcessor="hello:app" />
  </handlers></system.webServer>""")
    inner = site.resolver("/app").for_path("/app/inner/x")
    assert handler_names(inner) == ["hello"]
    assert inner.app_settings["WSGI_HANDLER"] == "myapp.app"  # inherited


def test_child_handlers_and_default_documents_come_first(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer>
    <handlers><add name="A" path="*.a" verb="GET" modules="WsgiModule" /></handlers>
    <defaultDocument><files><add value="home.html" /></files></defaultDocument>
    <staticContent><mimeMap fileExtension=".Webp" mimeType="image/webp" /></staticContent>
  </system.webServer>""")
    site.web_config("www/sub", """<system.webServer>
    <handlers><add name="B" path="*.b" verb="GET" modules="WsgiModule" /></handlers>
  </system.webServer>""")
    wc = site.resolver().for_path("/sub/page")
    assert handler_names(wc) == ["B", "A"] + BASE_HANDLERS
    assert wc.default_documents[0] == "home.html"
    assert wc.mime_maps[".webp"] == "image/webp"  # keyed lower-case
    top = site.resolver().for_path("/page")
    assert handler_names(top) == ["A"] + BASE_HANDLERS


def test_attributes_override_and_collections_append(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer>
    <directoryBrowse enabled="true" showFlags="Date,Size" />
    <httpProtocol><customHeaders><add name="X-A" value="1" /></customHeaders></httpProtocol>
  </system.webServer>""")
    site.web_config("www/sub", """<system.webServer>
    <httpProtocol><customHeaders><add name="X-B" value="2" /></customHeaders></httpProtocol>
  </system.webServer>""")
    wc = site.resolver().for_path("/sub/")
    assert wc.directory_browse_enabled and wc.directory_browse_show_flags == "Date, Size"
    headers = wc.sections["system.webServer/httpProtocol"]["customHeaders"]["items"]
    assert [h["name"] for h in headers] == ["X-A", "X-B"]  # mergeAppend: parent first


def test_duplicate_key_at_same_level_and_against_parent(tmp_path: Path) -> None:
    site = Site(tmp_path)
    path = site.web_config("www", """<system.webServer><staticContent>
    <mimeMap fileExtension=".foo" mimeType="a/b" />
    <mimeMap fileExtension=".FOO" mimeType="a/c" />
  </staticContent></system.webServer>""")
    with pytest.raises(ConfigError, match="Cannot add duplicate collection entry of type "
                       "'mimeMap' with unique key attribute 'fileExtension' set to '.FOO'") as exc:
        site.resolver().for_path("/")
    assert exc.value.file == str(path) and exc.value.line == 4
    site.web_config("www", """<system.webServer><staticContent>
    <mimeMap fileExtension=".json" mimeType="application/json" />
  </staticContent></system.webServer>""")
    with pytest.raises(ConfigError, match="duplicate collection entry"):
        site.resolver().for_path("/")
    site.web_config("www", """<system.webServer><staticContent>
    <remove fileExtension=".json" /><mimeMap fileExtension=".json" mimeType="text/json" />
  </staticContent></system.webServer>""")
    assert site.resolver().for_path("/").mime_maps[".json"] == "text/json"


def test_combined_key_duplicate(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer><httpErrors>
    <error statusCode="404" path="/404.html" responseMode="ExecuteURL" />
    <error statusCode="404" subStatusCode="-1" path="/other.html" />
  </httpErrors></system.webServer>""")
    with pytest.raises(ConfigError, match="combined key attributes 'statusCode, subStatusCode'"):
        site.resolver().for_path("/")


def test_locked_section_in_web_config_is_an_error(tmp_path: Path) -> None:
    site = Site(tmp_path)
    path = site.web_config("www", """
  <system.webServer><serverRuntime appConcurrentRequestLimit="10" /></system.webServer>""")
    with pytest.raises(ConfigError, match="cannot be used at this path") as exc:
        site.resolver().for_path("/")
    assert exc.value.file == str(path) and exc.value.line == 3
    assert exc.value.section == "system.webServer/serverRuntime"


def test_location_override_mode_allow_unlocks_for_a_site(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S" overrideMode="Allow">
    <system.webServer><serverRuntime /></system.webServer>
  </location>""")
    site.web_config("www", """
  <system.webServer><serverRuntime appConcurrentRequestLimit="10" /></system.webServer>""")
    wc = site.resolver().for_path("/")
    assert wc.sections["system.webServer/serverRuntime"]["appConcurrentRequestLimit"] == 10


def test_location_override_mode_deny_locks_a_delegated_section(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S/app" overrideMode="Deny">
    <system.webServer><defaultDocument enabled="false" /></system.webServer>
  </location>""")
    site.web_config("www", "<system.webServer><defaultDocument enabled=\"true\" /></system.webServer>")
    assert site.resolver().for_path("/").default_document_enabled is True
    site.web_config("app", "<system.webServer><defaultDocument enabled=\"true\" /></system.webServer>")
    with pytest.raises(ConfigError, match="cannot be used at this path"):
        site.resolver("/app").for_path("/app/")


def test_override_mode_and_allow_override_together_is_an_error(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S" overrideMode="Allow" allowOverride="true"><system.webServer /></location>""")
    with pytest.raises(ConfigError, match="cannot both be used"):
        site.resolver()


def test_location_in_apphost_applies_to_path_and_below(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S/sub">
    <system.webServer><directoryBrowse enabled="true" /></system.webServer>
  </location>""")
    r = site.resolver()
    assert r.for_path("/sub/deeper/x").directory_browse_enabled is True
    assert r.for_path("/sub").directory_browse_enabled is True
    assert r.for_path("/subway").directory_browse_enabled is False
    assert r.for_path("/").directory_browse_enabled is False


def test_location_tag_before_web_config_of_same_path(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S/sub">
    <system.webServer><directoryBrowse enabled="true" /></system.webServer>
  </location>""")
    site.web_config("www/sub", '<system.webServer><directoryBrowse enabled="false" /></system.webServer>')
    assert site.resolver().for_path("/sub/x").directory_browse_enabled is False


def test_location_in_web_config_is_relative(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """
  <location path="sub/deeper"><system.webServer><directoryBrowse enabled="true" /></system.webServer></location>
  <location path="."><system.webServer><httpRedirect enabled="true" destination="/x" /></system.webServer></location>""")
    r = site.resolver()
    assert r.for_path("/sub/deeper/").directory_browse_enabled is True
    assert r.for_path("/sub/").directory_browse_enabled is False
    assert r.for_path("/").sections["system.webServer/httpRedirect"]["enabled"] is True


def test_inherit_in_child_applications_false(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """
  <location path="." inheritInChildApplications="false">
    <system.webServer><handlers>
      <add name="rootapp" path="*" verb="*" modules="WsgiModule" scriptProcessor="root:app" />
    </handlers></system.webServer>
  </location>
  <system.webServer><directoryBrowse enabled="true" /></system.webServer>""")
    assert handler_names(site.resolver().for_path("/sub/x"))[0] == "rootapp"
    child = site.resolver("/app").for_path("/app/x")
    assert handler_names(child) == BASE_HANDLERS
    assert child.directory_browse_enabled is True  # outside the location: inherited


def test_same_section_twice_in_a_file_is_an_error(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """
  <system.webServer><directoryBrowse enabled="true" /></system.webServer>
  <location path="."><system.webServer><directoryBrowse enabled="false" /></system.webServer></location>""")
    with pytest.raises(ConfigError, match="more than once"):
        site.resolver().for_path("/")


def test_allow_definition_machine_to_application(tmp_path: Path) -> None:
    site = Site(tmp_path)
    body = '<system.webServer><modules><add name="X" type="Y" /></modules></system.webServer>'
    site.web_config("app", body)
    assert "X" in site.resolver("/app").for_path("/app/").modules  # application root: ok
    site.web_config("app/inner", body.replace('"X"', '"Z"'))
    with pytest.raises(ConfigError, match='allowDefinition="MachineToApplication"'):
        site.resolver("/app").for_path("/app/inner/")


def test_apphost_only_section_in_web_config_is_an_error(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", "<system.webServer><globalModules /></system.webServer>")
    with pytest.raises(ConfigError, match='allowDefinition="AppHostOnly"'):
        site.resolver().for_path("/")


def test_lock_item_blocks_remove_and_clear(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", '<system.webServer><modules><remove name="StaticFileModule" /></modules></system.webServer>')
    with pytest.raises(ConfigError, match="lockItem"):
        site.resolver().for_path("/")
    site.web_config("www", "<system.webServer><modules><clear /></modules></system.webServer>")
    with pytest.raises(ConfigError, match="cannot be cleared"):
        site.resolver().for_path("/")
    site.web_config("www", '<system.webServer><modules><remove name="WsgiModule" /></modules></system.webServer>')
    assert "WsgiModule" not in site.resolver().for_path("/").modules


def test_lock_attributes(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer>
    <directoryBrowse enabled="false" lockAttributes="enabled" />
    <staticContent><clientCache cacheControlMode="UseMaxAge" lockAllAttributesExcept="cacheControlMaxAge" /></staticContent>
  </system.webServer>""")
    assert site.resolver().for_path("/").directory_browse_enabled is False  # same level: fine
    site.web_config("www/sub", '<system.webServer><directoryBrowse enabled="false" /></system.webServer>')
    with pytest.raises(ConfigError, match="'enabled' is locked"):
        site.resolver().for_path("/sub/")
    site.web_config("www/sub", '<system.webServer><directoryBrowse showFlags="Date" /><staticContent><clientCache cacheControlMaxAge="2.00:00:00" /></staticContent></system.webServer>')
    wc = site.resolver().for_path("/sub/")
    assert wc.sections["system.webServer/staticContent"]["clientCache"]["cacheControlMaxAge"] == 172800.0
    site.web_config("www/sub", '<system.webServer><staticContent><clientCache setEtag="false" /></staticContent></system.webServer>')
    with pytest.raises(ConfigError, match="'setEtag' is locked"):
        site.resolver().for_path("/sub/")


def test_lock_attributes_from_base_config(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", '<system.webServer><httpErrors defaultPath="/err.html" /></system.webServer>')
    with pytest.raises(ConfigError, match="'defaultPath' is locked"):
        site.resolver().for_path("/")


def test_lock_elements(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer><security>
    <authorization lockElements="clear"><add accessType="Deny" users="?" /></authorization>
    <requestFiltering lockElements="verbs" />
  </security></system.webServer>""")
    site.web_config("www/sub", "<system.webServer><security><authorization><clear /></authorization></security></system.webServer>")
    with pytest.raises(ConfigError, match="<clear> is locked"):
        site.resolver().for_path("/sub/")
    site.web_config("www/sub", '<system.webServer><security><authorization><add accessType="Allow" users="bob" /></authorization></security></system.webServer>')
    rules = site.resolver().for_path("/sub/").sections["system.webServer/security/authorization"]["items"]
    assert [(r["accessType"], r["users"]) for r in rules] == [("Allow", "*"), ("Deny", "?"), ("Allow", "bob")]
    site.web_config("www/sub", '<system.webServer><security><requestFiltering><verbs allowUnlisted="false" /></requestFiltering></security></system.webServer>')
    with pytest.raises(ConfigError, match="<verbs> is locked"):
        site.resolver().for_path("/sub/")


def test_unknown_attribute_in_web_config_names_line(tmp_path: Path) -> None:
    site = Site(tmp_path)
    path = site.web_config("www", """
  <system.webServer>
    <defaultDocument enabeld="true" />
  </system.webServer>""")
    with pytest.raises(ConfigError) as exc:
        site.resolver().for_path("/")
    assert (exc.value.file, exc.value.line) == (str(path), 4)
    assert "unrecognized attribute 'enabeld'" in exc.value.reason


def test_allow_sub_dir_config_false_stops_lookup_below_vdir(tmp_path: Path) -> None:
    site = Site(tmp_path, vdir_attrs='allowSubDirConfig="false"')
    site.web_config("vdir", '<system.webServer><directoryBrowse enabled="true" /></system.webServer>')
    site.web_config("vdir/below", '<system.webServer><directoryBrowse enabled="fals" /></system.webServer>')
    r = site.resolver("/app")
    assert r.for_path("/app/v/below/x").directory_browse_enabled is True


def test_enable_configuration_override_false_ignores_web_config(tmp_path: Path) -> None:
    site = Site(tmp_path, pool_attrs='enableConfigurationOverride="false"')
    site.web_config("app", "<system.webServer><handlers><clear /></handlers></system.webServer>")
    assert handler_names(site.resolver("/app").for_path("/app/")) == BASE_HANDLERS


def test_vdir_web_config_maps_to_its_folder(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("vdir", '<appSettings><add key="where" value="vdir" /></appSettings>')
    r = site.resolver("/app")
    assert r.for_path("/app/v/file.txt").app_settings == {"where": "vdir"}
    assert r.for_path("/app/other").app_settings == {}


def test_change_is_picked_up_within_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(resolver_module.time, "monotonic", lambda: clock[0])
    site = Site(tmp_path)
    path = site.web_config("www", '<appSettings><add key="v" value="1" /></appSettings>')
    r = site.resolver()
    first = r.for_path("/a")
    assert first.app_settings == {"v": "1"}
    assert r.for_path("/b") is first  # one merge per folder, cached
    site.web_config("www", '<appSettings><add key="v" value="22" /></appSettings>')
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert r.for_path("/a").app_settings == {"v": "1"}  # not re-stat'ed within a second
    clock[0] += 1.5
    assert r.for_path("/a").app_settings == {"v": "22"}
    site.web_config("www", "<appSettings><add key='v' /><broken></appSettings>")
    os.utime(path, (time.time() + 10, time.time() + 10))
    clock[0] += 1.5
    with pytest.raises(ConfigError, match="malformed XML"):
        r.for_path("/a")
    path.unlink()
    clock[0] += 1.5
    assert r.for_path("/a").app_settings == {}


def test_hostile_web_config_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path)
    (tmp_path / "www" / "web.config").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        '<configuration><appSettings><add key="k" value="&x;" /></appSettings></configuration>')
    with pytest.raises(ConfigError, match="entit"):
        site.resolver().for_path("/")


def test_web_config_may_register_new_sections_but_not_redefine(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """
  <configSections><section name="log4net" type="log4net.Config.Log4NetConfigurationSectionHandler" /></configSections>
  <log4net><root /></log4net>""")
    wc = site.resolver().for_path("/")
    assert any("log4net" in w for w in wc.warnings)
    site.web_config("www/sub", """
  <configSections><sectionGroup name="system.webServer"><sectionGroup name="rewrite">
    <section name="rules" overrideModeDefault="Allow" />
  </sectionGroup></sectionGroup></configSections>""")
    with pytest.raises(ConfigError, match="'system.webServer/rewrite/rules' is already registered"):
        site.resolver().for_path("/sub/")


def test_rewrite_rules_parse(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.web_config("www", """<system.webServer><rewrite><rules>
    <rule name="https" stopProcessing="true">
      <match url="(.*)" />
      <conditions logicalGrouping="MatchAny">
        <add input="{HTTPS}" pattern="off" />
        <add input="{HTTPS}" pattern="off" />
      </conditions>
      <action type="Redirect" url="https://{HTTP_HOST}/{R:1}" redirectType="Found" />
    </rule>
  </rules></rewrite></system.webServer>""")
    rules = site.resolver().for_path("/").sections["system.webServer/rewrite/rules"]["items"]
    assert rules[0]["name"] == "https" and rules[0]["stopProcessing"] is True
    assert rules[0]["action"] == {**rules[0]["action"], "type": "Redirect", "redirectType": "Found"}
    assert len(rules[0]["conditions"]["items"]) == 2


def test_unknown_site_or_app_is_an_error(tmp_path: Path) -> None:
    cfg = load_server_config(str(Site(tmp_path).path))
    with pytest.raises(ConfigError, match="no site"):
        WebConfigResolver(cfg, "Nope", "/")
    with pytest.raises(ConfigError, match="no application"):
        WebConfigResolver(cfg, "S", "/nope")


def test_resolver_works_on_a_config_sent_as_dict(tmp_path: Path) -> None:
    from poolhouse.config import ServerConfig

    site = Site(tmp_path)
    site.web_config("www", '<appSettings><add key="k" value="v" /></appSettings>')
    cfg = ServerConfig.from_dict(load_server_config(str(site.path)).to_dict())
    assert WebConfigResolver(cfg, "S", "/").for_path("/").app_settings == {"k": "v"}
