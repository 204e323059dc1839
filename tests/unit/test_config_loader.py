"""Loading applicationHost.config: the embedded default, validation errors with file
and line, hostile XML, unknown sections, paths and bindings."""

import logging
import os
from pathlib import Path

import pytest

from poolhouse.config import ConfigError, ServerConfig, load_server_config

SITE = """
    <sites>
      <site name="S" id="7">
        <application path="/">
          <virtualDirectory path="/" physicalPath="{root}" />
        </application>
        <bindings><binding protocol="http" bindingInformation="*:8081:" /></bindings>
      </site>
    </sites>"""


def write(tmp_path: Path, body: str, name: str = "applicationHost.config") -> str:
    (tmp_path / "www").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(body.replace("{root}", str(tmp_path / "www")))
    return str(path)


def apphost(tmp_path: Path, pools: str = '<add name="DefaultAppPool" />', sites: str = SITE,
            extra: str = "", top: str = "") -> str:
    return write(tmp_path, f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>{top}
  <system.applicationHost>
    <applicationPools>{pools}</applicationPools>{sites}{extra}
  </system.applicationHost>
</configuration>
""")


def test_embedded_default_has_site_pools_and_apps() -> None:
    cfg = load_server_config()
    assert cfg.config_path == ""
    assert list(cfg.pools) == ["DefaultAppPool"]
    site = cfg.site_by_name("default web site")
    assert site is not None and site.id == 1
    b = site.bindings[0]
    assert (b.protocol, b.ip, b.port, b.host) == ("http", "127.0.0.1", 8080, "")
    apps = {a.path: a for a in site.applications}
    assert set(apps) == {"/", "/hello"}
    assert apps["/hello"].pool == "DefaultAppPool"
    assert apps["/"].physical_path.endswith(os.path.join("poolhouse", "samples", "wwwroot"))
    assert os.path.isabs(apps["/hello"].physical_path)
    assert not cfg.warnings
    assert ServerConfig.from_dict(cfg.to_dict()) == cfg


def test_minimal_file_gets_iis_defaults(tmp_path: Path) -> None:
    cfg = load_server_config(apphost(tmp_path))
    pool = cfg.pools["DefaultAppPool"]
    assert pool.queue_length == 1000 and pool.idle_timeout == 1200.0
    assert pool.periodic_restart_time == 29 * 3600 and pool.rapid_fail_protection_max_crashes == 5
    site = cfg.sites[0]
    assert site.limits.connection_timeout == 120.0 and site.log_file.directory == ""
    assert site.applications[0].pool == "DefaultAppPool"
    assert cfg.source_files[-1].endswith("applicationHost.config")


def test_pool_settings_flatten(tmp_path: Path) -> None:
    pools = """
      <add name="A" queueLength="50" startMode="AlwaysRunning">
        <processModel idleTimeout="00:05:00" maxProcesses="2" pingInterval="00:00:10" />
        <recycling disallowOverlappingRotation="true">
          <periodicRestart time="00:00:00" requests="1000" memory="512000">
            <schedule><add value="03:00:00" /><add value="15:30:00" /></schedule>
          </periodicRestart>
        </recycling>
        <failure rapidFailProtectionMaxCrashes="3" loadBalancerCapabilities="TcpLevel" />
        <cpu limit="50000" action="Throttle" />
        <environmentVariables><add name="APP_ENV" value="prod" /></environmentVariables>
        <python executable="/usr/bin/python3" threads="8" />
      </add>
      <add name="DefaultAppPool" />
      <applicationPoolDefaults queueLength="200">
        <processModel identityType="SpecificUser" userName="www-data" />
      </applicationPoolDefaults>"""
    cfg = load_server_config(apphost(tmp_path, pools=pools))
    a, d = cfg.pools["A"], cfg.pools["DefaultAppPool"]
    assert (a.queue_length, a.start_mode, a.idle_timeout, a.max_processes) == (
        50, "AlwaysRunning", 300.0, 2)
    assert a.ping_interval == 10.0 and a.disallow_overlapping_rotation
    assert (a.periodic_restart_time, a.periodic_restart_requests) == (0.0, 1000)
    assert a.periodic_restart_memory_kb == 512000
    assert a.periodic_restart_schedule == ["03:00:00", "15:30:00"]
    assert a.rapid_fail_protection_max_crashes == 3
    assert a.load_balancer_capabilities == "TcpLevel"
    assert (a.cpu_limit, a.cpu_action) == (50000, "Throttle")
    assert a.environment_variables == {"APP_ENV": "prod"}
    assert (a.python_executable, a.python_threads) == ("/usr/bin/python3", 8)
    assert a.identity_type == "SpecificUser" and a.user_name == "www-data"
    assert d.queue_length == 200


@pytest.mark.parametrize("pools,needle", [
    ('<add name="P" queueLength="5" />', "allowed 10-65535"),
    ('<add name="P"><processModel idleTimeout="20 minutes" /></add>', "TimeSpan"),
    ('<add name="P" startMode="Sometimes" />', "allowed: OnDemand, AlwaysRunning"),
    ('<add name="P" autoStart="yes" />', "true or false"),
    ('<add name="P/Q" />', "not a valid application pool name"),
])
def test_bad_values_name_file_line_and_allowed(tmp_path: Path, pools: str, needle: str) -> None:
    path = apphost(tmp_path, pools="\n      " + pools)
    with pytest.raises(ConfigError) as exc:
        load_server_config(path)
    e = exc.value
    assert e.file == path and e.line == 5
    assert e.section == "system.applicationHost/applicationPools"
    assert needle in e.reason
    assert str(e).startswith(f"{path}:5: system.applicationHost/applicationPools: ")


def test_unknown_attribute_is_an_error_with_line(tmp_path: Path) -> None:
    path = apphost(tmp_path, pools='\n      <add name="P" queueLenght="100" />')
    with pytest.raises(ConfigError, match="unrecognized attribute 'queueLenght'") as exc:
        load_server_config(path)
    assert exc.value.line == 5


def test_unknown_element_is_an_error(tmp_path: Path) -> None:
    path = apphost(tmp_path, pools='\n      <add name="P"><procesModel /></add>')
    with pytest.raises(ConfigError, match="unrecognized element <procesModel>"):
        load_server_config(path)


def test_unknown_sections_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    top = """
  <system.web><compilation debug="true" /></system.web>
  <runtime />
  <system.webServer><aspNetCore processPath="dotnet" /></system.webServer>
  <location path="S"><system.web><authorization /></system.web></location>"""
    with caplog.at_level(logging.WARNING, logger="poolhouse.config"):
        cfg = load_server_config(apphost(tmp_path, top=top))
    unknown = [w for w in cfg.warnings if "not implemented" in w]
    assert len(unknown) == 3
    assert any("system.web:" in w for w in unknown)
    assert any("runtime:" in w for w in unknown)
    assert any("system.webServer/aspNetCore" in w for w in unknown)
    assert sum("system.web:" in r.message for r in caplog.records) == 1


def test_duplicate_pool_is_an_error(tmp_path: Path) -> None:
    path = apphost(tmp_path, pools='<add name="P" />\n<add name="p" />')
    with pytest.raises(ConfigError, match="Cannot add duplicate collection entry"):
        load_server_config(path)


def test_missing_pool_is_an_error(tmp_path: Path) -> None:
    sites = SITE.replace('<application path="/">', '<application path="/" applicationPool="Nope">')
    with pytest.raises(ConfigError, match="'Nope', which is not defined"):
        load_server_config(apphost(tmp_path, sites=sites))


def test_bindings_parse(tmp_path: Path) -> None:
    sites = SITE.replace(
        '<binding protocol="http" bindingInformation="*:8081:" />',
        '<binding protocol="http" bindingInformation="*:8081:" />'
        '<binding protocol="http" bindingInformation=":8082:WWW.Example.com" />'
        '<binding protocol="http" bindingInformation="[::1]:8083:" />'
        '<binding protocol="https" bindingInformation="10.0.0.1:8443:" sslFlags="1" '
        'certificateFile="certs/site.pem" keyFile="certs/site.key" />'
        '<binding protocol="net.tcp" bindingInformation="808:*" />')
    cfg = load_server_config(apphost(tmp_path, sites=sites))
    b = cfg.sites[0].bindings
    assert [(x.ip, x.port, x.host) for x in b] == [
        ("*", 8081, ""), ("*", 8082, "www.example.com"), ("::1", 8083, ""), ("10.0.0.1", 8443, "")]
    assert b[2].information == "[::1]:8083:"
    assert b[3].certificate_file == str(tmp_path / "certs" / "site.pem") and b[3].ssl_flags == 1
    assert any("net.tcp" in w for w in cfg.warnings)


@pytest.mark.parametrize("info", ["*:99999:", "nonsense", "1.2.3:80:", "*:http:"])
def test_bad_binding_is_an_error(tmp_path: Path, info: str) -> None:
    sites = SITE.replace('bindingInformation="*:8081:"', f'bindingInformation="{info}"')
    with pytest.raises(ConfigError, match="bindingInformation"):
        load_server_config(apphost(tmp_path, sites=sites))


def test_windows_physical_path_is_an_error(tmp_path: Path) -> None:
    sites = SITE.replace('physicalPath="{root}"', r'physicalPath="%SystemDrive%\inetpub\wwwroot"')
    with pytest.raises(ConfigError, match="not set") as exc:
        load_server_config(apphost(tmp_path, sites=sites))
    assert exc.value.line is not None
    sites = SITE.replace('physicalPath="{root}"', r'physicalPath="C:\inetpub\wwwroot"')
    with pytest.raises(ConfigError, match="Windows path"):
        load_server_config(apphost(tmp_path, sites=sites))


def test_windows_log_directory_warns_and_relative_paths_convert(tmp_path: Path) -> None:
    (tmp_path / "content").mkdir()
    sites = SITE.replace('physicalPath="{root}"', r'physicalPath="content\."').replace(
        "</bindings>", r'</bindings><logFile directory="C:\logs" />')
    cfg = load_server_config(apphost(tmp_path, sites=sites))
    site = cfg.sites[0]
    assert site.applications[0].physical_path == str(tmp_path / "content")
    assert site.log_file.directory == ""
    assert any("Windows path" in w for w in cfg.warnings)


def test_environment_variables_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_ROOT", str(tmp_path / "www"))
    sites = SITE.replace('physicalPath="{root}"', 'physicalPath="%SITE_ROOT%"')
    cfg = load_server_config(apphost(tmp_path, sites=sites))
    assert cfg.sites[0].applications[0].physical_path == str(tmp_path / "www")


def test_site_needs_root_application_and_vdir(tmp_path: Path) -> None:
    sites = SITE.replace('<application path="/">', '<application path="/x">')
    with pytest.raises(ConfigError, match="no root application"):
        load_server_config(apphost(tmp_path, sites=sites))
    sites = SITE.replace('<virtualDirectory path="/"', '<virtualDirectory path="/v"')
    with pytest.raises(ConfigError, match="no root virtual directory"):
        load_server_config(apphost(tmp_path, sites=sites))


def test_defaults_elements_apply(tmp_path: Path) -> None:
    sites = SITE.replace("</sites>", """
      <siteDefaults><limits connectionTimeout="00:00:45" /><logFile directory="logs" /></siteDefaults>
      <applicationDefaults applicationPool="Other" />
      <virtualDirectoryDefaults allowSubDirConfig="false" />
    </sites>""")
    pools = '<add name="Other" /><add name="DefaultAppPool" />'
    cfg = load_server_config(apphost(tmp_path, pools=pools, sites=sites))
    site = cfg.sites[0]
    assert site.limits.connection_timeout == 45.0
    assert site.log_file.directory == str(tmp_path / "logs")
    assert site.applications[0].pool == "Other"
    assert site.applications[0].virtual_directories[0].allow_sub_dir_config is False


# -- hostile and malformed XML ---------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE configuration [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<configuration><appSettings><add key="x" value="&lol9;" /></appSettings></configuration>
"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE configuration [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<configuration><appSettings><add key="x" value="&xxe;" /></appSettings></configuration>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE configuration SYSTEM "http://example.com/evil.dtd">
<configuration />
"""


@pytest.mark.parametrize("body,needle", [
    (BILLION_LAUGHS, "entit"), (XXE, "entit"), (EXTERNAL_DTD, "external DTD"),
])
def test_hostile_xml_is_refused(tmp_path: Path, body: str, needle: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=needle) as exc:
        load_server_config(path)
    assert exc.value.file == path and exc.value.line is not None


def test_malformed_xml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "<configuration>\n  <system.applicationHost>\n</configuration>\n")
    with pytest.raises(ConfigError, match="malformed XML") as exc:
        load_server_config(path)
    assert exc.value.line == 3


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.config"
    path.write_bytes(b"<configuration>" + b" " * (10 * 1024 * 1024) + b"</configuration>")
    with pytest.raises(ConfigError, match="larger than"):
        load_server_config(str(path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_server_config(str(tmp_path / "nope.config"))


def test_namespaced_configuration_root_is_accepted(tmp_path: Path) -> None:
    body = f"""<configuration xmlns="http://schemas.microsoft.com/.NetConfiguration/v2.0">
  <system.applicationHost><applicationPools><add name="DefaultAppPool" /></applicationPools>
  {SITE}</system.applicationHost></configuration>"""
    cfg = load_server_config(write(tmp_path, body))
    assert cfg.sites[0].name == "S"


def test_apphost_location_for_site_cannot_hold_apphost_sections(tmp_path: Path) -> None:
    top = '\n  <location path="S"><system.applicationHost><webLimits /></system.applicationHost></location>'
    with pytest.raises(ConfigError, match="cannot be set in a <location>"):
        load_server_config(apphost(tmp_path, top=top))


def test_server_level_web_server_errors_surface_at_load(tmp_path: Path) -> None:
    top = """
  <system.webServer><staticContent><mimeMap fileExtension=".x1" mimeType="text/a" />
  <mimeMap fileExtension=".X1" mimeType="text/b" /></staticContent></system.webServer>"""
    with pytest.raises(ConfigError, match="duplicate collection entry") as exc:
        load_server_config(apphost(tmp_path, top=top))
    assert exc.value.line == 4


def test_apphost_may_redeclare_and_clear_built_in_entries(tmp_path: Path) -> None:
    # the base configuration is the defaults layer: applicationHost.config redeclaring an
    # entry replaces it, and the base's lockItem does not bind applicationHost.config
    top = """
  <system.webServer><staticContent><mimeMap fileExtension=".css" mimeType="text/x-css" /></staticContent></system.webServer>
  <location path="" overrideMode="Allow"><system.webServer><modules><clear />
    <add name="StaticFileModule" lockItem="true" /></modules></system.webServer></location>"""
    load_server_config(apphost(tmp_path, top=top))


def test_directives_follow_the_iis_schema(tmp_path: Path) -> None:
    # applicationPools has only <add> in IIS's schema; bindings has <binding> and <clear>
    path = apphost(tmp_path, pools='<add name="DefaultAppPool" /><remove name="DefaultAppPool" />')
    with pytest.raises(ConfigError, match="unrecognized element <remove>"):
        load_server_config(path)
    sites = SITE.replace("<bindings>", "<bindings><clear />")
    assert load_server_config(apphost(tmp_path, sites=sites)).sites[0].bindings
