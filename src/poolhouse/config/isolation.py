"""Application pool isolation of the configuration (IIS 7.5): what one pool's workers
are given instead of the whole applicationHost.config.

IIS writes a copy of applicationHost.config per application pool, readable by that pool
only, holding the definitions of that pool and of its own sites; the workers read that
copy, never the master file.  Poolhouse hands the same thing to each worker over its
control channel: ``pool_view(config, pool)`` is the ``ServerConfig`` (as a dict) of one
pool —

- ``pools``: that pool alone;
- ``sites``: the sites where the pool serves an application; in a site shared with other
  pools their applications stay (so a URL still maps to the right application) but
  without their folders; bindings without the path of their TLS key;
- ``config_text``: applicationHost.config with its ``<system.applicationHost>`` element
  (every site, pool and log definition) and every ``<location>`` for another pool's site
  or application taken out — each replaced by a comment of as many lines, so the line
  numbers of what stays (in 500.19 pages and the error log) are the master file's;
- ``config_extra``: only the ``configSource`` files the filtered text still refers to.

The master file, the other pools' users files and the service's state stay readable by
the service alone (the documented recommendation: applicationHost.config mode 0600).
"""

from __future__ import annotations

import os
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from .document import read_document
from .errors import ConfigError
from .model import Application, ServerConfig
from .server import documents_of
from .xmlsafe import element_children, local_name, parse_xml

BASIC_AUTH = "system.webServer/security/authentication/basicAuthentication"


def pool_view(config: ServerConfig, pool: str) -> dict[str, Any]:
    """The configuration of ``pool`` alone, as a worker of it receives it."""
    key = pool.lower()
    data = config.to_dict()
    data["pools"] = {name: p for name, p in data["pools"].items() if name.lower() == key}
    sites = []
    names: dict[str, list[Application]] = {}
    for site, plain in zip(config.sites, data["sites"]):
        mine = [a for a in site.applications if a.pool.lower() == key]
        if not mine:
            continue
        names[site.name.lower()] = site.applications
        for binding in plain["bindings"]:
            binding["key_file"] = ""  # TLS is the listener's: no worker needs the private key's path
        for app, d in zip(site.applications, plain["applications"]):
            if app.pool.lower() != key:
                d["physical_path"] = ""
                d["virtual_directories"] = []
        sites.append(plain)
    data["sites"] = sites
    data["source_files"] = []
    data["warnings"] = []
    if config.config_text:
        root = getattr(config, "_poolhouse_isolation_root", None)
        if root is None:  # parsed once per configuration, whatever the number of pools
            root = parse_xml(config.config_text.encode("latin-1"), config.config_path or "applicationHost.config")
            setattr(config, "_poolhouse_isolation_root", root)
        text, extra = filter_text(root, config.config_text.encode("latin-1"),
                                  config.config_path or "applicationHost.config",
                                  {p: t.encode("latin-1") for p, t in config.config_extra.items()}, key, names)
        data["config_text"] = text.decode("latin-1")
        data["config_extra"] = {p: b.decode("latin-1") for p, b in extra.items()}
    return data


def filter_text(root: etree._Element, data: bytes, path: str, extra: dict[str, bytes], pool: str,
                sites: dict[str, list[Application]]) -> tuple[bytes, dict[str, bytes]]:
    """applicationHost.config (``root``: its parsed ``data``) without what ``pool`` must
    not see (see the module's docstring); ``sites``: the pool's sites (lower-case name ->
    applications).  ``root`` is left as it was."""
    swapped: list[tuple[etree._Element, etree._Element]] = []
    try:
        for el in element_children(root):
            name = local_name(el)
            if name == "system.applicationHost" or (
                    name == "location" and not _location_is_mine(el.get("path", ""), pool, sites)):
                swapped.append((el, _blank(el)))
        out = etree.tostring(root.getroottree(), xml_declaration=data.lstrip().startswith(b"<?xml"),
                             encoding=root.getroottree().docinfo.encoding or "utf-8")
    finally:
        for el, comment in swapped:
            el.tail = comment.tail
            root.replace(comment, el)
    used = read_document(out, path, extra).extra if extra else {}
    return out, {p: extra[p] for p in used if p in extra}


def _location_is_mine(path: str, pool: str, sites: dict[str, list[Application]]) -> bool:
    """A ``<location>`` applies to the pool when it is server-wide, or names one of the
    pool's sites at a URL that is (inside) one of its applications or above one."""
    loc = path.strip().strip("/").replace("\\", "/")
    if loc in ("", "."):
        return True
    site, _, rest = loc.partition("/")
    apps = sites.get(site.lower())
    if apps is None:
        return False
    url = ("/" + rest.strip("/")).lower() if rest.strip("/") else "/"
    owner = max((a for a in apps if a.path == "/" or url == a.path.lower() or url.startswith(a.path.lower() + "/")),
                key=lambda a: len(a.path), default=None)
    if owner is not None and owner.pool.lower() == pool:
        return True
    return any(a.pool.lower() == pool and (url == "/" or a.path.lower().startswith(url + "/")) for a in apps)


def _blank(el: etree._Element) -> etree._Element:
    """Replaces ``el`` by a comment spanning as many lines; returns the comment."""
    tail = el.tail
    el.tail = None
    lines = etree.tostring(el).count(b"\n")
    el.tail = tail
    comment = etree.Comment(" not for this application pool " + "\n" * lines)
    comment.tail = tail
    parent = el.getparent()
    if parent is None:
        raise ConfigError("cannot filter the document root", "applicationHost.config")
    parent.replace(el, comment)
    return comment


def users_files(config: ServerConfig, pool: str) -> list[str]:
    """The basicAuthentication/@usersFile paths that applicationHost.config gives the
    pool's applications (absolute; a relative one is taken in each application's
    folder): files its identity must read and no other pool may."""
    key = pool.lower()
    sites = {s.name.lower(): s.applications for s in config.sites
             if any(a.pool.lower() == key for a in s.applications)}
    out: list[str] = []
    for doc in documents_of(config).docs:
        for c in doc.contributions:
            if c.section.path != BASIC_AUTH or not _location_is_mine(c.location or "", key, sites):
                continue
            value = str(c.delta.attrs.get("usersFile", "") or "")
            if not value:
                continue
            site = c.location_key.partition("/")[0]
            folders = [a.physical_path for name, apps in sites.items() if not site or name == site
                       for a in apps if a.pool.lower() == key]
            candidates = [value] if os.path.isabs(value) else [os.path.join(f, value) for f in folders]
            out.extend(p for p in candidates if p not in out)
    return out
