"""IIS's CgiModule as a handler: runs the mapped script (or the mapping's
``scriptProcessor`` with the script as its argument) with an RFC 3875 environment,
feeds it the request body as it arrives, and streams what it writes.

The response head leaves as soon as the script's header block ends; the body follows
as the script produces it, under the stream's response window (a script that writes
faster than the client reads waits on its full pipe).  A script that has finished by
the time its header block is read is answered as a whole response (Content-Length,
custom errors, the response cache).  ``system.webServer/cgi/@timeout`` bounds a run:
past it the process is killed — 502.1 before the head was sent, a reset stream after.
Output without a valid header block gets 502.2; a script killed mid-body, or one that
writes less than its Content-Length, resets the stream (the client sees an incomplete
response, never a truncated one that looks whole).

What may run is decided by ``system.webServer/security/isapiCgiRestriction`` (set in
applicationHost.config only): the program — the mapping's ``scriptProcessor``, else the
script itself — is resolved to its real path (symbolic links followed) and that path
must be listed with ``allowed="true"`` (or ``notListedCgisAllowed="true"`` and not listed
as denied); otherwise 404.2, as IIS answers.  The real path is what is executed.

Each run goes through ``cgi_launcher.py``, a subreaper per run (and a cgroup per run
where the activation service delegated one to this worker): the program's whole process
tree, including descendants that left its session, ends with the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from typing import TYPE_CHECKING, Any

from ...urlpath import host_name
from ... import __version__
from ..stream import BadResponseHeader, build_header_block

if TYPE_CHECKING:
    from ..apps import Selection, WorkerApplication
    from ..pipeline import HttpContext
    from ..stream import Stream

log = logging.getLogger("poolhouse.worker")

MAX_HEADER_BLOCK = 64 * 1024
SETTLE = 0.01
"""How long, once the header block has ended, to wait for the script's end before
streaming: a script that writes its whole answer at once is sent as a whole response."""
READ_SIZE = 64 * 1024


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


def header_end(out: bytes) -> tuple[int, int]:
    """(index, separator length) of the blank line ending the header block, or (-1, 0)."""
    crlf, lf = out.find(b"\r\n\r\n"), out.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def parse_output(out: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """(status, headers, body so far) of CGI output; None if it has no valid header
    block."""
    idx, seplen = header_end(out)
    if idx < 0:
        return None
    head, body = out[:idx], out[idx + seplen:]
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


class CgiTimeout(Exception):
    pass


RESTRICTION = "system.webServer/security/isapiCgiRestriction"
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cgi_launcher.py")
KILL_GRACE = 10.0
"""Seconds the launcher has to end a program's tree before it is killed itself."""


def end_tree(proc: asyncio.subprocess.Process) -> None:
    """Tell a run's launcher to end the program's tree (SIGTERM); past KILL_GRACE, kill
    the launcher and its process group."""
    if proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return

    def last_resort() -> None:
        if proc.returncode is None:
            log.warning("the CGI launcher %d did not end its program within %.0f s: killed", proc.pid, KILL_GRACE)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

    asyncio.get_running_loop().call_later(KILL_GRACE, last_resort)


def restriction_allows(section: dict[str, Any] | None, real: str) -> bool:
    """isapiCgiRestriction's verdict on a program whose real path is ``real``: an entry
    with exactly that path decides; without one, ``notListedCgisAllowed`` does.  Paths
    are compared as they are (Linux paths are case-sensitive; IIS's, on Windows, are
    not)."""
    if section is None:
        return False
    for entry in section.get("items", ()):
        if entry.get("path") == real:
            return bool(entry.get("allowed"))
    return bool(section.get("notListedCgisAllowed"))


_containment: list[str | None] = []


def cgroup_parent() -> str | None:
    """This worker's own cgroup, when the activation service delegated one to it
    (``<...>/w<pid>`` in a cgroup v2 hierarchy, writable by this process): each CGI run
    gets a cgroup below it.  None: the launcher's subreaper alone contains the tree."""
    if _containment:
        return _containment[0]
    found: str | None = None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            rel = next((line.strip()[3:] for line in fh if line.startswith("0::")), None)
        mount = None
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    mount = parts[1]
                    break
        if rel and mount:
            path = os.path.join(mount, rel.lstrip("/"))
            if (os.path.basename(path) == f"w{os.getpid()}" and os.access(path, os.W_OK)
                    and os.access(os.path.join(path, "cgroup.procs"), os.W_OK)):
                found = path
    except OSError:
        pass
    _containment.append(found)
    log.info("CGI runs are contained by %s", f"a cgroup each under {found} and a subreaper" if found
             else "a subreaper (no delegated cgroup v2 group for this worker)")
    return found


