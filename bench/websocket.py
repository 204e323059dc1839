"""ASGI WebSocket: Poolhouse against uvicorn and granian serving the same echo application
(``bench/apps/echo_asgi.py``), in one run, side by side.

1. **Conformance**: the Autobahn fuzzing-client cases (``kosoku``, the Autobahn cases on
   Python 3) against each server; per server the counts of each behaviour (OK,
   NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED), the closing-handshake failures
   (``behaviorClose`` other than OK/INFORMATIONAL) and the ids of every case that is not
   OK on both counts.
2. **Throughput**: N clients (``websockets`` library, one connection each, no
   compression) each send a 64-byte text message and wait for its echo, again and again
   for ``--duration`` seconds: messages/s over all clients and the p99 round trip; then
   one client echoing 1 MiB binary messages for ``--duration`` seconds: MiB/s (payload,
   one way).  Repetitions interleaved over the servers; the median run by messages/s
   (MiB/s) with that run's p99; the ratios Poolhouse / peer.

Targets: ``poolhouse`` (``AsgiModule``, ``<webSocket receiveBufferLimit="67108864">`` in a
``<location>`` of applicationHost.config), ``uvicorn-websockets`` and ``uvicorn-wsproto``
(``--ws websockets|wsproto``, uvloop, httptools, ``--ws-max-size 67108864``) and
``granian-asgi`` (``--interface asgi``); a peer that is not installed is skipped.  Every
server tree runs on CPU 0 (``taskset``), the runner, its clients and kosoku on CPU 1.

    .venv/bin/python bench/websocket.py [--cases GLOB]... [--exclude GLOB]... [--parallel 2]
        [--clients 50] [--duration 5] [--repetitions 3] [--only REGEX]
        [--skip-autobahn] [--skip-throughput] [--output bench/results/websocket.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import websockets  # noqa: E402
from websockets.exceptions import ConnectionClosed, WebSocketException  # noqa: E402

from harness.cpu import CpuAccount  # noqa: E402
from harness.server import ServerProcess, StartError, become_subreaper, free_port  # noqa: E402
from harness.targets import APPS, HELLO, application_host_config, tool  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
MAX_MESSAGE = 64 * 1024 * 1024     # Autobahn 9.* sends messages of up to 16 MiB
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
CLOSE_OK = ("OK", "INFORMATIONAL")
CPUS = os.cpu_count() or 1
BUSY_PCT = 5.0                     # others' CPU or steal above this: a disturbed figure

POOLHOUSE_WEB = '<webSocket receiveBufferLimit="{limit}" />'


@dataclass(frozen=True)
class Target:
    name: str
    binary: str                                      # must exist, else the target is skipped
    argv: Callable[[int, Path], list[str]]           # (port, private temp dir) -> command


def poolhouse(port: int, tmp: Path) -> list[str]:
    """The webSocket section may not be set in web.config (overrideModeDefault="Deny",
    as in IIS): it goes into a <location> of applicationHost.config."""
    conf = tmp / "applicationHost.config"
    conf.write_text(application_host_config(port, APPS, "AsgiModule", "echo_asgi:app",
                                            web=POOLHOUSE_WEB.format(limit=MAX_MESSAGE)))
    return [tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "state")]


def uvicorn(ws: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, tmp: Path) -> list[str]:
        return [tool("uvicorn"), "--app-dir", str(APPS), "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--ws", ws,
                "--ws-max-size", str(MAX_MESSAGE), "--lifespan", "on", "--no-access-log",
                "--log-level", "warning", "echo_asgi:app"]
    return argv


def granian(port: int, tmp: Path) -> list[str]:
    return [tool("granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-access-log", "--log-level", "warning",
            "--working-dir", str(APPS), "echo_asgi:app"]


TARGETS = [
    Target("poolhouse", "poolhouse", poolhouse),
    Target("uvicorn-websockets", "uvicorn", uvicorn("websockets")),
    Target("uvicorn-wsproto", "uvicorn", uvicorn("wsproto")),
    Target("granian-asgi", "granian", granian),
]
REFERENCE = "poolhouse"


def installed(binary: str) -> bool:
    path = tool(binary)
    return os.path.isfile(path) and os.access(path, os.X_OK)


class Running:
    """One started, answering server."""

    def __init__(self, target: Target, tmp: Path, pin: bool) -> None:
        self.target = target
        self.port = free_port()
        self.dir = tmp / target.name
        self.dir.mkdir()
        argv = target.argv(self.port, self.dir)
        if pin:
            argv = ["taskset", "-c", str(SERVER_CPU), *argv]
        self.server = ServerProcess(argv, cwd=APPS, env=dict(os.environ), log_path=self.dir / "server.log")
        self.argv = argv

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def start(self) -> None:
        self.server.start()
        # Poolhouse starts its worker on demand: the first request waits for the spawn.
        self.server.wait_ready(self.port, "/", HELLO, 30.0)
        asyncio.run(asyncio.wait_for(check_echo(self.url), 10))


async def check_echo(url: str) -> None:
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        for message in ("ready?", b"\x00ready\xff"):
            await ws.send(message)
            got = await ws.recv()
            if got != message:
                raise StartError(f"echo answered {got!r} to {message!r}")


# -- 1. Autobahn ---------------------------------------------------------------------------

def autobahn(running: Running, out: Path, cases: list[str], exclude: list[str], parallel: int,
             timeout: float) -> dict[str, Any]:
    """kosoku's fuzzing client against one server; the counts and the non-OK cases."""
    argv = [tool("kosoku"), "-m", "fuzzingclient", "-o", str(out), "-p", str(parallel)]
    for glob in cases:
        argv += ["-i", glob]
    for glob in exclude:
        argv += ["-x", glob]
    argv.append(f"127.0.0.1:{running.port}")
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"kosoku did not finish within {timeout:g} s", "command": argv}
    seconds = round(time.monotonic() - started, 1)
    index = next(out.rglob("index.json"), None)
    if index is None:
        return {"error": f"kosoku exit {proc.returncode}, no index.json: {proc.stderr[-500:]}",
                "command": argv, "seconds": seconds}
    results: dict[str, dict[str, Any]] = {}
    for agent in json.loads(index.read_text()).values():
        results.update(agent)
    behaviour = Counter(str(r.get("behavior")) for r in results.values())
    close = Counter(str(r.get("behaviorClose")) for r in results.values())
    not_ok = {case: {"behavior": r.get("behavior"), "behaviorClose": r.get("behaviorClose"),
                     "remoteCloseCode": r.get("remoteCloseCode")}
              for case, r in sorted(results.items(), key=lambda kv: case_key(kv[0]))
              if r.get("behavior") != "OK" or r.get("behaviorClose") not in ("OK", None)}
    return {
        "cases": len(results),
        "seconds": seconds,
        "counts": {b: behaviour.get(b, 0) for b in BEHAVIOURS}
        | {b: n for b, n in behaviour.items() if b not in BEHAVIOURS},
        "close_failed": sum(n for b, n in close.items() if b not in CLOSE_OK and b != "None"),
        "close_counts": dict(close),
        "not_ok": not_ok,
        "kosoku_exit": proc.returncode,
        "command": argv,
        "reports": str(out),
    }


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case.split("."))


