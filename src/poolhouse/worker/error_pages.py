"""The worker's error pages, in the shape of IIS's: a title, the status and sub-status,
and (for local requests, as errorMode="DetailedLocalOnly" says) the detail."""

from __future__ import annotations

import html
import re
from http import HTTPStatus

_SUBSTATUS = {
    (404, 0): "The resource you are looking for has been removed, had its name changed, or is temporarily unavailable.",
    (404, 2): "The page you are requesting cannot be served because of the ISAPI and CGI Restriction list settings on the Web server.",
    (404, 3): "The page you are requesting cannot be served because of the extension configuration (MIME map).",
    (404, 4): "No handler is configured to serve this request.",
    (403, 14): "A default document is not configured for the requested URL, and directory browsing is not enabled.",
    (405, 0): "The page you are looking for cannot be displayed because an invalid method (HTTP verb) is being used.",
    (500, 0): "The page cannot be displayed because an internal server error has occurred.",
    (500, 19): "The requested page cannot be accessed because the related configuration data for the page is invalid.",
    (500, 21): "The module is not recognized.",
    (401, 1): "Logon failed: the credentials are not valid.",
    (401, 2): "Logon failed due to server configuration: you do not have permission to view this page with the credentials you supplied.",
    (401, 3): "You do not have permission to view this resource (URL authorization).",
    (401, 503): "The IP address of the client is denied.",
    (403, 1): "Execute access is forbidden: the handler requires Script or Execute access that accessPolicy does not grant.",
    (403, 2): "Read access is forbidden: the handler requires Read access that accessPolicy does not grant.",
    (403, 3): "Write access is forbidden.",
    (403, 503): "The IP address of the client is denied.",
    (404, 5): "The request filtering module is configured to deny a URL sequence.",
    (404, 6): "The request filtering module is configured to deny the HTTP verb.",
    (404, 7): "The request filtering module is configured to deny the file extension.",
    (404, 8): "The request filtering module is configured to deny a path that contains a hidden segment.",
    (404, 11): "The request filtering module is configured to deny a request that contains a double escape sequence.",
    (404, 12): "The request filtering module is configured to deny a request that contains high-bit characters.",
    (404, 14): "The request filtering module is configured to deny a request whose URL is too long.",
    (404, 15): "The request filtering module is configured to deny a request whose query string is too long.",
    (404, 18): "The request filtering module is configured to deny a query string sequence.",
    (404, 19): "The request was denied by a request filtering rule.",
    (404, 503): "The IP address of the client is denied.",
    (413, 1): "The request filtering module is configured to deny a request that exceeds the request content length.",
    (502, 1): "The CGI application did not complete within the configured timeout.",
    (502, 2): "The CGI application did not return a complete set of HTTP headers.",
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
    ).encode("utf-8", "replace")  # a path that is not UTF-8 (/x%ff) holds surrogates


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


def substatus_message(status: int, substatus: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _SUBSTATUS.get((status, substatus)) or _SUBSTATUS.get((status, 0)) or phrase + "."


def detailed_error_page(status: int, substatus: int, info: list[tuple[str, str]], detail: str = "",
                        more_information: str = "") -> bytes:
    """IIS's detailed error page: status and sub-status, the most likely causes, and the
    module, notification, handler, requested URL, physical path, logon method and user
    (errorMode="Detailed", or DetailedLocalOnly for a local request)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = f"{status}.{substatus}" if substatus else str(status)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info)
    extra = f"<h3>Detailed error information</h3><pre>{html.escape(detail)}</pre>" if detail else ""
    more = (f'<h3>More information</h3><p><a href="{html.escape(more_information)}">'
            f"{html.escape(more_information)}</a></p>") if more_information else ""
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>IIS Detailed Error - {code} - {html.escape(phrase)}</title></head><body>"
        f"<h1>HTTP Error {code} - {html.escape(phrase)}</h1>"
        f"<h2>{html.escape(substatus_message(status, substatus))}</h2>"
        f"<h3>Detailed Error Information:</h3><table class=\"detailed\">{rows}</table>{extra}{more}"
        "</body></html>\n"
    ).encode("utf-8", "replace")  # a path that is not UTF-8 (/x%ff) holds surrogates
