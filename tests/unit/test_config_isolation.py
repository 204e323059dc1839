"""Application pool isolation of the configuration (config/isolation.py): a worker of one
pool is handed its own pool, its own sites and the ``<location>`` tags that apply to
them, and nothing of the other pools — not their definitions, folders, users files nor
configSource files."""

from __future__ import annotations

from pathlib import Path

from poolhouse.config import ServerConfig, WebConfigResolver, load_server_config
from poolhouse.config.isolation import pool_view, users_files

APPHOST = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <applicationPools>
      <add name="A" />
      <add name="B"><processModel identityType="SpecificUser" userName="bob-the-secret" /></add>
    </applicationPools>
    <sites>
      <site name="SiteA" id="1">
        <application path="/" applicationPool="A"><virtualDirectory path="/" physicalPath="{root}/a" /></application>
        <application path="/b" applicationPool="B"><virtualDirectory path="/" physicalPath="{root}/hidden-b" /></application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:8001:" /></bindings>
      </site>
      <site name="SiteB" id="2">
        <application path="/" applicationPool="B"><virtualDirectory path="/" physicalPath="{root}/siteb" /></application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:8002:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>
  <system.webServer>
    <defaultDocument enabled="true" />
  </system.webServer>
  <location path="SiteB">
    <system.webServer>
      <security><authentication><basicAuthentication enabled="true" usersFile="{root}/b-users" /></authentication></security>
    </system.webServer>
  </location>
  <location path="SiteA/b">
    <system.webServer>
      <security><authentication><basicAuthentication enabled="true" usersFile="{root}/b2-users" /></authentication></security>
    </system.webServer>
  </location>
  <location path="SiteA">
    <system.webServer>
      <security><authentication><basicAuthentication enabled="true" usersFile="a-users" /></authentication></security>
      <httpProtocol configSource="a-headers.config" />
    </system.webServer>
  </location>
  <location path="SiteB/x">
    <system.webServer><httpProtocol configSource="b-headers.config" /></system.webServer>
  </location>
</configuration>
"""


def load(tmp_path: Path) -> ServerConfig:
    for name in ("a", "hidden-b", "siteb"):
        (tmp_path / name).mkdir()
    for name in ("a-headers.config", "b-headers.config"):
        (tmp_path / name).write_text('<httpProtocol><customHeaders><add name="X-From" value="%s" />'
                                     '</customHeaders></httpProtocol>' % name)
    path = tmp_path / "applicationHost.config"
    path.write_text(APPHOST.replace("{root}", str(tmp_path)))
    return load_server_config(str(path))


def test_a_pool_sees_only_its_own_part(tmp_path: Path) -> None:
    config = load(tmp_path)
    view = pool_view(config, "A")
    assert list(view["pools"]) == ["A"]
    assert [s["name"] for s in view["sites"]] == ["SiteA"]
    apps = {a["path"]: a for a in view["sites"][0]["applications"]}
    # B's application in the shared site still maps its URLs, without its folder
    assert apps["/b"]["physical_path"] == "" and apps["/b"]["virtual_directories"] == []
    assert apps["/"]["physical_path"] == str(tmp_path / "a")
    text = view["config_text"]
    for secret in ("bob-the-secret", "hidden-b", "b-users", "b2-users", "siteb", "b-headers.config", "SiteB"):
        assert secret not in text, secret
    assert "a-users" in text and "a-headers.config" in text
    assert list(view["config_extra"]) == [str(tmp_path / "a-headers.config")]
    assert view["source_files"] == []
    assert all(b["key_file"] == "" for s in view["sites"] for b in s["bindings"])
    # line numbers of what stays are the master file's
    master = config.config_text.splitlines()
    mine = text.splitlines()
    line = next(i for i, t in enumerate(master) if 'location path="SiteA"' in t)
    assert mine[line] == master[line]
    # the worker's side: it rebuilds and resolves its application from the view alone
    server = ServerConfig.from_dict(view)
    web = WebConfigResolver(server, "SiteA", "/").for_path("/page")
    assert web is not None


def test_the_other_pool_and_users_files(tmp_path: Path) -> None:
    config = load(tmp_path)
    view = pool_view(config, "b")  # pool names are case-insensitive
    assert list(view["pools"]) == ["B"]
    assert sorted(s["name"] for s in view["sites"]) == ["SiteA", "SiteB"]
    shared = next(s for s in view["sites"] if s["name"] == "SiteA")
    assert {a["path"]: a["physical_path"] for a in shared["applications"]}["/"] == ""
    assert "b-users" in view["config_text"] and "b2-users" in view["config_text"]
    assert sorted(users_files(config, "B")) == sorted([str(tmp_path / "b-users"), str(tmp_path / "b2-users"),
                                                       str(tmp_path / "hidden-b" / "a-users")])
    assert users_files(config, "A") == [str(tmp_path / "a" / "a-users")]


def test_views_from_one_parse_do_not_leak_into_each_other(tmp_path: Path) -> None:
    config = load(tmp_path)
    first = pool_view(config, "A")["config_text"]
    other = pool_view(config, "B")["config_text"]
    assert pool_view(config, "A")["config_text"] == first != other
    assert "b2-users" in other and "b2-users" not in first
    assert len(first.splitlines()) == len(other.splitlines()) == len(config.config_text.splitlines())
