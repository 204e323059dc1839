"""The W3C log writer fed exchanges directly: file names per period, rollover (time and
MaxSize), header blocks, escaping."""

from __future__ import annotations

import calendar
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from poolhouse.config.model import CustomLogField, LogFile, Site
from poolhouse.listener.w3c_log import W3CLogs, fields_for, file_name


def when(text: str) -> float:
    return float(calendar.timegm(__import__("time").strptime(text, "%Y-%m-%d %H:%M:%S")))


def exchange(target: bytes = b"/a?b=1", status: int = 200, agent: bytes = b"x y") -> Any:
    conn = SimpleNamespace(server=("127.0.0.1", 80), client=("10.0.0.1", 5000))
    return SimpleNamespace(
        conn=conn, route=SimpleNamespace(site_id=3), method="GET", target=target, http_minor=1,
        headers=(b"host", b"h", b"user-agent", agent), status=status, substatus=2, username="bob",
        bytes_sent=100, body_received=0, started_at=1.0, finished_at=1.25,
    )


def test_file_names_per_period() -> None:
    t = when("2026-03-04 05:06:07")  # a Wednesday; March 1st 2026 is a Sunday
    assert file_name("Daily", t, False) == "u_ex260304.log"
    assert file_name("Hourly", t, False) == "u_ex26030405.log"
    assert file_name("Monthly", t, False) == "u_ex2603.log"
    assert file_name("Weekly", t, False) == "u_ex260301.log"
    assert file_name("Weekly", when("2026-03-08 00:00:00"), False) == "u_ex260302.log"
    assert file_name("MaxSize", t, False, 3) == "u_extend3.log"
    # a log with custom fields: "_x" before ".log", as IIS names it
    assert file_name("Daily", t, False, custom=True) == "u_ex260304_x.log"
    assert file_name("Weekly", t, False, custom=True) == "u_ex260301_x.log"
    assert file_name("MaxSize", t, False, 2, True) == "u_extend2_x.log"


def test_fields_follow_iis_order_not_flag_order() -> None:
    assert fields_for("TimeTaken, Date, ClientIP") == ["date", "c-ip", "time-taken"]


def write(tmp_path: Path, log_file: LogFile, entries: list[tuple[float, Any]]) -> Path:
    logs = W3CLogs(str(tmp_path))
    logs.configure([Site(3, "S", log_file=log_file)])
    logs.submit(entries)
    logs.sync()
    logs.close()
    assert logs.errors == 0
    return tmp_path / "W3SVC3"


def test_daily_rollover_at_utc_midnight(tmp_path: Path) -> None:
    d = write(tmp_path, LogFile(), [(when("2026-03-04 23:59:59"), exchange()),
                                    (when("2026-03-05 00:00:01"), exchange())])
    assert sorted(p.name for p in d.iterdir()) == ["u_ex260304.log", "u_ex260305.log"]
    for p in d.iterdir():
        lines = p.read_text().splitlines()
        assert lines[0].startswith("#Software") and lines[3].startswith("#Fields: date time")
        assert len([line for line in lines if not line.startswith("#")]) == 1
    line = (d / "u_ex260304.log").read_text().splitlines()[-1]
    assert line == ("2026-03-04 23:59:59 127.0.0.1 GET /a b=1 80 bob 10.0.0.1 x+y - 200 2 0 250")


def test_maxsize_rolls_to_the_next_file(tmp_path: Path) -> None:
    big = exchange(target=b"/" + b"a" * 2000)
    entries = [(when("2026-03-04 10:00:00") + i / 1000, big) for i in range(1200)]
    d = write(tmp_path, LogFile(period="MaxSize", truncate_size=1048576), entries)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["u_extend1.log", "u_extend2.log", "u_extend3.log"]
    sizes = [(d / n).stat().st_size for n in names]
    assert all(s < 1048576 + 4096 for s in sizes)
    total = sum(len([x for x in (d / n).read_text().splitlines() if not x.startswith("#")]) for n in names)
    assert total == 1200


def test_custom_fields_follow_the_standard_ones(tmp_path: Path) -> None:
    log_file = LogFile(log_ext_file_flags="Date, Time, HttpStatus", max_custom_field_length=8, custom_fields=[
        CustomLogField("X-Forwarded-For", "X-Forwarded-For", "RequestHeader"),
        CustomLogField("Tenant", "TENANT", "ServerVariable"),
        CustomLogField("Cache Status", "X-Cache", "ResponseHeader"),
        CustomLogField("Missing", "NOPE", "ServerVariable"),
    ])
    plain = exchange()
    plain.log_fields = ()
    rich = exchange()
    rich.headers = (b"host", b"h", b"x-forwarded-for", b"203.0.113.9, 10.0.0.1")
    rich.log_fields = (("Tenant", "acme corp"), ("Cache Status", "HIT"))
    d = write(tmp_path, log_file, [(when("2026-03-04 10:00:00"), plain), (when("2026-03-04 10:00:01"), rich)])
    assert [p.name for p in d.iterdir()] == ["u_ex260304_x.log"]
    lines = (d / "u_ex260304_x.log").read_text().splitlines()
    assert lines[3] == "#Fields: date time sc-status X-Forwarded-For Tenant Cache-Status Missing"
    assert lines[4] == "2026-03-04 10:00:00 200 - - - -"
    # values escaped like the standard ones and cut at maxCustomFieldLength (8)
    assert lines[5] == "2026-03-04 10:00:01 200 203.0.11 acme+cor HIT -"
