"""The pipeline core fed fake requests: notification order, priorities, FINISH and
HttpError, SendResponse in reverse order; every built-in module fits the interface;
the pure pieces of the modules (preconditions, access, Accept-Encoding, CGI output)."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from poolhouse.config import WebConfigResolver, load_server_config
from poolhouse.ipc.queue import RequestHead
from poolhouse.worker.apps import WSGI, Selection, access_denied
from poolhouse.worker.handlers.cgi import parse_output
from poolhouse.worker.modules import BUILTIN, ModuleConfig, builtin_class, precondition_holds
from poolhouse.worker.modules.base import FIRST, LAST, Module
from poolhouse.worker.modules.compression import choose
from poolhouse.worker.modules.ip_restriction import IpRestrictionModule
from poolhouse.worker.pipeline import (
    ALL_NOTIFICATIONS, METHODS, NOTIFICATIONS, HttpContext, HttpError, Pipeline, build_pipeline,
)


def _default_web() -> Any:
    server = load_server_config(None)
    return WebConfigResolver(server, server.sites[0].name, "/").for_path("/")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_module_fits_the_interface(name: str) -> None:
    cls = builtin_class(name)
    assert cls is not None and issubclass(cls, Module)
    module = cls(name, ModuleConfig(_default_web()))
    assert isinstance(module.enabled(), bool)
    assert module.subscriptions <= set(ALL_NOTIFICATIONS)
    for notification in module.subscriptions:
        method = getattr(module, METHODS[notification])
        assert list(inspect.signature(method).parameters) == ["ctx"]
    assert module.priority in range(FIRST, LAST + 1)


def test_stock_configuration_has_cheap_pipelines() -> None:
    """With the stock configuration, modules whose section does nothing add no hooks."""
    from poolhouse.worker.modules import build_modules
    names = {m.name for m in build_modules(ModuleConfig(_default_web()), WSGI)}
    assert names == {"RequestFilteringModule", "CustomErrorModule"}


# ---------------------------------------------------------------------------- ordering

class Recorder(Module):
    log: list[str] = []

    def __init__(self, name: str, finish_at: str = "", fail_at: str = "", priority: int = 2) -> None:
        super().__init__(name, ModuleConfig(_empty_web()))
        self.finish_at, self.fail_at = finish_at, fail_at
        self.priority = priority  # type: ignore[misc]

    def _hit(self, ctx: HttpContext, notification: str) -> Any:
        self.log.append(f"{self.name}:{notification}")
        if notification == self.fail_at:
            raise HttpError(403, 7, "no")
        if notification == self.finish_at:
            return ctx.respond(200, [], b"early")
        return None

    def begin_request(self, ctx: HttpContext) -> Any: return self._hit(ctx, "BeginRequest")
    def authenticate_request(self, ctx: HttpContext) -> Any: return self._hit(ctx, "AuthenticateRequest")
    def authorize_request(self, ctx: HttpContext) -> Any: return self._hit(ctx, "AuthorizeRequest")
    def resolve_request_cache(self, ctx: HttpContext) -> Any: return self._hit(ctx, "ResolveRequestCache")
    def map_request_handler(self, ctx: HttpContext) -> Any: return self._hit(ctx, "MapRequestHandler")
    def acquire_request_state(self, ctx: HttpContext) -> Any: return self._hit(ctx, "AcquireRequestState")
    def pre_execute_request_handler(self, ctx: HttpContext) -> Any: return self._hit(ctx, "PreExecuteRequestHandler")
    def execute_request_handler(self, ctx: HttpContext) -> Any: return self._hit(ctx, "ExecuteRequestHandler")
    def release_request_state(self, ctx: HttpContext) -> Any: return self._hit(ctx, "ReleaseRequestState")
    def update_request_cache(self, ctx: HttpContext) -> Any: return self._hit(ctx, "UpdateRequestCache")
    def log_request(self, ctx: HttpContext) -> Any: return self._hit(ctx, "LogRequest")
    def end_request(self, ctx: HttpContext) -> Any: return self._hit(ctx, "EndRequest")

    def send_response(self, ctx: HttpContext) -> Any:
        self.log.append(f"{self.name}:SendResponse")
        assert ctx.response is not None
        ctx.response.add_header(b"X-By", self.name.encode())


def _empty_web() -> Any:
    from poolhouse.config.model import WebConfig
    return WebConfig()


class FakeWorker:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def execute(self, stream: Any, app: Any, sel: Any, path: str, raw: str, query: str, ctx: HttpContext) -> None:
        Recorder.log.append("handler")
        out = ctx.send_response(200, 0, [], b"body", True)
        self.calls.append(("execute", out.status, out.headers))

    def send_whole(self, stream: Any, status: int, headers: Any, body: Any, ctx: HttpContext, sub: int = 0) -> None:
        out = ctx.send_response(status, sub, headers, body, True)
        self.calls.append(("whole", out.status, out.body, out.headers))

    def error_response(self, stream: Any, status: int, substatus: int, detail: str = "", **kw: Any) -> None:
        out = ctx_of(stream).send_response(status, substatus, [], b"", True, True, detail)
        self.calls.append(("error", out.status, out.substatus, ctx_of(stream).error_module,
                           ctx_of(stream).error_notification))


def ctx_of(stream: Any) -> HttpContext:
    return stream.ctx  # type: ignore[no-any-return]


def _run(modules: list[Module], kind: str = WSGI) -> tuple[FakeWorker, HttpContext]:
    worker, ctx = _start(modules, kind)
    ctx.on_end()
    return worker, ctx


def _start(modules: list[Module], kind: str = WSGI) -> tuple[FakeWorker, HttpContext]:
    Recorder.log = []
    pipeline = Pipeline(modules)
    head = RequestHead("1/", "GET", b"/x", 1, (b"host", b"h"), "127.0.0.1", 1, "127.0.0.1", 80, "http", 0)
    stream = SimpleNamespace(head=head, started_at=0.0, ctx=None, sid=1, ended=False, cancelled=False)
    app = SimpleNamespace(physical=lambda rel: "/srv" + rel, site=SimpleNamespace(id=1, name="S"),
                          app=SimpleNamespace(physical_path="/srv", pool="P"), base="")
    mapping = SimpleNamespace(entry=SimpleNamespace(name="py", modules="WsgiModule"))
    sel = Selection(kind, mapping, None, "/x", 0 if kind else 404, 0 if kind else 4)  # type: ignore[arg-type]
    worker = FakeWorker()
    ctx = HttpContext(worker, stream, app, sel, pipeline, "/x", "/x", "")  # type: ignore[arg-type]
    stream.ctx = ctx
    ctx.run()
    return worker, ctx


def test_notifications_in_order_and_send_response_reversed() -> None:
    worker, _ = _run([Recorder("A"), Recorder("B")])
    expected = []
    for n in NOTIFICATIONS[:7]:
        expected += [f"A:{n}", f"B:{n}"]
    expected += ["A:ExecuteRequestHandler", "B:ExecuteRequestHandler", "handler", "B:SendResponse", "A:SendResponse"]
    for n in NOTIFICATIONS[8:]:
        expected += [f"A:{n}", f"B:{n}"]
    assert Recorder.log == expected
    assert worker.calls[0][2] == [(b"X-By", b"B"), (b"X-By", b"A")]


def test_priority_orders_within_a_notification() -> None:
    _run([Recorder("A", priority=3), Recorder("B", priority=FIRST)])
    assert Recorder.log[:2] == ["B:BeginRequest", "A:BeginRequest"]


def test_finish_in_begin_request_skips_the_handler_but_logs() -> None:
    worker, ctx = _run([Recorder("A", finish_at="BeginRequest"), Recorder("B")])
    assert Recorder.log == ["A:BeginRequest", "B:SendResponse", "A:SendResponse", "A:LogRequest", "B:LogRequest",
                            "A:EndRequest", "B:EndRequest"]
    assert worker.calls == [("whole", 200, b"early", [(b"X-By", b"B"), (b"X-By", b"A")])]
    assert ctx.finished


def test_http_error_from_a_hook_carries_its_status_and_module() -> None:
    worker, _ = _run([Recorder("A"), Recorder("B", fail_at="AuthorizeRequest")])
    assert "handler" not in Recorder.log
    assert worker.calls == [("error", 403, 7, "B", "AuthorizeRequest")]


def test_mapping_error_is_applied_at_map_request_handler() -> None:
    worker, _ = _run([Recorder("A")], kind="")
    assert "A:MapRequestHandler" in Recorder.log and "A:AcquireRequestState" not in Recorder.log
    assert worker.calls == [("error", 404, 4, "", "MapRequestHandler")]


class Waiter(Recorder):
    """Waits for a future at AuthorizeRequest (as Basic authentication does for PAM)."""

    loop: asyncio.AbstractEventLoop

    def authorize_request(self, ctx: HttpContext) -> Any:
        self.log.append(f"{self.name}:AuthorizeRequest")
        if ctx.waited is None:
            fut = self.loop.create_future()
            self.loop.call_later(0.01, fut.set_result, "checked")
            return ctx.wait_for(fut)
        self.log.append("waited:" + ctx.waited.result())
        ctx.waited = None
        return None


@pytest.mark.parametrize("traced", [False, True])
def test_a_hook_that_waits_is_called_again_and_the_request_goes_on(traced: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        waiter = Waiter("W")
        waiter.loop = loop
        modules: list[Module] = [Recorder("A"), waiter, Recorder("B")]
        if traced:
            from poolhouse.worker.modules.tracing_module import FailedRequestsTracingModule
            tracer = FailedRequestsTracingModule("FailedRequestsTracingModule", ModuleConfig(_empty_web()))
            tracer.request_done = lambda ctx, trace: None  # type: ignore[method-assign]
            modules.append(tracer)
        worker, ctx = _start(modules)
        # suspended in AuthorizeRequest: nothing after it ran, nothing was sent
        assert Recorder.log[-1] == "W:AuthorizeRequest" and worker.calls == [] and not ctx.finished
        loop.run_until_complete(asyncio.sleep(0.05))
        ctx.on_end()
    finally:
        loop.close()
    log = Recorder.log
    i = log.index("waited:checked")
    assert log[i - 1] == "W:AuthorizeRequest" and log[i + 1] == "B:AuthorizeRequest"
    assert log.count("A:AuthorizeRequest") == 1 and log.count("A:BeginRequest") == 1
    assert "handler" in log and log[-1] == "B:EndRequest"
    assert worker.calls[0][:2] == ("execute", 200)
    if traced:
        assert ctx.trace is not None
        assert any(e[1] == "NOTIFY_MODULE_END" and e[4].get("result") == "PENDING" for e in ctx.trace.events)


def test_hooks_after_the_handler_cannot_wait() -> None:
    class Late(Module):
        def log_request(self, ctx: HttpContext) -> Any:
            return ctx.wait_for(None)  # type: ignore[arg-type]
    worker, ctx = _start([Late("L", ModuleConfig(_empty_web()))])
    ctx.on_end()  # logged and skipped, not raised
    assert worker.calls[0][:2] == ("execute", 200)


def test_no_hooks_no_pipeline() -> None:
    class Quiet(Module):
        pass
    assert build_pipeline([Quiet("Q", ModuleConfig(_empty_web()))]) is None
    assert build_pipeline([]) is None


# ---------------------------------------------------------------------------- pure pieces

def test_preconditions() -> None:
    pool = SimpleNamespace(managed_pipeline_mode="Integrated", enable_32bit=False, managed_runtime_version="")
    assert precondition_holds("integratedMode", pool, False)
    assert not precondition_holds("classicMode", pool, False)
    assert precondition_holds("integratedMode,managedHandler", pool, True)
    assert not precondition_holds("managedHandler", pool, False)
    assert not precondition_holds("managedHandler", pool, None)  # handler mappings
    assert not precondition_holds("runtimeVersionv4.0", pool, True)
    assert precondition_holds("bitness64", pool, False) and not precondition_holds("bitness32", pool, False)


@pytest.mark.parametrize("require,policy,denied", [
    ("None", "", 0), ("Read", "Read", 0), ("Read", "Script", 2), ("Script", "Read, Script", 0),
    ("Script", "Read, Execute", 0), ("Script", "Read", 1), ("Execute", "Read, Script", 1), ("Write", "Read", 3),
])
def test_access_policy(require: str, policy: str, denied: int) -> None:
    assert access_denied(require, policy) == denied


def test_accept_encoding_choice() -> None:
    schemes = [("gzip", 7, 0), ("br", 7, 1)]
    assert choose("gzip, br", schemes) == schemes[0]  # equal q: configuration order
    assert choose("br;q=1.0, gzip;q=0.5", schemes) == schemes[1]
    assert choose("identity", schemes) is None and choose("", schemes) is None
    assert choose("*", schemes) == schemes[0] and choose("gzip;q=0, *;q=0.1", schemes) == schemes[1]


def test_cgi_output() -> None:
    assert parse_output(b"Content-Type: text/plain\r\n\r\nhi") == (200, [(b"Content-Type", b"text/plain")], b"hi")
    assert parse_output(b"Status: 404 Not Found\nContent-Type: text/plain\n\nx")[0] == 404  # type: ignore[index]
    assert parse_output(b"Location: /else\n\n")[0] == 302  # type: ignore[index]
    assert parse_output(b"no header block") is None
    # the first blank line ends the header block, whichever line ends it uses
    assert parse_output(b"Content-Type: a/b\n\nbody\r\n\r\nmore") == (200, [(b"Content-Type", b"a/b")],
                                                                          b"body\r\n\r\nmore")
    assert parse_output(b"Content-Type: a/b\r\n\r\nx\n\ny")[2] == b"x\n\ny"  # type: ignore[index]


def test_ip_restriction_first_match_in_order() -> None:
    web = _empty_web()
    web.sections = {"system.webServer/security/ipSecurity": {
        "allowUnlisted": True, "enableProxyMode": False, "denyAction": "Forbidden",
        "items": [{"ipAddress": "10.1.0.0", "subnetMask": "255.255.0.0", "allowed": True, "domainName": ""},
                  {"ipAddress": "10.0.0.0", "subnetMask": "8", "allowed": False, "domainName": ""},
                  {"ipAddress": "::1", "subnetMask": "255.255.255.255", "allowed": False, "domainName": ""}]}}
    m = IpRestrictionModule("IpRestrictionModule", ModuleConfig(web))
    assert m.allowed("10.1.2.3") and not m.allowed("10.2.0.1") and m.allowed("192.168.0.1")
    assert not m.allowed("::1") and not m.allowed("::ffff:10.9.9.9")


def test_send_gate_and_static_headers() -> None:
    """A gated SendResponse hook (compression: Accept-Encoding) is skipped for requests
    without the header; static headers (customHeaders) are appended without a hook."""
    class Gated(Module):
        send_gate = b"accept-encoding"

        def send_response(self, ctx: HttpContext) -> Any:
            assert ctx.response is not None
            ctx.response.add_header(b"X-Gated", b"1")

    class Static(Module):
        @property
        def static_headers(self) -> list[tuple[bytes, bytes]]:
            return [(b"X-Static", b"1")]

    web = _empty_web()
    p = Pipeline([Gated("G", ModuleConfig(web)), Static("S", ModuleConfig(web))])
    assert p.has_send and p.static_headers == [(b"X-Static", b"1")] and not p.send_ok_plain

    def ctx_for(headers: tuple[bytes, ...]) -> HttpContext:
        head = RequestHead("1/", "GET", b"/", 1, headers, "127.0.0.1", 1, "127.0.0.1", 80, "http", 0)
        stream = SimpleNamespace(head=head, started_at=0.0, ctx=None, sid=1)
        sel = Selection(WSGI, None, None, "/")
        return HttpContext(FakeWorker(), stream, None, sel, p, "/", "/", "")  # type: ignore[arg-type]

    plain = ctx_for((b"host", b"h"))
    assert not plain.wants_send(200)
    assert plain.send_response(200, 0, [], b"x", True).headers == [(b"X-Static", b"1")]
    gzip = ctx_for((b"host", b"h", b"accept-encoding", b"gzip"))
    assert gzip.wants_send(200)
    assert gzip.send_response(200, 0, [], b"x", True).headers == [(b"X-Static", b"1"), (b"X-Gated", b"1")]


def test_per_client_verdict_is_the_pipelines() -> None:
    """Decided once when the pipeline is built: any enabled module that answers per
    client makes every response of the scope per client (the listener's cache keeps out)."""
    from poolhouse.worker.modules.authorization import UrlAuthorizationModule

    web = _empty_web()
    web.sections = {"system.webServer/security/ipSecurity": {
        "allowUnlisted": False, "enableProxyMode": False, "denyAction": "Forbidden", "items": []},
        "system.webServer/security/authorization": {"items": [
            {"accessType": "Allow", "users": "*", "roles": "", "verbs": ""}]}}
    ip = IpRestrictionModule("IpRestrictionModule", ModuleConfig(web))
    everyone = UrlAuthorizationModule("UrlAuthorizationModule", ModuleConfig(web))
    assert ip.enabled() and not everyone.enabled()  # the stock allow-all adds nothing
    assert Pipeline([ip]).per_client
    web.sections["system.webServer/security/authorization"]["items"].insert(
        0, {"accessType": "Deny", "users": "?", "roles": "", "verbs": ""})
    assert Pipeline([UrlAuthorizationModule("UrlAuthorizationModule", ModuleConfig(web))]).per_client
    assert not Pipeline([Recorder("R")]).per_client

    worker, ctx = _start([Recorder("R")])
    assert not ctx.per_client
    ctx.disable_kernel_cache()
    assert ctx.per_client
