"""``poolhouse config backup|restore|history`` on a state directory (no server)."""

import json
from pathlib import Path

import pytest

from poolhouse.admin.cli import main


@pytest.fixture
def state(tmp_path: Path) -> Path:
    served = tmp_path / "applicationHost.config"
    served.write_text("<configuration><!-- v2 --></configuration>\n")
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "run" / "config-path").write_text(f"{served}\n")
    snap = state / "config" / "history" / "CFGHISTORY_0000000007"
    snap.mkdir(parents=True)
    (snap / "applicationHost.config").write_text("<configuration><!-- v1 --></configuration>\n")
    return state


def run(state: Path, *args: str) -> int:
    return main(["--state-dir", str(state), "config", *args])


def test_backup_history_restore(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = state.parent / "applicationHost.config"
    assert run(state, "backup", "b1") == 0
    assert (state / "config" / "backup" / "b1" / "applicationHost.config").read_text() == \
        served.read_text()
    assert run(state, "backup", "b1") == 1  # exists
    capsys.readouterr()
    assert run(state, "history", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(h["name"], h["kind"]) for h in listed] == [("CFGHISTORY_0000000007", "history"),
                                                        ("b1", "backup")]
    assert run(state, "restore", "CFGHISTORY_0000000007") == 0
    assert "v1" in served.read_text()
    assert run(state, "restore", "b1") == 0
    assert "v2" in served.read_text()
    assert run(state, "restore", "missing") == 1
    assert run(state, "restore") == 2


def test_without_a_recorded_config_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(tmp_path), "config", "backup"]) == 1
    assert "use -c FILE" in capsys.readouterr().err
    cfg = tmp_path / "a.config"
    cfg.write_text("<configuration />")
    assert main(["--state-dir", str(tmp_path), "config", "backup", "x", "-c", str(cfg)]) == 0
