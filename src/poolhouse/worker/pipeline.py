"""The integrated pipeline: IIS's ordered request notifications, the modules subscribed
to them, and the one handler chosen by the handler mappings.

A :class:`Pipeline` is built once per effective configuration (``WebConfig``) of an
application — from ``globalModules``, ``modules`` (with ``preCondition``) and each
module's own section — as one tuple of bound hooks per notification; notifications no
module subscribes to are dropped at build time, and a configuration whose modules
subscribe to nothing gets no pipeline at all (the dispatcher then goes straight to the
handler).  A request therefore pays only for the hooks of the modules that are enabled,
and configured to do something, at its URL.

Each hook takes the request's :class:`HttpContext` and answers ``None`` (continue),
:data:`FINISH` (the response is complete: skip the remaining notifications and the
handler, but still run LogRequest and EndRequest), or raises :class:`HttpError` (fail
with a status: the same, with an error response).  ``ctx.fail(status, substatus)``
sets an error response and returns FINISH.  A hook before the handler that must block
(a PAM check, a lookup) returns ``ctx.run_in_thread(fn, *args)``: the request is
suspended, and the hook is called again with ``ctx.waited`` holding the finished future.

SendResponse hooks run in *reverse* module order, each time a response head is about to
leave (whole responses: once, with the whole body; streamed responses: with the first
piece, and ``response.body_filter`` then sees every later piece).  ReleaseRequestState,
UpdateRequestCache, LogRequest and EndRequest run once the response has been handed to
the listener (its last frame, or a reset) — they observe, they cannot change it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .handlers.static import FileBody

if TYPE_CHECKING:
    from .apps import Selection, WorkerApplication
    from .modules.base import Module
    from .stream import Stream
    from .tracing import Trace

log = logging.getLogger("poolhouse.worker")

BEGIN_REQUEST: Final = "BeginRequest"
AUTHENTICATE_REQUEST: Final = "AuthenticateRequest"
AUTHORIZE_REQUEST: Final = "AuthorizeRequest"
RESOLVE_REQUEST_CACHE: Final = "ResolveRequestCache"
MAP_REQUEST_HANDLER: Final = "MapRequestHandler"
ACQUIRE_REQUEST_STATE: Final = "AcquireRequestState"
PRE_EXECUTE_REQUEST_HANDLER: Final = "PreExecuteRequestHandler"
EXECUTE_REQUEST_HANDLER: Final = "ExecuteRequestHandler"
RELEASE_REQUEST_STATE: Final = "ReleaseRequestState"
UPDATE_REQUEST_CACHE: Final = "UpdateRequestCache"
LOG_REQUEST: Final = "LogRequest"
END_REQUEST: Final = "EndRequest"
SEND_RESPONSE: Final = "SendResponse"

NOTIFICATIONS: Final = (
    BEGIN_REQUEST, AUTHENTICATE_REQUEST, AUTHORIZE_REQUEST, RESOLVE_REQUEST_CACHE,
    MAP_REQUEST_HANDLER, ACQUIRE_REQUEST_STATE, PRE_EXECUTE_REQUEST_HANDLER,
    EXECUTE_REQUEST_HANDLER, RELEASE_REQUEST_STATE, UPDATE_REQUEST_CACHE, LOG_REQUEST,
    END_REQUEST,
)
"""The deterministic request notifications, in IIS's order."""

ALL_NOTIFICATIONS: Final = NOTIFICATIONS + (SEND_RESPONSE,)


def method_name(notification: str) -> str:
    """``BeginRequest`` -> ``begin_request``: the module method for a notification."""
    out = []
    for i, ch in enumerate(notification):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


METHODS: Final = {n: method_name(n) for n in ALL_NOTIFICATIONS}

_BEFORE_MAP = NOTIFICATIONS[:4]
_AFTER_MAP = NOTIFICATIONS[5:8]
_POST = NOTIFICATIONS[8:]
_POST_FINISHED = (LOG_REQUEST, END_REQUEST)
_ORDER = {n: i for i, n in enumerate(NOTIFICATIONS)}


class _Finish:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FINISH"


