"""isapiCgiRestriction's verdict on a program's real path (IIS semantics: an entry with
exactly that path decides; otherwise notListedCgisAllowed)."""

from __future__ import annotations

from poolhouse.worker.handlers.cgi import restriction_allows


def section(not_listed: bool, *entries: tuple[str, bool]) -> dict[str, object]:
    return {"notListedIsapisAllowed": False, "notListedCgisAllowed": not_listed,
            "items": [{"path": p, "allowed": a, "groupId": "", "description": ""} for p, a in entries]}


def test_listed_entries_decide() -> None:
    s = section(False, ("/srv/cgi/a.cgi", True), ("/srv/cgi/b.cgi", False))
    assert restriction_allows(s, "/srv/cgi/a.cgi")
    assert not restriction_allows(s, "/srv/cgi/b.cgi")
    assert not restriction_allows(s, "/srv/cgi/c.cgi")  # not listed, notListedCgisAllowed false


def test_not_listed_allowed_does_not_lift_an_explicit_denial() -> None:
    s = section(True, ("/usr/bin/dash", False))
    assert restriction_allows(s, "/srv/cgi/anything.cgi")
    assert not restriction_allows(s, "/usr/bin/dash")


def test_exact_and_case_sensitive() -> None:
    s = section(False, ("/srv/CGI/a.cgi", True))
    assert not restriction_allows(s, "/srv/cgi/a.cgi")
    assert not restriction_allows(s, "/srv/CGI/a.cgi/")
    assert not restriction_allows(s, "/srv/CGI/a.cg")


def test_no_section_denies() -> None:
    assert not restriction_allows(None, "/srv/cgi/a.cgi")
    assert not restriction_allows(section(False), "/srv/cgi/a.cgi")
