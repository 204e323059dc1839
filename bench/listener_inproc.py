"""The listener's hot path measured in-process, without sockets.

A real ``Listener`` is programmed with one site and one pool; 64 client connections
(fake transports) each send a keep-alive ``GET /`` and one fake worker (a ``WorkerLink``
on a fake transport) answers every REQUEST frame with the RESPONSE frame a WSGI hello
application produces.  Only listener code runs in the timed loop: parsing, routing,
queueing, encoding requests, decoding responses, writing them, logging.

    .venv/bin/python bench/listener_inproc.py [--rounds N] [--profile]

prints microseconds of listener Python per request (best and median of 5 runs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

from poolhouse.config.model import Application, Binding, LogFile, Pool, ServerConfig, Site
from poolhouse.ipc import queue as q
from poolhouse.ipc.frames import FrameDecoder, encode
from poolhouse.listener.connection import HttpConnection
from poolhouse.listener.server import Listener
from poolhouse.listener.worker_link import WorkerLink

CONNECTIONS = 64
REQUEST = (b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
HELLO = q.marshal_response(200, b"Content-Type: text/plain\r\n", 13, b"Hello, world!")


class FakeTransport:
    def __init__(self, peer: tuple[str, int], sock: tuple[str, int]) -> None:
        self.extra = {"peername": peer, "sockname": sock}
        self.out: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: return False
    def get_write_buffer_size(self) -> int: return 0


class ImmediateLoop:
    """Stands in for the loop in ``WorkerLink``: call_soon callbacks run when told."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.pending.append((fn, args))

    def run_pending(self) -> None:
        while self.pending:
            todo, self.pending = self.pending, []
            for fn, args in todo:
                fn(*args)


def config() -> ServerConfig:
    site = Site(1, "Default Web Site", bindings=[Binding("http", "*", 8080)], log_file=LogFile(enabled=os.environ.get("NOLOG") is None),
                applications=[Application("/", "DefaultAppPool", "/tmp")])
    return ServerConfig(pools={"DefaultAppPool": Pool("DefaultAppPool")}, sites=[site])


async def build(state_dir: str) -> tuple[Listener, WorkerLink, list[HttpConnection], ImmediateLoop]:
    listener = Listener(state_dir, [])
    listener.ctl_configure({"op": "configure", "config": config().to_dict()})
    pool = listener.pools["DefaultAppPool"]
    link = WorkerLink(listener, pool, "w1", 1)
    loop = ImmediateLoop()
    link._loop = loop  # type: ignore[assignment]
    link.connection_made(FakeTransport(("", 0), ("", 0)))  # type: ignore[arg-type]
    link.data_received(q.encode_ready(1000))
    conns = []
    for i in range(CONNECTIONS):
        conn = HttpConnection(listener)
        conn.connection_made(FakeTransport(("127.0.0.1", 40000 + i), ("127.0.0.1", 8080)))  # type: ignore[arg-type]
        conns.append(conn)
    return listener, link, conns, loop


def run_cache_hits(link: WorkerLink, conns: list[HttpConnection], loop: ImmediateLoop, rounds: int) -> None:
    """Every request a response-cache hit: no worker frames at all."""
    for _ in range(rounds):
        for conn in conns:
            conn.data_received(CACHED_REQUEST)
            conn.transport.out.clear()  # type: ignore[attr-defined]


def prime_cache(link: WorkerLink, conns: list[HttpConnection], loop: ImmediateLoop) -> None:
    """Two worker answers for /1k.txt marked as a static file: frequently hit, cached."""
    global HELLO, REQUEST
    saved = HELLO, REQUEST
    HELLO = q.marshal_response(200, b"Content-Type: text/plain\r\nETag: \"1\"\r\n"
                               b"X-Poolhouse-File: /tmp/1k.txt\r\n", 1024, b"x" * 1024)
    REQUEST = CACHED_REQUEST
    run_rounds(link, conns[:1], loop, 2)
    HELLO, REQUEST = saved
    assert link.listener.cache.lru, "the response was not cached"


CACHED_REQUEST = (b"GET /1k.txt HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\n"
                  b"Accept: */*\r\n\r\n")


def run_rounds(link: WorkerLink, conns: list[HttpConnection], loop: ImmediateLoop, rounds: int) -> None:
    transport: FakeTransport = link.transport  # type: ignore[assignment]
    decoder = FrameDecoder()
    for _ in range(rounds):
        for conn in conns:
            conn.data_received(REQUEST)
        loop.run_pending()
        frames = decoder.feed(b"".join(transport.out))
        transport.out.clear()
        # the worker's answer: one batch of RESPONSE frames (built outside the listener?
        # no: building them is worker work, so it is done up front per stream id)
        reply = b"".join([encode(q.RESPONSE, q.END_STREAM, f[2], HELLO) for f in frames if f[0] == q.REQUEST])
        link.data_received(reply)
        loop.run_pending()
        for conn in conns:
            conn.transport.out.clear()  # type: ignore[attr-defined]


def worker_cost(rounds: int) -> float:
    """Seconds the fake worker's frame building costs (subtracted from the total)."""
    decoder = FrameDecoder()
    blob = b"".join(encode(q.REQUEST, q.END_STREAM, i, b"x" * 120) for i in range(CONNECTIONS))
    t0 = time.thread_time()
    for _ in range(rounds):
        frames = decoder.feed(blob)
        b"".join([encode(q.RESPONSE, q.END_STREAM, f[2], HELLO) for f in frames if f[0] == q.REQUEST])
    return time.thread_time() - t0


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        listener, link, conns, loop = await build(state_dir)
        rounds_fn = run_rounds
        if args.cache:
            prime_cache(link, conns, loop)
            rounds_fn = run_cache_hits
        rounds_fn(link, conns, loop, 50)  # warm up
        n = args.rounds * CONNECTIONS
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            rounds_fn(link, conns, loop, args.rounds)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        overhead = 0.0 if args.cache else worker_cost(args.rounds)
        results = []
        totals = []
        for _ in range(args.runs):
            listener.flush_access_log()
            listener.w3c.sync()
            t0 = time.thread_time()
            p0 = time.process_time()
            rounds_fn(link, conns, loop, args.rounds)
            listener.flush_access_log()
            listener.w3c.sync()  # the access log's writer thread's work counts too
            results.append((time.thread_time() - t0 - overhead) / n * 1e6)
            totals.append((time.process_time() - p0 - overhead) / n * 1e6)
        assert listener.counters["requests"] >= n, listener.counters
        w3c = getattr(listener, "w3c", None)
        if w3c is not None and not os.environ.get("NOLOG"):
            assert w3c.errors == 0 and w3c.lines_written >= n, (w3c.errors, w3c.lines_written)
        print(("cache hits: " if args.cache else "") + f"listener in-process: event loop thread {statistics.median(results):.1f} us/request median "
              f"({min(results):.1f} best of {args.runs}); with the access log's writer thread "
              f"{statistics.median(totals):.1f} us ({n} requests each, {CONNECTIONS} connections)")
        print(f"  = {1e6 / statistics.median(totals):,.0f} requests/s of listener CPU on one core")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cache", action="store_true", help="every request a response-cache hit")
    args = parser.parse_args()
    sys.setrecursionlimit(10000)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    try:
        import uvloop
        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
