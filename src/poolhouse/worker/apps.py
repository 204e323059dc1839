"""The applications a worker hosts: URL -> physical path, URL -> handler mapping, and the
Python callables named by the handlers, loaded once.

A handler mapping names an application the IIS way:

    <add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="hello:app" />

``scriptProcessor`` is ``module:callable`` relative to the application's physical folder
(``module.callable`` and ``module:factory()`` are accepted too).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from ..config.model import Application, HandlerMapping, ServerConfig, Site, WebConfig

log = logging.getLogger("poolhouse.worker")

WSGI = "wsgi"
ASGI = "asgi"
STATIC = "static"


class AppLoadError(Exception):
    """An application named by the configuration could not be loaded."""


@dataclass(slots=True)
class Mapping:
    """A handler mapping prepared for matching: done once per effective configuration."""

    entry: HandlerMapping
    kind: str  # WSGI | ASGI | STATIC | "" (not served by this worker)
    any_path: bool
    suffix: str  # ".ext" for "*.ext"
    name: str  # an exact file name
    verbs: frozenset[str] | None  # None: any verb

    def matches(self, method: str, last_segment: str) -> bool:
        if not self.any_path:
            low = last_segment.lower()
            if self.suffix:
                if not low.endswith(self.suffix):
                    return False
            elif low != self.name:
                return False
        return True

    def verb_allowed(self, method: str) -> bool:
        return self.verbs is None or method in self.verbs


def _kind(modules: str) -> str:
    names = {m.strip().lower() for m in modules.split(",")}
    if "wsgimodule" in names:
        return WSGI
    if "asgimodule" in names:
        return ASGI
    if "staticfilemodule" in names or "defaultdocumentmodule" in names:
        return STATIC
    return ""


def prepare_mappings(web: WebConfig) -> list[Mapping]:
    out = []
    for h in web.handlers:
        path = h.path.strip()
        any_path = path in ("*", "*.*", "")
        suffix = path[1:].lower() if path.startswith("*.") and not any_path else ""
        verbs = None if h.verb.strip() in ("*", "") else frozenset(
            v.strip().upper() for v in h.verb.split(",") if v.strip()
        )
        out.append(Mapping(h, _kind(h.modules), any_path, suffix, "" if suffix or any_path else path.lower(), verbs))
    return out


def load_callable(spec: str, folder: str) -> Any:
    """``module:attr`` (or ``module.attr``, ``module:factory()``) imported with the
    application folder first on sys.path."""
    spec = spec.strip()
    call = spec.endswith("()")
    if call:
        spec = spec[:-2]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise AppLoadError(f"scriptProcessor {spec!r} is not 'module:callable'")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        if call:
            obj = obj()
    except Exception as exc:
        raise AppLoadError(f"cannot load {spec!r} from {folder}: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not callable")
    return obj


class WorkerApplication:
    """One application of the worker's pool."""

    def __init__(self, server: ServerConfig, site: Site, app: Application) -> None:
        from ..config import WebConfigResolver

        self.site = site
        self.app = app
        self.key = f"{site.id}{app.path}"
        self.base = "" if app.path == "/" else app.path.rstrip("/")
        self.resolver = WebConfigResolver(server, site.name, app.path)
        # virtual directories, longest first: (url prefix relative to the app, folder)
        vdirs = [(v.path.rstrip("/"), v.physical_path) for v in app.virtual_directories]
        if not any(p == "" for p, _ in vdirs):
            vdirs.append(("", app.physical_path))
        self.vdirs = sorted(vdirs, key=lambda v: len(v[0]), reverse=True)
        self.callables: dict[str, Any] = {}
        self._mappings: dict[int, tuple[WebConfig, list[Mapping]]] = {}

    def relative(self, path: str) -> str:
        """The URL path below the application (``/hello/x`` in app ``/hello`` -> ``/x``)."""
        if not self.base:
            return path
        rest = path[len(self.base):]
        return rest or "/"

    def physical(self, rel: str) -> str:
        low = rel.lower()
        for prefix, folder in self.vdirs:
            if not prefix or low == prefix.lower() or low.startswith(prefix.lower() + "/"):
                tail = rel[len(prefix):].lstrip("/")
                return os.path.join(folder, tail) if tail else folder
        return self.app.physical_path

    def mappings(self, web: WebConfig) -> list[Mapping]:
        cached = self._mappings.get(id(web))
        if cached is not None and cached[0] is web:
            return cached[1]
        prepared = prepare_mappings(web)
        if len(self._mappings) > 256:
            self._mappings.clear()
        self._mappings[id(web)] = (web, prepared)
        return prepared

    def callable_for(self, mapping: Mapping) -> Any:
        spec = mapping.entry.script_processor
        obj = self.callables.get(spec)
        if obj is None:
            obj = self.callables[spec] = load_callable(spec, self.app.physical_path)
        return obj

    def preload(self) -> list[tuple[str, Any]]:
        """Load every WSGI/ASGI callable mapped at the application's root; returns the
        ASGI ones (their lifespan must be started).  Raises AppLoadError."""
        web = self.resolver.for_path(self.app.path)
        asgi: list[tuple[str, Any]] = []
        for m in self.mappings(web):
            if m.kind in (WSGI, ASGI):
                obj = self.callable_for(m)
                if m.kind == ASGI:
                    asgi.append((m.entry.script_processor, obj))
        return asgi
