"""The HTTP Working Group's cache test suite (``http-cache-tests`` on npm) against Poolhouse
as a caching reverse proxy and against nginx ``proxy_cache``, in one run, side by side.

Both caches stand in front of the suite's own origin server (``server/server.mjs``), one
instance for both; the suite's command-line client (``cli.mjs``) runs once against each.
Poolhouse: one site whose URL Rewrite rule sends everything to the origin (ARR's reverse
proxy) and whose listener caches the proxied responses (RFC 9111, docs/listener.md).
nginx: the configuration the suite's own docker image uses (``proxy_cache`` with
``proxy_cache_revalidate on``).

Each test's result is classified the way the suite's report does (lib/display.mjs):
pass, fail (a conformance failure), optional_fail (not optimal, not a violation), yes/no
(``check`` tests: behaviour surveys), setup_fail, harness_fail, dependency_fail (a test it
depends on did not pass), retry; counted per suite and in total.

    .venv/bin/python bench/http_cache_tests.py [--output bench/results/http_cache_tests.json]

The package is installed (once) under bench/.peers/cache-tests with npm; node must be on
PATH, and nginx (apt) for the nginx column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.server import ServerProcess, StartError, free_port  # noqa: E402
from harness.targets import application_host_config, nginx_binary, tool  # noqa: E402

PACKAGE = "http-cache-tests"
VERSION = "0.4.5"
PEERS = Path(__file__).resolve().parent / ".peers" / "cache-tests"
KINDS = ("pass", "fail", "optional_fail", "yes", "no", "setup_fail", "harness_fail", "dependency_fail",
         "retry", "untested")

# every request goes to the suite's origin through the reverse proxy (URL Rewrite)
ORIGIN_RULE = ('<rewrite><rules><rule name="origin" stopProcessing="true"><match url=".*" />'
               '<action type="Rewrite" url="http://127.0.0.1:{origin}/{{R:0}}" /></rule></rules></rewrite>')

# the suite's docker image configuration (docker/nginx), with private paths
NGINX = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-cb;
    fastcgi_temp_path {tmp}/nginx-fc;
    uwsgi_temp_path {tmp}/nginx-uw;
    scgi_temp_path {tmp}/nginx-sc;
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
    proxy_temp_path {tmp}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin};
            proxy_cache my-cache;
            proxy_cache_revalidate on;
        }}
    }}
}}
"""

# the tests' metadata (suite, kind, dependencies), from the package's own test list
METADATA_JS = """
import tests from '{pkg}/tests/index.mjs'
import surrogate from '{pkg}/tests/surrogate-control.mjs'
tests.push(surrogate)
const out = []
for (const suite of tests) {{
  for (const t of suite.tests) {{
    out.push({{suite: suite.id, suite_name: suite.name, id: t.id, kind: t.kind || 'required',
               depends_on: t.depends_on || [], browser_only: t.browser_only === true}})
  }}
}}
console.log(JSON.stringify(out))
"""


def ensure_package() -> Path:
    """The suite, installed once with npm under bench/.peers/cache-tests."""
    pkg = PEERS / "node_modules" / PACKAGE
    manifest = pkg / "package.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == VERSION:
        return pkg
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to install http-cache-tests")
    PEERS.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(PEERS), f"{PACKAGE}@{VERSION}"],
                   check=True, stdout=subprocess.DEVNULL)
    return pkg


