"""Request filtering's ``requestLimits``, enforced before a request is queued.

In IIS the limits belong to the worker's RequestFilteringModule; Poolhouse checks them
in the listener too, so that a request over them — a 1 GB upload above
``maxAllowedContentLength`` above all — is answered at once, without its body being
read or a worker being woken.  The worker's module stays the authority for the finer
limits of each URL.

Per application, once per ``configure``, ``build`` resolves the effective limits at the
application root and at every ``<location>`` below it (applicationHost.config's, and
those of the web.config files at the root) and keeps the **loosest** of them: the
listener must never refuse what the worker would accept.  Nothing is kept — no check at
all — where RequestFilteringModule is not among the modules (removed, typed as a custom
module, a preCondition that does not always hold, not in globalModules) at the root or
at any of those locations.

On the hot path a request costs one dict lookup and a chained comparison or two (the
target's length against the shorter of ``maxUrl`` and ``maxQueryString``; ``0 <=
Content-Length <= maxAllowedContentLength``); an application with ``headerLimits`` has
every request checked in full.  A request that breaks the loosest limits is checked once more against
the exact configuration at its URL (what the worker would compute: web.config files of
sub-folders included, changed ones re-read within a second) before it is refused, so a
folder's web.config that loosens a limit is honoured too.  For a URL deeper than
``CONFIRM_MAX_SEGMENTS`` segments (IIS's default ``maxUrlSegments``, past which IIS
refuses a request anyway) that resolution would cost the event loop too much: the
application's loosest limits decide alone.

A refusal is an IIS answer, not an HTTP.sys one: status and substatus as the module's
(404.14, 404.15, 413.1, 431), a line in the site's W3C log with its ``sc-substatus``,
none in HTTPERR.  The connection stays open when the rest of the body can be skipped
cheaply (none left, or at most ``DISCARD_LIMIT`` bytes of a Content-Length body the
client is already sending); otherwise — a large or chunked body, or one the client holds
back for ``100 Continue`` — it is closed after the answer.  A chunked body is counted as
it arrives against the exact limit at its URL and refused (413.1) when it passes it,
even once dispatched: the worker is told to cancel the request (the worker's module sees
no length for a chunked body, so this check is the listener's alone).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import ConfigError, WebConfigResolver
from ..config.model import Pool, ServerConfig, WebConfig
from ..config.preconditions import holds
from ..config.request_limits import CONTENT_TOO_LARGE, RequestLimits, Verdict
from ..urlpath import BadPath, normalize, split_target
from .connection import MAX_FIELD_LENGTH
from .responses import error_response
from .routing import app_key

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .exchange import Exchange

log = logging.getLogger("poolhouse.listener")

MODULE = "RequestFilteringModule"
SECTION = "system.webServer/security/requestFiltering"
# the sections whose <location> tags may change the limits or whether they apply
SECTIONS = frozenset((SECTION, "system.webServer/modules", "system.webServer/globalModules"))
CONFIRM_MAX_SEGMENTS = 32  # IIS's default site limits/@maxUrlSegments
DISCARD_LIMIT = 64 * 1024  # body bytes still to come that are read and dropped to keep the connection
NO_LIMIT = 1 << 62
EXACT_CACHE = 256


def filters(web: WebConfig, pool: Pool | None) -> bool:
    """Whether the worker's RequestFilteringModule runs for every request at this scope."""
    sections = web.sections
    modules = sections.get("system.webServer/modules") or {}
    entry = next((m for m in modules.get("items", []) if m.get("name") == MODULE), None)
    if entry is None or entry.get("type") or not holds(entry.get("preCondition", ""), pool):
        return False  # absent, a custom class under the name, or not for every handler
    registered = sections.get("system.webServer/globalModules")
    return registered is None or any(g.get("name") == MODULE for g in registered.get("items", []))


