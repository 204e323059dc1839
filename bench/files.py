"""Large static files: what the listener's sendfile path delivers, end to end.

A static file above the static handler's in-memory limit (256 KB) is opened by the
worker, passed to the listener as a descriptor on the worker's file channel, and sent by
the listener with sendfile (docs/listener.md).  This measures requests/s and MB/s for a
few sizes with wrk against a real server, and against nginx (``sendfile on``) serving
the same folder when it is installed, side by side (servers on CPU 0, wrk on CPU 1
unless ``--unpinned``).  To see what the descriptor passing itself costs, run it on two
commits and compare the Poolhouse figures.

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
from harness.targets import NGINX_CONF, application_host_config, nginx_binary, tool  # noqa: E402

UNITS = {"K": 1024, "M": 1024 * 1024}


def size_of(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def measure_server(name: str, argv: list[str], port: int, tmp: Path, sizes: list[tuple[str, int]],
                   args: argparse.Namespace, pinned: bool) -> dict[str, dict[str, float]]:
    if pinned:
        argv = ["taskset", "-c", "0", *argv]
    server = ServerProcess(argv, cwd=tmp, env=dict(os.environ), log_path=tmp / f"{name}.log")
    server.start()
    out: dict[str, dict[str, float]] = {}
    try:
        server.wait_ready(port, "/index.html", b"ok", 30.0)
        for size, n in sizes:
            url = f"http://127.0.0.1:{port}/f{size}.bin"
            wrk.run(url, min(args.duration, 2), connections=args.connections, cpu=1 if pinned else None)
            rps: list[float] = []
            for _ in range(args.repetitions):
                r = wrk.run(url, args.duration, connections=args.connections, cpu=1 if pinned else None)
                if r.errors:
                    print(f"  {name} {size}: {r.errors} errors", file=sys.stderr)
                rps.append(r.requests_per_sec)
            median = statistics.median(rps)
            out[size] = {"bytes": n, "req_per_sec": round(median, 1), "mb_per_sec": round(median * n / 1e6, 1)}
            print(f"  {name:9s} {size:>5s} {median:10.1f} req/s  {median * n / 1e6:9.1f} MB/s", flush=True)
    finally:
        left = server.stop()
        if left:
            print("LEFT: " + "; ".join(left), file=sys.stderr)
    return out


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
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="poolhouse-files-") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)  # nginx's workers (not root) read the files too
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_bytes(b"ok")
        block = os.urandom(1 << 20)
        for name, n in sizes:
            with open(www / f"f{name}.bin", "wb") as fh:
                for start in range(0, n, len(block)):
                    fh.write(block[: n - start])
        port = free_port()
        conf = tmp / "applicationHost.config"
        conf.write_text(application_host_config(port, www))
        servers = {"poolhouse": ([tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "state")],
                                 port)}
        if os.path.exists(nginx_binary()):
            nginx_port = free_port()
            prefix = tmp / "nginx"
            prefix.mkdir()
            (prefix / "nginx.conf").write_text(NGINX_CONF.format(tmp=prefix, port=nginx_port, www=www))
            servers["nginx"] = ([nginx_binary(), "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"),
                                 "-e", "stderr"], nginx_port)
        for name, (argv, port) in servers.items():
            results[name] = measure_server(name, argv, port, tmp, sizes, args, pinned)
        if "nginx" in results:
            for size, _ in sizes:
                ours, theirs = results["poolhouse"][size]["req_per_sec"], results["nginx"][size]["req_per_sec"]
                print(f"  {size:>5s} poolhouse / nginx: {ours / theirs:.2f}" if theirs else "", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