def metadata(pkg: Path) -> list[dict[str, object]]:
    out = subprocess.run(["node", "--input-type=module", "-e", METADATA_JS.format(pkg=pkg.as_uri())],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run_client(pkg: Path, base: str, timeout: float, test_id: str = "") -> dict[str, object]:
    """The suite's command-line client against ``base``: {test id: true | [kind, message]}
    (with ``test_id``: that test only, its requests and responses printed)."""
    env = {**os.environ, "npm_config_base": base, "npm_package_config_base": base,
           "npm_config_id": test_id, "npm_package_config_id": test_id}
    out = subprocess.run(["node", "--no-warnings", "cli.mjs"], cwd=pkg, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if test_id:
        print(out.stdout + out.stderr)
        return {}
    start = out.stdout.find("{")
    if out.returncode != 0 or start < 0:
        raise RuntimeError(f"cache-tests client failed ({out.returncode}): {out.stderr[-500:]}")
    return json.loads(out.stdout[start:])  # type: ignore[no-any-return]


def classify(tests: list[dict[str, object]], results: dict[str, object]) -> dict[str, str]:
    """lib/display.mjs determineTestResult, dependencies honoured."""
    by_id = {str(t["id"]): t for t in tests}
    memo: dict[str, str] = {}

    def kind_of(test_id: str) -> str:
        if test_id in memo:
            return memo[test_id]
        test = by_id[test_id]
        result = results.get(test_id)
        if result is None:
            kind = "untested"
        elif any(kind_of(str(d)) not in ("pass", "yes") for d in test["depends_on"]):  # type: ignore[attr-defined]
            kind = "dependency_fail"
        elif isinstance(result, list) and result and result[0] == "Setup":
            kind = "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
        elif test["kind"] == "optimal":
            kind = "pass" if result is True else "optional_fail"
        elif test["kind"] == "check":
            kind = "yes" if result is True else "no"
        else:
            kind = "pass" if result is True else "fail"
        memo[test_id] = kind
        return kind

    return {str(t["id"]): kind_of(str(t["id"])) for t in tests if not t["browser_only"]}


def counts(tests: list[dict[str, object]], kinds: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in tests:
        kind = kinds.get(str(t["id"]))
        if kind is None:
            continue
        for key in (str(t["suite"]), "total"):
            row = out.setdefault(key, {k: 0 for k in KINDS} | {"tests": 0})
            row[kind] += 1
            row["tests"] += 1
    return out


def wait_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise StartError(f"nothing listens on {port} after {timeout:g}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="", help="results JSON")
    parser.add_argument("--only", default="poolhouse,nginx", help="poolhouse, nginx (comma list)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per client run, seconds")
    parser.add_argument("--id", default="", help="run this one test and print its exchanges")
    args = parser.parse_args()
    if shutil.which("node") is None:
        print("node is needed for http-cache-tests", file=sys.stderr)
        return 1
    pkg = ensure_package()
    tests = metadata(pkg)
    wanted = args.only.split(",")
    report: dict[str, object] = {"suite": f"{PACKAGE} {VERSION}", "caches": {}}
    with tempfile.TemporaryDirectory(prefix="poolhouse-cache-tests-") as d:
        tmp = Path(d)
        origin_port = free_port()
        origin = ServerProcess(["node", "--no-warnings", "server/server.mjs"], cwd=pkg,
                               env={**os.environ, "npm_config_port": str(origin_port), "npm_config_protocol": "http",
                                    "npm_config_pidfile": str(tmp / "origin.pid")},
                               log_path=tmp / "origin.log")
        caches: dict[str, ServerProcess] = {}
        try:
            origin.start()
            wait_port(origin_port, 15)
            for name in ("poolhouse", "nginx"):
                if name not in wanted:
                    continue
                port = free_port()
                if name == "poolhouse":
                    (tmp / "www").mkdir(exist_ok=True)
                    conf = tmp / "applicationHost.config"
                    conf.write_text(application_host_config(port, tmp / "www", web=ORIGIN_RULE.format(origin=origin_port)))
                    server = ServerProcess([tool("poolhouse"), "serve", "-c", str(conf), "--state-dir", str(tmp / "ph")],
                                           cwd=tmp, env=dict(os.environ), log_path=tmp / "poolhouse.log")
                else:
                    if not shutil.which("nginx") and not Path(nginx_binary()).exists():
                        print("nginx not installed: its column is skipped", file=sys.stderr)
                        continue
                    conf = tmp / "nginx.conf"
                    # as root, nginx's workers would run as nobody and could not write the cache
                    # in the private temporary directory
                    user = "user root;\n" if os.geteuid() == 0 else ""
                    conf.write_text(NGINX.format(user=user, tmp=tmp, port=port, origin=origin_port))
                    server = ServerProcess([nginx_binary(), "-p", f"{tmp}/", "-c", str(conf)], cwd=tmp,
                                           env=dict(os.environ), log_path=tmp / "nginx.log")
                caches[name] = server
                server.start()
                wait_port(port, 30)
                started = time.monotonic()
                results = run_client(pkg, f"http://127.0.0.1:{port}", args.timeout, args.id)
                if args.id:
                    server.stop()
                    del caches[name]
                    continue
                kinds = classify(tests, results)
                table = counts(tests, kinds)
                report["caches"][name] = {  # type: ignore[index]
                    "seconds": round(time.monotonic() - started, 1), "counts": table, "results": kinds,
                    "messages": {k: v[1] for k, v in results.items() if isinstance(v, list) and len(v) > 1},
                }
                left = server.stop()
                if left:
                    print(f"{name} left: " + "; ".join(left), file=sys.stderr)
                del caches[name]
        except (StartError, RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"failed: {exc}", file=sys.stderr)
            for p in (tmp / "poolhouse.log", tmp / "nginx.log", tmp / "origin.log"):
                if p.exists():
                    print(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
        finally:
            for server in caches.values():
                server.stop()
            origin.stop()
    if args.id:
        return 0
    print_table(report)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_table(report: dict[str, object]) -> None:
    caches: dict[str, dict[str, object]] = report["caches"]  # type: ignore[assignment]
    names = list(caches)
    shown = ("pass", "fail", "optional_fail", "yes", "no", "dependency_fail", "setup_fail")
    print(f"{report['suite']}: " + ", ".join(f"{n} {caches[n]['seconds']} s" for n in names))
    print(f"{'suite':16s}" + "".join(f"  {n:>42s}" for n in names))
    print(f"{'':16s}" + "".join("  " + " ".join(f"{k[:6]:>5s}" for k in shown) for _ in names))
    first: dict[str, object] = next(iter(caches.values()))["counts"] if caches else {}  # type: ignore[assignment]
    suites = [s for s in first if s != "total"] + (["total"] if first else [])
    for suite in suites:
        row = f"{suite:16s}"
        for n in names:
            c = caches[n]["counts"][suite]  # type: ignore[index]
            row += "  " + " ".join(f"{c[k]:5d}" for k in shown)
        print(row)


if __name__ == "__main__":
    sys.exit(main())