class AppLimits:
    """One application's limits as the listener checks them."""

    __slots__ = ("limits", "short_target", "max_content", "headers", "resolver", "pool", "_exact")

    def __init__(self, limits: RequestLimits, resolver: WebConfigResolver, pool: Pool | None) -> None:
        self.limits = limits
        shortest = min(limits.max_url, limits.max_query)
        # the listener refuses targets over MaxFieldLength itself (414): past that, no check;
        # with headerLimits every request is looked at (-1: any target length triggers)
        self.headers = bool(limits.headers)
        self.short_target = -1 if self.headers else shortest if shortest < MAX_FIELD_LENGTH else NO_LIMIT
        self.max_content = limits.max_content
        self.resolver = resolver
        self.pool = pool
        self._exact: dict[int, tuple[WebConfig, RequestLimits | None]] = {}

    def exact(self, raw_path: str) -> RequestLimits | None:
        """The limits at this URL as the worker would compute them (the application's
        loosest for a URL deeper than CONFIRM_MAX_SEGMENTS); None when the module does
        not filter there or the configuration there is broken."""
        if raw_path.count("/") > CONFIRM_MAX_SEGMENTS:
            return self.limits
        try:
            web = self.resolver.for_path(normalize(raw_path))
        except (BadPath, ConfigError):
            return None  # the worker answers these (400, 500.19)
        hit = self._exact.get(id(web))
        if hit is None or hit[0] is not web:
            limits = RequestLimits.from_section(web.sections.get(SECTION)) if filters(web, self.pool) else None
            if len(self._exact) >= EXACT_CACHE:
                self._exact.clear()
            hit = self._exact[id(web)] = (web, limits)
        return hit[1]


def build(config: ServerConfig) -> dict[str, AppLimits]:
    """app key -> its limits, for the applications where RequestFilteringModule runs."""
    out: dict[str, AppLimits] = {}
    for site in config.sites:
        for app in site.applications:
            pool = config.pools.get(app.pool)
            try:
                resolver = WebConfigResolver(config, site.name, app.path)
                root = resolver.for_path(app.path)
                if not filters(root, pool):
                    continue
                limits = RequestLimits.from_section(root.sections.get(SECTION))
                for target in resolver.location_targets(SECTIONS):
                    web = resolver.for_path(target)
                    if not filters(web, pool):
                        break
                    limits = limits.loosest(RequestLimits.from_section(web.sections.get(SECTION)))
                else:
                    out[app_key(site, app)] = AppLimits(limits, resolver, pool)
            except ConfigError as exc:  # a broken web.config: the worker answers 500.19
                log.warning("request limits not checked early for %s%s: %s", site.name, app.path, exc)
    return out


def check(conn: "HttpConnection", exch: "Exchange", app: AppLimits) -> bool:
    """Called for a request whose target, body or headers could break ``app``'s limits.
    True when it was refused (answered here)."""
    raw_path, query = split_target(exch.target)
    verdict = app.limits.check(raw_path, query, exch.headers, exch.body_length)
    if verdict is not None:
        exact = app.exact(raw_path)
        verdict = exact.check(raw_path, query, exch.headers, exch.body_length) if exact is not None else None
        if verdict is not None:
            refuse(conn, exch, verdict)
            return True
    if exch.body_length < 0:  # chunked: counted as it arrives against the URL's own limit
        exact = app.exact(raw_path)
        if exact is not None:
            exch.body_limit = exact.max_content
    return False


def body_over_limit(conn: "HttpConnection", exch: "Exchange") -> bool:
    """A chunked body passed its URL's ``maxAllowedContentLength`` (``exch.body_limit``):
    refuse it (413.1), cancelling it at the worker if it was dispatched.  True."""
    worker = exch.worker
    if worker is not None:
        worker.cancel(exch.stream)  # its terminal frame gives the credit back
        exch.release_worker()
    elif exch.pool is not None:
        exch.pool.forget(exch)
    if exch.response_started:  # too late for a status: the connection goes
        exch.done = True
        conn.abort_exchange(exch, "EntityTooLarge")
        return True
    refuse(conn, exch, CONTENT_TOO_LARGE)
    return True


def _skippable(exch: "Exchange") -> bool:
    """Can the rest of this request's body be read and dropped cheaply, keeping the
    connection?"""
    if exch.body_done:
        return True
    if exch.body_length < 0 or (exch.expect_continue and exch.body_received == 0):
        return False  # unbounded, or the client waits for 100 Continue: no way to tell
    return exch.body_length - exch.body_received <= DISCARD_LIMIT


def refuse(conn: "HttpConnection", exch: "Exchange", verdict: Verdict) -> None:
    """Answer as RequestFilteringModule would; the W3C log gets the line."""
    status, substatus, reason = verdict
    close = not exch.keep_alive or not _skippable(exch)
    exch.keep_alive = not close
    exch.status = status
    exch.substatus = substatus
    if exch.route is not None:  # the site's "rejected by reason" counter
        rejected = conn.listener._site_counters(exch.route.site_id).rejected
        key = f"RequestFiltering_{status}.{substatus}"
        rejected[key] = rejected.get(key, 0) + 1
    data = error_response(status, max(exch.http_minor, 0), exch.method == "HEAD", close, reason, substatus)
    exch.bytes_sent += len(data)
    exch.response_started = True
    conn.write(data)
    exch.finish()


__all__ = ["AppLimits", "body_over_limit", "build", "check", "filters", "refuse"]
