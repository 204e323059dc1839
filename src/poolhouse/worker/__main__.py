"""Entry point of a worker process, started by the activation service (a fresh
interpreter, never a fork of it):

    python -m poolhouse.worker --pool NAME --worker-id ID --queue-fd N --control-fd M [--files-fd F] [--fd-channel K]

SIGTERM and SIGINT are reported to the activation service, which drains the worker (see
``WorkerProcess.signalled``); every other signal is the application's to use.

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
    # Handlers, not SIG_IGN: a program the application starts gets the default
    # dispositions back at exec (an ignored signal would stay ignored in it).
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.signalled, sig.name)
    try:
        queue_sock = socket.socket(fileno=args.queue_fd)
        control_sock = socket.socket(fileno=args.control_fd)
        fd_sock = socket.socket(fileno=args.fd_channel) if args.fd_channel is not None else None
        files_sock = socket.socket(fileno=args.files_fd) if args.files_fd >= 0 else None
    except OSError as exc:
        logging.error("cannot use the inherited channels: %s", exc)
        return exit_codes.BOOT_FAILED
    if fd_sock is not None:
        try:
            fd_sock.shutdown(socket.SHUT_WR)  # the channel only brings descriptors from the service
        except OSError:
            pass
    try:
        await worker.boot(queue_sock, control_sock, fd_sock, files_sock)
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
    parser.add_argument("--fd-channel", type=int, default=None)
    parser.add_argument("--files-fd", type=int, default=-1)  # the file channel (ipc/queue.py)
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
