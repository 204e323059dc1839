"""Entry point of the listener process, started by the activation service:

    python -m poolhouse.listener --control-fd N --fd-channel M --state-dir DIR --sockets JSON

``--sockets`` lists the inherited listening sockets as ``[{"fd":…, "ip":…, "port":…,
"protocol":…}]``; the activation service owns them, so a restarted listener takes over
the same kernel backlog.  SIGTERM and SIGINT are logged and otherwise left to the
service (see ``amain``); to replace a listener, kill it: the service starts another and
re-attaches the running workers to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys

import uvloop

from .server import Listener


def _signalled(name: str) -> None:
    logging.getLogger("poolhouse.listener").info(
        "%s received: the listener stops when the activation service drains it", name)


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    listener = Listener(args.state_dir, json.loads(args.sockets))
    # The activation service decides when we stop (control "drain" then "exit", or its
    # channel closes).  A SIGTERM or SIGINT reaching us was sent to the whole process
    # group or cgroup (a service manager's stop, ``timeout``, Ctrl-C) and reached the
    # service too, which drains us; stopping here would cut every connection off.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _signalled, sig.name)
    control = socket.socket(fileno=args.control_fd)
    fds = socket.socket(fileno=args.fd_channel)
    await listener.boot(control, fds)
    await listener.stopped.wait()
    await listener.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolhouse-listener")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--fd-channel", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--sockets", default="[]")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s listener[%(process)d] %(levelname)s %(message)s",
    )
    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