FINISH: Final = _Finish()
"""Returned by a hook: the response is complete; skip to LogRequest and EndRequest."""


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()
"""Returned (through ``ctx.wait_for`` / ``ctx.run_in_thread``) by a hook before the
handler whose work cannot be done on the event loop: the request waits, the worker goes
on serving others, and the same hook is called again once the work is done."""

Hook = Callable[["HttpContext"], Any]


class HttpError(Exception):
    """Raised by a hook or a handler: end the request with this status and sub-status.
    ``detail`` is shown on detailed error pages (local requests only)."""

    def __init__(self, status: int, substatus: int = 0, detail: str = "") -> None:
        super().__init__(f"{status}.{substatus} {detail}".strip())
        self.status = status
        self.substatus = substatus
        self.detail = detail


Headers = list[tuple[bytes, bytes]]


class Response:
    """The response as SendResponse hooks see it; they may change any field.

    ``body`` is the whole body when ``end`` is true, else the first piece of a streamed
    body (then ``body_filter``, if a hook sets one, is applied to every later piece and
    called once more with ``b"", True`` at the end).  ``body`` may be a ``FileBody`` (a
    static file sent in slices).  ``generated`` marks a server-generated error (no body
    from a handler): CustomErrorModule renders it.  ``log_fields`` holds a module's
    values for the access log (``add_log_field``; see docs/pipeline.md, "Log fields").
    """

    # the five fields every response sets are slots; the rarely-set ones are class
    # defaults, stored in an instance dict only when a module sets them
    __slots__ = ("status", "substatus", "headers", "body", "end", "generated", "body_filter", "__dict__")
    detail = ""
    skip_custom_errors = False
    static_added = False  # the scope's static headers (customHeaders) are in ``headers``
    log_fields: dict[str, str] | None = None

    def __init__(self, status: int, substatus: int, headers: Headers, body: bytes | FileBody,
                 end: bool, generated: bool = False, detail: str = "") -> None:
        self.status = status
        self.substatus = substatus
        self.headers = headers
        self.body = body
        self.end = end
        self.generated = generated
        self.body_filter: Callable[[bytes, bool], bytes] | None = None
        if generated:
            self.detail = detail

    def header(self, name: bytes) -> bytes | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    def remove_header(self, name: bytes) -> None:
        low = name.lower()
        self.headers = [h for h in self.headers if h[0].lower() != low]

    def set_header(self, name: bytes, value: bytes) -> None:
        self.remove_header(name)
        self.headers.append((name, value))

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def add_log_field(self, name: str, value: str) -> None:
        """A value for the W3C log: logged by a ``logFile/customFields`` entry with
        ``sourceType="ServerVariable"`` and this ``sourceName`` (see docs/pipeline.md)."""
        if self.log_fields is None:
            self.log_fields = {}
        self.log_fields[name] = value


