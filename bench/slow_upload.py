#!/usr/bin/env python3
"""Slow-upload attack: what clients that trickle their request bodies do to a server's
throughput for legitimate clients, Poolhouse beside gunicorn (sync and gthread) and
uvicorn.

    .venv/bin/python bench/slow_upload.py [--duration S] [--tricklers 32,500]
                                          [--only REGEX] [--baseline SRC] [--output FILE]
    .venv/bin/python bench/slow_upload.py --quick      # 2 s phases, a smoke test

For each target: start it on a free loopback port with an application that reads the
whole request body (bench/apps/upload_*.py), then

1. *calm*: ``--clients`` legitimate keep-alive clients (default 16) send small form POSTs
   (64-byte bodies) one after another for ``--duration`` seconds; each request has a
   ``--timeout`` (default 5 s) after which it counts as failed and its connection is
   opened again;
2. for each number N of ``--tricklers`` (default 32 and 500): N connections each send a
   POST head announcing a 100,000-byte body and then one byte every 2 seconds; after 3 s
   (every trickler is in), the same legitimate load runs again; the tricklers are closed
   afterwards (how many the server had cut off by then is reported).

Printed per target and phase: legitimate req/s, failed requests, p99 latency of the
successful ones, tricklers cut off by the server.  ``--baseline SRC`` adds the Poolhouse
targets once more, run from another source tree (``git archive <rev> src | tar -x -C
DIR`` gives one): the before/after figure of a change.  The legitimate clients are one
Python process (uvloop when available): the calm figure is the client's limit as much as
the server's; what matters is how much of it each server keeps under attack.  Every
phase is bounded in time and every server is stopped (and checked for leftovers by the
harness), so the script ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness.server import ServerProcess, StartError, become_subreaper, free_port  # noqa: E402
from harness.targets import APPS, HELLO, application_host_config, tool  # noqa: E402

FORM = b"name=value&" * 5 + b"x" * 9  # 64 bytes
LEGIT = (b"POST /form HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(FORM), FORM))
TRICKLE_LENGTH = 100_000
TRICKLE_EVERY = 2.0
SETTLE = 3.0

Build = Callable[[int, Path, dict[str, str]], tuple[list[str], dict[str, str]]]


def poolhouse(module: str, callable_: str, pool: str = "") -> Build:
    def build(port: int, tmp: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        text = application_host_config(port, APPS, module, callable_)
        if pool:
            text = text.replace('<add name="BenchPool" />', f'<add name="BenchPool">{pool}</add>')
        conf = tmp / "applicationHost.config"
        conf.write_text(text)
        return [tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "state")], env
    return build


def gunicorn(*flags: str) -> Build:
    def build(port: int, tmp: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        return [tool("gunicorn"), *flags, "-w", "1", "-b", f"127.0.0.1:{port}", "--chdir", str(APPS),
                "--log-level", "warning", "upload_wsgi:app"], env
    return build


def uvicorn(port: int, tmp: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    return [tool("uvicorn"), "--app-dir", str(APPS), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "upload_asgi:app"], env


POOLHOUSE_TARGETS: list[tuple[str, Build]] = [
    ("poolhouse-wsgi", poolhouse("WsgiModule", "upload_wsgi:app")),
    ("poolhouse-wsgi-threads", poolhouse("WsgiModule", "upload_wsgi:app", '<python threads="4" />')),
    ("poolhouse-asgi", poolhouse("AsgiModule", "upload_asgi:app")),
]
PEERS: list[tuple[str, Build]] = [
    ("gunicorn-sync", gunicorn()),
    ("gunicorn-gthread", gunicorn("-k", "gthread", "--threads", "4")),
    ("uvicorn", uvicorn),
]


# -- clients ---------------------------------------------------------------------------

async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One request; True if the connection stays open (the server did not say close)."""
    writer.write(LEGIT)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head[:40])
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return re.search(rb"(?i)\r\nconnection: *close", head) is None


async def legitimate(port: int, clients: int, duration: float, timeout: float) -> dict[str, Any]:
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal failed
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                left = min(timeout, deadline - started + timeout)
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), left)
                if not await asyncio.wait_for(_one(*conn), max(0.01, left - (time.monotonic() - started))):
                    conn[1].close()  # (gunicorn's sync worker closes after every response)
                    conn = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                failed += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            latencies.append(time.monotonic() - started)
        if conn is not None:
            conn[1].close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    ok = [x for x in latencies]
    return {
        "req_per_s": round(len(ok) / elapsed, 1),
        "ok": len(ok),
        "failed": failed,
        "p99_ms": round(statistics.quantiles(ok, n=100)[98] * 1000, 1) if len(ok) >= 100 else
        (round(max(ok) * 1000, 1) if ok else None),
    }


