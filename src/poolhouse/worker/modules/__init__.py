"""The standard modules (IIS's names) and the builder that turns an effective
``<modules>`` list into module instances for one configuration.

A ``<modules>`` entry without ``type`` names a built-in module, which must also be
registered in ``<globalModules>`` (as IIS's native modules are); an entry with
``type="package.module:Class"`` is a custom Python module (see docs/pipeline.md).
Handler modules (StaticFileModule, WsgiModule, …) run only as handlers, in
ExecuteRequestHandler, when a handler mapping names them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from ...config.preconditions import holds
from ..apps import AppLoadError
from .base import Module, ModuleConfig, PassiveModule

log = logging.getLogger("poolhouse.worker")

BUILTIN: dict[str, str] = {
    "RequestFilteringModule": "request_filtering:RequestFilteringModule",
    "IpRestrictionModule": "ip_restriction:IpRestrictionModule",
    "HttpRedirectionModule": "redirection:HttpRedirectionModule",
    "AnonymousAuthenticationModule": "authentication:AnonymousAuthenticationModule",
    "BasicAuthenticationModule": "authentication:BasicAuthenticationModule",
    "UrlAuthorizationModule": "authorization:UrlAuthorizationModule",
    "ProtocolSupportModule": "protocol_support:ProtocolSupportModule",
    "CustomErrorModule": "custom_errors:CustomErrorModule",
    "StaticCompressionModule": "compression:StaticCompressionModule",
    "DynamicCompressionModule": "compression:DynamicCompressionModule",
    "HttpCacheModule": "client_cache:HttpCacheModule",
    "HttpLoggingModule": "logging_module:HttpLoggingModule",
    "FailedRequestsTracingModule": "tracing_module:FailedRequestsTracingModule",
    "RewriteModule": "rewrite:RewriteModule",
}
"""Built-in modules with pipeline hooks: name -> ``file:Class`` in this package."""

HANDLER_MODULES = frozenset((
    "StaticFileModule", "DefaultDocumentModule", "DirectoryListingModule", "WsgiModule",
    "AsgiModule", "CgiModule",
))
"""Modules that act only as handlers (ExecuteRequestHandler, through a mapping)."""

PASSIVE = frozenset((
    "UriCacheModule", "FileCacheModule", "TokenCacheModule", "DynamicIpRestrictionModule",
    "FastCgiModule", "ApplicationInitializationModule", "WebSocketModule",
    "httpPlatformHandler", "WindowsAuthenticationModule", "DigestAuthenticationModule",
    "CertificateMappingAuthenticationModule", "IISCertificateMappingAuthenticationModule",
    "ServerSideIncludeModule", "CustomLoggingModule", "TracingModule", "RequestMonitorModule",
    "IsapiModule", "IsapiFilterModule", "WebDAVModule", "ConfigurationValidationModule",
))
"""Names accepted in ``<modules>`` that add no hooks: their work is done elsewhere or
is not implemented (see docs/pipeline.md)."""

_classes: dict[str, type[Module]] = {}


def builtin_class(name: str) -> type[Module] | None:
    spec = BUILTIN.get(name)
    if spec is None:
        return PassiveModule if name in PASSIVE or name in HANDLER_MODULES else None
    cls = _classes.get(name)
    if cls is None:
        file, _, attr = spec.partition(":")
        cls = _classes[name] = getattr(importlib.import_module(f"{__name__}.{file}"), attr)
    return cls


def load_custom(type_spec: str, folder: str) -> type[Module]:
    """``package.module:Class`` (or ``package.module.Class``), imported with the
    application's folder first on sys.path; must subclass ``Module``."""
    spec = type_spec.split(",")[0].strip()  # tolerate ", Assembly" suffixes of .NET types
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
    else:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise AppLoadError(f"module type {type_spec!r} is not 'package.module:Class'")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise AppLoadError(f"cannot load module type {type_spec!r}: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Module)):
        raise AppLoadError(f"module type {type_spec!r} is not a poolhouse.worker.pipeline.Module")
    return obj


def precondition_holds(text: str, pool: Any, managed: bool | None) -> bool:
    """IIS preCondition tokens (comma list: all must hold), as the configuration
    evaluates them for the pool — except ``managedHandler``, which for a module means
    "only when the request's handler is a Python application" (WsgiModule/AsgiModule),
    Poolhouse's managed code.  ``managed`` is None for handler mappings."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    rest = [t for t in tokens if t.lower() != "managedhandler"]
    if len(rest) != len(tokens) and managed is not True:
        return False
    return holds(",".join(rest), pool)


def build_modules(config: ModuleConfig, kind: str) -> list[Module]:
    """Instances of the enabled modules at this scope for requests whose handler is of
    ``kind``, in ``<modules>`` order.  Raises AppLoadError when an entry cannot be
    honoured (500.21 / 500.0)."""
    managed = kind in ("wsgi", "asgi")
    web = config.web
    sections = web.sections
    section = sections.get("system.webServer/modules")
    if section is None:  # a WebConfig built by hand (tests): names only
        entries = [{"name": n, "type": "", "preCondition": ""} for n in web.modules]
    else:
        entries = list(section.get("items", []))
    global_section = sections.get("system.webServer/globalModules")
    registered = ({g["name"] for g in global_section.get("items", [])}
                  if global_section is not None else None)
    pool = getattr(getattr(config.app, "resolver", None), "server", None)
    pool = pool.pools.get(config.app.app.pool) if pool is not None else None
    out: list[Module] = []
    folder = config.physical_path
    for entry in entries:
        name = entry["name"]
        if not precondition_holds(entry.get("preCondition", ""), pool, managed):
            continue
        type_spec = entry.get("type", "")
        if type_spec:
            cls = load_custom(type_spec, folder)
        else:
            if registered is not None and name not in registered:
                raise AppLoadError(f"module {name!r} is not registered in globalModules")
            found = builtin_class(name)
            if found is None:
                raise AppLoadError(f"module {name!r} is not a module this server provides")
            cls = found
        if cls.handler_kinds is not None and kind not in cls.handler_kinds:
            continue
        module = cls(name, config)
        if module.enabled():
            out.append(module)
    return out


__all__ = ["BUILTIN", "HANDLER_MODULES", "PASSIVE", "Module", "ModuleConfig", "build_modules",
           "builtin_class", "load_custom", "precondition_holds"]
