"""Hosting figures: real frameworks through Poolhouse against the servers their users
would otherwise pick, and the reverse proxy against nginx's.

* ``flask``: a Flask app's simplest JSON endpoint — Poolhouse (``WsgiModule``) vs
  gunicorn (``-k gthread --threads 4 -w 1``);
* ``fastapi``: the same with FastAPI — Poolhouse (``AsgiModule``) vs uvicorn (uvloop,
  httptools, one worker);
* ``proxy``: a URL Rewrite rule to an absolute URL (ARR's reverse proxy, in the worker) vs
  nginx ``proxy_pass`` with upstream keep-alive; both in front of the same upstream
  (nginx ``return 200``), so the proxy is what is measured.

Each server runs pinned to CPU 0 (its whole tree), wrk on CPU 1 (the proxy's upstream
too), one worker/process per server, runs interleaved per group; the median req/s.

    .venv/bin/python bench/hosting.py [--duration 10] [--repetitions 3] [--only flask|fastapi|proxy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import wrk  # noqa: E402
from harness.server import ServerProcess, StartError, free_port  # noqa: E402
from harness.targets import application_host_config, nginx_binary, tool  # noqa: E402

JSON_BODY = b'{"message":"Hello, world!"}\n'
UPSTREAM_BODY = b"Hello, world!"

FLASK_APP = """\
from flask import Flask
app = Flask(__name__)
app.json.compact = True

@app.get("/json")
def hello():
    return {"message": "Hello, world!"}
"""

FASTAPI_APP = """\
from fastapi import FastAPI
from fastapi.responses import Response
import json
app = FastAPI()

@app.get("/json")
async def hello():
    return Response(json.dumps({"message": "Hello, world!"}, separators=(",", ":")) + "\\n",
                    media_type="application/json")
"""


NGINX = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx-{name}.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cb-{name};
    proxy_temp_path {tmp}/px-{name};
    fastcgi_temp_path {tmp}/fc-{name};
    uwsgi_temp_path {tmp}/uw-{name};
    scgi_temp_path {tmp}/sc-{name};
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        {location}
    }}
}}
"""


class Target:
    def __init__(self, name: str, path: str, expect: bytes, start: Callable[[Path, int], ServerProcess]) -> None:
        self.name, self.path, self.expect, self.start = name, path, expect, start


def poolhouse(web: str) -> Callable[[Path, int], ServerProcess]:
    def start(tmp: Path, port: int) -> ServerProcess:
        conf = tmp / f"ph-{port}.config"
        conf.write_text(application_host_config(port, tmp / "apps", web=web))
        argv = ["taskset", "-c", "0", tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / f"st-{port}")]
        return ServerProcess(argv, cwd=tmp / "apps", env=dict(os.environ), log_path=tmp / f"ph-{port}.log")
    return start


def command(*argv: str) -> Callable[[Path, int], ServerProcess]:
    def start(tmp: Path, port: int) -> ServerProcess:
        args = ["taskset", "-c", "0", *[a.replace("{port}", str(port)) for a in argv]]
        return ServerProcess(args, cwd=tmp / "apps", env=dict(os.environ), log_path=tmp / f"{argv[0].rsplit('/', 1)[-1]}-{port}.log")
    return start


def nginx(name: str, location: str, upstream: int, cpu: str = "0") -> Callable[[Path, int], ServerProcess]:
    def start(tmp: Path, port: int) -> ServerProcess:
        conf = tmp / f"nginx-{name}.conf"
        conf.write_text(NGINX.format(tmp=tmp, name=name, port=port, upstream=upstream or port, location=location))
        return ServerProcess(["taskset", "-c", cpu, nginx_binary(), "-p", f"{tmp}/", "-c", str(conf)],
                             cwd=tmp, env=dict(os.environ), log_path=tmp / f"nginx-{name}.log")
    return start


def groups(upstream: int) -> dict[str, list[Target]]:
    return {
        "flask": [
            Target("poolhouse-flask", "/json", JSON_BODY, poolhouse(
                '<handlers><add name="app" path="*" verb="*" modules="WsgiModule" scriptProcessor="flask_app:app" /></handlers>')),
            Target("gunicorn-flask", "/json", JSON_BODY, command(
                tool("gunicorn"), "-k", "gthread", "--threads", "4", "-w", "1", "-b", "127.0.0.1:{port}",
                "--log-level", "warning", "flask_app:app")),
        ],
        "fastapi": [
            Target("poolhouse-fastapi", "/json", JSON_BODY, poolhouse(
                '<handlers><add name="app" path="*" verb="*" modules="AsgiModule" scriptProcessor="fastapi_app:app" /></handlers>')),
            Target("uvicorn-fastapi", "/json", JSON_BODY, command(
                tool("uvicorn"), "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning", "fastapi_app:app")),
        ],
        "proxy": [
            Target("poolhouse-proxy", "/x", UPSTREAM_BODY, poolhouse(
                f'<rewrite><rules><rule name="p" stopProcessing="true"><match url=".*" />'
                f'<action type="Rewrite" url="http://127.0.0.1:{upstream}/{{R:0}}" /></rule></rules></rewrite>')),
            Target("nginx-proxy", "/x", UPSTREAM_BODY, nginx(
                "proxy", "location / { proxy_pass http://up; proxy_http_version 1.1; "
                "proxy_set_header Connection \"\"; }", upstream)),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default="", help="flask, fastapi or proxy (comma list)")
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="poolhouse-hosting-") as d:
        tmp = Path(d)
        (tmp / "apps").mkdir()
        (tmp / "apps" / "flask_app.py").write_text(FLASK_APP)
        (tmp / "apps" / "fastapi_app.py").write_text(FASTAPI_APP)
        upstream_port = free_port()
        upstream = nginx("upstream", f'location / {{ return 200 "{UPSTREAM_BODY.decode()}"; }}', 0, cpu="1")(
            tmp, upstream_port)
        try:
            upstream.start()
            upstream.wait_ready(upstream_port, "/", UPSTREAM_BODY, 10)
            for group, targets in groups(upstream_port).items():
                if args.only and group not in args.only.split(","):
                    continue
                running: list[tuple[Target, ServerProcess, int]] = []
                try:
                    for t in targets:
                        port = free_port()
                        server = t.start(tmp, port)
                        server.start()
                        running.append((t, server, port))
                        server.wait_ready(port, t.path, t.expect, 30)
                        wrk.run(f"http://127.0.0.1:{port}{t.path}", args.warmup, connections=args.connections, cpu=1)
                    for _ in range(args.repetitions):
                        for t, _, port in running:
                            r = wrk.run(f"http://127.0.0.1:{port}{t.path}", args.duration,
                                        connections=args.connections, cpu=1)
                            results.setdefault(group, {}).setdefault(t.name, []).append(r.requests_per_sec)
                            print(f"  {t.name:18s} {r.requests_per_sec:10.0f} req/s  p99 {r.p99_ms:7.2f} ms"
                                  + (f"  {r.errors} errors" if r.errors else ""), flush=True)
                finally:
                    for _, server, _ in running:
                        left = server.stop()
                        if left:
                            print("LEFT: " + "; ".join(left), file=sys.stderr)
        except (StartError, wrk.WrkError) as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        finally:
            upstream.stop()
    summary = {g: {n: statistics.median(v) for n, v in ts.items()} for g, ts in results.items()}
    print(json.dumps({"median_req_per_sec": summary, "runs": results}, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({"median_req_per_sec": summary, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