class Tricklers:
    """``n`` connections sending a POST head, then one body byte every 2 seconds."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.cut = 0  # connections the server closed
        self.refused = 0  # connections that could not even be opened
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        head = (b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\nx" % TRICKLE_LENGTH)

        async def connect() -> None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                writer.write(head)
                self.conns.append((reader, writer))
            except (OSError, asyncio.TimeoutError):
                self.refused += 1

        for i in range(0, self.n, 50):
            await asyncio.gather(*(connect() for _ in range(min(50, self.n - i))))
        self._task = asyncio.get_running_loop().create_task(self._trickle())

    async def _trickle(self) -> None:
        while True:
            await asyncio.sleep(TRICKLE_EVERY)
            for _, writer in self.conns:
                if writer.is_closing():
                    continue
                try:
                    writer.write(b"x")
                except (OSError, RuntimeError):
                    pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for reader, writer in self.conns:
            # a connection the server cut off has ended (EOF, reset) or was answered
            cut = writer.is_closing()
            if not cut:
                try:
                    await asyncio.wait_for(reader.read(65536), 0.01)
                    cut = True  # EOF, or an answer before the body was complete
                except asyncio.TimeoutError:
                    pass
                except OSError:
                    cut = True
            if cut:
                self.cut += 1
            writer.close()


async def attack_run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, Any] = {"calm": await legitimate(port, args.clients, args.duration, args.timeout)}
    for n in args.tricklers:
        tricklers = Tricklers(port, n)
        await tricklers.start()
        await asyncio.sleep(SETTLE)
        result = await legitimate(port, args.clients, args.duration, args.timeout)
        await tricklers.stop()
        result["tricklers_cut"] = tricklers.cut
        result["tricklers_refused"] = tricklers.refused
        phases[f"{n} tricklers"] = result
        await asyncio.sleep(1.0)
    return phases


def run_target(name: str, build: Build, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slow-upload-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        argv, env = build(port, tmp, env)
        server = ServerProcess(argv, cwd=BENCH, env=env, log_path=tmp / "server.log")
        try:
            server.start()
            server.wait_ready(port, "/", HELLO, 30)
        except StartError as exc:
            server.stop()
            return {"error": f"failed to start: {exc}"}
        try:
            return asyncio.run(asyncio.wait_for(attack_run(port, args), args.budget))
        except asyncio.TimeoutError:
            return {"error": f"did not finish within {args.budget:g} s"}
        finally:
            left = server.stop()
            if left:
                print(f"  {name}: left {len(left)} process(es) behind (killed)", file=sys.stderr)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'target':<32} {'phase':<14} {'req/s':>9} {'ok':>7} {'failed':>7} {'p99 ms':>8} {'cut':>5}"]
    for name, phases in results.items():
        if "error" in phases:
            lines.append(f"{name:<32} {phases['error']}")
            continue
        for phase, r in phases.items():
            cut = r.get("tricklers_cut", "")
            lines.append(f"{name:<32} {phase:<14} {r['req_per_s']:>9} {r['ok']:>7} {r['failed']:>7} "
                         f"{r['p99_ms'] if r['p99_ms'] is not None else '-':>8} {cut:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds of legitimate load per phase")
    p.add_argument("--tricklers", default="32,500", help="attack sizes, comma-separated")
    p.add_argument("--clients", type=int, default=16, help="legitimate keep-alive clients")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before a legitimate request fails")
    p.add_argument("--only", metavar="REGEX", help="targets whose name matches")
    p.add_argument("--baseline", metavar="SRC", help="also run the Poolhouse targets from this source tree")
    p.add_argument("--quick", action="store_true", help="2 s phases: a smoke test")
    p.add_argument("--output", type=Path, help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 2.0
    args.tricklers = [int(x) for x in args.tricklers.split(",") if x.strip()]
    # every phase: settle + load + a margin; the whole attack run of a target is bounded
    args.budget = (len(args.tricklers) + 1) * (args.duration + args.timeout + SETTLE + 10) + 30
    become_subreaper()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    env = dict(os.environ)
    targets = list(POOLHOUSE_TARGETS)
    if args.baseline:
        src = str(Path(args.baseline).resolve())
        base_env = {**env, "PYTHONPATH": src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")}
        targets += [(f"{name}@baseline", build) for name, build in POOLHOUSE_TARGETS]
    targets += PEERS
    if args.only:
        targets = [(n, b) for n, b in targets if re.search(args.only, n)]
    results: dict[str, dict[str, Any]] = {}
    for name, build in targets:
        print(f"-- {name}", file=sys.stderr, flush=True)
        results[name] = run_target(name, build, args, base_env if name.endswith("@baseline") else env)
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()
                                                        if k not in ("output",)}, "results": results},
                                          indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
