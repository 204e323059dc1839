"""The CLI's argument handling: documented forms parse, wrong ones fail with usage."""

from __future__ import annotations

import pytest

from poolhouse.admin import cli


def test_state_dir_before_or_after_the_subcommand() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "-c", "a.config", "--state-dir", "D"]).state_dir == "D"
    assert parser.parse_args(["--state-dir", "E", "serve"]).state_dir == "E"
    assert parser.parse_args(["--state-dir", "E", "list", "wp"]).state_dir == "E"
    assert parser.parse_args(["list", "apppools", "--json", "--state-dir", "F"]).state_dir == "F"
    assert parser.parse_args(["list", "sites"]).state_dir is None


@pytest.mark.parametrize("argv", [["list"], ["list", "bogus"], ["recycle", "site", "X"], ["frobnicate"], []])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_server_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "list", "wp"]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "no server answers" in err and str(tmp_path) in err


def test_serve_with_missing_config_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "-c", str(tmp_path / "nope.config"), "--state-dir", str(tmp_path)]) == 2
    assert "no configuration file" in capsys.readouterr().err
