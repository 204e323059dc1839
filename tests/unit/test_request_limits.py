"""requestFiltering/requestLimits: the flat limits and their check (shared by the worker's
module and the listener), and the listener's per-application precomputation — loosest
over the root and its locations, nothing where RequestFilteringModule does not run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from poolhouse.config import WebConfigResolver, load_server_config
from poolhouse.config.model import ServerConfig
from poolhouse.config.request_limits import (CONTENT_TOO_LARGE, HEADER_TOO_LONG, QUERY_TOO_LONG,
                                             URL_TOO_LONG, RequestLimits)
from poolhouse.listener import request_filtering
from poolhouse.listener.connection import MAX_FIELD_LENGTH


def section(max_url: int = 64, max_query: int = 32, max_content: int = 1000,
            headers: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"requestLimits": {
        "maxUrl": max_url, "maxQueryString": max_query, "maxAllowedContentLength": max_content,
        "headerLimits": {"items": [{"header": h, "sizeLimit": n} for h, n in (headers or {}).items()]},
    }, **extra}


def test_defaults_are_iis_defaults() -> None:
    limits = RequestLimits.from_section(None)
    assert (limits.max_url, limits.max_query, limits.max_content) == (4096, 2048, 30000000)
    assert RequestLimits.from_section({}) == limits


def test_each_limit_at_and_past_its_boundary() -> None:
    limits = RequestLimits.from_section(section(headers={"X-Big": 20}))
    ok = "/" + "a" * 63
    assert limits.check(ok, "q" * 32, (b"x-big", b"b" * 20), 1000) is None
    assert limits.check(ok + "a", "", (), 0) == URL_TOO_LONG
    assert limits.check(ok, "q" * 33, (), 0) == QUERY_TOO_LONG
    assert limits.check(ok, "", (b"x-big", b"b" * 21), 0) == HEADER_TOO_LONG
    assert limits.check(ok, "", (), 1001) == CONTENT_TOO_LARGE
    assert limits.check(ok, "", (), -1) is None  # chunked: counted as it arrives
    assert (URL_TOO_LONG[:2], QUERY_TOO_LONG[:2], HEADER_TOO_LONG[:2], CONTENT_TOO_LARGE[:2]) == (
        (404, 14), (404, 15), (431, 0), (413, 1))


def test_the_module_order_decides_between_several() -> None:
    limits = RequestLimits.from_section(section(headers={"x-big": 1}))
    assert limits.check("/" + "a" * 99, "q" * 99, (b"x-big", b"bb"), 5000) == CONTENT_TOO_LARGE
    assert limits.check("/" + "a" * 99, "q" * 99, (b"x-big", b"bb"), 0) == HEADER_TOO_LONG
    assert limits.check("/" + "a" * 99, "q" * 99, (), 0) == URL_TOO_LONG


def test_repeated_headers_count_joined() -> None:
    limits = RequestLimits.from_section(section(headers={"X-Big": 21}))
    assert limits.header_verdict((b"x-big", b"b" * 10, b"other", b"o" * 99, b"x-big", b"c" * 9)) is None
    assert limits.header_verdict((b"x-big", b"b" * 10, b"x-big", b"c" * 10)) == HEADER_TOO_LONG


def test_always_allowed_urls_and_query_strings() -> None:
    limits = RequestLimits.from_section(section(
        max_url=8, max_query=4,
        alwaysAllowedUrls={"items": [{"url": "/Long/Allowed"}]},
        alwaysAllowedQueryStrings={"items": [{"queryString": "a=12345"}]}))
    assert limits.check("/long/%41llowed", "", (), 0) is None  # compared decoded, any case
    assert limits.check("/long/other", "", (), 0) == URL_TOO_LONG
    assert limits.check("/", "a=12345", (), 0) is None
    assert limits.check("/", "a=123456", (), 0) == QUERY_TOO_LONG


def test_loosest() -> None:
    a = RequestLimits.from_section(section(64, 32, 1000, {"x-a": 10, "x-b": 10}))
    b = RequestLimits.from_section(section(200, 16, 500, {"x-b": 30}))
    both = a.loosest(b)
    assert (both.max_url, both.max_query, both.max_content) == (200, 32, 1000)
    assert both.headers == ((b"x-b", 30),)  # a header limited on one side only is not limited


# ---- the listener's precomputation ------------------------------------------------------

APPHOST = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <applicationPools><add name="P" /></applicationPools>
    <sites>
      <site name="S" id="1">
        <application path="/" applicationPool="P"><virtualDirectory path="/" physicalPath="{root}/www" /></application>
        <application path="/api" applicationPool="P"><virtualDirectory path="/" physicalPath="{root}/api" /></application>
        <bindings><binding protocol="http" bindingInformation="*:80:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>
  {locations}
</configuration>"""


