"""The writing API: reading effective sections, editing files at the three levels,
keeping comments and indentation, refusing what the schema or a lock forbids."""

from pathlib import Path

import pytest

from poolhouse.config import ConfigError, WebConfigResolver, load_server_config
from poolhouse.config.writer import ConfigWriter, Target

APPHOST = """<?xml version="1.0" encoding="UTF-8"?>
<!-- the server's configuration: keep this comment -->
<configuration>
    <system.applicationHost>
        <applicationPools>
            <add name="P" />  <!-- the only pool -->
        </applicationPools>
        <sites>
            <site name="Shop" id="1">
                <application path="/">
                    <virtualDirectory path="/" physicalPath="{root}/www" />
                </application>
                <application path="/app" applicationPool="P">
                    <virtualDirectory path="/" physicalPath="{root}/app" />
                </application>
                <bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings>
            </site>
            <applicationDefaults applicationPool="P" />
        </sites>
    </system.applicationHost>
    <system.webServer>
        <!-- server-wide documents -->
        <defaultDocument>
            <files>
                <add value="start.html" />
            </files>
        </defaultDocument>
    </system.webServer>
    <location path="Shop" overrideMode="Deny">
        <system.webServer>
            <directoryBrowse enabled="false" lockAttributes="showFlags" />
        </system.webServer>
    </location>
</configuration>
"""

WEB = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <!-- the application's settings -->
  <system.webServer>
    <staticContent>
      <mimeMap fileExtension=".webmanifest" mimeType="application/manifest+json" />
    </staticContent>
  </system.webServer>
</configuration>
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    (tmp_path / "app" / "sub").mkdir(parents=True)
    (tmp_path / "applicationHost.config").write_text(APPHOST.replace("{root}", str(tmp_path)))
    (tmp_path / "app" / "web.config").write_text(WEB)
    return tmp_path


def writer(site: Path) -> ConfigWriter:
    return ConfigWriter(str(site / "applicationHost.config"))


def test_get_section_merges_the_hierarchy(site: Path) -> None:
    w = writer(site)
    files = w.get_section("system.webServer/defaultDocument", "")["files"]["items"]
    assert files[0] == {"value": "start.html"}  # mergeAppend=false: this file's entry first
    mime = w.get_section("system.webServer/staticContent", "Shop/app")
    assert any(m["fileExtension"] == ".webmanifest" for m in mime["items"])
    root = w.get_section("system.webServer/staticContent", "Shop")
    assert not any(m["fileExtension"] == ".webmanifest" for m in root["items"])
    assert w.get_section("system.applicationHost/sites")["items"][0]["name"] == "Shop"


def test_round_trip_keeps_comments_and_formatting(site: Path) -> None:
    w = writer(site)
    w.add_item("system.webServer/defaultDocument", {"value": "home.html"}, element="files")
    w.set_attribute("system.webServer/directoryBrowse", "enabled", True)
    assert w.commit() == [str(site / "applicationHost.config")]
    text = (site / "applicationHost.config").read_text()
    assert "<!-- the server's configuration: keep this comment -->" in text
    assert "<!-- the only pool -->" in text and "<!-- server-wide documents -->" in text
    assert ('                <add value="start.html" />\n'
            '                <add value="home.html" />\n'
            "            </files>") in text
    assert '        <directoryBrowse enabled="true" />\n    </system.webServer>' in text
    # untouched lines are byte for byte the same
    before = APPHOST.replace("{root}", str(site)).splitlines()
    after = text.splitlines()
    assert after[:25] == before[:25] and after[-7:] == before[-7:]
    assert len(after) == len(before) + 2  # the two new elements, one line each
    cfg = load_server_config(str(site / "applicationHost.config"))
    web = WebConfigResolver(cfg, "Shop", "/app").for_path("/app")
    assert web.default_documents[:2] == ["start.html", "home.html"]


def test_web_config_edit_keeps_its_comment_and_indentation(site: Path) -> None:
    w = writer(site)
    w.add_item("system.webServer/staticContent", {"fileExtension": ".avif", "mimeType": "image/avif"},
               at=Target.web_config("Shop/app"))
    w.remove_item("system.webServer/staticContent", {"fileExtension": ".webmanifest"},
                  at=Target.web_config("Shop/app"))
    w.remove_item("system.webServer/staticContent", {"fileExtension": ".css"},
                  at=Target.web_config("Shop/app"))
    w.commit()
    text = (site / "app" / "web.config").read_text()
    assert "<!-- the application's settings -->" in text
    assert ('    <staticContent>\n'
            '      <mimeMap fileExtension=".avif" mimeType="image/avif" />\n'
            '      <remove fileExtension=".css" />\n'
            '    </staticContent>') in text
    cfg = load_server_config(str(site / "applicationHost.config"))
    web = WebConfigResolver(cfg, "Shop", "/app").for_path("/app/x")
    assert web.mime_maps[".avif"] == "image/avif" and ".css" not in web.mime_maps
    assert ".webmanifest" not in web.mime_maps