class Pipeline:
    """The bound hooks of one application's configuration, per notification.

    ``before_map``/``map``/``after_map``/``post``/``post_finished`` are tuples of
    ``(notification, hooks, module names)`` holding only non-empty notifications;
    ``send_ok`` and ``send_error`` are the SendResponse hooks (reverse module order) for
    statuses below 400 and from 400 on."""

    __slots__ = ("modules", "before_map", "map", "after_map", "post", "post_finished",
                 "send_ok", "send_ok_names", "send_error", "send_error_names", "has_send", "pre", "single",
                 "send_gates", "send_ok_plain", "send_ok_plain_names", "static_headers",
                 "traced", "tracer", "empty", "log_values", "per_client")

    def __init__(self, modules: list["Module"]) -> None:
        self.modules = modules
        ordered = sorted(modules, key=lambda m: m.priority)  # stable: list order per priority

        def table(names: tuple[str, ...]) -> tuple[tuple[str, tuple[Hook, ...], tuple[str, ...]], ...]:
            out = []
            for n in names:
                subs = [m for m in ordered if n in m.subscriptions]
                if subs:
                    out.append((n, tuple(getattr(m, METHODS[n]) for m in subs), tuple(m.name for m in subs)))
            return tuple(out)

        self.before_map = table(_BEFORE_MAP)
        self.map = table((MAP_REQUEST_HANDLER,))
        self.after_map = table(_AFTER_MAP)
        self.post = table(_POST)
        self.post_finished = table(_POST_FINISHED)
        senders = [m for m in reversed(ordered) if SEND_RESPONSE in m.subscriptions]
        self.send_error = tuple(m.send_response for m in senders)
        self.send_error_names = tuple(m.name for m in senders)
        ok = [m for m in senders if not m.send_errors_only]
        self.send_ok = tuple(m.send_response for m in ok)
        self.send_ok_names = tuple(m.name for m in ok)
        plain = [m for m in ok if m.send_gate is None]
        self.send_gates = frozenset(m.send_gate for m in ok if m.send_gate is not None)
        self.send_ok_plain = tuple(m.send_response for m in plain)
        self.send_ok_plain_names = tuple(m.name for m in plain)
        self.static_headers = [h for m in ordered for h in m.static_headers]
        self.has_send = bool(senders) or bool(self.static_headers)
        # any hook before the handler (else the dispatcher goes straight to it)
        self.pre = bool(self.before_map or self.map or self.after_map)
        self.tracer = next((m for m in modules if getattr(m, "traces", False)), None)
        self.traced = self.tracer is not None
        # the W3C log's worker-side custom fields: (ctx, header block, content length) ->
        # (name, value) pairs for the RESPONSE head (HttpLoggingModule)
        self.log_values: Callable[[HttpContext, bytes, int], tuple[tuple[str, str], ...]] | None = next(
            (m.log_values for m in modules if m.logs), None)  # type: ignore[attr-defined]
        pre_hooks = [(n, h, m) for table in (self.before_map, self.map, self.after_map)
                     for n, hooks, names in table for h, m in zip(hooks, names)]
        self.single = pre_hooks[0] if len(pre_hooks) == 1 and not self.traced else None
        # computed once per configuration path: its responses depend on who asks, so the
        # listener's response cache must not keep them (q.PER_CLIENT on every response)
        self.per_client = any(m.per_client for m in modules)
        self.empty = not (self.before_map or self.map or self.after_map or self.post
                          or self.has_send or self.traced or self.log_values is not None)


