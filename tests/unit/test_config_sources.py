"""configSource, appSettings/@file and encrypted values."""

import os
import time
from pathlib import Path

import pytest

from poolhouse.config import ConfigError, ServerConfig, WebConfigResolver, load_server_config
from poolhouse.config import resolver as resolver_module

APPHOST = """<configuration>
  <system.applicationHost>
    <applicationPools><add name="P">
      <processModel identityType="SpecificUser" userName="svc" password="[enc:AesProvider:c2VjcmV0:enc]" />
    </add></applicationPools>
    <sites configSource="sites.config" />
  </system.applicationHost>
</configuration>"""
SITES = """<sites>
  <site name="S" id="1">
    <application path="/" applicationPool="P"><virtualDirectory path="/" physicalPath="{root}/www" /></application>
    <bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings>
  </site>
</sites>"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    (tmp_path / "applicationHost.config").write_text(APPHOST)
    (tmp_path / "sites.config").write_text(SITES.replace("{root}", str(tmp_path)))
    return tmp_path


def test_config_source_in_apphost_and_encrypted_values(root: Path) -> None:
    cfg = load_server_config(str(root / "applicationHost.config"))
    assert cfg.sites[0].name == "S"
    assert str(root / "sites.config") in cfg.source_files  # watched too
    assert any("encrypted" in w and "password" in w for w in cfg.warnings)
    # workers get the configSource bytes as accepted, not the file on disk
    (root / "sites.config").write_text("<sites><broken")
    wire = ServerConfig.from_dict(cfg.to_dict())
    assert WebConfigResolver(wire, "S", "/").for_path("/").handlers


def test_config_source_errors_name_the_included_file(root: Path) -> None:
    (root / "sites.config").write_text(SITES.replace("{root}", str(root))
                                       .replace('id="1"', 'id="one"'))
    with pytest.raises(ConfigError) as exc:
        load_server_config(str(root / "applicationHost.config"))
    assert exc.value.file == str(root / "sites.config") and exc.value.line == 2
    (root / "applicationHost.config").write_text(APPHOST.replace("sites.config", "../x.config"))
    with pytest.raises(ConfigError, match="relative path to a file in the same folder"):
        load_server_config(str(root / "applicationHost.config"))
    (root / "applicationHost.config").write_text(
        APPHOST.replace('<sites configSource="sites.config" />',
                        '<sites configSource="sites.config"><siteDefaults /></sites>'))
    with pytest.raises(ConfigError, match="no other attributes or elements"):
        load_server_config(str(root / "applicationHost.config"))


def test_app_settings_file_overrides_and_changes_are_seen(root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "STAT_INTERVAL", 0.05)
    (root / "www" / "web.config").write_text(
        '<configuration><appSettings file="secrets.config">'
        '<add key="A" value="1" /><add key="B" value="2" /></appSettings>'
        '<system.webServer><staticContent configSource="mime.config" /></system.webServer>'
        "</configuration>")
    (root / "www" / "mime.config").write_text(
        '<staticContent><mimeMap fileExtension=".x1" mimeType="text/x1" /></staticContent>')
    cfg = load_server_config(str(root / "applicationHost.config"))
    r = WebConfigResolver(cfg, "S", "/")
    web = r.for_path("/")
    assert web.app_settings == {"A": "1", "B": "2"}  # a missing file is ignored
    assert web.mime_maps[".x1"] == "text/x1"
    (root / "www" / "secrets.config").write_text(
        '<appSettings><add key="B" value="from file" /><add key="C" value="3" /></appSettings>')
    (root / "www" / "mime.config").write_text(
        '<staticContent><mimeMap fileExtension=".x2" mimeType="text/x2" /></staticContent>')
    time.sleep(0.1)
    web = r.for_path("/")
    assert web.app_settings == {"A": "1", "B": "from file", "C": "3"}
    assert ".x2" in web.mime_maps and ".x1" not in web.mime_maps
    (root / "www" / "mime.config").write_text("<staticContent><bogus /></staticContent>")
    time.sleep(0.1)
    with pytest.raises(ConfigError) as exc:
        r.for_path("/")
    assert exc.value.file == os.path.join(str(root / "www"), "mime.config")