# -- 2. throughput ---------------------------------------------------------------------------

def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is, with uvicorn[standard]): the client is the load
    generator on one core, and the faster its loop, the later it becomes the bottleneck."""
    try:
        import uvloop
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.new_event_loop()


async def echo_load(url: str, clients: int, payload: str | bytes, duration: float) -> dict[str, Any]:
    """``clients`` connections, each one message in flight at a time, for ``duration`` s."""
    conns = await asyncio.gather(*(websockets.connect(url, compression=None, max_size=None,
                                                      ping_interval=None, open_timeout=30)
                                   for _ in range(clients)))
    rtts: list[float] = []
    errors: list[str] = []
    size = len(payload)

    async def client(ws: Any, deadline: float) -> None:
        clock = time.perf_counter
        try:
            while clock() < deadline:
                t0 = clock()
                await ws.send(payload)
                got = await ws.recv()
                rtts.append(clock() - t0)
                if len(got) != size or got != payload:
                    errors.append("wrong echo")
                    return
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:120])

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(ws, start + duration) for ws in conns))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    rtts.sort()
    n = len(rtts)
    return {
        "messages": n,
        "seconds": round(elapsed, 3),
        "messages_per_sec": n / elapsed if elapsed else 0.0,
        "mib_per_sec": n * size / elapsed / 2**20 if elapsed else 0.0,
        "p50_ms": rtts[n // 2] * 1e3 if n else None,
        "p99_ms": rtts[min(n - 1, int(n * 0.99))] * 1e3 if n else None,
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def measure(running: Running, kind: str, clients: int, duration: float) -> dict[str, Any]:
    payload: str | bytes = "x" * 64 if kind == "small" else os.urandom(2**20)
    n = clients if kind == "small" else 1
    loop = new_loop()
    try:
        with CpuAccount(running.server) as cpu:
            figures = loop.run_until_complete(echo_load(running.url, n, payload, duration))
    finally:
        loop.close()
    figures["cpu"] = {k: round(v, 1) for k, v in cpu.figures.items()}
    notes = []
    if cpu.figures.get("other_cpu_pct", 0) > BUSY_PCT:
        notes.append("busy machine")
    if cpu.figures.get("steal_pct", 0) > BUSY_PCT:
        notes.append("steal")
    # the runner is the load generator here: near one full core, it is the limit, not the
    # server
    if cpu.figures.get("runner_cpu_pct", 0) * CPUS > 90:
        notes.append("client-bound")
    figures["notes"] = notes
    return figures


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


# -- the run ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", action="append", default=[], metavar="GLOB",
                        help="Autobahn case ids or globs to run (repeatable; default: all)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="Autobahn case ids or globs to leave out (repeatable)")
    parser.add_argument("--parallel", type=int, default=2, help="kosoku -p (default 2)")
    parser.add_argument("--autobahn-timeout", type=float, default=2400.0, help="per server, seconds")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="per measurement, seconds")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--only", default="", help="regex on target names")
    parser.add_argument("--skip-autobahn", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--output", default=str(BENCH / "results" / "websocket.json"))
    args = parser.parse_args()

    targets = [t for t in TARGETS if re.search(args.only, t.name)]
    skipped = {t.name: f"{t.binary} not installed" for t in targets if not installed(t.binary)}
    targets = [t for t in targets if t.name not in skipped]
    if not args.skip_autobahn and not installed("kosoku"):
        print("kosoku is not installed (pip install kosoku): the Autobahn cases are skipped", file=sys.stderr)
        args.skip_autobahn = True
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})        # kosoku inherits it
    become_subreaper()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "pinned": pin, "versions": versions(), "skipped": skipped, "servers": {},
        "autobahn": {"cases": args.cases or ["*"], "exclude": args.exclude, "parallel": args.parallel},
        "throughput": {"clients": args.clients, "message_bytes": 64, "large_bytes": 2**20,
                       "duration": args.duration, "repetitions": args.repetitions},
    }
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    with tempfile.TemporaryDirectory(prefix="poolhouse-websocket-") as d:
        tmp = Path(d)
        running: list[Running] = []
        failed = False
        try:
            for t in targets:
                r = Running(t, tmp, pin)
                entry: dict[str, Any] = {"command": r.argv}
                report["servers"][t.name] = entry
                try:
                    r.start()
                except (StartError, OSError, asyncio.TimeoutError, WebSocketException) as exc:
                    entry["error"] = f"failed to start: {exc}"
                    print(f"{t.name}: {entry['error']}", file=sys.stderr)
                    entry["left"] = r.server.stop()
                    continue
                running.append(r)
            if not args.skip_throughput:
                throughput(running, args, report)
            if not args.skip_autobahn:
                # next to the JSON file, so that a run writing elsewhere keeps these
                results_dir = Path(args.output).parent / (Path(args.output).stem + "-autobahn")
                for r in running:
                    out = results_dir / r.target.name
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"autobahn: {r.target.name} ...", flush=True)
                    res = autobahn(r, out, args.cases, args.exclude, args.parallel, args.autobahn_timeout)
                    if not r.server.alive():
                        res["error"] = f"server {r.server.exit_text()} during the cases"
                    report["servers"][r.target.name]["autobahn"] = res
                    print("  " + autobahn_line(res), flush=True)
        except KeyboardInterrupt:
            failed = True
        finally:
            for r in running:
                left = r.server.stop()
                report["servers"][r.target.name]["left"] = left
                if left:
                    print(f"{r.target.name} LEFT {len(left)} process(es): " + "; ".join(left), file=sys.stderr)
                log = r.server.log_path.read_text(errors="replace")
                report["servers"][r.target.name]["log_tail"] = log.splitlines()[-20:]
    print_tables(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {args.output}")
    return 1 if failed else 0


def throughput(running: list[Running], args: argparse.Namespace, report: dict[str, Any]) -> None:
    for r in running:                                   # warm up: connections, the worker's imports
        try:
            measure(r, "small", args.clients, args.warmup)
        except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
            report["servers"][r.target.name]["warmup_error"] = str(exc)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i in range(args.repetitions):
        for kind in ("small", "large"):
            for r in running:
                try:
                    res = measure(r, kind, args.clients, args.duration)
                except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
                    res = {"error": f"{type(exc).__name__}: {exc}"[:200], "messages_per_sec": 0.0,
                           "mib_per_sec": 0.0, "p99_ms": None, "errors": 1, "notes": ["error"]}
                runs.setdefault(r.target.name, {}).setdefault(kind, []).append(res)
                print(f"  {i + 1}/{args.repetitions} {kind:5s} {r.target.name:20s} "
                      + (f"{res['messages_per_sec']:9.0f} msg/s  p99 {res['p99_ms'] or 0:7.2f} ms"
                         if kind == "small" else f"{res['mib_per_sec']:9.1f} MiB/s p99 {res['p99_ms'] or 0:7.2f} ms")
                      + (f"  {res['errors']} errors" if res.get("errors") else "")
                      + (f"  [{', '.join(res['notes'])}]" if res.get("notes") else ""), flush=True)
    for name, kinds in runs.items():
        small = median_run(kinds["small"], "messages_per_sec")
        large = median_run(kinds["large"], "mib_per_sec")
        report["servers"][name]["throughput"] = {
            "messages_per_sec": round(small["messages_per_sec"]), "p99_ms": small["p99_ms"],
            "p50_ms": small.get("p50_ms"), "large_mib_per_sec": round(large["mib_per_sec"], 1),
            "large_p99_ms": large["p99_ms"],
            "errors": sum(x.get("errors", 0) for k in kinds.values() for x in k),
            "notes": sorted({n for k in kinds.values() for x in k for n in x.get("notes", [])}),
            "runs": kinds,
        }
    ref = report["servers"].get(REFERENCE, {}).get("throughput")
    ratios = {}
    for name, entry in report["servers"].items():
        mine = entry.get("throughput")
        if name == REFERENCE or not mine or not ref:
            continue
        ratios[name] = {
            "messages_per_sec": ratio(ref["messages_per_sec"], mine["messages_per_sec"]),
            "large_mib_per_sec": ratio(ref["large_mib_per_sec"], mine["large_mib_per_sec"]),
        }
    report["ratios_poolhouse_to_peer"] = ratios


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if a and b else None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for pkg in ("poolhouse", "uvicorn", "granian", "websockets", "wsproto", "uvloop", "httptools", "kosoku"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# -- output ----------------------------------------------------------------------------------

def autobahn_line(res: dict[str, Any]) -> str:
    if "counts" not in res:
        return res.get("error", "no result")
    c = res["counts"]
    text = (f"{res['cases']} cases in {res['seconds']} s: " + ", ".join(f"{c[b]} {b}" for b in BEHAVIOURS)
            + f"; {res['close_failed']} close failures")
    return text + (f"  ({res['error']})" if "error" in res else "")


def print_tables(report: dict[str, Any]) -> None:
    servers = report["servers"]
    if any("autobahn" in e for e in servers.values()):
        print(f"\nAutobahn cases ({', '.join(report['autobahn']['cases'])}"
              + (f"; without {', '.join(report['autobahn']['exclude'])}" if report["autobahn"]["exclude"] else "")
              + ")")
        print(f"{'server':20s} {'cases':>5s} " + " ".join(f"{b:>13s}" for b in BEHAVIOURS)
              + f" {'close fail':>10s} {'seconds':>8s}")
        for name, e in servers.items():
            a = e.get("autobahn")
            if a is None:
                continue
            if "counts" not in a:
                print(f"{name:20s} {a.get('error', '')}")
                continue
            print(f"{name:20s} {a['cases']:5d} " + " ".join(f"{a['counts'][b]:13d}" for b in BEHAVIOURS)
                  + f" {a['close_failed']:10d} {a['seconds']:8.0f}")
        for name, e in servers.items():
            a = e.get("autobahn") or {}
            if a.get("not_ok"):
                # a server without permessage-deflate has 216 UNIMPLEMENTED cases: one line
                absent = [c for c, v in a["not_ok"].items() if v["behavior"] == "UNIMPLEMENTED"]
                shown = [(c, v) for c, v in a["not_ok"].items() if v["behavior"] != "UNIMPLEMENTED"]
                listed = ", ".join(f"{c} {v['behavior']}/{v['behaviorClose']}" for c, v in shown[:40])
                more = len(shown) - 40
                if absent:
                    groups = sorted({c.split(".")[0] + ".*" for c in absent}, key=case_key)
                    listed += f"{', ' if shown else ''}{len(absent)} UNIMPLEMENTED in {', '.join(groups)}"
                print(f"  {name} not OK: {listed}" + (f" … and {more} more" if more > 0 else ""))
    if any("throughput" in e for e in servers.values()):
        tp = report["throughput"]
        print(f"\nEcho throughput: {tp['clients']} clients x 64-byte text, 1 client x 1 MiB binary; "
              f"{tp['duration']:g} s each, median of {tp['repetitions']}"
              + (", server on CPU 0, clients on CPU 1" if report["pinned"] else ", unpinned"))
        print(f"{'server':20s} {'msg/s':>9s} {'p99 ms':>8s} {'ratio':>6s} {'MiB/s':>8s} {'p99 ms':>8s} "
              f"{'ratio':>6s} {'client CPU':>10s}  notes")
        ratios = report.get("ratios_poolhouse_to_peer", {})
        for name, e in servers.items():
            t = e.get("throughput")
            if t is None:
                print(f"{name:20s} {e.get('error', 'not measured')}")
                continue
            rr = ratios.get(name, {})
            client = statistics.median(x.get("cpu", {}).get("runner_cpu_pct", 0) * CPUS for x in t["runs"]["small"])
            notes = t["notes"] + ([f"{t['errors']} errors"] if t["errors"] else [])
            print(f"{name:20s} {t['messages_per_sec']:9,d} {fmt(t['p99_ms']):>8s} {fmt(rr.get('messages_per_sec'), 'x'):>6s} "
                  f"{t['large_mib_per_sec']:8.1f} {fmt(t['large_p99_ms']):>8s} {fmt(rr.get('large_mib_per_sec'), 'x'):>6s} "
                  f"{client:9.0f}%  {', '.join(notes)}")
        print("ratio: Poolhouse / peer (above 1: Poolhouse is faster); client CPU: the runner's, in % of one core")


def fmt(v: float | None, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:.2f}{suffix}"


if __name__ == "__main__":
    sys.exit(main())
