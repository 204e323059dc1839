"""The management API: a Unix socket in the state directory (``run/control.sock``),
one JSON request per line, one JSON answer per line.  The CLI (and later the REST API
and the console) are its clients; it is the only way in from outside.

Requests: ``{"op": "list", "what": "sites|apppools|wp|requests"}`` (requests: with an
optional ``"elapsed": ms``, only those older than that),
``{"op": "start|stop|recycle", "what": "apppool|site", "name": "…"}``,
``{"op": "reload"}``, ``{"op": "counters"}``.
Answers: ``{"ok": true, "result": …}`` or ``{"ok": false, "error": "…"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from .pools import RAPID_FAIL, STARTED, STOPPED

if TYPE_CHECKING:
    from .service import ActivationService

log = logging.getLogger("poolhouse.activation")

MAX_REQUEST = 1024 * 1024


class ManagementError(Exception):
    pass


class ManagementServer:
    def __init__(self, service: "ActivationService", path: str) -> None:
        self.service = service
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                        raise ManagementError("a request is a JSON object with an 'op'")
                    result = await self.handle(request)
                    answer: dict[str, Any] = {"ok": True, "result": result}
                except (ManagementError, ValueError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                except Exception as exc:
                    log.exception("management request failed")
                    answer = {"ok": False, "error": f"internal error: {exc}"}
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def handle(self, req: dict[str, Any]) -> Any:
        svc = self.service
        op = req["op"]
        what = req.get("what", "")
        if op == "list":
            if what == "sites":
                return self.sites()
            if what == "apppools":
                return await self.apppools()
            if what == "wp":
                return await svc.list_workers()
            if what == "cache":
                return await self.listener_cache({"action": "list"})
            if what == "requests":
                try:
                    elapsed_ms = float(req.get("elapsed", 0) or 0)
                except (TypeError, ValueError):
                    raise ManagementError("elapsed is a number of milliseconds") from None
                return await svc.list_requests(elapsed_ms / 1000.0)
            raise ManagementError(f"cannot list {what!r}: choose sites, apppools, wp, requests or cache")
        if op == "counters":
            return await svc.listener_stats()
        if op == "cache_flush":  # the listener's response cache: all, one site's, one URL's
            fields: dict[str, Any] = {"action": "flush", "url": req.get("url") or None}
            if req.get("site"):
                site = svc.config.site_by_name(str(req["site"]))
                if site is None:
                    raise ManagementError(f"no site named {req['site']!r}")
                fields["site_id"] = site.id
            return await self.listener_cache(fields)
        if op == "reload":
            await svc.reload()
            return {"reloaded": True}
        if op in ("start", "stop", "recycle"):
            name = req.get("name", "")
            if what == "apppool":
                pool = svc.pools.get(name) or next(
                    (p for n, p in svc.pools.items() if n.lower() == str(name).lower()), None)
                if pool is None:
                    raise ManagementError(f"no application pool named {name!r}")
                if op == "start":
                    svc.start_pool(pool)
                elif op == "stop":
                    svc.stop_pool(pool)
                else:
                    if pool.state != STARTED:
                        raise ManagementError(f"application pool {pool.name!r} is {pool.state}; start it first")
                    count = await svc.recycle_pool(pool, "administrator")
                    return {"apppool": pool.name, "recycled_workers": count}
                return {"apppool": pool.name, "state": pool.state}
            if what == "site":
                site = svc.config.site_by_name(str(name))
                if site is None:
                    raise ManagementError(f"no site named {name!r}")
                if op == "recycle":
                    raise ManagementError("sites are started and stopped, not recycled")
                svc.set_site_state(site.id, STARTED if op == "start" else STOPPED)
                return {"site": site.name, "state": svc.site_states[site.id]}
            raise ManagementError(f"cannot {op} {what!r}: choose apppool or site")
        raise ManagementError(f"unknown operation {op!r}")

    async def listener_cache(self, fields: dict[str, Any]) -> Any:
        control = self.service.listener_control
        if control is None or control.closed:
            raise ManagementError("the listener is not running")
        reply = await asyncio.wait_for(control.request({"op": "cache", **fields}), 5)
        return reply.get("result", {})

    def sites(self) -> list[dict[str, Any]]:
        svc = self.service
        return [
            {
                "name": s.name,
                "id": s.id,
                "state": svc.site_states.get(s.id, STOPPED),
                "bindings": [f"{b.protocol}/{b.information}" for b in s.bindings],
                "applications": [{"path": a.path, "apppool": a.pool, "physical_path": a.physical_path}
                                 for a in s.applications],
            }
            for s in svc.config.sites
        ]

    async def apppools(self) -> list[dict[str, Any]]:
        svc = self.service
        stats = (await svc.listener_stats()).get("pools", {})
        out = []
        for name, pool in svc.pools.items():
            st = stats.get(name, {})
            out.append({
                "name": name,
                "state": STOPPED if pool.state == RAPID_FAIL else pool.state,
                "rapid_fail_stopped": pool.state == RAPID_FAIL,
                "rapid_fail_count": len(pool.crashes),
                "workers": len(pool.live_workers),
                "worker_pids": [w.pid for w in pool.live_workers],
                "queue_length": st.get("queue_length", 0),
                "in_flight": st.get("in_flight", 0),
                "start_mode": pool.config.start_mode,
                "max_processes": pool.config.max_processes,
            })
        return out
