"""``poolhouse config backup [NAME] | restore NAME | history [--json]``.

Works on files in the state directory, like ``appcmd add/restore/list backup``:

- ``backup [NAME]`` copies the served applicationHost.config (the path the server
  published in ``run/config-path``, or ``-c FILE``) to ``config/backup/NAME/``
  (default name: ``backup-YYYYMMDD-HHMMSS``).
- ``restore NAME`` writes a backup or a ``CFGHISTORY_…`` snapshot back over the served
  file, atomically; the running server's watcher validates and applies it like any edit.
  The command waits a few seconds for the server's verdict in ``logs/config-audit.jsonl``
  and exits 1 if the server refused it.
- ``history`` lists the snapshots (``configHistory``) and the named backups.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

from ..config import history

EXIT_REFUSED = 1
EXIT_USAGE = 2
VERDICT_WAIT = 5.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration history, backups and restore")
    p.add_argument("action", choices=["backup", "restore", "history"])
    p.add_argument("name", nargs="?", help="backup name (restore: a backup or CFGHISTORY_ name)")
    p.add_argument("-c", "--config", default=None,
                   help="applicationHost.config (default: the one the server serves)")
    p.add_argument("--json", action="store_true", help="JSON output (history)")


def _read_run(state_dir: str, name: str) -> str:
    try:
        with open(os.path.join(state_dir, "run", name), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def served_config(state_dir: str, explicit: str | None) -> str:
    if explicit:
        return os.path.abspath(explicit)
    path = _read_run(state_dir, "config-path")
    if not path:
        raise LookupError(
            f"no served applicationHost.config is recorded in {state_dir}/run/config-path "
            "(the server was never started with -c, or runs the embedded configuration); "
            "use -c FILE")
    return path


def run(args: argparse.Namespace, state_dir: str) -> int:
    configured = _read_run(state_dir, "config-history-path")
    try:
        if args.action == "history":
            snaps = history.list_snapshots(state_dir, configured)
            if args.json:
                print(json.dumps([s.to_dict() for s in snaps], indent=2))
            elif not snaps:
                print("(none)")
            else:
                for s in snaps:
                    d = s.to_dict()
                    print(f"{d['name']:<32} {d['kind']:<8} {d['time']}  {d['size']:>8} bytes")
            return 0
        if args.action == "backup":
            path = served_config(state_dir, args.config)
            name = args.name or time.strftime("backup-%Y%m%d-%H%M%S", time.gmtime())
            with open(path, "rb") as fh:
                data = fh.read()
            target = history.backup(state_dir, name, data)
            print(f"backup '{name}' of {path} written to {target}")
            return 0
        # restore
        if not args.name:
            print("poolhouse: config restore needs the NAME of a backup or snapshot",
                  file=sys.stderr)
            return EXIT_USAGE
        path = served_config(state_dir, args.config)
        snap = history.find(state_dir, args.name, configured)
        with open(snap.path, "rb") as fh:
            data = fh.read()
        try:
            with open(path, "rb") as fh:
                unchanged = fh.read() == data
        except OSError:
            unchanged = False
        if unchanged:
            print(f"'{snap.name}' is already the content of {path}; nothing to restore")
            return 0
        history.write_atomic(path, data)
        print(f"restored '{snap.name}' over {path}")
        if not os.path.exists(os.path.join(state_dir, "run", "control.sock")):
            print("(no server is running on this state directory; it applies the file at start)")
            return 0
        return _verdict(state_dir, data)
    except (LookupError, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"poolhouse: {message}", file=sys.stderr)
        return EXIT_REFUSED


def _verdict(state_dir: str, data: bytes) -> int:
    """Wait for the running server's audit line about these bytes."""
    digest = hashlib.sha256(data).hexdigest()
    audit = os.path.join(state_dir, "logs", "config-audit.jsonl")
    deadline = time.monotonic() + VERDICT_WAIT
    start = os.path.getsize(audit) if os.path.exists(audit) else 0
    while time.monotonic() < deadline:
        try:
            with open(audit, encoding="utf-8") as fh:
                fh.seek(start)
                lines = fh.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("sha256") == digest:
                if record.get("result") == "accepted":
                    print("the server accepted and applied it")
                    return 0
                error = record.get("error", {})
                print(f"poolhouse: the server refused it: {error.get('file')}:{error.get('line')}: "
                      f"{error.get('reason')}", file=sys.stderr)
                return EXIT_REFUSED
        time.sleep(0.1)
    print("(no running server reported on it yet; it applies the file when it sees it)")
    return 0
