"""Process-model benchmark: what on-demand activation and recycling cost.

    .venv/bin/python bench/process_model.py [--duration S] [--cold N] [--output FILE]

1. Cold start: the latency of the first request to a pool that has no worker (the
   listener queues it, the activation service starts a worker, the worker imports the
   application), for the hello WSGI application and for a Flask one. Measured N times:
   after each, the pool is stopped and started again (OnDemand: no worker until a request).
2. Recycling under load, side by side: wrk for S seconds against Poolhouse while
   `poolhouse recycle apppool` runs every second (overlapped recycle), and against
   gunicorn while it gets `kill -HUP` every second (its graceful reload). Failed requests
   (wrk socket errors + non-2xx) and req/s for both, with a run without recycling as the
   baseline.

Reuses bench/harness (server lifecycle, wrk). Flask must be installed in the venv
(`.venv/bin/pip install flask`); without it the Flask row is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

from harness import wrk  # noqa: E402
from harness.server import ServerProcess, become_subreaper, free_port, get  # noqa: E402
from harness.targets import APPS, HELLO, application_host_config, tool  # noqa: E402

FLASK_APP = """\
from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, world!", 200, {"Content-Type": "text/plain"}
"""


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def poolhouse_server(tmp: Path, approot: Path, callable_: str, name: str) -> tuple[ServerProcess, int, Path]:
    port = free_port()
    conf = tmp / f"{name}.config"
    conf.write_text(application_host_config(port, approot, "WsgiModule", callable_))
    state = tmp / f"{name}-state"
    server = ServerProcess([tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(state)],
                           cwd=BENCH, env=dict(os.environ), log_path=tmp / f"{name}.log")
    server.start()
    wait_listening(port)
    return server, port, state


def manage(state: Path, request: dict[str, Any]) -> Any:
    from poolhouse.admin.cli import call

    return call(str(state), request, timeout=30)


def cold_start(tmp: Path, approot: Path, callable_: str, name: str, times: int) -> dict[str, Any]:
    """First-request latency to a pool without a worker, ``times`` times."""
    server, port, state = poolhouse_server(tmp, approot, callable_, name)
    try:
        samples = []
        for i in range(times):
            if i:
                manage(state, {"op": "stop", "what": "apppool", "name": "BenchPool"})
                deadline = time.monotonic() + 30
                while manage(state, {"op": "list", "what": "wp"}) and time.monotonic() < deadline:
                    time.sleep(0.05)
                manage(state, {"op": "start", "what": "apppool", "name": "BenchPool"})
            started = time.perf_counter()
            status, body = get(port, "/", timeout=30)
            samples.append((time.perf_counter() - started) * 1000)
            if status != 200 or body != HELLO:
                raise RuntimeError(f"{name}: cold request answered {status} {body[:80]!r}")
        warm = []
        for _ in range(20):
            started = time.perf_counter()
            get(port, "/")
            warm.append((time.perf_counter() - started) * 1000)
        return {"cold_ms_median": round(statistics.median(samples), 1), "cold_ms_min": round(min(samples), 1),
                "cold_ms_max": round(max(samples), 1), "warm_ms_median": round(statistics.median(warm), 2),
                "samples": len(samples)}
    finally:
        server.stop()


def under_recycling(url: str, duration: float, action: Any, connections: int) -> dict[str, Any]:
    """wrk for ``duration`` s while ``action()`` runs every second."""
    stop = threading.Event()
    count = [0]

    def loop() -> None:
        while not stop.wait(1.0):
            action()
            count[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        result = wrk.run(url, duration, connections=connections)
    finally:
        stop.set()
        thread.join(10)
    return {"req_per_s": round(result.requests_per_sec), "requests": result.requests, "failed": result.errors,
            "socket_errors": result.socket_errors, "non_2xx": result.non_2xx, "recycles": count[0],
            "p99_ms": result.p99_ms}


def recycle_poolhouse(tmp: Path, duration: float, connections: int) -> dict[str, Any]:
    server, port, state = poolhouse_server(tmp, APPS, "hello_wsgi:app", "recycle")
    try:
        server.wait_ready(port, "/", HELLO, 30)
        url = f"http://127.0.0.1:{port}/"
        base = wrk.run(url, min(5.0, duration), connections=connections)
        loaded = under_recycling(url, duration, lambda: manage(
            state, {"op": "recycle", "what": "apppool", "name": "BenchPool"}), connections)
        loaded["baseline_req_per_s"] = round(base.requests_per_sec)
        return loaded
    finally:
        server.stop()


def recycle_gunicorn(tmp: Path, duration: float, connections: int) -> dict[str, Any]:
    port = free_port()
    server = ServerProcess([tool("gunicorn"), "-k", "gthread", "--threads", "4", "-w", "1",
                            "-b", f"127.0.0.1:{port}", "--chdir", str(APPS), "--log-level", "warning",
                            "hello_wsgi:app"], cwd=BENCH, env=dict(os.environ), log_path=tmp / "gunicorn.log")
    server.start()
    try:
        server.wait_ready(port, "/", HELLO, 30)
        url = f"http://127.0.0.1:{port}/"
        base = wrk.run(url, min(5.0, duration), connections=connections)
        assert server.proc is not None
        pid = server.proc.pid
        loaded = under_recycling(url, duration, lambda: os.kill(pid, signal.SIGHUP), connections)
        loaded["baseline_req_per_s"] = round(base.requests_per_sec)
        return loaded
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load while recycling")
    parser.add_argument("--cold", type=int, default=5, help="cold starts measured per application")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    become_subreaper()
    results: dict[str, Any] = {"cold_start": {}, "recycling": {}}
    with tempfile.TemporaryDirectory(prefix="ph-bench-pm-") as tmpname:
        tmp = Path(tmpname)
        results["cold_start"]["hello-wsgi"] = cold_start(tmp, APPS, "hello_wsgi:app", "hello", args.cold)
        try:
            import flask  # noqa: F401
        except ImportError:
            print("flask is not installed in this interpreter: Flask cold start skipped", file=sys.stderr)
        else:
            flask_dir = tmp / "flaskapp"
            flask_dir.mkdir()
            (flask_dir / "flask_hello.py").write_text(FLASK_APP)
            results["cold_start"]["flask"] = cold_start(tmp, flask_dir, "flask_hello:app", "flask", args.cold)
        results["recycling"]["poolhouse (recycle apppool every 1 s)"] = recycle_poolhouse(
            tmp, args.duration, args.connections)
        results["recycling"]["gunicorn-gthread (kill -HUP every 1 s)"] = recycle_gunicorn(
            tmp, args.duration, args.connections)
    print("\nCold start: first request to a pool with no worker (ms)")
    print(f"{'application':<14}{'median':>10}{'min':>10}{'max':>10}{'warm':>10}")
    for name, r in results["cold_start"].items():
        print(f"{name:<14}{r['cold_ms_median']:>10}{r['cold_ms_min']:>10}{r['cold_ms_max']:>10}{r['warm_ms_median']:>10}")
    print(f"\nThroughput while recycling every second ({args.duration:g} s, {args.connections} connections)")
    print(f"{'server':<42}{'req/s':>9}{'baseline':>10}{'failed':>8}{'recycles':>10}{'p99 ms':>9}")
    for name, r in results["recycling"].items():
        print(f"{name:<42}{r['req_per_s']:>9}{r['baseline_req_per_s']:>10}{r['failed']:>8}{r['recycles']:>10}"
              f"{r['p99_ms']:>9.1f}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
