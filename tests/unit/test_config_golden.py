"""Golden tests: real-world-shaped web.config files (tests/data/webconfig/*.config) loaded
as a site's root web.config, compared with the effective configuration (or the error)
recorded in the matching ``.expected.json``.

The projection keeps what a reviewer can check by eye: handler mappings, default
documents, appSettings, the MIME map's difference from the built-in one, and the sections
each file sets.  Regenerate after an intended change with
``POOLHOUSE_REGEN_GOLDEN=1 pytest tests/unit/test_config_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from poolhouse.config import ConfigError, WebConfigResolver, load_server_config
from poolhouse.config.model import WebConfig

DATA = Path(__file__).parent.parent / "data" / "webconfig"
CASES = sorted(p.stem for p in DATA.glob("*.config"))
URLS = ["/", "/index.html", "/admin/x", "/static/app.css", "/legacy/a.txt", "/child/x"]
SECTIONS = ["system.webServer/rewrite/rules", "system.webServer/httpProtocol",
            "system.webServer/security/requestFiltering", "system.webServer/httpErrors",
            "system.webServer/security/authorization", "system.webServer/httpPlatform",
            "system.webServer/directoryBrowse"]

APPHOST = """<configuration>
  <system.applicationHost>
    <applicationPools><add name="P" /></applicationPools>
    <sites>
      <site name="S" id="1">
        <application path="/" applicationPool="P">
          <virtualDirectory path="/" physicalPath="{root}/www" />
        </application>
        <application path="/child" applicationPool="P">
          <virtualDirectory path="/" physicalPath="{root}/child" />
        </application>
        <bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>
</configuration>"""


def _baseline(tmp_path: Path) -> WebConfig:
    (tmp_path / "www").mkdir(exist_ok=True)
    (tmp_path / "child").mkdir(exist_ok=True)
    path = tmp_path / "applicationHost.config"
    path.write_text(APPHOST.replace("{root}", str(tmp_path)))
    return WebConfigResolver(load_server_config(str(path)), "S", "/").for_path("/")


def _project(web: WebConfig, base: WebConfig) -> dict[str, Any]:
    mime_added = {k: v for k, v in web.mime_maps.items() if base.mime_maps.get(k) != v}
    out: dict[str, Any] = {
        "handlers": [[h.name, h.path, h.verb, h.modules, h.script_processor]
                     for h in web.handlers],
        "default_documents": web.default_documents,
        "app_settings": web.app_settings,
        "mime_changed": mime_added,
        "mime_removed": sorted(set(base.mime_maps) - set(web.mime_maps)),
        "client_cache": web.sections["system.webServer/staticContent"]["clientCache"],
    }
    for name in SECTIONS:
        value = web.sections.get(name)
        base_value = base.sections.get(name)
        if value != base_value:
            out[name] = value
    return out


def _result(tmp_path: Path, case: str) -> dict[str, Any]:
    base = _baseline(tmp_path)
    web_config = tmp_path / "www" / "web.config"
    web_config.write_text((DATA / f"{case}.config").read_text())
    cfg = load_server_config(str(tmp_path / "applicationHost.config"))
    out: dict[str, Any] = {}
    for url in URLS:
        app = "/child" if url.startswith("/child") else "/"
        try:
            web = WebConfigResolver(cfg, "S", app).for_path(url)
        except ConfigError as e:
            out[url] = {"error": {"file": os.path.basename(e.file), "line": e.line,
                                  "section": e.section, "reason": e.reason}}
            continue
        out[url] = _project(web, base)
        out[url]["warnings"] = sorted({w.split(": ", 1)[1] for w in web.warnings})
    # URLs with identical results are folded, to keep the golden files readable
    folded: dict[str, Any] = {}
    for url, value in out.items():
        same = next((u for u, v in folded.items() if v == value), None)
        if same is not None:
            folded[url] = {"same_as": same}
        else:
            folded[url] = value
    return folded


@pytest.mark.parametrize("case", CASES)
def test_golden_web_config(tmp_path: Path, case: str) -> None:
    result = json.loads(json.dumps(_result(tmp_path, case)))
    expected_path = DATA / f"{case}.expected.json"
    if os.environ.get("POOLHOUSE_REGEN_GOLDEN"):
        expected_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    expected = json.loads(expected_path.read_text())
    assert result == expected


def test_every_golden_case_has_an_expectation() -> None:
    assert CASES and all((DATA / f"{c}.expected.json").exists() for c in CASES)
