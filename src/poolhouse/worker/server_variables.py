"""IIS/CGI server variables of a request (``ctx.server_variables``), computed on first
use: for modules, for URL rewrite rules, and (what authentication adds) for the WSGI
environ and the ASGI scope."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..urlpath import host_name
from .. import __version__

if TYPE_CHECKING:
    from .pipeline import HttpContext


def compute(ctx: "HttpContext") -> dict[str, str]:
    head = ctx.stream.head
    app = ctx.app
    target = head.target.decode("latin-1")
    https = head.scheme == "https"
    v: dict[str, str] = {
        "REQUEST_METHOD": head.method,
        "URL": ctx.path,
        "PATH_INFO": ctx.path,
        "SCRIPT_NAME": ctx.path,
        "QUERY_STRING": ctx.query,
        "REQUEST_URI": target,
        "UNENCODED_URL": target,
        "HTTP_URL": target,
        "CACHE_URL": f"{head.scheme}://{ctx.headers.get('host', head.server_addr)}{target}",
        "SERVER_PROTOCOL": "HTTP/1.1" if head.http_minor else "HTTP/1.0",
        "SERVER_SOFTWARE": f"Poolhouse/{__version__}",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REMOTE_ADDR": head.client_addr,
        "REMOTE_HOST": head.client_addr,
        "REMOTE_PORT": str(head.client_port),
        "LOCAL_ADDR": head.server_addr,
        "SERVER_PORT": str(head.server_port),
        "SERVER_PORT_SECURE": "1" if https else "0",
        "HTTPS": "on" if https else "off",
        "APPL_PHYSICAL_PATH": app.app.physical_path,
        "APPL_MD_PATH": f"/LM/W3SVC/{app.site.id}/ROOT{app.base}",
        "INSTANCE_ID": str(app.site.id),
        "INSTANCE_NAME": app.site.name.upper(),
        "INSTANCE_META_PATH": f"/LM/W3SVC/{app.site.id}",
        "PATH_TRANSLATED": ctx.physical_path,
        "REQUEST_FILENAME": ctx.physical_path,
        "AUTH_TYPE": ctx.auth_type,
        "AUTH_USER": ctx.user,
        "REMOTE_USER": ctx.user,
        "LOGON_USER": ctx.user,
        "AUTH_PASSWORD": "",
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(head.body_length) if head.body_length >= 0 else "",
    }
    all_http = []
    all_raw = []
    for name, value in ctx.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        if name == "content-type":
            v["CONTENT_TYPE"] = value
        elif name == "content-length":
            v["CONTENT_LENGTH"] = value
        v[key] = value
        all_http.append(f"{key}:{value}")
        all_raw.append(f"{name}: {value}")
    v["SERVER_NAME"] = host_name(ctx.headers.get("host", ""), head.server_addr)
    v["ALL_HTTP"] = "\n".join(all_http)
    v["ALL_RAW"] = "\n".join(all_raw)
    return v
