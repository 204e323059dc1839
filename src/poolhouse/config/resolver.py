"""``WebConfigResolver``: the effective system.webServer + appSettings configuration at
a URL of one application, as a worker needs it.

The hierarchy — base.config, applicationHost.config and its ``<location>`` tags, then
the web.config files in the physical folders along the URL path (site root, application
roots, virtual directories, sub-folders) — is merged once per distinct set of
contributing files and cached.  Each folder's web.config is stat'ed at most once per
second, so an edited, added or deleted web.config takes effect within a second, and a
broken one gives a ``ConfigError`` (500.19) until it is fixed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from . import model
from .delta import ITEMS, to_plain
from .document import ConfigDocument, read_document, unknown_warning
from .errors import ConfigError
from .hierarchy import Source, applicable, covers, merge, server_sources, web_sources
from .preconditions import holds
from .schema import SECTIONS
from .server import ServerDocuments, documents_of, load_documents
from .xmlsafe import read_config_bytes

log = logging.getLogger("poolhouse.config")

STAT_INTERVAL = 1.0
MAX_CACHED = 4096
WEB_CONFIG_NAMES = ("web.config", "Web.config", "Web.Config")
WS = "system.webServer/"


def _norm(url: str) -> str:
    """URL path without query, with single slashes, no trailing slash (but "/")."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def config_path(url: str) -> str:
    """The configuration path of a URL path (already percent-decoded, dot segments
    resolved), as IIS on NTFS matches it: lower case, single slashes, no trailing slash
    (but "/"), and each segment without its trailing dots and spaces — ``/App/ADMIN./x``,
    ``/app/admin%20/x`` and ``/app/admin/x`` name the same folder, so they get the same
    ``web.config`` and ``<location>`` settings (URL authorization included) whatever the
    spelling.  Everything that keys on a URL's configuration (this resolver, a cache
    flushed by path) uses this one function."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    parts = []
    for seg in path.split("/"):
        if seg[-1:] in (".", " "):
            seg = seg.rstrip(". ")
        if seg:
            parts.append(seg)
    return "/" + "/".join(parts).lower()


def _segment_key(name: str) -> str:
    return name.rstrip(". ").lower()


def _refuse_link_out(path: str) -> None:
    """A web.config that is a symbolic link out of its folder is not read (its target's
    content must not reach a 500.19 page); the site's symbolicLinks/@allowOutsideRoot
    allows it."""
    folder = os.path.realpath(os.path.dirname(path))
    real = os.path.realpath(path)
    if not real.startswith(folder.rstrip("/") + "/"):
        raise ConfigError("the configuration file is a symbolic link to a file outside its folder "
                          "(the site's symbolicLinks/@allowOutsideRoot allows it)", path)


class _Stat:
    __slots__ = ("checked", "path", "mtime")

    def __init__(self, checked: float, path: str | None, mtime: float) -> None:
        self.checked = checked
        self.path = path
        self.mtime = mtime


class WebConfigResolver:
    """Effective configuration for URL paths inside one application of one site."""

    def __init__(self, server: model.ServerConfig, site_name: str, app_path: str) -> None:
        site = server.site_by_name(site_name)
        if site is None:
            raise ConfigError(f"no site named '{site_name}' is configured",
                              server.config_path or "applicationHost.config")
        wanted = _norm(app_path).lower()
        app = next((a for a in site.applications if a.path.lower() == wanted), None)
        if app is None:
            raise ConfigError(f"site '{site.name}' has no application '{app_path}'",
                              server.config_path or "applicationHost.config")
        self.server = server
        self.site = site
        self.app = app
        pool = server.pools.get(app.pool)
        self._web_configs_enabled = pool.enable_configuration_override if pool else True
        # applications, longest path first, for URL -> application -> folder mapping
        self._apps = sorted(site.applications, key=lambda a: len(a.path), reverse=True)
        self._app_paths = {a.path.lower() for a in site.applications}
        self._lock = threading.Lock()
        self._docs: ServerDocuments = documents_of(server)
        self._server_checked = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self._sources: list[Source] = server_sources(self._docs.docs, self.site.name)
        self._stats: OrderedDict[str, _Stat] = OrderedDict()
        self._files: dict[str, tuple[float, ConfigDocument | ConfigError]] = {}
        self._results: OrderedDict[tuple[Any, ...], model.WebConfig | ConfigError] = (
            OrderedDict())
        self._warned: set[str] = set()
        self._extra: dict[str, tuple[float, ...]] = {}  # configSource files' mtimes
        self._error_at: dict[str, float] = {}
        self._listings: dict[str, tuple[float, dict[str, str]]] = {}  # see _names_in
        self._oldest_check = 0.0
        # URL -> (valid until, result): repeated URLs skip the walk for up to a second
        self._recent: OrderedDict[str, tuple[float, model.WebConfig | ConfigError]] = (
            OrderedDict())

    # -- public ----------------------------------------------------------------------

    def for_path(self, url_path: str) -> model.WebConfig:
        """The effective configuration at ``url_path``; raises ConfigError when a
        contributing file is invalid (the request gets a 500.19)."""
        url = config_path(url_path)
        with self._lock:
            now = time.monotonic()
            recent = self._recent.get(url)
            if recent is not None and now < recent[0]:
                result = recent[1]
            else:
                self._oldest_check = now
                result = self._resolve(url)
                # reuse the answer only as long as the oldest stat behind it is fresh,
                # so an edited web.config shows within STAT_INTERVAL, not twice that
                self._recent[url] = (self._oldest_check + STAT_INTERVAL, result)
                self._recent.move_to_end(url)
                if len(self._recent) > MAX_CACHED:
                    self._recent.popitem(last=False)
        if isinstance(result, ConfigError):
            raise result
        return result

    def location_targets(self, sections: frozenset[str]) -> list[str]:
        """The URL paths (lower case) inside this application, below its root, where
        ``<location>`` tags of applicationHost.config — or of the web.config files read
        so far by ``for_path`` — place one of ``sections``: where the effective settings
        may differ from the application root's.  Folders' own web.config files that no
        ``for_path`` call has read are not known here."""
        app = self.app.path.lower()
        with self._lock:
            sources = list(self._sources)
            for url, st in self._stats.items():
                cached = self._files.get(st.path) if st.path is not None else None
                if cached is not None and isinstance(cached[1], ConfigDocument):
                    folder = url.lower()
                    sources.extend(web_sources(cached[1], folder, 2, folder in self._app_paths))
        found = {s.target for s in sources
                 if s.target is not None and s.section in sections and s.target != app
                 and self.app_of(s.target) == app}
        return sorted(t for t in found if t is not None)

    # -- internals -------------------------------------------------------------------

    def app_of(self, url_lower: str) -> str:
        for a in self._apps:
            p = a.path.lower()
            if p == "/" or url_lower == p or url_lower.startswith(p + "/"):
                return p
        return "/"

    def _physical(self, url: str) -> tuple[str, bool] | None:
        """Physical folder of ``url`` and whether web.config files are read there."""
        lower = url.lower()
        for a in self._apps:
            p = a.path.lower()
            if p == "/" or lower == p or lower.startswith(p + "/"):
                rel = url[len(a.path.rstrip("/")):] or "/"
                vdirs = sorted(a.virtual_directories, key=lambda v: len(v.path), reverse=True)
                for v in vdirs:
                    vp = v.path.lower()
                    rl = rel.lower()
                    if vp == "/" or rl == vp or rl.startswith(vp + "/"):
                        rest = rel[len(v.path.rstrip("/")):].strip("/")
                        if rest and not v.allow_sub_dir_config:
                            return None
                        folder = self._on_disk(v.physical_path, rest) if rest else v.physical_path
                        return folder, True
                return None
        return None

    def _on_disk(self, base: str, rest: str) -> str:
        """``base/rest`` where ``rest`` is part of a configuration path (lower case, no
        trailing dots or spaces): each segment as spelled when that exists, else the
        entry of the folder whose name matches it as NTFS would (case-insensitively,
        trailing dots and spaces ignored).  A folder is listed only when a spelling is
        not found, at most once per STAT_INTERVAL."""
        folder = base
        segments = rest.split("/")
        for i, seg in enumerate(segments):
            exact = os.path.join(folder, seg)
            if not os.path.lexists(exact):
                name = self._names_in(folder).get(seg)
                if name is None:  # nothing there (no web.config either)
                    return os.path.join(exact, *segments[i + 1:])
                exact = os.path.join(folder, name)
            folder = exact
        return folder

    def _names_in(self, folder: str) -> dict[str, str]:
        now = time.monotonic()
        hit = self._listings.get(folder)
        if hit is not None and now - hit[0] < STAT_INTERVAL:
            return hit[1]
        names: dict[str, str] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir():
                        key = _segment_key(entry.name)
                        other = names.setdefault(key, entry.name)
                        if other != entry.name:
                            text = (f"{os.path.join(folder, other)} and {entry.name!r} beside it have one "
                                    "configuration path (names differing only in case or trailing dots "
                                    "and spaces): one web.config serves both")
                            if text not in self._warned:
                                self._warned.add(text)
                                log.warning("%s", text)
        except OSError:
            pass
        if len(self._listings) >= MAX_CACHED:
            self._listings.clear()
        self._listings[folder] = (now, names)
        return names

    def _check_server_files(self, now: float) -> None:
        if now - self._server_checked < STAT_INTERVAL:
            return
        self._server_checked = now
        for path, mtime in self._docs.mtimes.items():
            try:
                current = os.stat(path).st_mtime
            except OSError:
                current = -1.0
            if current != mtime:
                self._docs = load_documents(self.server.config_path or None)
                self._reset()
                return

    def _web_config_at(self, url: str, now: float) -> _Stat:
        st = self._stats.get(url)
        if st is not None and now - st.checked < STAT_INTERVAL:
            self._oldest_check = min(self._oldest_check, st.checked)
            return st
        found: str | None = None
        mtime = 0.0
        mapped = self._physical(url) if self._web_configs_enabled else None
        if mapped is not None:
            folder, _ = mapped
            for name in WEB_CONFIG_NAMES:
                candidate = os.path.join(folder, name)
                try:
                    s = os.stat(candidate)
                except OSError:
                    # a web.config that is there but cannot be followed (a dangling link, a
                    # link into a folder this identity cannot search) is still there: it is
                    # read below and refused with a 500.19, never taken for an absence that
                    # would drop the folder's settings (its authorization, say)
                    try:
                        s = os.lstat(candidate)
                    except OSError:
                        continue
                found, mtime = candidate, s.st_mtime + s.st_size * 1e-9
                break
        st = _Stat(now, found, mtime)
        self._stats[url] = st
        self._stats.move_to_end(url)
        if len(self._stats) > MAX_CACHED:
            self._stats.popitem(last=False)
        return st

    def _document(self, path: str, mtime: float) -> ConfigDocument | ConfigError:
        cached = self._files.get(path)
        if cached is not None and cached[0] == mtime:
            hit = cached[1]
            if isinstance(hit, ConfigDocument):
                if not hit.extra or self._extra.get(path) == _extra_mtimes(hit):
                    return hit
            elif time.monotonic() - self._error_at.get(path, 0.0) < STAT_INTERVAL:
                return hit  # a broken file (or one its configSource breaks): retried
        doc: ConfigDocument | ConfigError
        contained = not self.site.symlinks_outside_root
        try:
            if contained:
                _refuse_link_out(path)
            doc = read_document(read_config_bytes(path), path, contained=contained)
        except ConfigError as e:
            log.error("%s", e)
            doc = e
        else:
            for section, line in doc.unknown:
                text = unknown_warning(path, line, section)
                if text not in self._warned:
                    self._warned.add(text)
                    log.warning("%s", text)
            for text in doc.warnings:
                if text not in self._warned:
                    self._warned.add(text)
                    log.warning("%s", text)
        self._files[path] = (mtime, doc)
        if isinstance(doc, ConfigDocument):
            self._extra[path] = _extra_mtimes(doc)
        else:
            self._error_at[path] = time.monotonic()
        return doc

    def _resolve(self, url: str) -> model.WebConfig | ConfigError:
        now = time.monotonic()
        try:
            self._check_server_files(now)
        except ConfigError as e:
            return e
        lower = url.lower()
        segments = [s for s in url.split("/") if s]
        prefixes = ["/"] + ["/" + "/".join(segments[: i + 1]) for i in range(len(segments))]
        files: list[tuple[str, str, float]] = []
        sources = list(self._sources)
        registered: set[str] | None = None
        for prefix in prefixes:
            st = self._web_config_at(prefix, now)
            if st.path is None:
                continue
            doc = self._document(st.path, st.mtime)
            if isinstance(doc, ConfigError):
                return doc
            if doc.registrations:
                if registered is None:
                    registered = set(self._docs.registrations)
                for reg in doc.registrations.values():
                    if reg.path in registered:
                        return ConfigError(
                            f"the section '{reg.path}' is already registered at a parent "
                            "level and cannot be registered again", reg.file, reg.line)
                    registered.add(reg.path)
            folder = prefix.lower()
            files.append((folder, st.path, st.mtime))
            rank = 2 + (0 if folder == "/" else folder.count("/"))
            sources.extend(web_sources(doc, folder, rank, folder in self._app_paths))
        app = self.app_of(lower)
        chosen = applicable(sources, lower, self.app_of)
        key = (app, tuple(files), tuple(id(s.contribution) for s in chosen))
        result = self._results.get(key)
        if result is None:
            result = self._compute(chosen, sources, files)
            self._results[key] = result
            if len(self._results) > MAX_CACHED:
                self._results.popitem(last=False)
        else:
            self._results.move_to_end(key)
        return result

    def _compute(self, chosen: list[Source], all_sources: list[Source],
                 files: list[tuple[str, str, float]]) -> model.WebConfig | ConfigError:
        try:
            merged = merge(chosen, self._docs.registrations, all_sources)
        except ConfigError as e:
            log.error("%s", e)
            return e
        warnings: list[str] = []
        for _, path, mtime in files:
            doc = self._files[path][1]
            if isinstance(doc, ConfigDocument):
                warnings.extend(doc.warnings)
                warnings.extend(unknown_warning(path, line, s) for s, line in doc.unknown)
        sections = {
            path: to_plain(merged.get(path), sec.element)
            for path, sec in SECTIONS.items()
            if path.startswith(WS) or path == "appSettings"
        }
        return build_web_config(sections, warnings, self.server.pools.get(self.app.pool))


def _without_managed_handler(pre_condition: str) -> str:
    """A module's ``managedHandler`` token depends on the request's handler (the worker's
    pipeline decides it per request: a Python application is Poolhouse's managed code),
    so it does not remove the module from the enabled list."""
    return ",".join(t for t in pre_condition.split(",")
                    if t.strip().lower() != "managedhandler")


def _extra_mtimes(doc: ConfigDocument) -> tuple[float, ...]:
    out = []
    for path in doc.extra:
        try:
            st = os.stat(path)
            out.append(st.st_mtime + st.st_size * 1e-9)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def build_web_config(sections: dict[str, Any], warnings: list[str],
                     pool: model.Pool | None = None) -> model.WebConfig:
    """Flatten the merged sections into the WebConfig the worker reads.  Handler
    mappings and modules whose preCondition does not hold for ``pool`` are left out."""
    handlers_section = sections[WS + "handlers"]
    handlers = [
        model.HandlerMapping(
            name=h["name"], path=h["path"], verb=h["verb"], modules=h["modules"],
            script_processor=h["scriptProcessor"], resource_type=h["resourceType"],
            require_access=h["requireAccess"], pre_condition=h["preCondition"],
            response_buffer_limit=h["responseBufferLimit"], type=h["type"],
            allow_path_info=h["allowPathInfo"],
            environment_variables={v["name"]: v["value"] for v in h["environmentVariables"][ITEMS]},
        )
        for h in handlers_section[ITEMS] if holds(h["preCondition"], pool)
    ]
    dd = sections[WS + "defaultDocument"]
    browse = sections[WS + "directoryBrowse"]
    mime = {m["fileExtension"].lower(): m["mimeType"]
            for m in sections[WS + "staticContent"][ITEMS]}
    return model.WebConfig(
        handlers=handlers,
        access_policy=handlers_section["accessPolicy"],
        default_document_enabled=dd["enabled"],
        default_documents=[f["value"] for f in dd["files"][ITEMS]],
        directory_browse_enabled=browse["enabled"],
        directory_browse_show_flags=browse["showFlags"],
        mime_maps=mime,
        app_settings={s["key"]: s["value"] for s in sections["appSettings"][ITEMS]},
        modules=[m["name"] for m in sections[WS + "modules"][ITEMS]
                 if holds(_without_managed_handler(m["preCondition"]), pool)],
        sections=sections,
        warnings=warnings,
    )


__all__ = ["WebConfigResolver", "build_web_config"]
