"""IpRestrictionModule: ``system.webServer/security/ipSecurity`` at BeginRequest.

Entries are tried in order (IIS's ordered list); the first whose address and subnet
contain the client decides, else ``allowUnlisted``.  ``enableProxyMode`` also checks
every address of ``X-Forwarded-For`` (off by default: the header is the client's to
forge).  ``domainName`` entries need reverse DNS and are ignored (logged once).
Denied: ``denyAction`` Forbidden 403.503, Unauthorized 401.503, NotFound 404.503,
AbortRequest resets the connection."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from ..pipeline import FINISH, HttpContext
from .base import HIGH, Module, ModuleConfig

log = logging.getLogger("poolhouse.worker")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpRestrictionModule(Module):
    priority = HIGH
    per_client = True  # the verdict is the client address's

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("security/ipSecurity")
        self.allow_unlisted = bool(sec.get("allowUnlisted", True))
        self.proxy_mode = bool(sec.get("enableProxyMode", False))
        self.action = str(sec.get("denyAction", "Forbidden"))
        self.entries: list[tuple[Network, bool]] = []
        for e in sec.get("items", []):
            if e.get("domainName") and not e.get("ipAddress"):
                log.warning("ipSecurity: domainName %r ignored (reverse DNS is not supported)", e["domainName"])
                continue
            mask = str(e.get("subnetMask") or "255.255.255.255")
            try:
                addr = ipaddress.ip_address(e["ipAddress"])
                if addr.version == 6 and mask == "255.255.255.255":
                    mask = "128"
                net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
            except ValueError as exc:
                log.warning("ipSecurity: entry %r ignored: %s", e, exc)
                continue
            self.entries.append((net, bool(e.get("allowed"))))
        self._cache: dict[str, bool] = {}

    def enabled(self) -> bool:
        return bool(self.entries) or not self.allow_unlisted

    def allowed(self, address: str) -> bool:
        found = self._cache.get(address)
        if found is not None:
            return found
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
                ip = ip.ipv4_mapped  # type: ignore[union-attr]
        except ValueError:
            return self.allow_unlisted
        verdict = self.allow_unlisted
        for net, allowed in self.entries:
            if ip.version == net.version and ip in net:
                verdict = allowed
                break
        if len(self._cache) < 10000:
            self._cache[address] = verdict
        return verdict

    def begin_request(self, ctx: HttpContext) -> Any:
        ok = self.allowed(ctx.client_addr)
        if ok and self.proxy_mode:
            forwarded = ctx.headers.get("x-forwarded-for", "")
            for part in forwarded.split(","):
                part = part.strip()
                if part and not self.allowed(part):
                    ok = False
                    break
        if ok:
            return None
        if self.action == "AbortRequest":
            ctx.stream.reset()
            ctx.finished = True
            return FINISH
        status = {"Unauthorized": 401, "NotFound": 404}.get(self.action, 403)
        return ctx.fail(status, 503, f"The IP address {ctx.client_addr} is denied.")
