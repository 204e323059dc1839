"""What is measured: every server of the benchmark, declared in one table.

A target names a server, the kind of response it gives (a WSGI or ASGI "hello", a fixed
`return 200` or a static 1 KiB file), how to launch it on a given port, the URL path to
load and the scenario that measures it. Adding a server or a scenario is adding a row.

Launch builders receive a LaunchContext (port, a private temporary directory, the paths
of the bench tree) and return the command line; those that need a configuration file
(nginx, Poolhouse) write it into the temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
APPS = BENCH / "apps"
WWW = BENCH / "www"
HELLO = b"Hello, world!"
STATIC_NAME = "1k.txt"


@dataclass(frozen=True)
class LaunchContext:
    port: int
    tmp: Path                      # private to this launch, removed afterwards


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: Path = BENCH
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str                                  # unique, matched by --only
    server: str                                # "granian", "nginx", "poolhouse", ...
    kind: str                                  # "wsgi" | "asgi" | "static" | "return"
    build: Callable[[LaunchContext], Launch]
    path: str = "/"
    scenario: str = "throughput"
    stop_signal: int = signal.SIGTERM
    startup_timeout: float = 20.0

    @property
    def expect(self) -> bytes:
        """The exact body every answer must carry."""
        if self.kind == "static":
            return (WWW / STATIC_NAME).read_bytes()
        return HELLO


def tool(name: str) -> str:
    """An executable of the running interpreter's environment (the venv), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or name


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


# -- peers ---------------------------------------------------------------------------------

def gunicorn_gthread(ctx: LaunchContext) -> Launch:
    return Launch([tool("gunicorn"), "-k", "gthread", "--threads", "4", "-w", "1",
                   "-b", f"127.0.0.1:{ctx.port}", "--chdir", str(APPS),
                   "--log-level", "warning", "hello_wsgi:app"])


def uwsgi_http11(ctx: LaunchContext) -> Launch:
    return Launch([tool("uwsgi"), "--http11-socket", f"127.0.0.1:{ctx.port}",
                   "--chdir", str(APPS), "--module", "hello_wsgi:app",
                   "--master", "--processes", "1", "--disable-logging",
                   "--need-app", "--die-on-term", "--strict"])


def uvicorn_asgi(ctx: LaunchContext) -> Launch:
    return Launch([tool("uvicorn"), "--app-dir", str(APPS), "--host", "127.0.0.1",
                   "--port", str(ctx.port), "--workers", "1", "--loop", "uvloop",
                   "--http", "httptools", "--lifespan", "on", "--no-access-log",
                   "--log-level", "warning", "hello_asgi:app"])


def granian(interface: str) -> Callable[[LaunchContext], Launch]:
    module = "hello_wsgi:app" if interface == "wsgi" else "hello_asgi:app"

    def build(ctx: LaunchContext) -> Launch:
        return Launch([tool("granian"), "--interface", interface, "--host", "127.0.0.1",
                       "--port", str(ctx.port), "--workers", "1", "--no-access-log",
                       "--log-level", "warning", "--working-dir", str(APPS), module])
    return build


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        location = / {{ return 200 "Hello, world!"; }}
        location / {{ root {www}; }}
    }}
}}
"""


def nginx(ctx: LaunchContext) -> Launch:
    """nginx with its own prefix, pid, logs and temp paths, all in the temp directory."""
    conf = ctx.tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=ctx.tmp, port=ctx.port, www=WWW))
    return Launch([nginx_binary(), "-p", f"{ctx.tmp}/", "-c", str(conf),
                   "-e", "stderr"])


# -- Poolhouse -----------------------------------------------------------------------------

APPLICATION_HOST = """\
<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <applicationPools>
      <add name="BenchPool" />
    </applicationPools>
    <sites>
      <site name="Bench" id="1">
        <application path="/" applicationPool="BenchPool">
          <virtualDirectory path="/" physicalPath="{approot}" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
      </site>
    </sites>
  </system.applicationHost>
{location}</configuration>
"""

LOCATION = """\
  <location path="Bench">
    <system.webServer>
      {web}
    </system.webServer>
  </location>
"""
HANDLER = '<handlers><add name="app" path="*" verb="*" modules="{module}" scriptProcessor="{callable}" /></handlers>'


def application_host_config(port: int, approot: Path, module: str | None = None,
                            callable_: str | None = None, web: str = "") -> str:
    """An IIS-format applicationHost.config with one site, one pool, one application:
    a handler for ``callable_`` when ``module`` is given, and ``web`` (more
    system.webServer elements) in the site's <location>."""
    if module is not None:
        web = HANDLER.format(module=module, callable=callable_) + web
    location = LOCATION.format(web=web) if web else ""
    return APPLICATION_HOST.format(port=port, approot=approot, location=location)


def poolhouse(kind: str) -> Callable[[LaunchContext], Launch]:
    def build(ctx: LaunchContext) -> Launch:
        if kind == "wsgi":
            text = application_host_config(ctx.port, APPS, "WsgiModule", "hello_wsgi:app")
        elif kind == "asgi":
            text = application_host_config(ctx.port, APPS, "AsgiModule", "hello_asgi:app")
        else:
            text = application_host_config(ctx.port, WWW)
        conf = ctx.tmp / "applicationHost.config"
        conf.write_text(text)
        return Launch([tool("poolhouse"), "serve", "-c", str(conf),
                       "--state-dir", str(ctx.tmp / "state")])
    return build


# -- the table -----------------------------------------------------------------------------

TARGETS: list[Target] = [
    Target("gunicorn-gthread", "gunicorn", "wsgi", gunicorn_gthread),
    Target("uwsgi", "uwsgi", "wsgi", uwsgi_http11, stop_signal=signal.SIGINT),
    Target("granian-wsgi", "granian", "wsgi", granian("wsgi")),
    Target("uvicorn", "uvicorn", "asgi", uvicorn_asgi),
    Target("granian-asgi", "granian", "asgi", granian("asgi")),
    Target("nginx-return", "nginx", "return", nginx),
    Target("nginx-static", "nginx", "static", nginx, path="/" + STATIC_NAME),
    # Poolhouse starts its workers on demand: the first request waits for a spawn.
    Target("poolhouse-wsgi", "poolhouse", "wsgi", poolhouse("wsgi"), startup_timeout=30.0),
    Target("poolhouse-asgi", "poolhouse", "asgi", poolhouse("asgi"), startup_timeout=30.0),
    Target("poolhouse-static", "poolhouse", "static", poolhouse("static"),
           path="/" + STATIC_NAME, startup_timeout=30.0),
]

# Poolhouse against its peers, within one series. A threshold is the goal set in the
# issue (Poolhouse req/s >= threshold x peer req/s); None means shown for information.
RATIOS: list[tuple[str, str, float | None]] = [
    ("poolhouse-wsgi", "granian-wsgi", 0.8),
    ("poolhouse-wsgi", "uwsgi", None),
    ("poolhouse-wsgi", "gunicorn-gthread", None),
    ("poolhouse-asgi", "uvicorn", 1.0),
    ("poolhouse-asgi", "granian-asgi", None),
    ("poolhouse-static", "nginx-static", 0.5),
]
