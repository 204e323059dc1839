"""The worker's error pages, in the shape of IIS's: a title, the status and sub-status,
and (for local requests, as errorMode="DetailedLocalOnly" says) the detail."""

from __future__ import annotations

import html
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
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>{code} - {html.escape(phrase)}</title></head><body>"
        f"<h1>HTTP Error {code} - {html.escape(phrase)}</h1><p>{html.escape(message)}</p>{extra}"
        "</body></html>\n"
    ).encode()
