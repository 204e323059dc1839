"""wfastcgi migration: a handler mapping written for IIS + wfastcgi, unchanged,

    <add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule"
         scriptProcessor="C:\\Python311\\python.exe|C:\\Python311\\Lib\\site-packages\\wfastcgi.py" />

is served by Poolhouse's own WSGI handler, with the application named and set up by the
``appSettings`` wfastcgi reads:

* ``WSGI_HANDLER`` — ``module.callable`` or ``module.factory()``, resolved as wfastcgi
  does: the longest importable dotted prefix is the module, the rest are attributes,
  each ``()`` part is called;
* ``PYTHONPATH`` — ``;``-separated folders prepended to ``sys.path``; relative ones are
  taken from the application's folder (``\\`` becomes ``/``), Windows absolute ones
  (``C:\\…``) are ignored with a warning;
* ``WSGI_LOG`` — a file the application's errors are appended to: ``wsgi.errors``, the
  tracebacks of requests that raised, and the records of the application's own loggers
  (Flask's, named after the entry module; ``django.request``); a relative path is taken
  from the application's folder, a Windows absolute one is ignored with a warning;
* ``WSGI_RESTART_FILE_REGEX`` — default ``.*((\\.py)|(\\.config))$`` as in wfastcgi: a
  change of a matching file under the application's folder recycles the worker (it
  drains, exits 0, and the activation service starts a fresh one on the next request);
  an empty value turns the watch off;
* every appSetting is also put in ``os.environ`` (wfastcgi's behaviour, which is how
  ``DJANGO_SETTINGS_MODULE`` reaches Django).

The Windows paths of ``scriptProcessor`` themselves mean nothing on Linux: one warning.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from typing import Any

log = logging.getLogger("poolhouse.worker")

DEFAULT_RESTART_REGEX = r".*((\.py)|(\.config))$"
_WINDOWS_ABS = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")
_warned: set[str] = set()
_watched: set[str] = set()


def is_wfastcgi(modules: str, script_processor: str) -> bool:
    names = {m.strip().lower() for m in modules.split(",")}
    return "fastcgimodule" in names and "wfastcgi" in script_processor.lower()


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        log.warning("%s", text)


def python_path(value: str, folder: str) -> list[str]:
    """The folders of a wfastcgi PYTHONPATH setting, as Linux paths."""
    out = []
    for part in re.split(r"[;]", value):
        part = part.strip()
        if not part:
            continue
        if _WINDOWS_ABS.match(part):
            _warn_once(f"wfastcgi PYTHONPATH entry {part!r} is a Windows path: ignored "
                       f"(the application's folder {folder} is on sys.path)")
            continue
        part = part.replace("\\", "/")
        out.append(os.path.normpath(os.path.join(folder, part)))
    return out


def resolve_handler(name: str, importer: Any) -> Any:
    """wfastcgi's ``get_wsgi_handler``: ``importer(module_name)`` imports a module."""
    if not name:
        raise ImportError("the WSGI_HANDLER app setting is empty")
    module_name, _, callable_name = name.rpartition(".")
    should_call = callable_name.endswith("()")
    callable_name = callable_name[:-2] if should_call else callable_name
    chain = [(callable_name, should_call)]
    last: Exception | None = None
    while module_name:
        try:
            obj = importer(module_name)
        except ImportError as exc:
            last = exc
            module_name, _, callable_name = module_name.rpartition(".")
            should_call = callable_name.endswith("()")
            callable_name = callable_name[:-2] if should_call else callable_name
            chain.insert(0, (callable_name, should_call))
            continue
        for attr, call in chain:
            obj = getattr(obj, attr)
            if call:
                obj = obj()
        return obj
    raise ImportError(f"{name!r} could not be imported: {last}")


class _AppRecords(logging.Filter):
    """Log records of the application's own loggers (Flask names its logger after the
    entry module) and Django's request errors."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return name in self.names or name.split(".", 1)[0] in self.names or name == "django.request"


def prepare(settings: dict[str, str], folder: str, scope: str, environ_base: dict[str, Any],
            logger_names: set[str] | None = None) -> None:
    """Apply what wfastcgi does before importing the handler: environment, sys.path,
    the error log, the restart watch."""
    _warn_once(f"{scope}: FastCgiModule with wfastcgi: the Windows paths of scriptProcessor are ignored; "
               "the application runs in the worker's Python (see docs/hosting.md)")
    for key, value in settings.items():
        os.environ[key] = value
    for entry in reversed(python_path(settings.get("PYTHONPATH", ""), folder)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    log_path = settings.get("WSGI_LOG", "")
    if log_path:
        if _WINDOWS_ABS.match(log_path):
            _warn_once(f"{scope}: WSGI_LOG {log_path!r} is a Windows path: ignored")
        else:
            path = os.path.join(folder, log_path)
            try:
                fh = open(path, "a", buffering=1, encoding="utf-8")
                environ_base["wsgi.errors"] = fh
                handler = logging.StreamHandler(fh)
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                handler.addFilter(_AppRecords(logger_names or set()))
                logging.getLogger().addHandler(handler)
            except OSError as exc:
                log.error("%s: cannot open WSGI_LOG %s: %s", scope, path, exc)
    regex = settings.get("WSGI_RESTART_FILE_REGEX", DEFAULT_RESTART_REGEX)
    if regex:
        watch(folder, regex, scope)


def watch(folder: str, regex: str, scope: str) -> None:
    """Recycle the worker (SIGTERM to itself: drain, exit 0) when a file under
    ``folder`` matching ``regex`` changes."""
    try:
        rx = re.compile(regex, re.IGNORECASE)
    except re.error as exc:
        log.error("%s: WSGI_RESTART_FILE_REGEX %r: %s", scope, regex, exc)
        return
    if folder in _watched:
        return
    _watched.add(folder)

    def run() -> None:
        try:
            from watchfiles import watch as wf_watch
            for changes in wf_watch(folder, debounce=200, raise_interrupt=False):
                for _, path in changes:
                    rel = os.path.relpath(path, folder).replace(os.sep, "/")
                    if "__pycache__" in rel:
                        continue
                    if rx.match(rel) or rx.match(path):
                        log.info("%s: %s changed (WSGI_RESTART_FILE_REGEX): recycling the worker", scope, rel)
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
        except Exception as exc:
            log.error("%s: file watch for WSGI_RESTART_FILE_REGEX failed: %s", scope, exc)

    threading.Thread(target=run, name="wfastcgi-restart", daemon=True).start()
