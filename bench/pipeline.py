"""What the integrated pipeline costs: hello WSGI through Poolhouse with the stock module
list on, against the bare pipeline (``<modules><clear/>`` + the handler module only).

Two measurements:

* ``wrk`` (default): both configurations served by real servers, pinned as bench/README.md
  says (server tree on CPU 0, wrk on CPU 1), runs interleaved (bare, stock, bare, stock,
  …) so a noisy neighbour hits both alike; the median req/s of each and their ratio.
  Goal: stock ≥ 0.85 × bare (at most 15 % slower).
* ``--inproc``: the worker alone, in this process — a WorkerProcess with a fake
  transport fed batches of 32 REQUEST frames, configurations interleaved per batch; the
  best µs per request of each.  Goal: the bare pipeline costs what the worker cost
  before the pipeline existed (~0 µs more); stock adds a few µs.

"Stock" is: StaticFile/DefaultDocument (handler modules), RequestFilteringModule with
IIS's stock lists, AnonymousAuthenticationModule, ProtocolSupportModule with one custom
header, Static/DynamicCompressionModule (gzip), HttpLoggingModule, CustomErrorModule —
i.e. the base configuration's module list plus one ``customHeaders`` entry.

    .venv/bin/python bench/pipeline.py [--duration 10] [--repetitions 3] [--inproc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import wrk  # noqa: E402
from harness.server import ServerProcess, StartError, free_port  # noqa: E402
from harness.targets import APPS, HELLO, application_host_config, tool  # noqa: E402

CONFIGS = {
    "bare": '<modules><clear /><add name="WsgiModule" /></modules>',
    "stock": ('<httpProtocol><customHeaders><add name="X-Powered-By" value="Poolhouse" />'
              "</customHeaders></httpProtocol>"),
}



def config_text(port: int, name: str) -> str:
    return application_host_config(port, APPS, "WsgiModule", "hello_wsgi:app", web=CONFIGS[name])


# -- wrk, end to end ------------------------------------------------------------------------

def start(name: str, tmp: Path, pinned: bool) -> tuple[ServerProcess, int]:
    port = free_port()
    conf = tmp / f"{name}.config"
    conf.write_text(config_text(port, name))
    argv = [tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / f"state-{name}")]
    if pinned:
        argv = ["taskset", "-c", "0", *argv]
    server = ServerProcess(argv, cwd=APPS, env=dict(os.environ), log_path=tmp / f"{name}.log")
    server.start()
    server.wait_ready(port, "/", HELLO, 30.0)
    return server, port


def run_wrk(args: argparse.Namespace) -> dict[str, object]:
    pinned = not args.unpinned
    if pinned:
        os.sched_setaffinity(0, {1})
    results: dict[str, list[float]] = {n: [] for n in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="poolhouse-pipeline-") as d:
        tmp = Path(d)
        servers = {}
        try:
            for name in CONFIGS:
                servers[name] = start(name, tmp, pinned)
            for name, (_, port) in servers.items():  # warm up both
                wrk.run(f"http://127.0.0.1:{port}/", args.warmup, connections=args.connections,
                        cpu=1 if pinned else None)
            for _ in range(args.repetitions):
                for name, (_, port) in servers.items():
                    r = wrk.run(f"http://127.0.0.1:{port}/", args.duration, connections=args.connections,
                                cpu=1 if pinned else None)
                    if r.errors:
                        print(f"  {name}: {r.errors} errors", file=sys.stderr)
                    results[name].append(r.requests_per_sec)
                    print(f"  {name:5s} {r.requests_per_sec:10.0f} req/s  p99 {r.p99_ms:.2f} ms", flush=True)
        finally:
            for server, _ in servers.values():
                left = server.stop()
                if left:
                    print("LEFT: " + "; ".join(left), file=sys.stderr)
    medians = {n: statistics.median(v) for n, v in results.items()}
    ratio = medians["stock"] / medians["bare"]
    return {"series": "pinned" if pinned else "unpinned", "req_per_sec": results, "median": medians,
            "stock_over_bare": round(ratio, 3), "goal": 0.85, "met": ratio >= 0.85}


# -- in process --------------------------------------------------------------------------------

def run_inproc(args: argparse.Namespace) -> dict[str, object]:
    import asyncio
    import marshal

    from poolhouse.config import load_server_config
    from poolhouse.ipc import queue as q
    from poolhouse.worker.apps import WorkerApplication
    from poolhouse.worker.handlers.wsgi import WsgiHandler, make_environ_base
    from poolhouse.worker.process import WorkerProcess

    class Sink:
        def writelines(self, out: object) -> None:
            pass

        def write(self, data: object) -> None:
            pass

    sys.path.insert(0, str(APPS))

    def make(name: str, tmp: Path) -> tuple[WorkerProcess, list[tuple[int, int, int, bytes]]]:
        path = tmp / f"{name}.config"
        path.write_text(config_text(1, name))
        server = load_server_config(str(path))
        worker = WorkerProcess("BenchPool", "1")
        worker.transport = Sink()  # type: ignore[assignment]
        worker.wsgi = WsgiHandler(worker.loop, 0)
        worker.environ_base = make_environ_base("Poolhouse/bench", False)
        site = server.sites[0]
        app = WorkerApplication(server, site, site.applications[0])
        app.preload()
        worker.apps[app.key] = app
        head = q.RequestHead(app.key, "GET", b"/", 1, (b"host", b"127.0.0.1:8080", b"user-agent", b"wrk"),
                             "127.0.0.1", 5555, "127.0.0.1", 8080, "http", 0)
        payload = marshal.dumps(tuple(head), 4)
        return worker, [(q.REQUEST, q.END_STREAM, i + 1, payload) for i in range(32)]

    async def main() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as d:
            workers = {n: make(n, Path(d)) for n in CONFIGS}
            best = {n: float("inf") for n in CONFIGS}
            for rnd in range(args.rounds):
                for name, (worker, frames) in workers.items():
                    t = time.perf_counter()
                    for _ in range(20):
                        worker.on_frames(frames)
                        worker._flush()
                    if rnd >= 5:
                        best[name] = min(best[name], (time.perf_counter() - t) / 640)
            return {n: round(v * 1e6, 2) for n, v in best.items()}

    us = asyncio.run(main())
    for name, value in us.items():
        print(f"  {name:5s} {value:6.2f} us/request in the worker")
    return {"us_per_request": us, "stock_minus_bare_us": round(us["stock"] - us["bare"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--unpinned", action="store_true")
    parser.add_argument("--inproc", action="store_true", help="the worker alone, in this process")
    parser.add_argument("--rounds", type=int, default=150, help="--inproc: interleaved batches")
    parser.add_argument("--output", default="", help="also write the figures as JSON here")
    args = parser.parse_args()
    try:
        result = run_inproc(args) if args.inproc else run_wrk(args)
    except (StartError, wrk.WrkError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
