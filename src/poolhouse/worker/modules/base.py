"""The module interface: what a built-in or custom (Python) module implements.

A module is a class instantiated once per effective configuration of an application
(``ModuleConfig``: the merged sections at that URL scope) — never per request.  It
subscribes to a notification by defining the method of that name (``begin_request``,
``authenticate_request``, …, ``end_request``, ``send_response``); each takes the
request's ``HttpContext`` and returns ``None`` (continue) or ``FINISH``, or raises
``HttpError``.  ``enabled()`` returning False (e.g. the module's section says
``enabled="false"``) removes the module from the pipeline entirely, so a request pays
nothing for it.
"""

from __future__ import annotations

import re

import os
from typing import TYPE_CHECKING, Any, ClassVar

from ..pipeline import ALL_NOTIFICATIONS, METHODS

if TYPE_CHECKING:
    from ...config.model import WebConfig
    from ..pipeline import HttpContext

FIRST, HIGH, MEDIUM, LOW, LAST = 0, 1, 2, 3, 4
"""Registration priorities (IIS's): within one notification, modules run by priority,
then in the order of the ``<modules>`` list."""

WS = "system.webServer/"


class ModuleConfig:
    """What a module reads when the pipeline is built: the effective configuration at
    the scope, and where the application lives."""

    def __init__(self, web: "WebConfig", app: Any = None, state_dir: str = "") -> None:
        self.web = web
        self.app = app  # the WorkerApplication (key, base, physical(), site, pool)
        self.state_dir = state_dir or os.environ.get("POOLHOUSE_STATE_DIR", "")

    def section(self, path: str) -> dict[str, Any]:
        """A merged section as plain dicts, every default filled in; collections are
        under ``"items"``.  ``path`` may omit ``system.webServer/``."""
        sections = self.web.sections
        found = sections.get(path)
        if found is None:
            found = sections.get(WS + path)
        return found if found is not None else {}

    @property
    def physical_path(self) -> str:
        return str(self.app.app.physical_path) if self.app is not None else ""

    @property
    def site_id(self) -> int:
        return int(self.app.site.id) if self.app is not None else 0


class Module:
    """Base of every pipeline module.  Subclasses define the notification methods they
    subscribe to; the base's own (no-op) methods do not count as subscriptions."""

    priority: ClassVar[int] = MEDIUM
    send_errors_only: ClassVar[bool] = False  # SendResponse only for statuses >= 400
    traces: ClassVar[bool] = False  # FailedRequestsTracingModule: the pipeline records events
    logs: ClassVar[bool] = False  # HttpLoggingModule: has log_values() for the W3C log's custom fields
    # the handler kinds (apps.WSGI, apps.STATIC, …; "" = an error before any handler) the
    # module can act on; None = all.  The pipeline is built per configuration and kind,
    # so e.g. static compression costs a WSGI request nothing.
    handler_kinds: ClassVar[frozenset[str] | None] = None
    # SendResponse for statuses below 400 only when the request carries this header
    # (lower-case bytes), e.g. compression needs Accept-Encoding: a request without it
    # does not pay for the hook (nor, if it was the only one, for a Response object)
    send_gate: ClassVar[bytes | None] = None
    # the module's outcome depends on who asks (the client's address, credentials): a
    # scope where it is enabled is never answered from the listener's response cache
    # (HTTP.sys's kernel cache; IIS modules call IHttpResponse::DisableKernelCache).  A
    # module that decides per request calls ``ctx.disable_kernel_cache()`` instead.
    per_client: ClassVar[bool] = False

    @property
    def static_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers added to every response of the scope (ProtocolSupportModule's
        customHeaders): the pipeline appends them itself, no hook call, no Response."""
        return []

    def __init__(self, name: str, config: ModuleConfig) -> None:
        self.name = name
        self.config = config

    def enabled(self) -> bool:
        """False: this configuration needs nothing from the module (no hooks)."""
        return True

    @property
    def subscriptions(self) -> frozenset[str]:
        cls = type(self)
        return frozenset(n for n in ALL_NOTIFICATIONS
                         if getattr(cls, METHODS[n], None) is not getattr(Module, METHODS[n]))

    # The notifications, in IIS's order (SendResponse runs in reverse module order).
    def begin_request(self, ctx: "HttpContext") -> Any: return None
    def authenticate_request(self, ctx: "HttpContext") -> Any: return None
    def authorize_request(self, ctx: "HttpContext") -> Any: return None
    def resolve_request_cache(self, ctx: "HttpContext") -> Any: return None
    def map_request_handler(self, ctx: "HttpContext") -> Any: return None
    def acquire_request_state(self, ctx: "HttpContext") -> Any: return None
    def pre_execute_request_handler(self, ctx: "HttpContext") -> Any: return None
    def execute_request_handler(self, ctx: "HttpContext") -> Any: return None
    def release_request_state(self, ctx: "HttpContext") -> Any: return None
    def update_request_cache(self, ctx: "HttpContext") -> Any: return None
    def log_request(self, ctx: "HttpContext") -> Any: return None
    def end_request(self, ctx: "HttpContext") -> Any: return None
    def send_response(self, ctx: "HttpContext") -> Any: return None


class PassiveModule(Module):
    """A built-in name Poolhouse accepts in ``<modules>`` whose work is done elsewhere
    (the listener's cache and logs, the handler modules) or not implemented: no hooks."""

    def enabled(self) -> bool:
        return False


def flags(text: str) -> set[str]:
    """``"Read, Script"`` -> ``{"read", "script"}``."""
    return {p.strip().lower() for p in str(text).split(",") if p.strip()}


def items(section: dict[str, Any], *path: str) -> list[dict[str, Any]]:
    node: Any = section
    for p in path:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    return list(node.get("items", [])) if isinstance(node, dict) else []


def wildcard_regex(pattern: str) -> "re.Pattern[str]":
    """IIS's ``*`` wildcards (httpRedirect, traceFailedRequests paths) as a compiled,
    case-insensitive, whole-string pattern."""
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$", re.IGNORECASE)