class CgiRun:
    """One run of a CGI program for one request stream."""

    def __init__(self, worker: Any, stream: "Stream", ctx: "HttpContext | None", argv: list[str],
                 proc: asyncio.subprocess.Process, timeout: float) -> None:
        self.worker = worker
        self.stream = stream
        self.ctx = ctx
        self.argv = argv
        self.proc = proc
        self.timeout = timeout
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.eof = False

    def trace(self, name: str, **data: Any) -> None:
        if self.ctx is not None:
            self.ctx.trace_event(name, **data)

    async def read(self) -> bytes:
        """The next piece of the script's output (b"" at its end); CgiTimeout past the
        deadline."""
        assert self.proc.stdout is not None
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise CgiTimeout
        try:
            data = await asyncio.wait_for(self.proc.stdout.read(READ_SIZE), left)
        except asyncio.TimeoutError:
            raise CgiTimeout from None
        if not data:
            self.eof = True
        return data

    async def settle(self, buf: bytes) -> bytes:
        """More output, until the script's end or a short quiet moment."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        until = min(loop.time() + SETTLE, self.deadline)
        while len(buf) < READ_SIZE:
            left = until - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(self.proc.stdout.read(READ_SIZE), left)
            except asyncio.TimeoutError:
                break
            if not data:
                self.eof = True
                break
            buf += data
        return buf

    async def wait_exit(self) -> int:
        left = max(0.0, self.deadline - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(self.proc.wait(), left)
        except asyncio.TimeoutError:
            raise CgiTimeout from None

    def kill(self) -> None:
        """End the program and everything it started: the launcher kills the tree
        (cgroup, then every descendant it still has) and reaps it.  A launcher that has
        not finished within KILL_GRACE is killed with its process group."""
        end_tree(self.proc)

    async def drain(self) -> None:
        """Read and drop the rest of the output (HEAD, a response a module replaced)."""
        try:
            while not self.eof:
                await self.read()
            await self.wait_exit()
        except CgiTimeout:
            self.kill()
            self.trace("CGI_TIMEOUT", script=self.argv[-1], timeout=self.timeout)

    async def run(self) -> None:
        stream, worker, script = self.stream, self.worker, self.argv[-1]
        buf = b""
        try:
            while True:
                data = await self.read()
                if stream.cancelled:
                    self.kill()
                    stream.reset()
                    return
                buf += data
                if header_end(buf)[0] >= 0 or not data:
                    break
                if len(buf) > MAX_HEADER_BLOCK:
                    break
            parsed = parse_output(buf)
            if parsed is None:
                if not self.eof:  # a header block past MAX_HEADER_BLOCK
                    self.kill()
                code = await self.wait_exit()
                worker.error_response(stream, 502, 2, f"The CGI application {script} returned an incomplete set "
                                      f"of HTTP headers (exit status {code}).")
                return
            status, headers, body = parsed
            self.trace("CGI_HEADERS", status=status)
            if not self.eof:
                body = await self.settle(body)
            if self.eof:
                code = await self.wait_exit()
                self.trace("CGI_END", script=script, exit_code=code)
                if code < 0:  # killed by a signal: whatever it wrote is not its answer
                    self.trace("CGI_PREMATURE_TERMINATION", script=script, signal=-code)
                    worker.error_response(stream, 502, 2, f"The CGI application {script} was killed by "
                                          f"signal {-code}.")
                    return
                self.whole(status, headers, body)
                return
            await self.stream_body(status, headers, body)
        except CgiTimeout:
            self.kill()
            self.trace("CGI_TIMEOUT", script=script, timeout=self.timeout)
            if stream.head_sent:
                stream.reset()
            else:
                worker.error_response(stream, 502, 1, f"The CGI application {script} did not finish within "
                                      f"{self.timeout:.0f} s.")
        finally:
            if self.proc.returncode is None:
                self.kill()

    def whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        stream = self.stream
        if self.ctx is not None:
            self.worker.send_whole(stream, status, headers, body, self.ctx)
            return
        try:
            block, _, close = build_header_block(headers)
        except BadResponseHeader as exc:
            self.worker.error_response(stream, 502, 2, str(exc))
            return
        stream.respond(status, block, len(body), b"" if stream.head.method == "HEAD" else body, True, close)

    async def stream_body(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The head (with what came so far), then the body as the script writes it."""
        stream, ctx, script = self.stream, self.ctx, self.argv[-1]
        end = False
        try:
            if ctx is not None and ctx.pipeline.has_send:
                out = ctx.send_response(status, 0, headers, body, False)
                if out.generated:
                    self.worker.error_response(stream, out.status, out.substatus, out.detail)
                    await self.drain()
                    return
                changed = out.body is not body or out.end
                status, headers, body, end = out.status, out.headers, out.body, out.end  # type: ignore[assignment]
                if out.body_filter is not None:
                    stream.body_filter = out.body_filter
                block, length, close = build_header_block(headers)
                if changed or stream.body_filter is not None:
                    length = len(body) if end else -1
            else:
                block, length, close = build_header_block(headers)
        except BadResponseHeader as exc:
            self.worker.error_response(stream, 502, 2, str(exc))
            await self.drain()
            return
        if stream.head.method == "HEAD" or end:
            stream.respond(status, block, length if length >= 0 else len(body),
                           b"" if stream.head.method == "HEAD" else body, True, close)
            await self.drain()
            return
        if length >= 0 and len(body) > length:
            body = body[:length]
        stream.respond(status, block, length, body, False, close)
        sent = len(body)
        while True:
            data = await self.read()
            if stream.cancelled:
                stream.reset()
                return
            if not data:
                break
            if length >= 0 and sent + len(data) > length:
                data = data[:length - sent]
            if data:
                if stream.window <= 0:
                    await stream.wait_window()
                    if stream.cancelled:
                        stream.reset()
                        return
                stream.send_body(data)
                sent += len(data)
        code = await self.wait_exit()
        self.trace("CGI_END", script=script, exit_code=code)
        if code < 0 or (length >= 0 and sent < length):
            self.trace("CGI_PREMATURE_TERMINATION", script=script, exit_code=code, bytes=sent)
            log.warning("CGI %s ended mid-body (exit status %d, %d bytes sent): the stream is reset",
                        script, code, sent)
            stream.reset()
            return
        stream.send_body(b"", end=True)


