"""Entry point of a worker process, started by the activation service (a fresh
interpreter, never a fork of it):

    python -m poolhouse.worker --pool NAME --worker-id ID --queue-fd N --control-fd M

The exit code tells the activation service why the worker ended (``ipc.exit_codes``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from ..ipc import exit_codes


async def amain(args: argparse.Namespace) -> int:
    from .apps import AppLoadError
    from .handlers.asgi import LifespanError
    from .process import WorkerProcess

    loop = asyncio.get_running_loop()
    worker = WorkerProcess(args.pool, args.worker_id)
    loop.add_signal_handler(signal.SIGTERM, worker.drain)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the activation service decides
    try:
        queue_sock = socket.socket(fileno=args.queue_fd)
        control_sock = socket.socket(fileno=args.control_fd)
    except OSError as exc:
        logging.error("cannot use the inherited channels: %s", exc)
        return exit_codes.BOOT_FAILED
    try:
        await worker.boot(queue_sock, control_sock)
    except (AppLoadError, LifespanError) as exc:
        logging.error("application failed to load: %s", exc)
        return exit_codes.APP_LOAD_FAILED
    except Exception:
        logging.exception("worker failed to boot")
        return exit_codes.APP_LOAD_FAILED
    await worker.done.wait()
    await worker.shutdown()
    return worker.exit_code


def not_dumpable() -> None:
    """PR_SET_DUMPABLE 0, before any application code loads: a worker exec'd after its
    identity switch is dumpable again, and two pools sharing a Unix user (LocalService
    and NetworkService are both ``nobody``) could then ptrace each other or read each
    other's /proc/<pid>/mem and environ.  Not dumpable, its /proc files are root's."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        logging.error("cannot clear the dumpable flag: %s", exc)
        raise SystemExit(exit_codes.BOOT_FAILED) from None


PR_SET_DUMPABLE = 4


def main(argv: list[str] | None = None) -> int:
    not_dumpable()
    parser = argparse.ArgumentParser(prog="poolhouse-worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--queue-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return exit_codes.BOOT_FAILED
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s worker[%(process)d {args.pool}] %(levelname)s %(message)s",
    )
    try:
        import uvloop

        code = uvloop.run(amain(args))
    except KeyboardInterrupt:
        code = exit_codes.STOPPED
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no waiting on application threads that will never finish


if __name__ == "__main__":
    sys.exit(main())