class HttpContext:
    """One request going through a pipeline (IIS's IHttpContext), handed to every hook.

    What a module may read: ``method``, ``path`` (decoded, normalised URL path),
    ``raw_target``, ``query``, ``rel`` (the path below the application), ``physical_path``,
    ``headers`` (request headers, lower-case str names), ``client_addr``, ``scheme``,
    ``app`` (application key, base path, physical path), ``handler`` (the chosen
    handler mapping's name, "" before MapRequestHandler or when none), ``user`` and
    ``auth_type`` (set by authentication modules; "" = anonymous), ``roles``,
    ``server_variables`` (IIS/CGI server variables, computed on first use),
    ``items`` (a dict for modules to share per-request state) and ``response`` (once a
    response exists).  What it may do: ``fail``, ``respond``, ``redirect``,
    ``set_server_variable``.
    """

    # what every request sets is a slot; what most requests never set is a class
    # default, stored in the instance dict (created on first use) when a module sets it
    __slots__ = ("worker", "stream", "app", "selection", "pipeline", "path", "raw_path", "query",
                 "response", "notification", "module", "user", "auth_type", "trace", "_set_vars",
                 "__dict__")
    roles: frozenset[str] = frozenset()
    finished = False
    error_module = ""
    error_notification = ""
    _headers: dict[str, str] | None = None
    _vars: dict[str, str] | None = None
    _items: dict[str, Any] | None = None
    _pending: tuple[str, str] | None = None
    waited: "asyncio.Future[Any] | None" = None  # see wait_for
    kernel_cache_disabled = False  # see disable_kernel_cache

    def __init__(self, worker: Any, stream: "Stream", app: "WorkerApplication", selection: "Selection",
                 pipeline: Pipeline, path: str, raw_path: str, query: str) -> None:
        self.worker = worker
        self.stream = stream
        self.app = app
        self.selection = selection
        self.pipeline = pipeline
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.response: Response | None = None
        self.notification = ""
        self.module = ""
        self.user = ""
        self.auth_type = ""
        self.trace: "Trace | None" = None
        self._set_vars: dict[str, str] | None = None

    @property
    def rel(self) -> str:
        return self.selection.rel

    @property
    def started(self) -> float:
        return self.stream.started_at

    @property
    def items(self) -> dict[str, Any]:
        if self._items is None:
            self._items = {}
        return self._items

    @property
    def method(self) -> str:
        return self.stream.head.method

    @property
    def raw_target(self) -> bytes:
        return self.stream.head.target

    @property
    def client_addr(self) -> str:
        return self.stream.head.client_addr

    @property
    def scheme(self) -> str:
        return self.stream.head.scheme

    @property
    def is_local(self) -> bool:
        return self.stream.head.client_addr in ("127.0.0.1", "::1")

    @property
    def handler(self) -> str:
        m = self.selection.mapping
        return m.entry.name if m is not None else ""

    @property
    def physical_path(self) -> str:
        return self.app.physical(self.rel)

    @property
    def headers(self) -> dict[str, str]:
        """Request headers, names lower-case; repeated headers joined with ", "."""
        h = self._headers
        if h is None:
            raw = self.stream.head.headers
            h = {}
            for i in range(0, len(raw), 2):
                k = raw[i].decode("latin-1")
                v = raw[i + 1].decode("latin-1")
                h[k] = h[k] + ", " + v if k in h else v
            self._headers = h
        return h

    @property
    def server_variables(self) -> dict[str, str]:
        v = self._vars
        if v is None:
            from .server_variables import compute
            v = self._vars = compute(self)
            if self._set_vars:
                v.update(self._set_vars)
        return v

    def set_server_variable(self, name: str, value: str) -> None:
        """Set a server variable; it also reaches the WSGI environ / ASGI scope."""
        if self._set_vars is None:
            self._set_vars = {}
        self._set_vars[name] = value
        if self._vars is not None:
            self._vars[name] = value

    @property
    def extra_environ(self) -> dict[str, str] | None:
        """What the pipeline adds to the WSGI environ: authentication and variables set."""
        if not self.user and not self._set_vars and not self.auth_type:
            return None
        out: dict[str, str] = {}
        if self.user or self.auth_type:
            out["AUTH_TYPE"] = self.auth_type
            out["AUTH_USER"] = out["REMOTE_USER"] = out["LOGON_USER"] = self.user
        if self._set_vars:
            out.update(self._set_vars)
        return out

    # ---- what modules do --------------------------------------------------------------

    def fail(self, status: int, substatus: int = 0, detail: str = "",
             headers: Headers | None = None) -> _Finish:
        """End the request with a (server-generated) error; returns FINISH."""
        self.response = Response(status, substatus, list(headers or ()), b"", True, True, detail)
        self.error_module = self.module
        self.error_notification = self.notification
        if self.trace is not None:
            self.trace.event("MODULE_SET_RESPONSE_ERROR_STATUS", self.notification, self.module,
                             status=status, substatus=substatus, detail=detail[:500])
        return FINISH

    def respond(self, status: int, headers: Headers | None = None, body: bytes = b"",
                substatus: int = 0) -> _Finish:
        """End the request with this response; returns FINISH."""
        self.response = Response(status, substatus, list(headers or ()), body, True)
        return FINISH

    def redirect(self, location: str, status: int = 302, headers: Headers | None = None) -> _Finish:
        body = (f'<head><title>Document Moved</title></head><body><h1>Object Moved</h1>'
                f'This document may be found <a HREF="{_attr(location)}">here</a></body>').encode()
        hdrs = [(b"Location", location.encode("latin-1", "replace")),
                (b"Content-Type", b"text/html; charset=UTF-8")] + list(headers or ())
        self.response = Response(status, 0, hdrs, body, True)
        return FINISH

    def disable_kernel_cache(self) -> None:
        """This request's response depends on who asked (IIS's
        ``IHttpResponse::DisableKernelCache``): the listener's response cache will not
        store it, and drops what it holds for the URL.  A module whose every answer at
        a scope is per client sets the class attribute ``per_client`` instead."""
        self.kernel_cache_disabled = True

    @property
    def per_client(self) -> bool:
        """Does the response to this request depend on who asked?"""
        return self.kernel_cache_disabled or self.pipeline.per_client

    def trace_event(self, name: str, level: int | None = None, area: str | None = None, **data: Any) -> None:
        """Record an event in the request's failed-request trace, if one is recorded at
        this URL (otherwise this costs one attribute test).  A built-in event name
        (``tracing.EVENTS``) has its own area and level; any other is area ``Module``,
        level Information (4) unless given (1 CriticalError .. 5 Verbose)."""
        trace = self.trace
        if trace is None:
            return
        if level is None and area is None:
            trace.event(name, self.notification, self.module, **data)
        else:
            trace.add(name, self.notification, self.module, data, area or "Module",
                      4 if level is None else level)

    def wait_for(self, future: "asyncio.Future[Any]") -> _Pending:
        """From a hook before the handler: suspend the request until ``future`` (of the
        worker's event loop) is done, then call the same hook again with ``ctx.waited``
        set to it (the hook reads ``ctx.waited.result()`` and clears ``ctx.waited``).
        The hooks and notifications after it run then, and the handler.  Returns
        PENDING, for the hook to return."""
        if _ORDER.get(self.notification, 99) > _ORDER[EXECUTE_REQUEST_HANDLER]:
            raise RuntimeError(f"a hook of {self.notification} cannot wait: only those before the handler can")
        self._pending = (self.notification, self.module)
        future.add_done_callback(self._resume)
        return PENDING

    def run_in_thread(self, fn: Callable[..., Any], *args: Any,
                      executor: Any = None) -> _Pending:
        """``wait_for`` a blocking call run on a thread (``executor``, or the loop's
        default one): ``return ctx.run_in_thread(check, user, password)``."""
        loop = asyncio.get_running_loop()
        return self.wait_for(loop.run_in_executor(executor, fn, *args))

    def _resume(self, future: "asyncio.Future[Any]") -> None:
        notification, module = self._pending
        self._pending = None
        stream = self.stream
        if stream.ended:
            return
        if stream.cancelled:  # the client went away while the request waited
            stream.reset()
            return
        self.waited = future
        p = self.pipeline
        order, map_order = _ORDER[notification], _ORDER[MAP_REQUEST_HANDLER]
        table = p.before_map if order < map_order else p.map if order == map_order else p.after_map
        index = next((names.index(module) for n, _, names in table if n == notification), 0)
        try:
            if self.before_handler(order - 1, index):
                return
            self.worker.execute(stream, self.app, self.selection, self.path, self.raw_path, self.query, self)
        except Exception:
            log.exception("resuming the request %s failed", self.path)
            if not stream.ended:
                if stream.head_sent:
                    stream.reset()
                else:
                    self.worker.error_response(stream, 500, 0)

    # ---- running ------------------------------------------------------------------------

    def run(self) -> None:
        """BeginRequest .. ExecuteRequestHandler; then the handler (unless a module
        finished the request)."""
        if not self.before_handler():
            self.worker.execute(self.stream, self.app, self.selection, self.path, self.raw_path,
                                self.query, self)

    def before_handler(self, resume_after: int = -1, first_hook: int = 0) -> bool:
        """BeginRequest .. the module hooks of ExecuteRequestHandler, with the handler
        mapping's verdict applied at MapRequestHandler; True when the request was
        finished (its response is on its way) or suspended (a hook waits, see
        ``wait_for``) and the handler must not run now.  Otherwise the dispatcher then
        runs ``selection``'s handler for ``path`` and ``query``.

        A module that moves the request to another URL (URL Rewrite) replaces
        ``selection`` and, when the new URL's configuration differs, ``pipeline``; the
        notifications after the current one then come from the new pipeline
        (``resume_after``: the index in NOTIFICATIONS of the last one run).  A
        suspended request resumes at the hook that waited (``first_hook``, in the
        notification after ``resume_after``)."""
        p = self.pipeline
        single = p.single
        if single is not None and resume_after < 0 and self.selection.kind:
            # the common shape (one module hook before the handler, e.g. request
            # filtering): no loops over empty notifications
            notification, hook, name = single
            self.notification = notification
            self.module = name
            try:
                result = hook(self)
                if result is not None:
                    if result is PENDING:
                        return True
                    self.finished = True
                    self._finish()
                    return True
            except HttpError as exc:
                self.fail(exc.status, exc.substatus, exc.detail)
                self._finish()
                return True
            except Exception:
                log.error("module %s failed in %s for %s:\n%s", name, notification, self.path,
                          traceback.format_exc())
                self.fail(500, 0, f"Module {name} raised in {notification}:\n" + traceback.format_exc(limit=-3))
                self._finish()
                return True
            if self.pipeline is not p:  # moved to another URL (URL Rewrite)
                return self.before_handler(_ORDER[notification])
            self.notification = EXECUTE_REQUEST_HANDLER
            self.module = ""
            return False
        if p.traced and self.trace is None:
            from .tracing import Trace
            self.trace = Trace(self)
        try:
            for notification, hooks, names in p.before_map:
                order = _ORDER[notification]
                if order <= resume_after:
                    continue
                if self._notify(notification, hooks, names, first_hook if order == resume_after + 1 else 0):
                    return self._finish_unless_pending()
                if self.pipeline is not p:
                    return self.before_handler(order)
            if resume_after < _ORDER[MAP_REQUEST_HANDLER]:
                for notification, hooks, names in p.map:
                    if self._notify(notification, hooks, names,
                                    first_hook if resume_after + 1 == _ORDER[MAP_REQUEST_HANDLER] else 0):
                        return self._finish_unless_pending()
                sel = self.selection
                if not sel.kind:
                    self.notification = MAP_REQUEST_HANDLER
                    self.module = ""
                    self.fail(sel.status, sel.substatus, sel.detail)
                    self._finish()
                    return True
                if self.trace is not None:
                    self.trace.event("HANDLER_CHANGED", MAP_REQUEST_HANDLER, "", handler=self.handler)
            for notification, hooks, names in p.after_map:
                order = _ORDER[notification]
                if order <= resume_after:
                    continue
                if self._notify(notification, hooks, names, first_hook if order == resume_after + 1 else 0):
                    return self._finish_unless_pending()
        except HttpError as exc:
            self.fail(exc.status, exc.substatus, exc.detail)
            self._finish()
            return True
        except Exception:
            log.error("module %s failed in %s for %s:\n%s", self.module, self.notification,
                      self.path, traceback.format_exc())
            self.fail(500, 0, f"Module {self.module} raised in {self.notification}:\n"
                      + traceback.format_exc(limit=-3))
            self._finish()
            return True
        self.notification = EXECUTE_REQUEST_HANDLER
        self.module = ""
        if self.trace is not None:
            self.module = self.selection.mapping.entry.modules if self.selection.mapping else ""
            self.trace.event("HANDLER_START", EXECUTE_REQUEST_HANDLER, self.module, handler=self.handler)
        return False

    def _finish_unless_pending(self) -> bool:
        if self._pending is None:
            self._finish()
        return True

    def _notify(self, notification: str, hooks: tuple[Hook, ...], names: tuple[str, ...],
                first: int = 0) -> bool:
        """Runs the hooks of one notification (from the ``first``); True when one
        finished the request or suspended it (``_pending`` is then set)."""
        self.notification = notification
        trace = self.trace
        if trace is None:
            if len(hooks) == 1:  # the common case: one subscriber
                self.module = names[0]
                result = hooks[0](self)
                if result is not None:
                    if result is not PENDING:
                        self.finished = True
                    return True
                return False
            i = first
            for hook in hooks[first:] if first else hooks:
                self.module = names[i]
                i += 1
                result = hook(self)
                if result is not None:
                    if result is not PENDING:
                        self.finished = True
                    return True
            return False
        i = first
        for hook in hooks[first:] if first else hooks:
            self.module = names[i]
            i += 1
            trace.event("NOTIFY_MODULE_START", notification, self.module)
            result = hook(self)
            trace.event("NOTIFY_MODULE_END", notification, self.module,
                        result="FINISH" if result is FINISH else "PENDING" if result is PENDING else "CONTINUE",
                        status=self.response.status if self.response is not None else 0)
            if result is not None:
                if result is not PENDING:
                    self.finished = True
                return True
        return False

    def _finish(self) -> None:
        """A hook finished the request: send what it produced (or an empty 200)."""
        self.finished = True
        resp = self.response
        if resp is None:
            resp = self.response = Response(200, 0, [], b"", True)
        if resp.generated:
            self.worker.error_response(self.stream, resp.status, resp.substatus, resp.detail,
                                       extra_headers=resp.headers, ctx=self)
        else:
            self.worker.send_whole(self.stream, resp.status, resp.headers, resp.body, self, resp.substatus)

    def send_response(self, status: int, substatus: int, headers: Headers, body: bytes | FileBody,
                      end: bool, generated: bool = False, detail: str = "") -> Response:
        """Run the SendResponse hooks on a response about to leave (after appending the
        scope's static headers); returns it (changed)."""
        resp = self.response
        if generated and self.trace is not None and (resp is None or not resp.generated or resp.status != status):
            # an error set by the handler (or the dispatcher), not through ctx.fail
            self.trace.event("MODULE_SET_RESPONSE_ERROR_STATUS", self.notification, self.module,
                             status=status, substatus=substatus, detail=detail[:500])
        static = self.pipeline.static_headers
        if resp is None or resp.status != status or resp.body is not body:
            if static:
                headers = headers + static
            resp = Response(status, substatus, headers, body, end, generated, detail)
            resp.static_added = True
            if generated and self.response is not None and self.response.generated:
                resp.detail = resp.detail or self.response.detail
            self.response = resp
        elif static and not resp.static_added:
            # a module's own response (ctx.fail/respond/redirect) leaving now: it gets the
            # scope's customHeaders like any other
            resp.headers = resp.headers + static
            resp.static_added = True
        p = self.pipeline
        if status >= 400:
            hooks, names = p.send_error, p.send_error_names
        else:
            hooks, names = p.send_ok, p.send_ok_names
            if p.send_gates and p.send_gates.isdisjoint(self.stream.head.headers):
                hooks, names = p.send_ok_plain, p.send_ok_plain_names
        if not hooks:
            return resp
        self.notification = SEND_RESPONSE
        trace = self.trace
        if trace is None:
            try:
                for hook in hooks:
                    hook(self)
            except Exception:
                i = next((n for n, h in enumerate(hooks) if h is hook), 0)
                self.module = names[i]
                log.error("module %s failed in SendResponse for %s (later SendResponse hooks skipped):\n%s",
                          self.module, self.path, traceback.format_exc())
            return self.response  # type: ignore[return-value]
        i = 0
        for hook in hooks:
            self.module = names[i]
            i += 1
            try:
                trace.event("NOTIFY_MODULE_START", SEND_RESPONSE, self.module)
                hook(self)
                trace.event("NOTIFY_MODULE_END", SEND_RESPONSE, self.module,
                            status=self.response.status if self.response is not None else 0)
            except Exception:
                log.error("module %s failed in SendResponse for %s:\n%s", self.module, self.path,
                          traceback.format_exc())
        return self.response  # type: ignore[return-value]

    def wants_send(self, status: int) -> bool:
        """Whether any SendResponse hook would run for a response with this status (a
        handler can skip building the Response when none would)."""
        p = self.pipeline
        if status >= 400:
            return bool(p.send_error)
        if p.send_ok_plain:
            return True
        return bool(p.send_gates) and not p.send_gates.isdisjoint(self.stream.head.headers)

    def on_end(self) -> None:
        """The stream's last frame has been handed over: the post-handler notifications.
        Called once (the worker clears ``stream.ctx`` first), and only when the pipeline
        has post-handler hooks or traces."""
        p = self.pipeline
        table = p.post_finished if self.finished else p.post
        finished = False
        for notification, hooks, names in table:
            if finished and notification not in _POST_FINISHED:
                continue
            try:
                if self._notify(notification, hooks, names):
                    finished = True
            except Exception:
                log.error("module %s failed in %s for %s:\n%s", self.module, notification, self.path,
                          traceback.format_exc())
        if self.trace is not None:
            self.trace.complete()


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


EMPTY_PIPELINE: Final = Pipeline([])
"""For a request moved (URL Rewrite) to a URL whose configuration has no module hooks."""


def build_pipeline(modules: list["Module"]) -> Pipeline | None:
    """The pipeline of these (enabled, configured) modules, or None if none of them
    subscribes to anything — the dispatcher's fast path."""
    p = Pipeline(modules)
    return None if p.empty else p


_API = ("Module", "ModuleConfig", "FIRST", "HIGH", "MEDIUM", "LOW", "LAST")


def __getattr__(name: str) -> Any:
    """The module API in one import: ``from poolhouse.worker.pipeline import Module,
    HttpContext, Response, FINISH, HttpError``."""
    if name in _API:
        from .modules import base
        return getattr(base, name)
    raise AttributeError(name)
