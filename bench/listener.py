"""The listener's own speed: response-cache hits against nginx, and 10,000 idle keep-alive
connections.

* **cache hits**: Poolhouse serving ``/1k.txt`` from the listener's response cache (no
  worker involved after the first two requests), side by side with nginx ``return 200``
  and nginx ``proxy_cache`` hits; pinned (server tree on CPU 0, wrk on CPU 1), runs
  interleaved, medians of req/s and p99, and the ratios.  Goal: ≥ 0.9 × nginx return 200.
* **WSGI hello** through the worker, for reference (``--wsgi``).
* **idle connections**: 10,000 keep-alive connections (each has made one request) held
  open against the listener; its RSS (goal < 150 MB), and cache-hit throughput measured
  while they are held, against without.

    .venv/bin/python bench/listener.py [--duration 5] [--repetitions 3] [--idle 10000] [--wsgi]

Hook into ``make bench``: ``$(PY) bench/listener.py --json bench/results/listener.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import wrk  # noqa: E402
from harness.server import ServerProcess, StartError, free_port  # noqa: E402
from harness.targets import (APPS, HELLO, STATIC_NAME, WWW, application_host_config,  # noqa: E402
                             nginx_binary, tool)

SERVER_CPU, CLIENT_CPU = 0, 1

NGINX_CACHE_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache keys_zone=bench:10m;
    server {{
        listen 127.0.0.1:{port};
        location = / {{ return 200 "Hello, world!"; }}
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_cache bench;
            proxy_cache_valid 200 10m;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ root {www}; }}
    }}
}}
"""


def pinned(argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(SERVER_CPU), *argv]


def start_nginx(tmp: Path) -> tuple[ServerProcess, int]:
    port, upstream = free_port(), free_port()
    # nginx's workers may run as another user (nobody, when started as root): they
    # must reach the cache and temp directories
    os.chmod(tmp, 0o755)
    for sub in ("cache", "proxy", "client_body"):
        (tmp / sub).mkdir(exist_ok=True)
        os.chmod(tmp / sub, 0o777)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CACHE_CONF.format(tmp=tmp, port=port, upstream=upstream, www=WWW))
    server = ServerProcess(pinned([nginx_binary(), "-p", f"{tmp}/", "-c", str(conf), "-e", "stderr"]),
                           cwd=tmp, env=dict(os.environ), log_path=tmp / "nginx.log")
    server.start()
    server.wait_ready(port, "/", HELLO, 20)
    return server, port


def start_poolhouse(tmp: Path, wsgi: bool) -> tuple[ServerProcess, int]:
    port = free_port()
    conf = tmp / "applicationHost.config"
    if wsgi:
        conf.write_text(application_host_config(port, APPS, "WsgiModule", "hello_wsgi:app"))
    else:
        conf.write_text(application_host_config(port, WWW))
    server = ServerProcess(pinned([tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "state")]),
                           cwd=tmp, env=dict(os.environ), log_path=tmp / "poolhouse.log")
    server.start()
    path, expect = ("/", HELLO) if wsgi else ("/" + STATIC_NAME, (WWW / STATIC_NAME).read_bytes())
    server.wait_ready(port, path, expect, 30)
    return server, port


def listener_process(server: ServerProcess) -> psutil.Process | None:
    for proc in server.tree():
        try:
            if "poolhouse.listener" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            pass
    return None


def measure(url: str, duration: float) -> wrk.WrkResult:
    return wrk.run(url, duration, connections=64, threads=1, cpu=CLIENT_CPU)


def hold_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each having made one request (so the listener
    holds them as idle HTTP connections, not as unaccepted sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, count + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    request = f"GET /{STATIC_NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(request)
        socks.append(s)
        if len(socks) % 500 == 0:  # read the answers as we go (the backlog is finite)
            for t in socks[-500:]:
                t.recv(65536)
    for t in socks[len(socks) - len(socks) % 500:]:
        t.recv(65536)
    return socks


def row(name: str, results: list[wrk.WrkResult]) -> dict[str, float]:
    return {
        "name": name,  # type: ignore[dict-item]
        "rps": statistics.median(r.requests_per_sec for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "errors": sum(r.errors + r.non_2xx for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--wsgi", action="store_true", help="also WSGI hello through the worker")
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2, \
            tempfile.TemporaryDirectory() as t3:
        servers: list[ServerProcess] = []
        try:
            ph, ph_port = start_poolhouse(Path(t1), wsgi=False)
            servers.append(ph)
            ng, ng_port = start_nginx(Path(t2))
            servers.append(ng)
            hello = None
            if args.wsgi:
                hello, hello_port = start_poolhouse(Path(t3), wsgi=True)
                servers.append(hello)
            for _ in range(3):  # frequently hit: cached from the second response on
                wrk.run(f"http://127.0.0.1:{ph_port}/{STATIC_NAME}", 1, connections=4, cpu=CLIENT_CPU)
                wrk.run(f"http://127.0.0.1:{ng_port}/{STATIC_NAME}", 1, connections=4, cpu=CLIENT_CPU)
            urls = {
                "poolhouse cache hit (1 KiB file)": f"http://127.0.0.1:{ph_port}/{STATIC_NAME}",
                "nginx return 200": f"http://127.0.0.1:{ng_port}/",
                "nginx proxy_cache hit (1 KiB file)": f"http://127.0.0.1:{ng_port}/{STATIC_NAME}",
            }
            if hello is not None:
                urls["poolhouse WSGI hello (worker)"] = f"http://127.0.0.1:{hello_port}/"
            results: dict[str, list[wrk.WrkResult]] = {k: [] for k in urls}
            for _ in range(args.repetitions):
                for name, url in urls.items():
                    results[name].append(measure(url, args.duration))
            rows = [row(name, rs) for name, rs in results.items()]
            base = rows[0]["rps"]
            print(f"{'':40s} {'req/s':>10s} {'p99 ms':>8s} {'errors':>7s}")
            for r in rows:
                print(f"{r['name']:40s} {r['rps']:10,.0f} {r['p99_ms']:8.2f} {r['errors']:7.0f}")
            for r in rows[1:3]:
                print(f"ratio poolhouse cache hit / {r['name']}: {base / r['rps']:.2f}")
            out["throughput"] = rows
            listener = listener_process(ph)
            if args.idle and listener is not None:
                before_rss = listener.memory_info().rss
                socks = hold_idle(ph_port, args.idle)
                time.sleep(1.0)
                rss = listener.memory_info().rss
                during = [measure(urls["poolhouse cache hit (1 KiB file)"], args.duration)
                          for _ in range(args.repetitions)]
                held = sum(1 for s in socks if s.fileno() >= 0)
                limits = open(f"/proc/{listener.pid}/limits").read()
                nofile = next((line for line in limits.splitlines() if "open files" in line), "")
                for s in socks:
                    s.close()
                idle = {
                    "connections": held,
                    "listener_rss_mb_before": round(before_rss / 2**20, 1),
                    "listener_rss_mb_with_idle": round(rss / 2**20, 1),
                    "cache_hit_rps_with_idle": statistics.median(r.requests_per_sec for r in during),
                    "cache_hit_rps_without": base,
                    "listener_nofile_limit": " ".join(nofile.split()[3:5]),
                }
                print(json.dumps(idle, indent=2))
                out["idle"] = idle
        except (StartError, wrk.WrkError) as exc:
            print(f"bench/listener.py: {exc}", file=sys.stderr)
            return 1
        finally:
            for s in servers:
                s.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