async def run_cgi(worker: Any, stream: "Stream", app: "WorkerApplication", sel: "Selection", path: str,
                  query: str, ctx: "HttpContext | None") -> None:
    script = app.physical(sel.rel)
    mapping = sel.mapping
    assert mapping is not None
    processor = mapping.entry.script_processor.strip()
    if processor and not os.path.isabs(processor):
        processor = shutil.which(processor) or processor  # as exec would find it on PATH
    program = processor or script
    real = os.path.realpath(program)
    web = sel.web
    stream.stage = "ExecuteRequestHandler"
    if not restriction_allows(web.sections.get(RESTRICTION) if web is not None else None, real):
        log.warning("CGI program %s%s is not allowed by isapiCgiRestriction: 404.2 for %s (list it in "
                    "applicationHost.config as <add path=\"%s\" allowed=\"true\" />)", program,
                    f" (real path {real})" if real != program else "", path, real)
        if ctx is not None:
            ctx.trace_event("CGI_RESTRICTION_DENIED", program=program, real_path=real)
        worker.error_response(stream, 404, 2, f"The CGI program {real} is not allowed by the ISAPI and CGI "
                              "Restriction list (isapiCgiRestriction) of this server (0x800704ec).",
                              detail_local=True)
        return
    if not os.path.isfile(real):
        worker.error_response(stream, 502, 2, f"CGI application {program} could not start: it does not exist.")
        return
    if not os.access(real, os.X_OK):
        worker.error_response(stream, 403, 1, f"{program} is not executable.")
        return
    argv = [real, script] if processor else [real]
    timeout = 900.0
    if web is not None:
        timeout = float(web.sections.get("system.webServer/cgi", {}).get("timeout", 900.0) or 900.0)
    env = cgi_environ(stream, app, sel, path, query, ctx, script)
    group = cgroup_parent()
    launcher = [sys.executable, "-I", "-S", LAUNCHER, "--parent", str(os.getpid())]
    if group is not None:
        launcher += ["--cgroup", group]
    try:
        proc = await asyncio.create_subprocess_exec(
            *launcher, "--", *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=os.path.dirname(script) or None,
            start_new_session=True)  # and a process group of its own: the last resort of kill()
    except OSError as exc:
        worker.error_response(stream, 502, 2, f"CGI application {argv[0]} could not start: {exc}")
        return
    if ctx is not None:
        ctx.trace_event("CGI_LAUNCH", script=script, program=real, pid=proc.pid,
                        containment="cgroup" if group is not None else "subreaper")

    async def feed() -> None:
        """The request body, to stdin as it arrives (read_chunk returns the window)."""
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

    async def errors() -> None:
        assert proc.stderr is not None
        kept = b""
        while True:
            data = await proc.stderr.read(READ_SIZE)
            if not data:
                break
            if len(kept) < 2000:
                kept += data[:2000 - len(kept)]
        if kept:
            log.warning("CGI %s wrote to stderr: %s", script, kept.decode("utf-8", "replace"))

    feeding = asyncio.ensure_future(feed())
    stderr = asyncio.ensure_future(errors())
    try:
        await CgiRun(worker, stream, ctx, argv, proc, timeout).run()
    finally:
        if not feeding.done():
            feeding.cancel()
        try:
            await asyncio.wait_for(stderr, 5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        if proc.returncode is None:
            await proc.wait()
