"""IIS's CgiModule as a handler: runs the mapped script (or the mapping's
``scriptProcessor`` with the script as its argument) with an RFC 3875 environment,
feeds it the request body, and answers with what it writes.

The script's output is collected whole before the response is sent (CGI output is
not streamed).  ``system.webServer/cgi/@timeout`` bounds a run: past it the process is
killed and the client gets 502.1; output without a valid header block gets 502.2.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from ...urlpath import host_name
from ... import __version__

if TYPE_CHECKING:
    from ..apps import Selection, WorkerApplication
    from ..pipeline import HttpContext
    from ..stream import Stream

log = logging.getLogger("poolhouse.worker")

MAX_OUTPUT = 64 * 1024 * 1024


def cgi_environ(stream: "Stream", app: "WorkerApplication", sel: "Selection", path: str, query: str,
                ctx: "HttpContext | None", script: str) -> dict[str, str]:
    head = stream.head
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")}
    host = ""
    raw = head.headers
    for i in range(0, len(raw), 2):
        name = raw[i].decode("latin-1")
        value = raw[i + 1].decode("latin-1")
        if name == "host":
            host = value
        if name in ("content-length", "content-type", "proxy", "authorization"):
            continue  # RFC 3875 §4.1.18: not as HTTP_*; Proxy: httpoxy
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = env[key] + ", " + value if key in env else value
    rel = sel.rel
    env.update({
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"Poolhouse/{__version__}",
        "SERVER_NAME": host_name(host, head.server_addr),
        "SERVER_PORT": str(head.server_port),
        "SERVER_PROTOCOL": "HTTP/1.1" if head.http_minor else "HTTP/1.0",
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": path,
        "SCRIPT_FILENAME": script,
        "PATH_INFO": path if sel.mapping is not None and sel.mapping.entry.allow_path_info else "",
        "PATH_TRANSLATED": script,
        "QUERY_STRING": query,
        "REQUEST_URI": head.target.decode("latin-1"),
        "REMOTE_ADDR": head.client_addr,
        "REMOTE_HOST": head.client_addr,
        "REMOTE_PORT": str(head.client_port),
        "HTTPS": "on" if head.scheme == "https" else "off",
        "APPL_PHYSICAL_PATH": app.app.physical_path,
        "INSTANCE_ID": str(app.site.id),
    })
    for i in range(0, len(raw), 2):
        if raw[i] == b"content-type":
            env["CONTENT_TYPE"] = raw[i + 1].decode("latin-1")
    if head.body_length > 0:
        env["CONTENT_LENGTH"] = str(head.body_length)
    if ctx is not None:
        extra = ctx.extra_environ
        if extra:
            env.update(extra)
            if ctx.auth_type:
                env["AUTH_TYPE"] = ctx.auth_type
    _ = rel
    return env


def parse_output(out: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """(status, headers, body) of CGI output; None if it has no valid header block."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = out.find(sep)
        if idx >= 0:
            break
    else:
        return None
    head, body = out[:idx], out[idx + len(sep):]
    status = 200
    headers: list[tuple[bytes, bytes]] = []
    location = False
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        name, value = name.strip(), value.strip()
        low = name.lower()
        if low == b"status":
            try:
                status = int(value.split()[0])
            except (ValueError, IndexError):
                return None
            continue
        if low == b"location":
            location = True
        headers.append((name, value))
    if location and status == 200:
        status = 302
    if not headers and status == 200:
        return None
    return status, headers, body


async def run_cgi(worker: Any, stream: "Stream", app: "WorkerApplication", sel: "Selection", path: str,
                  query: str, ctx: "HttpContext | None") -> None:
    script = app.physical(sel.rel)
    mapping = sel.mapping
    assert mapping is not None
    processor = mapping.entry.script_processor.strip()
    argv = [processor, script] if processor else [script]
    timeout = 900.0
    if sel.web is not None:
        timeout = float(sel.web.sections.get("system.webServer/cgi", {}).get("timeout", 900.0) or 900.0)
    env = cgi_environ(stream, app, sel, path, query, ctx, script)
    stream.stage = "ExecuteRequestHandler"
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=os.path.dirname(script) or None)
    except PermissionError:
        worker.error_response(stream, 403, 1, f"{argv[0]} is not executable.")
        return
    except OSError as exc:
        worker.error_response(stream, 502, 2, f"CGI application {argv[0]} could not start: {exc}")
        return

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            while True:
                chunk = await stream.read_chunk()
                if chunk is None:
                    break
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    try:
        _, (out, err) = await asyncio.wait_for(asyncio.gather(feed(), proc.communicate()), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        worker.error_response(stream, 502, 1, f"The CGI application {argv[-1]} did not finish within {timeout:.0f} s.")
        return
    if err:
        log.warning("CGI %s wrote to stderr: %s", script, err[:2000].decode("utf-8", "replace"))
    if stream.cancelled:
        stream.reset()
        return
    parsed = parse_output(out[:MAX_OUTPUT])
    if parsed is None:
        worker.error_response(stream, 502, 2, f"The CGI application {argv[-1]} returned an incomplete set of "
                              f"HTTP headers (exit status {proc.returncode}).")
        return
    status, headers, body = parsed
    if ctx is not None:
        worker.send_whole(stream, status, headers, body, ctx)
        return
    from ..stream import BadResponseHeader, build_header_block
    try:
        block, _, close = build_header_block(headers)
    except BadResponseHeader as exc:
        worker.error_response(stream, 502, 2, str(exc))
        return
    if stream.head.method == "HEAD":
        stream.respond(status, block, len(body), b"", True, close)
    else:
        stream.respond(status, block, len(body), body, True, close)
