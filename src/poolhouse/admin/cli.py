"""``poolhouse``: the server and its administration with Unix-style flags.

    poolhouse serve [-c applicationHost.config] [--state-dir DIR]
    poolhouse list sites|apppools|wp [--json]
    poolhouse list requests [--json] [--elapsed MS]
    poolhouse start|stop apppool|site NAME
    poolhouse recycle apppool NAME
    poolhouse reload
    poolhouse counters [--json]
    poolhouse config backup [NAME] | restore NAME | history [--json]
    poolhouse grants [--revoke] [--apppool NAME] [--json]

Every command but ``serve`` talks to a running server through the management socket in
its state directory (``--state-dir``, or $POOLHOUSE_STATE_DIR, or the default).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from . import cert as cert_cli
from . import config_cli

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: no server answers
EXIT_REFUSED = 1


def default_state_dir() -> str:
    env = os.environ.get("POOLHOUSE_STATE_DIR")
    if env:
        return env
    return "/var/lib/poolhouse" if os.geteuid() == 0 and not os.path.isdir(".poolhouse") else ".poolhouse"


class ServerUnavailable(Exception):
    pass


def call(state_dir: str, request: dict[str, Any], timeout: float = 30.0) -> Any:
    """One request to the management API; returns its result or raises."""
    path = os.path.join(state_dir, "run", "control.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ServerUnavailable(f"no server answers at {path} ({exc.strerror or exc}); is 'poolhouse serve' "
                                f"running with --state-dir {state_dir}?") from None
    try:
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as exc:  # a timeout included: the server took longer than `timeout`
        raise ServerUnavailable(f"no answer from the server within {timeout:.0f} s ({exc})") from None
    finally:
        sock.close()
    if not buf:
        raise ServerUnavailable("the server closed the connection without answering")
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ServerUnavailable("the server's answer was cut off") from None
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "refused"))
    return answer.get("result")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


_LIST_COLUMNS = {
    "sites": ["name", "id", "state", "bindings"],
    "apppools": ["name", "state", "workers", "queue_length", "in_flight", "rapid_fail_count"],
    "wp": ["pid", "apppool", "user", "state", "uptime", "requests", "in_flight", "private_memory_kb", "recycle_reason"],
    "requests": ["elapsed_ms", "method", "url", "apppool", "pid", "stage"],
}


_CACHE_COLUMNS = ["site_id", "url", "size", "hits", "expires_in"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolhouse", description="Poolhouse web application server")
    parser.add_argument("--state-dir", default=None, help="state directory (default: $POOLHOUSE_STATE_DIR, "
                        "./.poolhouse, or /var/lib/poolhouse as root)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server in the foreground")
    serve.add_argument("-c", "--config", default=None, help="applicationHost.config (default: the embedded one)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    lst = sub.add_parser("list", help="list sites, application pools, worker processes, requests in flight "
                         "or the response cache")
    lst.add_argument("what", choices=["sites", "apppools", "wp", "requests", "cache"])
    lst.add_argument("--json", action="store_true", help="JSON output")
    lst.add_argument("--elapsed", type=int, default=0, metavar="MS",
                     help="requests: only those running for at least MS milliseconds")

    for verb, objects in (("start", ["apppool", "site"]), ("stop", ["apppool", "site"]), ("recycle", ["apppool"])):
        p = sub.add_parser(verb, help=f"{verb} an application pool" + (" or a site" if "site" in objects else ""))
        p.add_argument("what", choices=objects)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")

    sub.add_parser("reload", help="re-read the configuration (as SIGHUP)")
    counters = sub.add_parser("counters", help="listener counters")
    counters.add_argument("--json", action="store_true")
    grants = sub.add_parser("grants", help="the access the server granted pool identities on files "
                            "(POSIX ACL entries): list them, or take them back with --revoke")
    grants.add_argument("--revoke", action="store_true", help="remove the ACL entries the server added")
    grants.add_argument("--apppool", default=None, help="only those of this application pool "
                        "(IIS_IUSRS: those of every worker's group)")
    grants.add_argument("--json", action="store_true")
    config_cli.add_parser(sub)
    cert_cli.add_parser(sub)
    cache = sub.add_parser("cache", help="the listener's response cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    flush = cache_sub.add_parser("flush", help="drop cached responses (all, a site's, or one URL's)")
    flush.add_argument("--site", default=None, help="only this site's entries")
    flush.add_argument("--url", default=None, help="only this URL (path, as requested)")
    flush.add_argument("--json", action="store_true")
    # ``--state-dir`` is accepted after the subcommand too (``poolhouse serve --state-dir D``);
    # SUPPRESS keeps a subcommand from overwriting the value given before it.
    for subparser in sub.choices.values():
        subparser.add_argument("--state-dir", default=argparse.SUPPRESS, help="state directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    state_dir = args.state_dir or default_state_dir()
    if args.command == "config":
        return config_cli.run(args, state_dir)
    if args.command == "cert":
        return cert_cli.run(args)
    if args.command == "serve":
        return serve(args.config, state_dir, args.log_level)
    if args.command == "grants":
        return grants(state_dir, args.revoke, args.apppool, args.json)
    try:
        if args.command == "list" and args.what == "cache":
            result = call(state_dir, {"op": "list", "what": "cache"})
            print(json.dumps(result, indent=2) if args.json else _table(result["entries"], _CACHE_COLUMNS))
        elif args.command == "list":
            request: dict[str, Any] = {"op": "list", "what": args.what}
            if args.what == "requests":
                request["elapsed"] = args.elapsed
            result = call(state_dir, request)
            print(json.dumps(result, indent=2) if args.json else _table(result, _LIST_COLUMNS[args.what]))
        elif args.command == "cache":
            result = call(state_dir, {"op": "cache_flush", "site": args.site, "url": args.url})
            print(json.dumps(result, indent=2) if args.json else f"flushed {result['flushed']} entries")
        elif args.command in ("start", "stop", "recycle"):
            result = call(state_dir, {"op": args.command, "what": args.what, "name": args.name})
            print(json.dumps(result, indent=2) if args.json else
                  " ".join(f"{k}={v}" for k, v in result.items()))
        elif args.command == "reload":
            # a reload waits for the replacement workers of changed pools (startupTimeLimit)
            call(state_dir, {"op": "reload"}, timeout=600.0)
            print("configuration reloaded")
        elif args.command == "counters":
            result = call(state_dir, {"op": "counters"})
            print(json.dumps(result, indent=2))
    except ServerUnavailable as exc:
        print(f"poolhouse: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except RuntimeError as exc:
        print(f"poolhouse: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def grants(state_dir: str, revoke: bool, pool: str | None, as_json: bool) -> int:
    """Works on the state directory's grants.json directly (no server needed: revoke
    after stopping the server, or it grants again what its pools need)."""
    from ..activation.grants import Grants

    if not os.path.isdir(state_dir):
        print(f"poolhouse: no state directory at {state_dir}", file=sys.stderr)
        return EXIT_USAGE
    store = Grants(state_dir)
    if revoke:
        rows = store.revoke(pool)
    else:
        rows = [r for r in store.records if pool is None or str(r.get("for", "")).lower() == pool.lower()]
    shown = [{"for": r.get("for"), "path": r.get("path"), "acl": r.get("which"),
              "entry": f"{'u' if r.get('kind') == 'user' else 'g'}:{r.get('id')}:"
                       + "".join(c if int(r.get("added", 0)) & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))}
             for r in rows]
    if as_json:
        print(json.dumps(shown, indent=2))
    else:
        print(_table(shown, ["for", "entry", "acl", "path"]))
        if revoke:
            print(f"revoked {len(shown)} entries")
    return 0


def serve(config: str | None, state_dir: str, log_level: str) -> int:
    import logging

    import uvloop

    from ..activation.service import serve as run_service

    if config is not None and not os.path.isfile(config):
        print(f"poolhouse: no configuration file at {config}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s activation[%(process)d] %(levelname)s %(message)s")
    return uvloop.run(run_service(os.path.abspath(config) if config else None, state_dir, log_level))


if __name__ == "__main__":
    sys.exit(main())
