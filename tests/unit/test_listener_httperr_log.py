"""The HTTPERR log: HTTP.sys's fields, escaping, buffering and rollover."""

from __future__ import annotations

import os
from pathlib import Path

from poolhouse.listener.httperr_log import FIELDS, HttpErrLog, field


def test_field_escapes_and_dashes() -> None:
    assert field(None) == "-"
    assert field("") == "-"
    assert field(0) == "0"
    assert field("a b\tc\x00d\x7f") == "a+b+c+d+"


def test_line_has_every_field_in_order(tmp_path: Path) -> None:
    log = HttpErrLog(str(tmp_path))
    log.write("BadRequest", client=("127.0.0.1", 5000), server=("127.0.0.1", 80), version="HTTP/1.1",
              method="GET", uri=b"/a b", status=400, site_id=3, queue="Pool")
    assert log.pending == 1
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # buffered until flush
    log.flush()
    assert log.pending == 0
    text = (tmp_path / "httperr1.log").read_text()
    header, line = text.split("\n")[:4], text.splitlines()[-1]
    assert header[0] == "#Software: Poolhouse HTTP listener"
    assert f"#Fields: {FIELDS}" in text
    parts = line.split(" ")
    assert len(parts) == len(FIELDS.split())
    assert parts[2:] == ["127.0.0.1", "5000", "127.0.0.1", "80", "HTTP/1.1", "GET", "/a+b", "400", "3",
                         "BadRequest", "Pool"]


def test_connection_level_line_has_dashes(tmp_path: Path) -> None:
    log = HttpErrLog(str(tmp_path))
    log.write("Timer_ConnectionIdle", client=("::1", 1), server=("::1", 2))
    log.flush()
    parts = (tmp_path / "httperr1.log").read_text().splitlines()[-1].split(" ")
    assert parts[6:] == ["-", "-", "-", "-", "-", "Timer_ConnectionIdle", "-"]


def test_long_and_hostile_values_stay_on_one_line(tmp_path: Path) -> None:
    log = HttpErrLog(str(tmp_path))
    log.write("BadRequest", method="X" * 1000, uri="/\r\n#Fields: forged " + "u" * 10000)
    log.flush()
    lines = (tmp_path / "httperr1.log").read_text().splitlines()
    assert len(lines) == 5
    assert not lines[-1].startswith("#")
    parts = lines[-1].split(" ")
    assert len(parts[7]) == 255 and len(parts[8]) == 4096


def test_rollover_past_truncate_size(tmp_path: Path) -> None:
    log = HttpErrLog(str(tmp_path), truncate_size=1)  # raised to the 1 MB minimum
    assert log.truncate_size == 1024 * 1024
    for _ in range(3):
        for _ in range(8000):
            log.write("Client_Reset", client=("127.0.0.1", 1), uri="/" + "p" * 100)
        log.flush()
    names = sorted(os.listdir(tmp_path))
    assert names == ["httperr1.log", "httperr2.log", "httperr3.log"]
    for name in names:
        text = (tmp_path / name).read_text()
        assert text.startswith("#Software:")
        assert text.count("#Fields:") == 1


def test_continues_the_highest_existing_file(tmp_path: Path) -> None:
    (tmp_path / "httperr1.log").write_text("old\n")
    (tmp_path / "httperr7.log").write_text("#Software: x\n")
    (tmp_path / "httperr.log.bak").write_text("ignored\n")
    log = HttpErrLog(str(tmp_path))
    log.write("QueueFull", status=503)
    log.flush()
    text = (tmp_path / "httperr7.log").read_text()
    assert text.startswith("#Software: x\n")  # appended, no second header
    assert "#Fields" not in text
    assert text.rstrip().endswith("QueueFull -")


def test_flush_without_lines_creates_nothing(tmp_path: Path) -> None:
    log = HttpErrLog(str(tmp_path / "HTTPERR"))
    log.flush()
    assert not (tmp_path / "HTTPERR").exists()
