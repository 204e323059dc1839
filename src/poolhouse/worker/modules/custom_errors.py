"""CustomErrorModule: ``system.webServer/httpErrors`` on responses with a status of 400
or more (SendResponse, errors only).

- ``errorMode``: Detailed (IIS's detailed page: module, notification, handler, URL,
  physical path, logon user, detail), Custom (the configured pages), DetailedLocalOnly
  (detailed for requests from 127.0.0.1/::1, custom for others).
- ``existingResponse``: Replace (always), PassThrough (never replace a body a handler
  produced), Auto (replace only server-generated errors — a Python application's own
  error body counts as having set IIS's "skip custom errors" flag; a module can set
  ``response.skip_custom_errors`` too).  A handler's answer to HEAD has no body by
  definition: it counts as having one (the GET's) unless its Content-Length is 0, so
  an upstream's or an application's error to HEAD is passed through as the same
  error to GET would be, not replaced by a page whose size it would then carry.
- ``<error statusCode subStatusCode path responseMode>``: an exact sub-status entry
  wins over ``subStatusCode="-1"``, then ``defaultPath``/``defaultResponseMode``.
  File: a file (relative: under ``prefixLanguageFilePath/<language>/`` when that is
  set, else the application's folder), served with the original status; ExecuteURL: a
  URL of the same application served by the static file handler or an inline WSGI
  application, with the original status; Redirect: a 302 to the path.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any

from ...urlpath import host_name, wsgi_str
from ..apps import STATIC, WSGI
from ..error_pages import detailed_error_page, error_page
from ..pipeline import HttpContext, Response
from .base import Module, ModuleConfig

log = logging.getLogger("poolhouse.worker")

_HTML = b"text/html; charset=utf-8"


class CustomErrorModule(Module):
    send_errors_only = True

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("httpErrors")
        self.mode = str(sec.get("errorMode", "DetailedLocalOnly"))
        self.existing = str(sec.get("existingResponse", "Auto"))
        self.default_path = str(sec.get("defaultPath", "") or "")
        self.default_mode = str(sec.get("defaultResponseMode", "File"))
        self.more_info = str(sec.get("detailedMoreInformationLink", "") or "")
        self.entries: dict[tuple[int, int], dict[str, Any]] = {}
        for e in sec.get("items", []):
            self.entries[(int(e["statusCode"]), int(e.get("subStatusCode", -1)))] = e
        self._files: dict[str, tuple[float, bytes]] = {}

    def send_response(self, ctx: HttpContext) -> Any:
        resp = ctx.response
        if resp is None or resp.status < 400:
            return None
        has_body = not resp.generated and (
            bool(resp.body) or (ctx.method == "HEAD" and resp.header(b"Content-Length") != b"0"))
        if self.existing == "PassThrough" and has_body:
            return None
        if self.existing == "Auto" and (has_body or resp.skip_custom_errors):
            return None
        detailed = self.mode == "Detailed" or (self.mode == "DetailedLocalOnly" and ctx.is_local)
        if detailed:
            self._set(resp, self.detailed(ctx, resp), _HTML)
            return None
        entry = self.entries.get((resp.status, resp.substatus)) or self.entries.get((resp.status, -1))
        if entry is not None:
            path, mode, prefix = entry["path"], entry.get("responseMode", "File"), entry.get("prefixLanguageFilePath", "")
        elif self.default_path:
            path, mode, prefix = self.default_path, self.default_mode, ""
        else:
            self._set(resp, error_page(resp.status, resp.substatus), _HTML)
            return None
        if mode == "Redirect":
            resp.status, resp.substatus = 302, 0
            resp.set_header(b"Location", path.encode("latin-1", "replace"))
            self._set(resp, b"", _HTML)
            return None
        body, ctype = (self._execute_url(ctx, path) if mode == "ExecuteURL"
                       else self._file(ctx, path, prefix))
        if body is None:
            body, ctype = error_page(resp.status, resp.substatus), _HTML
        self._set(resp, body, ctype)
        return None

    @staticmethod
    def _set(resp: Response, body: bytes, ctype: bytes) -> None:
        resp.remove_header(b"Content-Length")
        resp.set_header(b"Content-Type", ctype)
        resp.body = body
        resp.end = True
        resp.generated = False
        resp.body_filter = None

    def detailed(self, ctx: HttpContext, resp: Response) -> bytes:
        info = [
            ("Module", ctx.error_module or ctx.module or "IIS Web Core"),
            ("Notification", ctx.error_notification or ctx.notification),
            ("Handler", ctx.handler or "Not yet determined"),
            ("Error Code", f"{resp.status}.{resp.substatus}"),
            ("Requested URL", f"{ctx.scheme}://{ctx.headers.get('host', '')}{ctx.raw_target.decode('latin-1')}"),
            ("Physical Path", ctx.physical_path),
            ("Logon Method", ctx.auth_type or "Anonymous"),
            ("Logon User", ctx.user or "Anonymous"),
        ]
        return detailed_error_page(resp.status, resp.substatus, info, resp.detail, self.more_info)

    def _file(self, ctx: HttpContext, path: str, prefix: str) -> tuple[bytes | None, bytes]:
        candidates = []
        path = path.replace("\\", "/")  # IIS files name folders with backslashes
        if os.path.isabs(path):
            candidates.append(path)
        elif prefix:
            langs = [p.split(";")[0].strip() for p in ctx.headers.get("accept-language", "").split(",") if p.strip()]
            for lang in langs + ["en-US"]:
                candidates.append(os.path.join(prefix, lang, path))
            candidates.append(os.path.join(prefix, path))
        else:
            candidates.append(os.path.join(self.config.physical_path, path.lstrip("/\\")))
        for candidate in candidates:
            data = self._read(candidate)
            if data is not None:
                ext = os.path.splitext(candidate)[1].lower()
                ctype = self.config.web.mime_maps.get(ext, "text/html")
                if ctype.startswith("text/") and "charset" not in ctype:
                    ctype += "; charset=utf-8"
                return data, ctype.encode("latin-1")
        log.error("httpErrors: custom error file %s not found", path)
        return None, _HTML

    def _read(self, path: str) -> bytes | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        hit = self._files.get(path)
        if hit is not None and hit[0] == st.st_mtime:
            return hit[1]
        try:
            with open(path, "rb") as fh:
                data = fh.read(4 * 1024 * 1024)
        except OSError:
            return None
        self._files[path] = (st.st_mtime, data)
        return data

    def _execute_url(self, ctx: HttpContext, url: str) -> tuple[bytes | None, bytes]:
        """A child request for ``url`` in the same application (GET, no modules)."""
        app = ctx.app
        path = url.split("?", 1)[0]
        query = url.split("?", 1)[1] if "?" in url else ""
        if app.base and not (path == app.base or path.startswith(app.base + "/")):
            log.error("httpErrors: ExecuteURL %s is outside the application", url)
            return None, _HTML
        sel = app.select("GET", path)
        if sel.kind == STATIC:
            from ..handlers.static import StaticFileHandler
            web = sel.web
            assert web is not None
            handler = StaticFileHandler(web.mime_maps, web.default_documents, web.default_document_enabled,
                                        web.directory_browse_enabled, web.directory_browse_show_flags)
            root, physical = app.mapped(sel.rel)
            out = handler.serve("GET", path, physical, {}, query, None if app.site.symlinks_outside_root else root)
            if out.status == 200 and isinstance(out.body, bytes):
                ctype = next((v for k, v in out.headers if k.lower() == b"content-type"), _HTML)
                return out.body, ctype
            return None, _HTML
        if sel.kind == WSGI:
            environ = {
                "REQUEST_METHOD": "GET", "SCRIPT_NAME": wsgi_str(app.base), "PATH_INFO": wsgi_str(path[len(app.base):]),
                "QUERY_STRING": query, "SERVER_NAME": host_name(ctx.headers.get("host", ""), "localhost"),
                "SERVER_PORT": str(ctx.stream.head.server_port), "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": ctx.client_addr, "wsgi.version": (1, 0), "wsgi.url_scheme": ctx.scheme,
                "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
                "wsgi.multiprocess": True, "wsgi.run_once": False,
                "HTTP_X_ORIGINAL_URL": ctx.raw_target.decode("latin-1"),
                "poolhouse.original_status": ctx.response.status if ctx.response else 0,
            }
            got: dict[str, Any] = {}

            def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                got["headers"] = headers
                return lambda data: None

            try:
                result = sel.target(environ, start_response)
                try:
                    body = b"".join(result)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
            except Exception:
                log.exception("httpErrors: ExecuteURL %s failed", url)
                return None, _HTML
            app_type = next((v for k, v in got.get("headers", []) if k.lower() == "content-type"), "text/html")
            return body, str(app_type).encode("latin-1")
        log.error("httpErrors: ExecuteURL %s is not served by a static file or WSGI handler", url)
        return None, _HTML
