"""Configuration history (CFGHISTORY_ snapshots, maxHistories), backups, the audit
descriptions of a change, and workers merging from the accepted bytes."""

from pathlib import Path

import pytest

from poolhouse.config import ConfigError, ServerConfig, WebConfigResolver, load_server_config
from poolhouse.config import history
from poolhouse.config.audit import describe_accepted, describe_refused
from poolhouse.config.server import web_fingerprints

BASE = """<configuration>
  <system.applicationHost>
    <applicationPools><add name="P" />{pools}</applicationPools>
    <sites>
      <site name="S" id="1">
        <application path="/" applicationPool="P">
          <virtualDirectory path="/" physicalPath="{root}" />
        </application>
        <bindings><binding protocol="http" bindingInformation="*:8080:" />{bindings}</bindings>
      </site>
    </sites>{history}
  </system.applicationHost>{web}
</configuration>"""


def text(tmp_path: Path, pools: str = "", bindings: str = "", web: str = "",
         history_: str = "") -> str:
    return BASE.format(root=tmp_path, pools=pools, bindings=bindings, web=web,
                       history=history_)


def load(tmp_path: Path, body: str) -> ServerConfig:
    path = tmp_path / "applicationHost.config"
    path.write_text(body)
    return load_server_config(str(path))


def test_snapshots_are_numbered_deduplicated_and_pruned(tmp_path: Path) -> None:
    folder = str(tmp_path / "h")
    paths = [history.snapshot(folder, f"v{i}".encode(), 3) for i in range(5)]
    assert all(paths)
    assert history.snapshot(folder, b"v4", 3) is None  # same as the newest
    names = sorted(p.name for p in (tmp_path / "h").iterdir())
    assert names == ["CFGHISTORY_0000000003", "CFGHISTORY_0000000004", "CFGHISTORY_0000000005"]
    assert (tmp_path / "h" / names[-1] / "applicationHost.config").read_bytes() == b"v4"


def test_backups_list_and_find(tmp_path: Path) -> None:
    state = str(tmp_path)
    history.snapshot(history.history_dir(state), b"one", 10)
    history.backup(state, "before-upgrade", b"two")
    with pytest.raises(ValueError, match="already exists"):
        history.backup(state, "before-upgrade", b"three")
    with pytest.raises(ValueError, match="invalid backup name"):
        history.backup(state, "../escape", b"x")
    snaps = history.list_snapshots(state)
    assert [(s.name, s.kind) for s in snaps] == [("CFGHISTORY_0000000001", "history"),
                                                 ("before-upgrade", "backup")]
    assert Path(history.find(state, "before-upgrade").path).read_bytes() == b"two"
    with pytest.raises(KeyError):
        history.find(state, "nope")


def test_config_history_section_is_read(tmp_path: Path) -> None:
    cfg = load(tmp_path, text(tmp_path, history_='<configHistory maxHistories="3" '
                                                 'path="hist" period="00:00:30" />'))
    assert cfg.config_history.max_histories == 3
    assert cfg.config_history.path == str(tmp_path / "hist")
    assert cfg.config_history.period == 30.0
    with pytest.raises(ConfigError, match="maxHistories"):
        load(tmp_path, text(tmp_path, history_='<configHistory maxHistories="0" />'))


def test_audit_describes_what_changed(tmp_path: Path) -> None:
    old = load(tmp_path, text(tmp_path))
    new = load(tmp_path, text(tmp_path, pools='<add name="Q" />',
                              bindings='<binding protocol="http" bindingInformation="*:8081:" />',
                              web="<system.webServer><directoryBrowse enabled=\"true\" />"
                                  "</system.webServer>"))
    changes = describe_accepted(old, new)
    assert "changed system.applicationHost/applicationPools" in changes
    assert "added system.webServer/directoryBrowse" in changes
    assert "added application pool 'Q'" in changes
    assert "added binding http/*:8081: to site 'S'" in changes
    refused = describe_refused(new, text(tmp_path).replace('applicationPool="P"', 'applicationPool="Nope"').encode(),
                               str(tmp_path / "applicationHost.config"))
    assert "removed system.webServer/directoryBrowse" in refused
    assert "changed system.applicationHost/sites" in refused
    assert describe_refused(new, b"<configuration", "f") == [
        "the file is not well-formed configuration XML"]


def test_fingerprints_change_with_server_level_web_config_only(tmp_path: Path) -> None:
    a = web_fingerprints(load(tmp_path, text(tmp_path)))
    b = web_fingerprints(load(tmp_path, text(tmp_path, pools='<add name="Q" />')))
    c = web_fingerprints(load(tmp_path, text(tmp_path, web='<location path="S"><system.webServer>'
                                             '<directoryBrowse enabled="true" />'
                                             "</system.webServer></location>")))
    assert a == b and a != c


def test_worker_merges_from_the_accepted_bytes_not_the_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, text(tmp_path, web="<system.webServer><directoryBrowse enabled=\"true\" />"
                                            "</system.webServer>"))
    (tmp_path / "applicationHost.config").write_text("<configuration><broken")
    wire = ServerConfig.from_dict(cfg.to_dict())  # as a worker receives it
    web = WebConfigResolver(wire, "S", "/").for_path("/")
    assert web.directory_browse_enabled is True
