"""Symbolic links may not lead out of a virtual directory's folder (static content) or
out of a configuration file's folder (configSource, appSettings/@file, web.config)
unless the site allows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poolhouse.config import ConfigError
from poolhouse.config.document import read_document
from poolhouse.worker.handlers.static import StaticFileHandler, within_root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "page.html").write_text("inside")
    (root / "index.html").write_text("home")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "link-in.html").symlink_to(root / "sub" / "page.html")
    (root / "dir-in").symlink_to("sub")
    (root / "link-out.txt").symlink_to(outside / "secret.txt")
    (root / "dir-out").symlink_to(outside)
    (root / "sub" / "up").symlink_to("../../outside")
    (root / "dangling").symlink_to(tmp_path / "nothing")
    return root


def test_within_root(tree: Path, tmp_path: Path) -> None:
    root = str(tree)
    for rel in ("index.html", "sub/page.html", "link-in.html", "dir-in/page.html", "missing.html", "sub", ""):
        assert within_root(os.path.join(root, rel) if rel else root, root), rel
    for rel in ("link-out.txt", "dir-out/secret.txt", "dir-out", "sub/up/secret.txt", "dangling"):
        assert not within_root(os.path.join(root, rel), root), rel
    # a root that is itself reached through a link: its real path is the reference
    (tmp_path / "alias").symlink_to(tree)
    alias = str(tmp_path / "alias")
    assert within_root(alias + "/sub/page.html", alias) and within_root(alias + "/link-in.html", alias)
    assert not within_root(alias + "/link-out.txt", alias)
    assert within_root(root + "/index.html", root + "/")  # a trailing slash on the root


def test_static_handler_refuses_links_out_of_the_root(tree: Path) -> None:
    handler = StaticFileHandler({".html": "text/html", ".txt": "text/plain"}, ["index.html"], True)
    root = str(tree)

    def get(rel: str, with_root: bool = True) -> tuple[int, bytes]:
        resp = handler.serve("GET", "/" + rel, os.path.join(root, rel), {}, "", root if with_root else None)
        return resp.status, resp.body if isinstance(resp.body, bytes) else b"<file>"

    assert get("link-in.html") == (200, b"inside")
    assert get("link-out.txt")[0] == 404 and get("dir-out/secret.txt")[0] == 404
    assert get("link-out.txt", with_root=False) == (200, b"secret")  # the site allows links out
    # a listing does not show links out of the root (their size and date are the target's)
    browse = StaticFileHandler({".html": "text/html"}, [], False, directory_browse_enabled=True)
    listing = browse.serve("GET", "/", root, {}, "", root).body
    assert isinstance(listing, bytes) and b"link-in.html" in listing and b"dir-in" in listing
    assert b"link-out" not in listing and b"dir-out" not in listing
    everything = browse.serve("GET", "/", root, {}, "", None).body
    assert isinstance(everything, bytes) and b"link-out" in everything
    # a default document that leads out of the root is not served
    (tree / "docs").mkdir()
    (tree / "docs" / "index.html").symlink_to(tree.parent / "outside" / "secret.txt")
    resp = handler.serve("GET", "/docs/", str(tree / "docs"), {}, "", root)
    assert resp.status == 403 and resp.substatus == 14


WEB_CONFIG = ('<configuration><system.webServer><defaultDocument configSource="dd.config" />'
              '</system.webServer></configuration>')
DD = '<defaultDocument enabled="true"><files><add value="x.html" /></files></defaultDocument>'


def test_config_source_through_a_link(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "dd.config").write_text(DD)
    (outside / "secret").write_text("root:$6$hash\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "dd.config").write_text(DD)
    path = str(folder / "web.config")
    (folder / "dd.config").symlink_to("sub/dd.config")  # stays inside: fine
    assert read_document(WEB_CONFIG.encode(), path).contributions
    (folder / "dd.config").unlink()
    for target in (outside / "dd.config", outside / "secret"):
        (folder / "dd.config").symlink_to(target)
        with pytest.raises(ConfigError) as exc:
            read_document(WEB_CONFIG.encode(), path)
        # the error names the referencing file and line, never the target
        assert exc.value.file == path and exc.value.line == 1 and "symbolic link" in str(exc.value)
        assert "root:" not in str(exc.value)
        (folder / "dd.config").unlink()
    (folder / "dd.config").symlink_to(outside / "dd.config")
    assert read_document(WEB_CONFIG.encode(), path, contained=False).contributions  # allowed


def test_a_web_config_that_cannot_be_followed_is_an_error_not_an_absence(tmp_path: Path) -> None:
    """A folder's web.config that is a dangling link (or a link into a folder the worker's
    identity cannot search: the same failed stat) must not be taken for no web.config, or
    the folder's settings (its authorization) would silently drop."""
    from poolhouse.config import WebConfigResolver, load_server_config

    www = tmp_path / "www"
    (www / "admin").mkdir(parents=True)
    (www / "admin" / "web.config").symlink_to(tmp_path / "gone" / "web.config")
    apphost = tmp_path / "applicationHost.config"
    apphost.write_text(
        '<configuration><system.applicationHost><applicationPools><add name="P" /></applicationPools>'
        '<sites><site name="S" id="1"><application path="/" applicationPool="P">'
        f'<virtualDirectory path="/" physicalPath="{www}" /></application>'
        '<bindings><binding protocol="http" bindingInformation="*:8080:" /></bindings></site></sites>'
        '</system.applicationHost></configuration>')
    resolver = WebConfigResolver(load_server_config(str(apphost)), "S", "/")
    resolver.for_path("/")  # the root has no web.config: fine
    with pytest.raises(ConfigError):
        resolver.for_path("/admin/x")
