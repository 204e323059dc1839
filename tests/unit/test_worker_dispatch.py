"""Handler mapping and response-header preparation in the worker, fed data."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolhouse.config.model import Application, HandlerMapping, ServerConfig, Site, WebConfig
from poolhouse.worker import apps
from poolhouse.worker.apps import Mapping, prepare_mappings
from poolhouse.worker.stream import BadResponseHeader, build_header_block


def _web(*handlers: HandlerMapping) -> WebConfig:
    return WebConfig(handlers=list(handlers))


def test_mapping_path_forms() -> None:
    [star, ext, name] = prepare_mappings(_web(
        HandlerMapping("a", "*"), HandlerMapping("b", "*.PY"), HandlerMapping("c", "robots.txt")))
    assert star.matches("GET", "anything") and star.matches("GET", "")
    assert ext.matches("GET", "index.py") and not ext.matches("GET", "index.pyc")
    assert name.matches("GET", "ROBOTS.TXT") and not name.matches("GET", "robots.txt.bak")


def test_mapping_verbs() -> None:
    [m] = prepare_mappings(_web(HandlerMapping("a", "*", verb="GET, HEAD")))
    assert m.verb_allowed("GET") and m.verb_allowed("HEAD") and not m.verb_allowed("POST")
    [any_verb] = prepare_mappings(_web(HandlerMapping("a", "*", verb="*")))
    assert any_verb.verbs is None


@pytest.mark.parametrize("modules,kind", [
    ("WsgiModule", apps.WSGI), ("AsgiModule", apps.ASGI),
    ("StaticFileModule,DefaultDocumentModule,DirectoryListingModule", apps.STATIC), ("IsapiModule", ""),
])
def test_mapping_kind(modules: str, kind: str) -> None:
    [m] = prepare_mappings(_web(HandlerMapping("a", "*", modules=modules)))
    assert m.kind == kind


class _Resolver:
    def __init__(self, web: WebConfig) -> None:
        self.web = web

    def for_path(self, path: str) -> WebConfig:
        return self.web


def _app(tmp_path: Path, web: WebConfig, app_path: str = "/") -> apps.WorkerApplication:
    site = Site(1, "S", applications=[Application(app_path, "P", str(tmp_path))])
    wapp = apps.WorkerApplication.__new__(apps.WorkerApplication)
    wapp.site, wapp.app = site, site.applications[0]
    wapp.key = f"1{app_path}"
    wapp.base = "" if app_path == "/" else app_path
    wapp.resolver = _Resolver(web)  # type: ignore[assignment]
    wapp.vdirs = [("", str(tmp_path))]
    wapp.callables, wapp._mappings, wapp._selections = {}, {}, {}
    return wapp


def test_select_first_match_then_resource_type(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("def app(e, s):\n    return []\n")
    web = _web(
        HandlerMapping("py", "*.py", verb="GET", modules="WsgiModule", script_processor="handler:app",
                       resource_type="File"),
        HandlerMapping("StaticFile", "*", verb="GET,HEAD", modules="StaticFileModule"),
    )
    wapp = _app(tmp_path, web)
    sel = wapp.select("GET", "/handler.py")
    assert sel.kind == apps.WSGI and callable(sel.target)
    missing = wapp.select("GET", "/missing.py")
    assert (missing.kind, missing.status, missing.substatus) == ("", 404, 0)  # no search onwards
    assert wapp.select("GET", "/x.txt").kind == apps.STATIC
    assert (wapp.select("POST", "/x.txt").status) == 405
    assert wapp.select("DELETE", "/handler.py").status == 405


def test_select_no_handler_is_404_4(tmp_path: Path) -> None:
    sel = _app(tmp_path, _web(HandlerMapping("py", "*.py", modules="WsgiModule"))).select("GET", "/a.txt")
    assert (sel.status, sel.substatus) == (404, 4)


def test_select_unknown_module_is_500_21(tmp_path: Path) -> None:
    sel = _app(tmp_path, _web(HandlerMapping("asp", "*", modules="IsapiModule"))).select("GET", "/a.asp")
    assert (sel.status, sel.substatus) == (500, 21)


def test_select_load_failure_is_500(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise ImportError('nope')\n")
    wapp = _app(tmp_path, _web(HandlerMapping("app", "*", modules="WsgiModule", script_processor="broken:app")))
    sel = wapp.select("GET", "/")
    assert sel.status == 500 and "nope" in sel.detail


def test_relative_and_physical(tmp_path: Path) -> None:
    wapp = _app(tmp_path, _web(), "/shop")
    assert wapp.relative("/shop") == "/" and wapp.relative("/shop/a/b") == "/a/b"
    wapp.vdirs = [("/img", "/srv/images"), ("", str(tmp_path))]
    assert wapp.physical("/img/logo.png") == "/srv/images/logo.png"
    assert wapp.physical("/imgx") == str(tmp_path / "imgx")


def test_header_block() -> None:
    block, length, close = build_header_block(
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"Connection", b"close"),
         (b"Transfer-Encoding", b"chunked"), (b"X-Poolhouse-File", b"/etc/passwd"), (b"X-A", b"1")])
    assert block == b"Content-Type: text/plain\r\nX-A: 1\r\n" and length == 5 and close


def test_header_block_puts_one_server_header_first() -> None:
    # the listener writes its own Server header only when the block does not start with one
    block, _, _ = build_header_block([(b"Content-Type", b"text/plain"), (b"server", b"Upstream/1.0"),
                                      (b"X-A", b"1"), (b"SERVER", b"again")])
    assert block == b"Server: Upstream/1.0\r\nContent-Type: text/plain\r\nX-A: 1\r\n"


@pytest.mark.parametrize("headers", [
    [(b"Bad Name", b"x")], [(b"X", b"a\r\nInjected: 1")], [(b"X", b"a\nb")], [(b"Content-Length", b"-1")],
    [(b"Content-Length", b"abc")], [(b"", b"x")], [(b"X", b"\x00")],
])
def test_header_block_refuses(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadResponseHeader):
        build_header_block(headers)
