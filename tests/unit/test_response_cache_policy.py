"""The response cache's per-path settings, fed the sections a configuration path has:
which compressed variants it keeps apart, and how a configuration path is matched."""

from __future__ import annotations

import pytest

from poolhouse.config import load_server_config
from poolhouse.config.resolver import WebConfigResolver
from poolhouse.config import config_path
from poolhouse.listener.response_cache import AppCachePolicy, _under


def _policy() -> AppCachePolicy:
    server = load_server_config(None)
    return AppCachePolicy.from_sections(WebConfigResolver(server, server.sites[0].name, "/").for_path("/").sections)


def test_stock_configuration_compresses_static_text() -> None:
    policy = _policy()
    static = policy.static_compression
    assert static is not None
    text = b"Content-Type: text/plain\r\nETag: \"1\"\r\n"
    assert static.applies(text, 5000)
    assert not static.applies(text, 100)                       # below minFileSizeForComp
    assert not static.applies(b"Content-Type: image/png\r\n", 5000)
    assert static.applies(b"Content-Type: text/css\r\nContent-Encoding: gzip\r\n", 100)


@pytest.mark.parametrize(("headers", "method", "minor", "coding"), [
    ((), "GET", 1, b""),
    ((b"accept-encoding", b"gzip"), "GET", 1, b"gzip"),
    ((b"accept-encoding", b"gzip, deflate, br"), "GET", 1, b"gzip"),
    ((b"accept-encoding", b"br;q=0.1, gzip"), "GET", 1, b"gzip"),
    ((b"accept-encoding", b"deflate"), "GET", 1, b""),          # only gzip is configured by default
    ((b"accept-encoding", b"gzip;q=0"), "GET", 1, b""),
    ((b"accept-encoding", b"identity"), "GET", 1, b""),
    ((b"accept-encoding", b"gzip"), "HEAD", 1, b""),            # the worker never compresses HEAD
    ((b"accept-encoding", b"gzip"), "GET", 0, b""),             # noCompressionForHttp10
    ((b"accept-encoding", b"gzip", b"via", b"1.1 proxy"), "GET", 1, b""),  # noCompressionForProxies
])
def test_the_coding_key_is_the_workers_choice(headers: tuple[bytes, ...], method: str, minor: int,
                                              coding: bytes) -> None:
    static = _policy().static_compression
    assert static is not None
    assert static.coding(headers, method, minor) == coding


def test_compression_off_where_the_module_is_removed_or_disabled() -> None:
    server = load_server_config(None)
    sections = dict(WebConfigResolver(server, server.sites[0].name, "/").for_path("/").sections)
    sections["system.webServer/urlCompression"] = {"doStaticCompression": False, "doDynamicCompression": True}
    assert AppCachePolicy.from_sections(sections).static_compression is None
    modules = sections["system.webServer/modules"]
    sections["system.webServer/urlCompression"] = {"doStaticCompression": True, "doDynamicCompression": True}
    sections["system.webServer/modules"] = {**modules, "items": [
        m for m in modules["items"] if m["name"] != "StaticCompressionModule"]}
    assert AppCachePolicy.from_sections(sections).static_compression is None


@pytest.mark.parametrize(("target", "prefix", "under"), [
    (b"/docs/f.txt", "/docs", True),
    (b"/DOCS/f.txt", config_path("/docs"), True),
    (b"/docs./f.txt", "/docs", True),                           # trailing dot of a segment
    (b"/docs%20/f.txt", "/docs", True),                         # trailing space, percent-encoded
    (b"/docs/sub/f.txt?x=1", "/docs", True),
    (b"/docsother/f.txt", "/docs", False),                      # a segment boundary
    (b"/f.txt", "/docs", False),
    (b"/anything", "/", True),
])
def test_configuration_paths_match_as_iis_matches_them(target: bytes, prefix: str, under: bool) -> None:
    assert _under(target, config_path(prefix)) is under
