"""Binding -> site -> application -> pool, fed configurations."""

from __future__ import annotations

import pytest

from poolhouse.config.model import Application, Binding, ServerConfig, Site
from poolhouse.listener.routing import RoutingTable
from poolhouse.urlpath import BadPath, normalize, split_target


def _config() -> ServerConfig:
    return ServerConfig(sites=[
        Site(1, "Default", bindings=[Binding("http", "*", 80, "")],
             applications=[Application("/", "Root", "/srv/a"), Application("/api", "Api", "/srv/api"),
                           Application("/api/v2", "Api2", "/srv/api2")]),
        Site(2, "Contoso", bindings=[Binding("http", "*", 80, "www.contoso.com")],
             applications=[Application("/", "Contoso", "/srv/c")]),
        Site(3, "Local", bindings=[Binding("http", "127.0.0.2", 80, "")],
             applications=[Application("/", "Local", "/srv/l")]),
        Site(4, "LocalHost", bindings=[Binding("http", "127.0.0.2", 80, "www.contoso.com")],
             applications=[Application("/", "LocalHost", "/srv/lh")]),
    ])


@pytest.mark.parametrize("ip,host,site", [
    ("10.0.0.1", "www.contoso.com", 2),
    ("10.0.0.1", "WWW.Contoso.com:80", 2),
    ("10.0.0.1", "other.example", 1),
    ("10.0.0.1", "", 1),
    ("127.0.0.2", "anything", 3),          # IP-bound beats the weak wildcard
    ("127.0.0.2", "www.contoso.com", 4),   # host on that IP beats host on any IP
])
def test_host_precedence(ip: str, host: str, site: int) -> None:
    assert RoutingTable(_config()).site_for(ip, 80, host) == site


def test_unknown_port_or_host() -> None:
    table = RoutingTable(ServerConfig(sites=[Site(1, "S", bindings=[Binding("http", "*", 80, "a.example")])]))
    assert table.site_for("1.2.3.4", 81, "a.example") is None
    assert table.site_for("1.2.3.4", 80, "b.example") is None


@pytest.mark.parametrize("path,pool", [
    ("/", "Root"), ("/x", "Root"), ("/api", "Api"), ("/API/x", "Api"), ("/apix", "Root"),
    ("/api/v2", "Api2"), ("/api/v2/items?x", "Api2"), ("/api/v", "Api"), ("/%61pi/v2", "Api2"),
])
def test_longest_application_path(path: str, pool: str) -> None:
    _, route = RoutingTable(_config()).route("10.0.0.1", 80, "x", path)
    assert route is not None and route.pool == pool


def test_listen_addresses_wildcard_covers_port() -> None:
    table = RoutingTable(_config())
    assert table.listen_addresses() == [("*", 80)]
    only_ip = RoutingTable(ServerConfig(sites=[Site(1, "S", bindings=[Binding("http", "127.0.0.1", 8080, "")])]))
    assert only_ip.listen_addresses() == [("127.0.0.1", 8080)]


@pytest.mark.parametrize("raw,expected", [
    ("/a/b", "/a/b"), ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/a//b", "/a/b"),
    ("/a/b/", "/a/b/"), ("/a/b/..", "/a/"), ("/%7Euser", "/~user"), ("/a%2F..%2Fb", "/b"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", ["/..", "/a/../../b", "/%2e%2e/x", "/a%00b"])
def test_normalize_refuses(raw: str) -> None:
    with pytest.raises(BadPath):
        normalize(raw)


def test_split_target() -> None:
    assert split_target(b"/a?b=1&c") == ("/a", "b=1&c")
    assert split_target(b"http://h.example/p?q") == ("/p", "q")
    assert split_target(b"*") == ("*", "")


@pytest.mark.parametrize("host,name", [
    ("example.com:8080", "example.com"), ("example.com", "example.com"),
    ("[::1]:8080", "[::1]"), ("[::1]", "[::1]"), ("", "fallback"), (":80", "fallback"),
])
def test_host_name(host: str, name: str) -> None:
    from poolhouse.urlpath import host_name

    assert host_name(host, "fallback") == name
