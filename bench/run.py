#!/usr/bin/env python3
"""`make bench`: Poolhouse side by side with its peers, in one run.

For each target of harness/targets.py (gunicorn, uWSGI, uvicorn, granian, nginx and
Poolhouse itself) and each series (servers pinned to CPU 0 and wrk to CPU 1, or nothing
pinned): start the server on a free loopback port, wait until it answers correctly, warm
it up, run `wrk -t1 -c64 -d<D>s --latency` three times, keep the median run's req/s and
p99, the peak RSS of the server's process tree under load, stop it and check that no
process is left. Prints a table and the Poolhouse/peer ratios against the goals, and
writes everything to bench/results/latest.json. A target that cannot start is reported
as such and the run goes on. See bench/README.md.

Only the standard library and psutil are needed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import report
from harness.scenarios import SCENARIOS, MeasureError, Run, Settings
from harness.server import ServerProcess, StartError, become_subreaper, free_port
from harness.targets import BENCH, TARGETS, LaunchContext, Target, nginx_binary
from harness.wrk import WrkError

SERVER_CPU = 0
WRK_CPU = 1
RESULTS = BENCH / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per measured wrk run (default 10)")
    p.add_argument("--repetitions", type=int, default=3,
                   help="measured wrk runs per target; the median is kept (default 3)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of wrk load before measuring (default 2)")
    p.add_argument("--only", metavar="REGEX",
                   help="run only the targets whose name matches (re.search)")
    p.add_argument("--series", choices=("pinned", "unpinned", "both"), default="both")
    p.add_argument("--quick", action="store_true",
                   help="a fast check: --duration 3, 1 repetition, 1 s warm-up")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json",
                   help="JSON results file (default bench/results/latest.json)")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repetitions, args.warmup = 3.0, 1, 1.0
    if args.duration <= 0 or args.repetitions < 1:
        p.error("--duration must be > 0 and --repetitions >= 1")
    return args


def select(pattern: str | None) -> list[Target]:
    if pattern is None:
        return list(TARGETS)
    rx = re.compile(pattern)
    return [t for t in TARGETS if rx.search(t.name)]


def run_target(target: Target, series: str, settings: Settings) -> dict[str, Any]:
    """Starts, measures and stops one target; never raises for a failing server."""
    row: dict[str, Any] = {"target": target.name, "series": series, "server": target.server,
                           "kind": target.kind, "path": target.path,
                           "scenario": target.scenario, "status": "ok"}
    pinned = series == "pinned"
    tmp = Path(tempfile.mkdtemp(prefix=f"poolhouse-bench-{target.name}-"))
    server: ServerProcess | None = None
    try:
        port = free_port()
        try:
            launch = target.build(LaunchContext(port=port, tmp=tmp))
        except Exception as exc:                       # a builder bug must not stop the run
            row["status"] = f"failed to start: cannot prepare launch: {exc}"
            return row
        argv = ["taskset", "-c", str(SERVER_CPU), *launch.argv] if pinned else launch.argv
        row["command"] = argv
        log_path = RESULTS / "logs" / f"{target.name}-{series}.log"
        row["log"] = str(log_path)
        server = ServerProcess(argv, cwd=launch.cwd,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **launch.env},
                               log_path=log_path, stop_signal=target.stop_signal)
        try:
            server.start()
            row["startup_s"] = server.wait_ready(port, target.path, target.expect,
                                                 target.startup_timeout)
        except StartError as exc:
            row["status"] = f"failed to start: {exc}"
            return row
        run = Run(target=target, server=server, port=port,
                  wrk_cpu=WRK_CPU if pinned else None, settings=settings)
        try:
            row.update(SCENARIOS[target.scenario](run))
        except MeasureError as exc:
            row.update(exc.partial)
            row["status"] = f"failed: {exc}"
        except (WrkError, OSError) as exc:
            row["status"] = f"failed: {exc}"
    finally:
        if server is not None:
            row["leftovers"] = server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def progress(row: dict[str, Any]) -> str:
    head = f"[{row['series']}] {row['target']}:"
    if row["status"] != "ok":
        line = f"{head} {row['status']}"
    else:
        line = (f"{head} {row['requests_per_sec']:,.0f} req/s, p99 {row['p99_ms']:.2f} ms, "
                f"RSS {row['rss_mb']:.1f} MB in {row['processes']} process(es)")
        if row.get("errors"):
            line += f", {row['errors']} wrk errors"
        line += "".join(f"; {bit}" for bit in report.disturbance(row))
    if row.get("leftovers"):
        line += f"\n    NOT STOPPED CLEANLY (killed): {'; '.join(row['leftovers'])}"
    return line


def versions() -> dict[str, str]:
    found = {}
    for dist in ("poolhouse", "gunicorn", "uWSGI", "uvicorn", "granian", "uvloop",
                 "httptools", "psutil"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    for name, argv in (("nginx", [nginx_binary(), "-v"]), ("wrk", ["wrk", "-v"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            text = (out.stdout + out.stderr).strip().splitlines()
            found[name] = text[0] if text else "?"
        except OSError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except OSError:
        commit = None
    return {"host": platform.node(), "cpu": model, "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "commit": commit}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = select(args.only)
    if args.list:
        for t in TARGETS:
            print(f"{t.name:<18} {t.server:<10} {t.kind:<7} {t.path:<8} {t.scenario}")
        return 0
    if not targets:
        print(f"no target matches {args.only!r}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk not found: run `make bench-deps` (bench/install-peers.sh)", file=sys.stderr)
        return 2
    series = ["pinned", "unpinned"] if args.series == "both" else [args.series]
    all_cpus = os.sched_getaffinity(0)
    if "pinned" in series and not {SERVER_CPU, WRK_CPU} <= all_cpus:
        print(f"pinned series needs CPUs {SERVER_CPU} and {WRK_CPU}; skipping it",
              file=sys.stderr)
        series.remove("pinned")
        if not series:
            return 2
    settings = Settings(duration=args.duration, repetitions=args.repetitions,
                        warmup=args.warmup, connections=args.connections)
    per_target = settings.warmup + settings.duration * settings.repetitions + 2
    print(f"bench: {len(targets)} target(s) x {len(series)} series, wrk -t1 "
          f"-c{settings.connections} -d{settings.duration:g}s x{settings.repetitions}; "
          f"about {len(targets) * len(series) * per_target / 60:.0f} min", flush=True)

    become_subreaper()
    started = time.time()
    rows: list[dict[str, Any]] = []
    try:
        for s in series:
            # The runner (RSS sampler, readiness checks) shares wrk's CPU, not the server's.
            os.sched_setaffinity(0, {WRK_CPU} if s == "pinned" else all_cpus)
            for target in targets:
                row = run_target(target, s, settings)
                rows.append(row)
                print(progress(row), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; reporting what was measured", file=sys.stderr)
    finally:
        os.sched_setaffinity(0, all_cpus)

    ratio_entries = report.ratios(rows)
    print()
    print(report.table(rows))
    print("\nPoolhouse / peer req/s (goal from the issue):")
    print(report.ratio_text(ratio_entries))
    meta = {
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "settings": {"duration_s": settings.duration, "repetitions": settings.repetitions,
                     "warmup_s": settings.warmup, "connections": settings.connections,
                     "threads": settings.threads, "server_cpu": SERVER_CPU,
                     "wrk_cpu": WRK_CPU, "series": series},
        "machine": machine(),
        "versions": versions(),
    }
    report.write_json(args.output, meta, rows, ratio_entries)
    print(f"\nresults: {args.output}  (logs: {RESULTS / 'logs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
