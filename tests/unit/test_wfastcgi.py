"""wfastcgi's app settings as Poolhouse reads them: WSGI_HANDLER resolution (wfastcgi's
algorithm), PYTHONPATH translation, the mapping test; and the entry-module loading that
keeps two applications' app.py apart."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from poolhouse.worker.apps import import_entry
from poolhouse.worker.handlers.wfastcgi import is_wfastcgi, python_path, resolve_handler


def test_resolve_handler_forms() -> None:
    mod = types.SimpleNamespace(app="the app", factory=lambda: "made", obj=types.SimpleNamespace(attr="deep"))
    imported: list[str] = []

    def importer(name: str) -> object:
        imported.append(name)
        if name == "pkg.module":
            return mod
        raise ImportError(name)

    assert resolve_handler("pkg.module.app", importer) == "the app"
    assert resolve_handler("pkg.module.factory()", importer) == "made"
    assert resolve_handler("pkg.module.obj.attr", importer) == "deep"
    assert imported[-2:] == ["pkg.module.obj", "pkg.module"]  # longest importable prefix first
    with pytest.raises(ImportError):
        resolve_handler("nothing.here", importer)
    with pytest.raises(ImportError):
        resolve_handler("", importer)


def test_python_path_translation() -> None:
    assert python_path(r"C:\inetpub\wwwroot\site;lib;..\shared; ", "/srv/app") == ["/srv/app/lib", "/srv/shared"]


def test_is_wfastcgi() -> None:
    assert is_wfastcgi("FastCgiModule", r"C:\Python311\python.exe|C:\Python311\Lib\site-packages\wfastcgi.py")
    assert not is_wfastcgi("FastCgiModule", r"C:\php\php-cgi.exe")
    assert not is_wfastcgi("WsgiModule", "wfastcgi:x")


def test_two_applications_with_app_py(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "app.py").write_text(f"NAME = {name!r}\nimport app as me\nSELF = me.NAME\n")
    saved = sys.modules.pop("app", None)
    try:
        a = import_entry("app", str(tmp_path / "one"), "1_one")
        b = import_entry("app", str(tmp_path / "two"), "1_two")
        assert (a.NAME, a.SELF, b.NAME, b.SELF) == ("one", "one", "two", "two")
        assert sys.modules["app"] is a  # the first one keeps the plain name
        assert import_entry("app", str(tmp_path / "two"), "1_two") is b  # loaded once
    finally:
        for key in [k for k in sys.modules if k.startswith("_poolhouse_app_1_")] + ["app"]:
            sys.modules.pop(key, None)
        if saved is not None:
            sys.modules["app"] = saved
