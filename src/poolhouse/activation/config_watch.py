"""Watching applicationHost.config, and what happens after each change: history, audit.

The activation service's ``ConfigWatch`` notices a change of the served
applicationHost.config (or of a file it includes with ``configSource``) within ~200 ms (inotify through ``watchfiles``, on the file's
folder so that editors which save by rename are seen; plus a poll every
``configHistory/@period`` as a safety net) and calls the service's ``reload()``, which
builds and validates the whole new configuration before swapping it in.  The service
then reports the outcome here:

- accepted: the file is snapshotted into the configuration history
  (``CFGHISTORY_NNNNNNNNNN``, as IIS's AppHostSvc does) and one audit line is written;
- refused: one audit line with the file, line, section and reason; the running
  configuration keeps serving.

Audit lines go to ``<state dir>/logs/config-audit.jsonl`` and to the event log
(``config_change``).  The web.config files in the virtual directories' folders are
watched too, only to audit them (valid, or refused with the reason): workers re-stat
and apply them on the next request by themselves (``poolhouse.config.resolver``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from ..config import history
from ..config.audit import describe_accepted, describe_refused, section_changes
from ..config.document import ConfigDocument, read_document
from ..config.resolver import WEB_CONFIG_NAMES, WebConfigResolver
from ..config.model import ServerConfig
from ..config.server import BASE_CONFIG

if TYPE_CHECKING:
    from .service import ActivationService

log = logging.getLogger("poolhouse.activation")

DEBOUNCE_MS = 200
FALLBACK_POLL = 0.5  # seconds, when inotify (watchfiles) is not available


class ConfigWatch:
    def __init__(self, service: "ActivationService") -> None:
        self.service = service
        self.path = service.config_path  # None: the embedded configuration, not watched
        self.state_dir = service.state_dir
        self.audit_path = os.path.join(self.state_dir, "logs", "config-audit.jsonl")
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seen = self._stat()
        self._refused_digest = ""
        self._web_digests: dict[str, str] = {}
        self._web_docs: dict[str, ConfigDocument] = {}

    # ---- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Publish the served file's path for the CLI, snapshot the configuration the
        service started with, and start watching."""
        cfg = self.service.config
        self._publish(cfg)
        if self.path is None:
            return
        self._snapshot(cfg)
        self._prime_web_configs()
        loop = asyncio.get_running_loop()
        try:
            import watchfiles  # noqa: F401
        except ImportError:  # pragma: no cover - watchfiles is a dependency
            self._tasks.append(loop.create_task(self._poll(FALLBACK_POLL)))
        else:
            self._tasks.append(loop.create_task(self._watch()))
            self._tasks.append(loop.create_task(self._poll(None)))

    def _publish(self, cfg: ServerConfig) -> None:
        """``run/config-path`` and ``run/config-history-path``, for ``poolhouse config``."""
        run = os.path.join(self.state_dir, "run")
        os.makedirs(run, exist_ok=True)
        for name, value in (("config-path", self.path or ""),
                            ("config-history-path", cfg.config_history.path)):
            with open(os.path.join(run, name), "w", encoding="utf-8") as fh:
                fh.write(value + "\n" if value else "")

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    # ---- noticing changes -----------------------------------------------------------

    def _files(self) -> list[str]:
        """applicationHost.config and the files it pulls in (configSource)."""
        if self.path is None:
            return []
        extra = [f for f in self.service.config.source_files
                 if f != self.path and f != BASE_CONFIG]
        return [self.path, *sorted(set(extra))]

    def _stat(self) -> tuple[tuple[float, int, int] | None, ...] | None:
        if self.path is None:
            return None
        out: list[tuple[float, int, int] | None] = []
        for path in self._files():
            try:
                st = os.stat(path)
                out.append((st.st_mtime, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    async def _changed(self) -> None:
        current = self._stat()
        if current is None or current == self._seen or current[0] is None:
            return  # unchanged, or applicationHost.config deleted (an editor mid-save)
        self._seen = current
        try:
            await self.service.reload()
        except Exception:  # reload reports its own errors; never let the watcher die
            log.exception("reloading the configuration failed")

    def _web_folders(self) -> dict[str, tuple[str, str, str]]:
        """Folder of each virtual directory -> (site, application path, URL): the
        web.config files there are audited when they change (workers apply them)."""
        out: dict[str, tuple[str, str, str]] = {}
        for site in self.service.config.sites:
            for app in site.applications:
                for vdir in app.virtual_directories:
                    url = (app.path.rstrip("/") + vdir.path.rstrip("/")) or "/"
                    out.setdefault(os.path.normpath(vdir.physical_path),
                                   (site.name, app.path, url))
        return out

    async def _watch(self) -> None:
        import watchfiles

        while not self._stop.is_set():
            files = self._files()
            wanted = set(files)
            web = self._web_folders() if self.path is not None else {}
            folders = sorted({os.path.dirname(f) or "." for f in files}
                             | {f for f in web if os.path.isdir(f)})

            def interesting(_change: Any, path: str) -> bool:
                return path in wanted or (os.path.basename(path) in WEB_CONFIG_NAMES
                                          and os.path.dirname(path) in web)

            try:
                async for changes in watchfiles.awatch(
                        *folders, watch_filter=interesting, debounce=DEBOUNCE_MS, step=50,
                        stop_event=self._stop, recursive=False):
                    paths = {p for _c, p in changes}
                    if paths & wanted:
                        await self._changed()
                    for path in sorted(paths - wanted):
                        await self._web_changed(path, web[os.path.dirname(path)])
                    if set(self._files()) != wanted or self._web_folders() != web:
                        break  # sites or included files changed: watch the new set
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a folder vanished, inotify limits, ...
                log.warning("watching %s failed (%s); polling instead", folders, exc)
                await asyncio.sleep(FALLBACK_POLL)
                await self._changed()

    def _prime_web_configs(self) -> None:
        """Remember the web.config files as they are, so the first audit line about one
        says what changed rather than listing everything in it."""
        for folder in self._web_folders():
            for name in WEB_CONFIG_NAMES:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                    self._web_digests[path] = hashlib.sha256(data).hexdigest()
                    self._web_docs[path] = read_document(data, path)
                except (OSError, ConfigError):
                    continue

    async def _web_changed(self, path: str, where: tuple[str, str, str]) -> None:
        """Audit a web.config change: valid (workers apply it on the next request) or
        refused (its folder answers 500.19 until it is fixed).  Either way the
        listener's response cache drops what it holds below the folder first, so no
        cached answer outlives the configuration it was given under."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""
        digest = hashlib.sha256(data).hexdigest()
        if self._web_digests.get(path) == digest:
            return
        self._web_digests[path] = digest
        old = self._web_docs.get(path)
        new: ConfigDocument | None = None
        if data:
            try:
                new = read_document(data, path)
            except ConfigError:
                new = None
        changes = (section_changes(old, new) if new is not None else
                   ["removed the file"] if not data else [])
        if new is not None:
            self._web_docs[path] = new
        elif not data:
            self._web_docs.pop(path, None)
        site, app, url = where
        await self.service.flush_cache_path(site, url)
        try:
            WebConfigResolver(self.service.config, site, app).for_path(url)
        except ConfigError as exc:
            self._audit("refused", data, changes, file=path, site=site, url=url,
                        error={"file": exc.file, "line": exc.line, "section": exc.section,
                               "reason": exc.reason})
            return
        self._audit("accepted", data, changes, file=path, site=site, url=url)

    async def _poll(self, interval: float | None) -> None:
        while not self._stop.is_set():
            period = interval or max(1.0, self.service.config.config_history.period)
            await asyncio.sleep(period)
            await self._changed()

    # ---- outcomes (called by the service's reload) ---------------------------------

    def accepted(self, old: ServerConfig, new: ServerConfig) -> None:
        self._refused_digest = ""
        if old.config_history != new.config_history:
            self._publish(new)
        if (old.config_text, old.config_extra) == (new.config_text, new.config_extra):
            return  # touched or rewritten identically: not a change
        try:
            changes = describe_accepted(old, new)
        except ConfigError as exc:  # pragma: no cover - both were loaded before
            changes = [f"(could not compare: {exc})"]
        snap = self._snapshot(new)
        self._audit("accepted", new.config_text.encode("latin-1"), changes,
                    snapshot=snap)

    def refused(self, exc: BaseException) -> None:
        path = self.path or ""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._refused_digest:
            return  # the same refused file again (SIGHUP, a second event)
        self._refused_digest = digest
        changes = describe_refused(self.service.config, data, path) if data else []
        error: dict[str, Any] = {"reason": str(exc)}
        if isinstance(exc, ConfigError):
            error = {"file": exc.file, "line": exc.line, "section": exc.section,
                     "reason": exc.reason}
        self._audit("refused", data, changes, error=error)

    # ---- history and audit ----------------------------------------------------------

    def _snapshot(self, cfg: ServerConfig) -> str | None:
        settings = cfg.config_history
        if not settings.enabled or not cfg.config_text or self.path is None:
            return None
        folder = history.history_dir(self.state_dir, settings.path)
        try:
            return history.snapshot(folder, cfg.config_text.encode("latin-1"),
                                    settings.max_histories)
        except OSError as exc:
            self.service.events.emit("config_history_failed", logging.ERROR,
                                     folder=folder, reason=str(exc))
            return None

    def _audit(self, result: str, data: bytes, changes: list[str], **extra: Any) -> None:
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "file": extra.pop("file", None) or self.path or "<embedded>",
            "result": result,
            "sha256": hashlib.sha256(data).hexdigest() if data else "",
            "changes": changes,
        }
        record.update({k: v for k, v in extra.items() if v is not None})
        try:
            with open(self.audit_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", self.audit_path, exc)
        fields = {k: v for k, v in record.items() if k not in ("time",)}
        self.service.events.emit("config_change",
                                 logging.INFO if result == "accepted" else logging.ERROR,
                                 **fields)