def test_new_web_config_and_new_location(site: Path) -> None:
    w = writer(site)
    w.set_attribute("system.webServer/staticContent", "cacheControlMode", "UseMaxAge",
                    element="clientCache", at=Target.web_config("Shop/app/sub"))
    w.add_item("appSettings", {"key": "WSGI_HANDLER", "value": "app.application"},
               at=Target.location("Shop/app"))
    written = w.commit()
    assert str(site / "app" / "sub" / "web.config") in written
    new = (site / "app" / "sub" / "web.config").read_text()
    assert new.startswith("<?xml") and '<clientCache cacheControlMode="UseMaxAge" />' in new
    text = (site / "applicationHost.config").read_text()
    assert '<location path="Shop/app">' in text
    assert w.get_section("appSettings", "Shop/app")["items"] == [
        {"key": "WSGI_HANDLER", "value": "app.application"}]
    sc = w.get_section("system.webServer/staticContent", "Shop/app/sub")
    assert sc["clientCache"]["cacheControlMode"] == "UseMaxAge"


def test_locked_edits_are_refused_and_leave_the_file_alone(site: Path) -> None:
    w = writer(site)
    before = (site / "app" / "web.config").read_text()
    # directoryBrowse is locked for Shop by <location overrideMode="Deny">
    with pytest.raises(ConfigError, match="locked") as exc:
        w.set_attribute("system.webServer/directoryBrowse", "enabled", "true",
                        at=Target.web_config("Shop/app"))
    assert exc.value.file == str(site / "app" / "web.config")
    # the modules of the base configuration carry lockItem
    with pytest.raises(ConfigError, match="lockItem"):
        w.remove_item("system.webServer/modules", {"name": "StaticFileModule"},
                      at=Target.web_config("Shop/app"))
    # modules is MachineToApplication: not in a sub-folder's web.config
    with pytest.raises(ConfigError, match="allowDefinition"):
        w.add_item("system.webServer/modules", {"name": "Mine"}, at=Target.web_config("Shop/app/sub"))
    assert w.commit() == []
    assert (site / "app" / "web.config").read_text() == before
    assert not (site / "app" / "sub" / "web.config").exists()


def test_invalid_values_are_refused(site: Path) -> None:
    w = writer(site)
    with pytest.raises(ConfigError, match="out of range"):
        w.set_attribute("system.applicationHost/sites", "maxUrlSegments", 99999,
                        element="siteDefaults/limits")
    with pytest.raises(ConfigError, match="not a valid boolean"):
        w.set_attribute("system.webServer/directoryBrowse", "enabled", "yes")
    with pytest.raises(ConfigError, match="unrecognized attribute 'colour'"):
        w.set_attribute("system.webServer/directoryBrowse", "colour", "red")
    with pytest.raises(ConfigError, match="missing required attribute 'mimeType'"):
        w.add_item("system.webServer/staticContent", {"fileExtension": ".x"})
    with pytest.raises(ConfigError, match="allowed: DetailedLocalOnly, Custom, Detailed"):
        w.set_attribute("system.webServer/httpErrors", "errorMode", "Verbose")
    with pytest.raises(ConfigError, match="only be set in applicationHost.config"):
        w.set_attribute("system.applicationHost/webLimits", "minBytesPerSecond", 1,
                        at=Target.web_config("Shop"))
    assert w.commit() == []


def test_duplicate_keys_are_refused(site: Path) -> None:
    w = writer(site)
    with pytest.raises(ConfigError, match="duplicate collection entry"):
        w.add_item("system.webServer/defaultDocument", {"value": "START.html"}, element="files")
    with pytest.raises(ConfigError, match="duplicate collection entry") as exc:
        w.add_item("system.webServer/staticContent",
                   {"fileExtension": ".webmanifest", "mimeType": "text/plain"},
                   at=Target.web_config("Shop/app"))
    assert exc.value.file.endswith("web.config")
    with pytest.raises(ConfigError, match="duplicate collection entry"):
        w.add_item("system.applicationHost/applicationPools", {"name": "p"})
    # a refused edit does not poison later ones
    w.add_item("system.applicationHost/applicationPools", {"name": "Q"})
    w.commit()
    assert set(load_server_config(str(site / "applicationHost.config")).pools) == {"P", "Q"}


def test_removing_an_entry_this_file_adds_deletes_it(site: Path) -> None:
    w = writer(site)
    w.remove_item("system.webServer/defaultDocument", {"value": "start.html"}, element="files")
    w.commit()
    text = (site / "applicationHost.config").read_text()
    assert "start.html" not in text and "<remove" not in text
    assert "            <files>\n            </files>" in text or "<files/>" in text or (
        "<files>\n            </files>" in text)
