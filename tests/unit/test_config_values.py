"""Value types of the IIS schema: TimeSpan, bool, integers, enums, flags."""

import pytest

from poolhouse.config import values as V
from poolhouse.config.schema import SECTIONS


@pytest.mark.parametrize("text,seconds", [
    ("00:00:30", 30.0),
    ("00:20:00", 1200.0),
    ("29:00:00", 104400.0),
    ("1.00:00:00", 86400.0),
    ("2.03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5.0),
    ("00:00:01.5", 1.5),
    ("01:30", 5400.0),
])
def test_timespan_parses(text: str, seconds: float) -> None:
    assert V.parse_timespan(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1:60:00", "00:00:60", "abc", "1.2.00:00:00"])
def test_timespan_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="TimeSpan"):
        V.parse_timespan(text)


def test_timespan_formats_back() -> None:
    assert V.format_timespan(104400) == "1.05:00:00"
    assert V.format_timespan(90) == "00:01:30"


def test_bool_enum_flags() -> None:
    assert V.parse_bool("TRUE") is True and V.parse_bool("false") is False
    with pytest.raises(ValueError):
        V.parse_bool("yes")
    choices = (("OnDemand", 0), ("AlwaysRunning", 1))
    assert V.parse_enum("alwaysrunning", choices) == "AlwaysRunning"
    assert V.parse_enum("1", choices) == "AlwaysRunning"
    with pytest.raises(ValueError, match="allowed: OnDemand, AlwaysRunning"):
        V.parse_enum("Sometimes", choices)
    flags = (("None", 0), ("Read", 1), ("Write", 2), ("Script", 512))
    assert V.parse_flags("script, read", flags) == "Read, Script"
    assert V.parse_flags("None", flags) == "None"
    assert V.parse_flags("513", flags) == "Read, Script"
    with pytest.raises(ValueError, match="not a valid flag"):
        V.parse_flags("Read, Fly", flags)


def test_schema_ranges_and_granularity() -> None:
    pm = SECTIONS["system.applicationHost/applicationPools"].element.collection
    assert pm is not None
    idle = pm.item.children["processModel"].attrs["idleTimeout"]
    assert idle.default == 1200.0
    assert idle.parse("1.00:00:00") == 86400.0
    with pytest.raises(ValueError, match="multiple of 60"):
        idle.parse("00:00:30")
    with pytest.raises(ValueError, match="out of range"):
        idle.parse("31.00:00:00")
    limits = SECTIONS["system.applicationHost/sites"].element.collection
    assert limits is not None
    bw = limits.item.children["limits"].attrs["maxBandwidth"]
    with pytest.raises(ValueError, match="excluded"):
        bw.parse("1000")
    assert bw.parse("2048") == 2048


def test_every_attribute_has_a_valid_default() -> None:
    def walk(el, where):  # type: ignore[no-untyped-def]
        for a in el.attrs.values():
            assert a.default is not None, f"{where}/@{a.name}"
        for c in el.children.values():
            walk(c, f"{where}/{c.name}")
        if el.collection is not None:
            walk(el.collection.item, f"{where}/{el.collection.add}")

    for path, section in SECTIONS.items():
        walk(section.element, path)
