"""Large static files: what the listener's sendfile path delivers, end to end.

A static file above the static handler's in-memory limit (256 KB) is opened by the
worker, passed to the listener as a descriptor on the worker's file channel, and sent by
the listener with sendfile (docs/listener.md).  This measures requests/s and MB/s for a
few sizes with wrk against a real server (server tree on CPU 0, wrk on CPU 1 unless
``--unpinned``).  To see what the descriptor passing costs, run it on two commits and
compare the figures.

    .venv/bin/python bench/files.py [--duration 5] [--repetitions 3] [--sizes 300K,1M,16M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import wrk  # noqa: E402
from harness.server import ServerProcess, free_port  # noqa: E402
from harness.targets import application_host_config, tool  # noqa: E402

UNITS = {"K": 1024, "M": 1024 * 1024}


def size_of(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--sizes", default="300K,1M,16M")
    parser.add_argument("--unpinned", action="store_true")
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()
    pinned = not args.unpinned
    if pinned:
        os.sched_setaffinity(0, {1})
    sizes = [(s, size_of(s)) for s in args.sizes.split(",")]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="poolhouse-files-") as d:
        tmp = Path(d)
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_bytes(b"ok")
        for name, n in sizes:
            with open(www / f"f{name}.bin", "wb") as fh:
                fh.write(os.urandom(min(n, 1 << 20)) * (n // (1 << 20) or 1) if n >= 1 << 20 else os.urandom(n))
        port = free_port()
        conf = tmp / "applicationHost.config"
        conf.write_text(application_host_config(port, www))
        argv = [tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "state")]
        if pinned:
            argv = ["taskset", "-c", "0", *argv]
        server = ServerProcess(argv, cwd=tmp, env=dict(os.environ), log_path=tmp / "server.log")
        server.start()
        try:
            server.wait_ready(port, "/index.html", b"ok", 30.0)
            for name, n in sizes:
                url = f"http://127.0.0.1:{port}/f{name}.bin"
                wrk.run(url, min(args.duration, 2), connections=args.connections, cpu=1 if pinned else None)
                rps: list[float] = []
                for _ in range(args.repetitions):
                    r = wrk.run(url, args.duration, connections=args.connections, cpu=1 if pinned else None)
                    if r.errors:
                        print(f"  {name}: {r.errors} errors", file=sys.stderr)
                    rps.append(r.requests_per_sec)
                median = statistics.median(rps)
                results[name] = {"bytes": n, "req_per_sec": round(median, 1),
                                 "mb_per_sec": round(median * n / 1e6, 1)}
                print(f"  {name:>5s} {median:10.1f} req/s  {median * n / 1e6:9.1f} MB/s", flush=True)
        finally:
            left = server.stop()
            if left:
                print("LEFT: " + "; ".join(left), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
