"""Routing edge cases beyond tests/unit/test_routing.py: Host header forms, binding IP
forms, duplicate bindings, non-HTTP bindings, application keys and prefixes."""

from __future__ import annotations

import pytest

from poolhouse.config.model import Application, Binding, ServerConfig, Site
from poolhouse.listener.routing import RoutingTable, app_key, normalise_ip


def _table() -> RoutingTable:
    return RoutingTable(ServerConfig(sites=[
        Site(1, "A", bindings=[Binding("http", "*", 80, "a.example")],
             applications=[Application("/", "PA", "/srv/a"), Application("/Shop/", "PShop", "/srv/s")]),
        Site(2, "V6", bindings=[Binding("http", "[::1]", 80, "")],
             applications=[Application("/", "P6", "/srv/6")]),
        Site(3, "Dup", bindings=[Binding("http", "*", 80, "a.example"), Binding("net.tcp", "*", 81, "")],
             applications=[Application("/", "PD", "/srv/d")]),
        Site(4, "Any", bindings=[Binding("http", "0.0.0.0", 8080, "")],
             applications=[Application("/app", "PApp", "/srv/app")]),
    ]))


@pytest.mark.parametrize("ip,host,site", [
    ("10.0.0.1", "a.example", 1),
    ("10.0.0.1", "a.example.", 1),          # fully-qualified form with the root dot
    ("10.0.0.1", "A.EXAMPLE:80", 1),
    ("10.0.0.1", "a.example:8080", 1),      # the port in Host does not take part
    ("::1", "[::1]:80", 2),                 # no host binding matches: the IP-bound one
    ("::1", "[::1]", 2),
    ("::1", "", 2),
    ("10.0.0.1", "b.example", None),        # port 80 on 10.0.0.1: only host-named bindings
    ("10.0.0.1", "", None),
    ("10.0.0.1", "[::1", None),             # broken IPv6 literal: no crash, no match
])
def test_host_header_forms(ip: str, host: str, site: int | None) -> None:
    assert _table().site_for(ip, 80, host) == site


def test_first_site_to_claim_a_binding_keeps_it() -> None:
    assert _table().site_for("10.0.0.1", 80, "a.example") == 1


def test_non_http_bindings_are_not_routed_or_listened_on() -> None:
    table = _table()
    assert table.site_for("10.0.0.1", 81, "") is None
    assert (81 not in {port for _, port in table.listen_addresses()})


@pytest.mark.parametrize("raw,norm", [
    ("*", "*"), ("", "*"), ("0.0.0.0", "*"), ("::", "*"), ("[::1]", "::1"),
    ("::0001", "::1"), ("127.000.0.1", "127.000.0.1"), ("not-an-ip", "not-an-ip"),
])
def test_normalise_ip(raw: str, norm: str) -> None:
    assert normalise_ip(raw) == norm


def test_site_without_root_application() -> None:
    table = _table()
    site, route = table.route("10.0.0.2", 8080, "x", "/")
    assert site == 4 and route is None      # the listener answers 404
    site, route = table.route("10.0.0.2", 8080, "x", "/APP/x")
    assert route is not None and route.pool == "PApp"


@pytest.mark.parametrize("path,pool", [
    ("/shop", "PShop"), ("/shop/", "PShop"), ("/SHOP/cart", "PShop"), ("/shopping", "PA"),
    ("/sh%6Fp/x", "PShop"), ("/", "PA"),
])
def test_application_path_with_trailing_slash(path: str, pool: str) -> None:
    _, route = _table().route("10.0.0.1", 80, "a.example", path)
    assert route is not None and route.pool == pool


def test_app_keys() -> None:
    site = Site(7, "S")
    assert app_key(site, Application("/", "P", "/x")) == "7/"
    assert app_key(site, Application("/api", "P", "/x")) == "7/api"
    route = _table().route("10.0.0.1", 80, "a.example", "/shop/x")[1]
    assert route is not None
    assert (route.site_id, route.site_name, route.app_path) == (1, "A", "/Shop/")


def test_empty_configuration_routes_nothing() -> None:
    table = RoutingTable(ServerConfig())
    assert table.route("127.0.0.1", 80, "x", "/") == (None, None)
    assert table.listen_addresses() == []
