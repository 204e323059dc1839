"""The routing table: binding -> site -> application -> application pool.

Built once from a ``ServerConfig`` each time the activation service programs the
listener; a request pays two dict lookups and, for sites with several applications, a
short scan of prefixes.

Host precedence follows HTTP.sys (ref. iis.md §4.2): an explicit host name on the
connection's local IP, an explicit host name on any IP, then the IP-bound weak wildcard,
then the weak wildcard ``*``.  Application paths match case-insensitively on segment
boundaries, longest first, as in IIS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote

from ..config.model import Application, Binding, ServerConfig, Site


@dataclass(frozen=True, slots=True)
class Route:
    site_id: int
    site_name: str
    app_key: str  # "<siteId>/<app path>", the key workers know their applications by
    app_path: str
    pool: str


@dataclass(slots=True)
class SiteRoutes:
    site: Site
    # (lower-case prefix, Route) longest prefix first; the root application last
    prefixes: list[tuple[str, Route]] = field(default_factory=list)
    root: Route | None = None

    def match(self, path: str) -> Route | None:
        """``path`` is the request path, still percent-encoded."""
        if len(self.prefixes) == 0:
            return self.root
        if "%" in path:
            path = unquote(path)
        lower = path.lower()
        for prefix, route in self.prefixes:
            if lower.startswith(prefix) and (len(lower) == len(prefix) or lower[len(prefix)] in "/?"):
                return route
        return self.root


def app_key(site: Site, app: Application) -> str:
    return f"{site.id}{app.path if app.path != '/' else '/'}"


def normalise_ip(ip: str) -> str:
    if ip in ("*", "", "0.0.0.0", "::"):
        return "*"
    ip = ip.strip("[]")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class RoutingTable:
    """Answers "which site, application and pool serve this request?"."""

    def __init__(self, config: ServerConfig) -> None:
        self.sites: dict[int, SiteRoutes] = {}
        # port -> {(ip, host): site id}
        self._ports: dict[int, dict[tuple[str, str], int]] = {}
        self.endpoints: set[tuple[str, int, str]] = set()  # (ip, port, protocol) to listen on
        for site in config.sites:
            routes = SiteRoutes(site)
            for app in sorted(site.applications, key=lambda a: len(a.path), reverse=True):
                route = Route(site.id, site.name, app_key(site, app), app.path, app.pool)
                if app.path == "/":
                    routes.root = route
                else:
                    routes.prefixes.append((app.path.rstrip("/").lower(), route))
            self.sites[site.id] = routes
            for binding in site.bindings:
                if binding.protocol not in ("http", "https"):
                    continue
                self._add_binding(site, binding)

    def _add_binding(self, site: Site, binding: Binding) -> None:
        ip = normalise_ip(binding.ip)
        table = self._ports.setdefault(binding.port, {})
        table.setdefault((ip, binding.host.lower()), site.id)
        self.endpoints.add((ip, binding.port, binding.protocol))

    def site_for(self, local_ip: str, port: int, host: str) -> int | None:
        """``host`` is the Host header value (may carry a port; may be empty)."""
        table = self._ports.get(port)
        if table is None:
            return None
        if host:
            if host[0] == "[":  # [v6]:port
                host = host[1 : host.find("]")] if "]" in host else host
            else:
                colon = host.rfind(":")
                if colon != -1:
                    host = host[:colon]
            host = host.lower().rstrip(".")
            site = table.get((local_ip, host))
            if site is None:
                site = table.get(("*", host))
            if site is not None:
                return site
        site = table.get((local_ip, ""))
        if site is None:
            site = table.get(("*", ""))
        return site

    def route(self, local_ip: str, port: int, host: str, path: str) -> tuple[int | None, Route | None]:
        site_id = self.site_for(local_ip, port, host)
        if site_id is None:
            return None, None
        return site_id, self.sites[site_id].match(path)

    def listen_addresses(self) -> list[tuple[str, int]]:
        """The (ip, port) sockets to open: one wildcard socket per port that has any
        ``*`` binding (it also receives the specific IPs), else one per specific IP."""
        by_port: dict[int, set[str]] = {}
        for ip, port, _protocol in self.endpoints:
            by_port.setdefault(port, set()).add(ip)
        out: list[tuple[str, int]] = []
        for port, ips in sorted(by_port.items()):
            if "*" in ips:
                out.append(("*", port))
            else:
                out.extend((ip, port) for ip in sorted(ips))
        return out
