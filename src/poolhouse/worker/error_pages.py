"""The worker's error pages, in the shape of IIS's: a title, the status and sub-status,
and (for local requests, as errorMode="DetailedLocalOnly" says) the detail."""

from __future__ import annotations

import html
import re
from http import HTTPStatus

_SUBSTATUS = {
    (404, 0): "The resource you are looking for has been removed, had its name changed, or is temporarily unavailable.",
    (404, 3): "The page you are requesting cannot be served because of the extension configuration (MIME map).",
    (404, 4): "No handler is configured to serve this request.",
    (403, 14): "A default document is not configured for the requested URL, and directory browsing is not enabled.",
    (405, 0): "The page you are looking for cannot be displayed because an invalid method (HTTP verb) is being used.",
    (500, 0): "The page cannot be displayed because an internal server error has occurred.",
    (500, 19): "The requested page cannot be accessed because the related configuration data for the page is invalid.",
    (500, 21): "The module is not recognized.",
}


def error_page(status: int, substatus: int, detail: str = "") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = f"{status}.{substatus}" if substatus else str(status)
    message = _SUBSTATUS.get((status, substatus)) or _SUBSTATUS.get((status, 0)) or phrase + "."
    extra = f"<h3>Detailed error information</h3><pre>{html.escape(detail)}</pre>" if detail else ""
    if (status, substatus) == (500, 19) and detail:
        extra = _config_error_detail(detail) or extra
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>{code} - {html.escape(phrase)}</title></head><body>"
        f"<h1>HTTP Error {code} - {html.escape(phrase)}</h1><p>{html.escape(message)}</p>{extra}"
        "</body></html>\n"
    ).encode()


# 500.19: the detail is a ConfigError's text, "<file>:<line>: <section>: <reason>"
# (poolhouse.config.errors); shown as IIS's detailed page shows it.
_CONFIG_ERROR = re.compile(
    r"^(?:Configuration error: )?(?P<file>.+?)(?::(?P<line>\d+))?: "
    r"(?:(?P<section>[A-Za-z][\w.]*(?:/[\w.]+)*): )?(?P<reason>.*)$", re.S)
_HRESULTS = (  # KB 942055
    ("locked", "0x80070021"),
    ("cannot be used at this path", "0x80070021"),
    ("duplicate collection entry", "0x800700b7"),
    ("cannot read", "0x80070003"),
)


def _config_error_detail(detail: str) -> str:
    m = _CONFIG_ERROR.match(detail.strip())
    if m is None:
        return ""
    file, line, section, reason = m.group("file", "line", "section", "reason")
    code = next((h for key, h in _HRESULTS if key in reason), "0x8007000d")
    rows = [("Error Code", code), ("Config Error", reason), ("Config File", file),
            ("Config Line", line or "-"), ("Config Section", section or "-")]
    table = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    source = ""
    if line:
        try:
            with open(file, encoding="utf-8", errors="replace") as fh:
                lines = fh.read(1 << 20).splitlines()
            n = int(line)
            shown = [f"{i:5d}: {lines[i - 1]}" for i in range(max(1, n - 1), min(len(lines), n + 1) + 1)]
            source = f"<h4>Config Source</h4><pre>{html.escape(chr(10).join(shown))}</pre>"
        except (OSError, ValueError, IndexError):
            pass
    return f"<h3>Detailed Error Information</h3><table>{table}</table>{source}"