def server(tmp_path: Path, locations: str = "", web_config: str = "") -> ServerConfig:
    (tmp_path / "www").mkdir()
    (tmp_path / "api").mkdir()
    if web_config:
        (tmp_path / "www" / "web.config").write_text(web_config)
    text = APPHOST.replace("{root}", str(tmp_path)).replace("{locations}", locations)
    path = tmp_path / "applicationHost.config"
    path.write_text(text)
    return load_server_config(str(path))


def limits_location(path: str, attrs: str) -> str:
    return (f'<location path="{path}"><system.webServer><security><requestFiltering>'
            f'<requestLimits {attrs} /></requestFiltering></security></system.webServer></location>')


def test_defaults_give_every_application_its_check(tmp_path: Path) -> None:
    apps = request_filtering.build(server(tmp_path))
    assert sorted(apps) == ["1/", "1/api"]
    root = apps["1/"]
    assert root.short_target == 2048 and root.max_content == 30000000 and not root.headers


def test_locations_below_the_root_loosen(tmp_path: Path) -> None:
    cfg = server(tmp_path, limits_location("S", 'maxUrl="100"')
                 + limits_location("S/upload", 'maxAllowedContentLength="4000000000"')
                 + limits_location("S/api/x", 'maxUrl="9000"'),
                 web_config='<configuration><location path="deep"><system.webServer><security>'
                            '<requestFiltering><requestLimits maxQueryString="3000" /></requestFiltering>'
                            '</security></system.webServer></location></configuration>')
    apps = request_filtering.build(cfg)
    root = apps["1/"]
    assert (root.limits.max_url, root.limits.max_query, root.max_content) == (100, 3000, 4000000000)
    assert root.short_target == 100
    api = apps["1/api"]  # a location of another application does not count here, and back
    assert (api.limits.max_url, api.max_content) == (9000, 30000000)
    assert api.short_target == 2048  # maxQueryString is still the default there
    # the exact limits at a URL are the worker's
    assert root.exact("/upload/a").max_content == 4000000000  # type: ignore[union-attr]
    assert root.exact("/other").max_content == 30000000  # type: ignore[union-attr]
    assert root.exact("/deep/x").max_query == 3000  # type: ignore[union-attr]
    # too deep for a per-URL resolution: the application's loosest limits
    assert root.exact("/a" * 40) is root.limits


def test_both_url_limits_above_the_listeners_own_bound(tmp_path: Path) -> None:
    cfg = server(tmp_path, limits_location("S", f'maxUrl="{MAX_FIELD_LENGTH}" maxQueryString="65536"'))
    assert request_filtering.build(cfg)["1/"].short_target > 1 << 40


def test_a_broken_web_config_leaves_the_application_to_the_worker(tmp_path: Path) -> None:
    cfg = server(tmp_path)
    (tmp_path / "api" / "web.config").write_text("<configuration><system.webServer><nonsense")
    assert sorted(request_filtering.build(cfg)) == ["1/"]


def modules(web: Any, items: list[dict[str, str]], registered: bool = True) -> Any:
    sections = dict(web.sections)
    sections["system.webServer/modules"] = {"items": items}
    if not registered:
        sections["system.webServer/globalModules"] = {"items": [{"name": "Other"}]}
    return dataclasses.replace(web, sections=sections)


@pytest.mark.parametrize("entry,registered,runs", [
    ({"name": "RequestFilteringModule", "type": "", "preCondition": ""}, True, True),
    ({"name": "RequestFilteringModule", "type": "", "preCondition": "integratedMode"}, True, True),
    ({"name": "RequestFilteringModule", "type": "", "preCondition": "managedHandler"}, True, False),
    ({"name": "RequestFilteringModule", "type": "mine:Filter", "preCondition": ""}, True, False),
    ({"name": "OtherModule", "type": "", "preCondition": ""}, True, False),
    ({"name": "RequestFilteringModule", "type": "", "preCondition": ""}, False, False),
])
def test_only_where_the_module_runs(tmp_path: Path, entry: dict[str, str], registered: bool,
                                    runs: bool) -> None:
    cfg = server(tmp_path)
    web = WebConfigResolver(cfg, "S", "/").for_path("/")
    assert request_filtering.filters(web, cfg.pools["P"])
    assert request_filtering.filters(modules(web, [entry], registered), cfg.pools["P"]) is runs
