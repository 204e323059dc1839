"""Configuration paths as IIS matches them on NTFS: ``config_path`` and the resolver
finding a folder's web.config (and location tags) whatever the URL's spelling."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolhouse.config.resolver import config_path
from tests.unit.test_config_merge import Site


@pytest.mark.parametrize("url, expected", [
    ("/", "/"),
    ("", "/"),
    ("/App/Admin/X.txt", "/app/admin/x.txt"),
    ("/app/admin./x", "/app/admin/x"),
    ("/app/admin /x", "/app/admin/x"),
    ("/app/Admin. . ./x", "/app/admin/x"),
    ("/app//admin/", "/app/admin"),
    ("/app/admin/x?q=/y", "/app/admin/x"),
    ("/app/a.b/c", "/app/a.b/c"),  # only trailing dots go
    ("/app/.hidden", "/app/.hidden"),
    ("/app/x .", "/app/x"),
])
def test_config_path(url: str, expected: str) -> None:
    assert config_path(url) == expected


def _deny(site: Site, folder: str) -> None:
    site.web_config(folder, """
  <system.webServer><security><authorization>
    <add accessType="Deny" users="?" />
  </authorization></security></system.webServer>""")


def _denied(wc) -> bool:  # type: ignore[no-untyped-def]
    rules = wc.sections["system.webServer/security/authorization"]["items"]
    return any(r["accessType"] == "Deny" and r["users"] == "?" for r in rules)


@pytest.mark.parametrize("url", ["/app/admin/x", "/app/ADMIN/x", "/app/admin./x", "/app/admin /x",
                                 "/APP/Admin. /x", "/app/admin", "/app/admin.."])
def test_folder_web_config_applies_to_every_spelling(tmp_path: Path, url: str) -> None:
    site = Site(tmp_path)
    (tmp_path / "app" / "admin").mkdir()
    _deny(site, "app/admin")
    resolver = site.resolver("/app")
    assert _denied(resolver.for_path(url))
    assert not _denied(resolver.for_path("/app/public/x"))


@pytest.mark.parametrize("url", ["/app/secret/x", "/app/SECRET/x", "/app/Secret./x", "/app/inner/SECRET /x"])
def test_folder_spelled_otherwise_on_disk_is_found(tmp_path: Path, url: str) -> None:
    site = Site(tmp_path)
    (tmp_path / "app" / "Secret").mkdir()
    (tmp_path / "app" / "inner" / "SeCrEt").mkdir()
    _deny(site, "app/Secret")
    _deny(site, "app/inner/SeCrEt")
    assert _denied(site.resolver("/app").for_path(url))


def test_location_path_applies_to_every_spelling(tmp_path: Path) -> None:
    site = Site(tmp_path, extra="""
  <location path="S/app/Reports">
    <system.webServer><security><authorization>
      <add accessType="Deny" users="?" />
    </authorization></security></system.webServer>
  </location>""")
    resolver = site.resolver("/app")
    for url in ("/app/reports/a", "/app/REPORTS./a", "/app/Reports /a"):
        assert _denied(resolver.for_path(url)), url


def test_folders_with_one_configuration_path_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = Site(tmp_path)
    (tmp_path / "app" / "Reports").mkdir()
    (tmp_path / "app" / "REPORTS.").mkdir()
    _deny(site, "app/REPORTS.")
    with caplog.at_level("WARNING", logger="poolhouse.config"):
        wc = site.resolver("/app").for_path("/app/Reports/x")
    assert _denied(wc)  # "REPORTS." comes first in name order: its web.config for both
    assert any("one configuration path" in r.getMessage() for r in caplog.records)
