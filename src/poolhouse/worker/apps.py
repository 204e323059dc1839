"""The applications a worker hosts: URL -> physical path, URL -> handler mapping, and the
Python callables named by the handlers, loaded once.

A handler mapping names an application the IIS way:

    <add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="hello:app" />

``scriptProcessor`` is ``module:callable`` relative to the application's physical folder
(``module.callable`` and ``module:factory()`` are accepted too).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import ConfigError
from ..urlpath import wsgi_str
from ..config.model import Application, HandlerMapping, ServerConfig, Site, WebConfig
from .app_environment import claim_process_environment, with_environment
from .handlers.wfastcgi import is_wfastcgi

log = logging.getLogger("poolhouse.worker")

WSGI = "wsgi"
ASGI = "asgi"
STATIC = "static"
CGI = "cgi"
PROTOCOL = "protocol"  # ProtocolSupportModule as a handler: OPTIONS and TRACE
PROXY = "proxy"  # a URL Rewrite to an absolute http(s) URL: handlers/proxy.py
HTTP_PLATFORM = "httpplatform"  # httpPlatformHandler: handlers/http_platform.py


SELECTION_TTL = 1.0  # seconds a URL's handler choice is reused (as the resolver's stat)
SELECTION_CACHE = 4096


class Selection(NamedTuple):
    """The outcome of handler mapping for one (verb, URL): a handler, or an error."""

    kind: str  # WSGI | ASGI | STATIC | "" (error)
    mapping: "Mapping | None"
    web: WebConfig | None
    rel: str  # the URL path below the application
    status: int = 0  # when kind == "": the error status, sub-status and detail
    substatus: int = 0
    detail: str = ""
    target: Any = None  # the loaded callable for WSGI/ASGI
    expires: float = 0.0
    pipeline: Any = None  # the application's Pipeline at this URL; None: no module hooks


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
    denied: int = 0  # 403 sub-status when accessPolicy does not grant requireAccess
    module_names: tuple[str, ...] = ()

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
    if "cgimodule" in names:
        return CGI
    if "protocolsupportmodule" in names:
        return PROTOCOL
    if "httpplatformhandler" in names:
        return HTTP_PLATFORM
    return ""


# requireAccess -> (accessPolicy flags that grant it, 403 sub-status when none does)
_ACCESS = {
    "none": ((), 0), "read": (("read",), 2), "write": (("write",), 3),
    "script": (("script", "execute"), 1), "execute": (("execute",), 1),
}


def access_denied(require_access: str, access_policy: str) -> int:
    """0 when ``accessPolicy`` grants ``requireAccess``, else the 403 sub-status
    (403.1 execute/script, 403.2 read, 403.3 write)."""
    grants, substatus = _ACCESS.get(require_access.strip().lower(), ((), 0))
    if not grants:
        return 0
    policy = {p.strip().lower() for p in access_policy.split(",")}
    return 0 if policy.intersection(grants) else substatus


def prepare_mappings(web: WebConfig, pool: Any = None) -> list[Mapping]:
    """The effective handler mappings prepared for matching; entries whose preCondition
    does not hold in this pool are left out (as IIS skips them)."""
    from .modules import precondition_holds

    out = []
    for h in web.handlers:
        if h.pre_condition and not precondition_holds(h.pre_condition, pool, None):
            continue
        path = h.path.strip()
        any_path = path in ("*", "*.*", "")
        suffix = path[1:].lower() if path.startswith("*.") and not any_path else ""
        verbs = None if h.verb.strip() in ("*", "") else frozenset(
            v.strip().upper() for v in h.verb.split(",") if v.strip()
        )
        names = tuple(m.strip() for m in h.modules.split(",") if m.strip())
        kind = _kind(h.modules)
        if not kind and is_wfastcgi(h.modules, h.script_processor):
            kind = WSGI  # wfastcgi's WSGI_HANDLER app setting names the application
        out.append(Mapping(h, kind, any_path, suffix, "" if suffix or any_path else path.lower(),
                           verbs, access_denied(h.require_access, web.access_policy), names))
    return out


def import_entry(module_name: str, folder: str, unique: str = "") -> Any:
    """Import an application's entry module.  A top-level module that is a file of the
    application's folder (``app.py``) is loaded under a name unique to the application
    (``unique``), so two applications of one pool with an ``app.py`` each get their
    own; while it loads — and afterwards if no other application took it — it is also
    ``sys.modules[module_name]``, so its own ``from app import db`` finds it.  Packages
    and modules outside the folder are imported normally (one per pool)."""
    if unique and folder and "." not in module_name:
        path = os.path.join(folder, module_name + ".py")
        if os.path.isfile(path):
            mangled = f"_poolhouse_app_{unique}_{module_name}"
            module = sys.modules.get(mangled)
            if module is not None:
                return module
            spec = importlib.util.spec_from_file_location(mangled, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            previous = sys.modules.get(module_name)
            sys.modules[mangled] = sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mangled]
                if previous is not None:
                    sys.modules[module_name] = previous
                else:
                    sys.modules.pop(module_name, None)
                raise
            if previous is not None:
                sys.modules[module_name] = previous
            return module
    return importlib.import_module(module_name)


def load_callable(spec: str, folder: str, unique: str = "") -> Any:
    """``module:attr`` (or ``module.attr``, ``module:factory()``) imported with the
    application folder first on sys.path (see ``import_entry`` for ``unique``)."""
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
        module = import_entry(module_name, folder, unique)
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

    pool: Any = None  # the application pool's configuration (preConditions)

    def __init__(self, server: ServerConfig, site: Site, app: Application) -> None:
        from ..config import WebConfigResolver

        self.site = site
        self.app = app
        self.key = f"{site.id}{app.path}"
        self.base = "" if app.path == "/" else app.path.rstrip("/")
        self.resolver = WebConfigResolver(server, site.name, app.path)
        self.pool = server.pools.get(app.pool)
        # virtual directories, longest first: (url prefix relative to the app, folder)
        vdirs = [(v.path.rstrip("/"), v.physical_path) for v in app.virtual_directories]
        if not any(p == "" for p, _ in vdirs):
            vdirs.append(("", app.physical_path))
        self.vdirs = sorted(vdirs, key=lambda v: len(v[0]), reverse=True)
        self.callables: dict[str, Any] = {}
        self._mappings: dict[int, tuple[WebConfig, list[Mapping]]] = {}
        self._selections: dict[tuple[str, str], Selection] = {}
        self.environ_base: dict[str, Any] = {
            "SCRIPT_NAME": self.base if self.base.isascii() else wsgi_str(self.base),
            "APPL_PHYSICAL_PATH": app.physical_path,
            "APPL_MD_PATH": f"/LM/W3SVC/{site.id}/ROOT{self.base}",
            "INSTANCE_ID": str(site.id),
        }

    def relative(self, path: str) -> str:
        """The URL path below the application (``/hello/x`` in app ``/hello`` -> ``/x``)."""
        if not self.base:
            return path
        rest = path[len(self.base):]
        return rest or "/"

    def physical(self, rel: str) -> str:
        return self.mapped(rel)[1]

    def mapped(self, rel: str) -> tuple[str, str]:
        """(the physical folder of the virtual directory ``rel`` is in, its physical path)."""
        low = rel.lower()
        for prefix, folder in self.vdirs:
            if not prefix or low == prefix.lower() or low.startswith(prefix.lower() + "/"):
                tail = rel[len(prefix):].lstrip("/")
                return folder, os.path.join(folder, tail) if tail else folder
        return self.app.physical_path, self.app.physical_path

    def mappings(self, web: WebConfig) -> list[Mapping]:
        cached = self._mappings.get(id(web))
        if cached is not None and cached[0] is web:
            return cached[1]
        prepared = prepare_mappings(web, self.pool)
        if len(self._mappings) > 256:
            self._mappings.clear()
        self._mappings[id(web)] = (web, prepared)
        return prepared

    def pipeline_for(self, web: WebConfig, kind: str) -> Any:
        """The pipeline of this configuration (built once per WebConfig object, like the
        mappings); None when its modules subscribe to nothing.  Raises AppLoadError."""
        from .modules import ModuleConfig, build_modules
        from .pipeline import build_pipeline

        cache: dict[tuple[int, str], tuple[WebConfig, Any]] = self.__dict__.setdefault("_pipelines", {})
        key = (id(web), kind)
        cached = cache.get(key)
        if cached is not None and cached[0] is web:
            return cached[1]
        pipeline = build_pipeline(build_modules(ModuleConfig(web, self), kind))
        if len(cache) > 256:
            cache.clear()
        cache[key] = (web, pipeline)
        return pipeline

    @property
    def unique(self) -> str:
        """A module-name-safe id of the application (entry modules are loaded under it)."""
        return "".join(c if c.isalnum() else "_" for c in self.key)

    def callable_for(self, mapping: Mapping, web: WebConfig | None = None) -> Any:
        variables = mapping.entry.environment_variables
        if not variables:
            return self._callable(mapping, web)
        # the mapping's <environmentVariables>: in os.environ before the import, and
        # in each request's environ/scope (app_environment.py)
        key = f"env:{mapping.kind}:{mapping.entry.script_processor}:{sorted(variables.items())!r}"
        obj = self.callables.get(key)
        if obj is None:
            claim_process_environment(variables, f"{self.site.name}{self.app.path} (handler {mapping.entry.name})")
            obj = self.callables[key] = with_environment(self._callable(mapping, web), variables,
                                                         mapping.kind == ASGI)
        return obj

    def _callable(self, mapping: Mapping, web: WebConfig | None) -> Any:
        spec = mapping.entry.script_processor
        if web is not None and is_wfastcgi(mapping.entry.modules, spec):
            return self._wfastcgi_callable(web)
        obj = self.callables.get(spec)
        if obj is None:
            obj = self.callables[spec] = load_callable(spec, self.app.physical_path, self.unique)
        return obj

    def _wfastcgi_callable(self, web: WebConfig) -> Any:
        from .handlers import wfastcgi

        name = web.app_settings.get("WSGI_HANDLER", "").strip()
        key = "wfastcgi:" + name
        obj = self.callables.get(key)
        if obj is not None:
            return obj
        folder = self.app.physical_path
        if not name:
            raise AppLoadError("FastCgiModule with wfastcgi: the WSGI_HANDLER app setting is missing")
        top = name.split(".", 1)[0]
        wfastcgi.prepare(web.app_settings, folder, f"{self.site.name}{self.app.path}", self.environ_base,
                         {top, f"_poolhouse_app_{self.unique}_{top}"})
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            obj = wfastcgi.resolve_handler(name, lambda m: import_entry(m, folder, self.unique))
        except Exception as exc:
            raise AppLoadError(f"cannot load WSGI_HANDLER {name!r} from {folder}: {type(exc).__name__}: {exc}") from exc
        if not callable(obj):
            raise AppLoadError(f"WSGI_HANDLER {name!r} is not callable")
        self.callables[key] = obj
        return obj

    def select(self, method: str, path: str) -> Selection:
        """Handler mapping for ``method`` on the (normalised) ``path``, cached for
        SELECTION_TTL: IIS's order — the first mapping matching path and verb is the
        handler; its resourceType is then checked (a mismatch is a 404, not a search
        onwards); a path matched only with other verbs is a 405; nothing is a 404.4."""
        key = (method, path)
        now = time.monotonic()
        sel = self._selections.get(key)
        if sel is not None and sel.expires > now:
            return sel
        sel = self._select(method, path)._replace(expires=now + SELECTION_TTL)
        if len(self._selections) >= SELECTION_CACHE:
            self._selections.clear()
        self._selections[key] = sel
        return sel

    def _select(self, method: str, path: str) -> Selection:
        sel = self._map(method, path)
        if sel.web is None:
            return sel
        try:
            pipeline = self.pipeline_for(sel.web, sel.kind)
        except AppLoadError as exc:
            log.error("%s", exc)
            return Selection("", sel.mapping, sel.web, sel.rel, 500, 0, str(exc))
        return sel._replace(pipeline=pipeline) if pipeline is not None else sel

    def _map(self, method: str, path: str) -> Selection:
        rel = self.relative(path)
        try:
            web = self.resolver.for_path(path)
        except ConfigError as exc:
            log.error("%s", exc)
            return Selection("", None, None, rel, 500, 19, f"Configuration error: {exc}")
        last = rel.rsplit("/", 1)[-1]
        allowed_elsewhere = False
        for mapping in self.mappings(web):
            if not mapping.matches(method, last):
                continue
            if not mapping.verb_allowed(method):
                allowed_elsewhere = True
                continue
            kind = mapping.kind
            if web.modules:
                missing = [n for n in mapping.module_names if n not in web.modules]
                if missing:
                    return Selection("", mapping, web, rel, 500, 21,
                                     f"Handler {mapping.entry.name!r} has a bad module {missing[0]!r} in its "
                                     "module list: it is not enabled in <modules>.")
            if mapping.denied:
                return Selection("", mapping, web, rel, 403, mapping.denied,
                                 f"Handler {mapping.entry.name!r} requires {mapping.entry.require_access} "
                                 f"access; accessPolicy is {web.access_policy!r}.")
            rtype = mapping.entry.resource_type
            if kind != STATIC and rtype in ("File", "Directory", "Either"):
                physical = self.physical(rel)
                exists = (os.path.isfile(physical) if rtype == "File" else
                          os.path.isdir(physical) if rtype == "Directory" else os.path.exists(physical))
                if not exists:
                    return Selection("", mapping, web, rel, 404, 0)
            if kind in (WSGI, ASGI):
                try:
                    target = self.callable_for(mapping, web)
                except AppLoadError as exc:
                    log.error("%s", exc)
                    return Selection("", mapping, web, rel, 500, 0, str(exc))
                return Selection(kind, mapping, web, rel, target=target)
            if kind:
                return Selection(kind, mapping, web, rel)
            return Selection("", mapping, web, rel, 500, 21,
                             f"Handler {mapping.entry.name!r} uses modules {mapping.entry.modules!r}, "
                             "which this server does not provide.")
        if allowed_elsewhere:
            return Selection("", None, web, rel, 405, 0)
        return Selection("", None, web, rel, 404, 4)

    def preload(self) -> list[tuple[str, Any]]:
        """Load the WSGI/ASGI callables mapped at the application's root that a request
        can reach — those before the first catch-all (``path="*"`` for every verb):
        inherited mappings a child application shadows are never loaded.  Returns the
        ASGI ones (their lifespan must be started).  Raises AppLoadError."""
        web = self.resolver.for_path(self.app.path)
        asgi: list[tuple[str, Any]] = []
        for m in self.mappings(web):
            if m.kind in (WSGI, ASGI):
                obj = self.callable_for(m, web)
                if m.kind == ASGI:
                    asgi.append((m.entry.script_processor, obj))
            if m.any_path and m.verbs is None:
                break
        return asgi
