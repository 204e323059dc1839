"""HttpLoggingModule.  The W3C access log is written by the listener (HTTP.sys's role);
what only the worker knows reaches it in the RESPONSE head: the sub-status, the user,
and the values of the site's custom fields (``logFile/customFields``) whose source is a
response header or a server variable.

The module is in a request's pipeline only when its site has such fields; it then
computes their values as the response head leaves (``log_values``, called by the
stream, so they are the headers actually sent).  A server variable's value is, in
order: what a module put in ``ctx.response.log_fields`` under that name, what a module
set with ``ctx.set_server_variable``, or the request's own server variable (``URL``,
``REMOTE_PORT``, ``HTTP_X_…``, …).  Request-header fields are read by the listener."""

from __future__ import annotations

from typing import Any

from ...ipc.queue import MAX_LOG_FIELD_VALUE, MAX_LOG_FIELDS
from ..pipeline import HttpContext
from .base import Module, ModuleConfig

RESPONSE_HEADER = "ResponseHeader"
SERVER_VARIABLE = "ServerVariable"


class HttpLoggingModule(Module):
    logs = True

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        site = getattr(config.app, "site", None)
        log_file = getattr(site, "log_file", None)
        fields = [c for c in getattr(log_file, "custom_fields", ())
                  if c.source_type in (RESPONSE_HEADER, SERVER_VARIABLE)][:MAX_LOG_FIELDS]
        # (logFieldName, is a response header, the header's lower-case name or the
        # variable's upper-case name)
        self.sources = tuple((c.log_field_name, c.source_type == RESPONSE_HEADER,
                              c.source_name.lower() if c.source_type == RESPONSE_HEADER else c.source_name.upper())
                             for c in fields)
        self.headers = frozenset(s[2].encode("latin-1", "replace") for s in self.sources if s[1])
        self.limit = min(int(getattr(log_file, "max_custom_field_length", 4096)), MAX_LOG_FIELD_VALUE)

    def enabled(self) -> bool:
        return bool(self.sources)

    def log_values(self, ctx: HttpContext, header_block: bytes,
                   content_length: int) -> tuple[tuple[str, str], ...]:
        """(logFieldName, value) of the site's worker-side custom fields, for the
        response head leaving now (fields without a value are left out)."""
        found: dict[str, str] = {}
        if self.headers:
            for line in header_block.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                low = name.strip().lower()
                if sep and low in self.headers:
                    key = low.decode("latin-1")
                    text = value.strip().decode("latin-1")
                    found[key] = found[key] + "," + text if key in found else text
            if content_length >= 0 and b"content-length" in self.headers:
                found["content-length"] = str(content_length)
        resp = ctx.response
        given = resp.log_fields if resp is not None else None
        upper = {k.upper(): v for k, v in given.items()} if given else None
        out = []
        limit = self.limit
        for field, is_header, source in self.sources:
            if is_header:
                value = found.get(source)
            elif upper is not None and source in upper:
                value = upper[source]
            else:
                value = ctx.server_variables.get(source)
            if value:
                out.append((field, str(value)[:limit]))
        return tuple(out)


__all__ = ["HttpLoggingModule"]
