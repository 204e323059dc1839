"""Live configuration changes through the real server, under continuous load.

A client thread GETs a file of site A in a loop the whole time; meanwhile the test adds a
site, moves its binding, breaks and fixes a web.config, breaks applicationHost.config,
takes a backup and restores it.  No request of the load may fail, and every change must
show within 2 seconds.  Also: a stock IIS Express-shaped applicationhost.config serves,
500.19 pages (detailed for local clients, generic for remote ones), and a broken
applicationHost.config stops ``poolhouse serve`` with exit code 78.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .conftest import free_port

EFFECT_WITHIN = 2.0
STOCK = Path(__file__).parent.parent / "data" / "stock" / "iisexpress-applicationhost.config"

SITE_A = """
      <site name="A" id="1">
        <application path="/" applicationPool="PA">
          <virtualDirectory path="/" physicalPath="{root}/a" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port0}:" /></bindings>
      </site>"""
SITE_B = """
      <site name="B" id="2">
        <application path="/" applicationPool="PB">
          <virtualDirectory path="/" physicalPath="{root}/b" />
        </application>
        <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port1}:" /></bindings>
      </site>"""
POOLS = '<add name="PA" />'
POOLS_B = '<add name="PA" /><add name="PB" />'


def config(pools: str, sites: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<configuration>\n'
            "  <!-- hand-written; comments survive -->\n"
            "  <system.applicationHost>\n"
            f"    <applicationPools>{pools}</applicationPools>\n"
            f"    <sites>{sites}\n    </sites>\n"
            "  </system.applicationHost>\n</configuration>\n")


FILES = {"a/ok.txt": "ok A", "a/broken/x.txt": "x", "b/b.txt": "hello B"}


class Load(threading.Thread):
    """GETs one URL in a loop; records every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200 and r.text == "ok A":
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))


def within(predicate, timeout: float = EFFECT_WITHIN) -> float:
    """Seconds until ``predicate()`` is true; fails after ``timeout`` (+ scheduling slack)."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout + 0.5:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)


def status(url: str, **kw) -> int:
    try:
        return httpx.get(url, timeout=2, **kw).status_code
    except httpx.HTTPError:
        return 0


def audit(server) -> list[dict]:
    path = server.state_dir / "logs" / "config-audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_live_changes_under_load(poolhouse_server) -> None:
    server = poolhouse_server(config(POOLS, SITE_A), FILES, extra_ports=2)
    port_b, port_b2 = server.ports[1], server.ports[2]
    cfg = server.config
    text_a = cfg.read_text()
    load = Load(server.url("/ok.txt"))
    load.start()
    timings: dict[str, float] = {}
    try:
        # a new site in a new pool: no SIGHUP, the watcher applies it
        with_b = text_a.replace(POOLS, POOLS_B).replace("    </sites>",
                                                        SITE_B.replace("{port1}", str(port_b))
                                                        .replace("{root}", str(server.root))
                                                        + "\n    </sites>")
        cfg.write_text(with_b)
        timings["add site"] = within(lambda: status(f"http://127.0.0.1:{port_b}/b.txt") == 200)

        # move B's binding: the new one serves, the old one stops
        cfg.write_text(with_b.replace(f"127.0.0.1:{port_b}:", f"127.0.0.1:{port_b2}:"))
        timings["change binding"] = within(
            lambda: status(f"http://127.0.0.1:{port_b2}/b.txt") == 200
            and status(f"http://127.0.0.1:{port_b}/b.txt") == 0)

        # a broken web.config fails its folder only, with file, line, section, reason
        broken = server.root / "a" / "broken" / "web.config"
        broken.write_text('<configuration>\n  <system.webServer>\n'
                          '    <defaultDocument enabled="maybe" />\n'
                          "  </system.webServer>\n</configuration>\n")
        timings["break web.config"] = within(lambda: status(server.url("/broken/x.txt")) == 500)
        page = httpx.get(server.url("/broken/x.txt"), timeout=2).text
        assert "500.19" in page and str(broken) in page
        assert "<th>Config Line</th><td>3</td>" in page
        assert "system.webServer/defaultDocument" in page and "maybe" in page
        assert "0x8007000d" in page and "Config Source" in page
        # a remote client gets the generic page (errorMode DetailedLocalOnly)
        remote = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5"), timeout=2)
        r = remote.get(server.url("/broken/x.txt"))
        assert r.status_code == 500 and "500.19" in r.text and str(broken) not in r.text
        remote.close()
        assert status(server.url("/ok.txt")) == 200
        broken.write_text("<configuration />\n")
        timings["fix web.config"] = within(lambda: status(server.url("/broken/x.txt")) == 200)

        # the web.config files at the virtual directories' roots are audited too
        web_b = server.root / "b" / "web.config"
        web_b.write_text('<configuration>\n  <system.webServer>\n    <directoryBrowse enabled="on" />\n'
                         "  </system.webServer>\n</configuration>\n")
        within(lambda: any(a["file"] == str(web_b) and a["result"] == "refused"
                           for a in audit(server)))
        line = [a for a in audit(server) if a["file"] == str(web_b)][-1]
        assert line["error"]["line"] == 3 and line["site"] == "B"
        assert status(f"http://127.0.0.1:{port_b2}/b.txt") == 500  # deliberately broken
        web_b.write_text('<configuration>\n  <system.webServer>\n    <directoryBrowse enabled="false" />\n'
                         "  </system.webServer>\n</configuration>\n")
        within(lambda: audit(server)[-1]["file"] == str(web_b)
               and audit(server)[-1]["result"] == "accepted")
        assert audit(server)[-1]["changes"] == ["added system.webServer/directoryBrowse"]
        within(lambda: status(f"http://127.0.0.1:{port_b2}/b.txt") == 200)

        # a broken applicationHost.config is refused; the running configuration serves on
        good = cfg.read_text()
        cfg.write_text(good.replace("<sites>", "<sites><bogus/>"))
        timings["refuse apphost"] = within(
            lambda: any(a["result"] == "refused" and a["file"] == str(cfg) for a in audit(server)))
        refused = [a for a in audit(server) if a["result"] == "refused" and a["file"] == str(cfg)][-1]
        bogus_line = 1 + good.split("<sites>")[0].count("\n")
        assert refused["error"]["file"] == str(cfg) and refused["error"]["line"] == bogus_line
        assert "bogus" in refused["error"]["reason"]
        assert refused["error"]["section"] == "system.applicationHost/sites"
        assert status(f"http://127.0.0.1:{port_b2}/b.txt") == 200

        # backup, change, restore
        applied = sum(e["event"] == "config_applied" for e in server.events())
        cfg.write_text(good)  # back to the running configuration: applied, not a change
        within(lambda: sum(e["event"] == "config_applied" for e in server.events()) > applied)
        r = server.cli("config", "backup", "before-removal")
        assert r.returncode == 0, r.stderr
        cfg.write_text(text_a)
        timings["remove site"] = within(lambda: status(f"http://127.0.0.1:{port_b2}/b.txt") == 0)
        r = server.cli("config", "restore", "before-removal")
        assert r.returncode == 0, r.stderr
        timings["restore"] = within(lambda: status(f"http://127.0.0.1:{port_b2}/b.txt") == 200)
        time.sleep(0.3)
    finally:
        load.stop.set()
        load.join(10)
    print("effect after (s):", {k: round(v, 2) for k, v in timings.items()},
          "load requests:", load.ok)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50

    # history and audit
    history = json.loads(server.cli("config", "history", "--json").stdout)
    names = [h["name"] for h in history]
    assert "before-removal" in names
    assert sum(n.startswith("CFGHISTORY_") for n in names) >= 5
    lines = audit(server)
    assert [a["result"] for a in lines if a["file"] == str(cfg)].count("refused") == 1
    assert any("added site 'B'" in a["changes"] for a in lines)
    assert any(f"added binding http/127.0.0.1:{port_b2}: to site 'B'" in a["changes"] for a in lines)
    assert any(e["event"] == "config_change" for e in server.events())


def test_stock_iis_express_file_serves(poolhouse_server) -> None:
    text = STOCK.read_text()
    server = poolhouse_server(text, {"www/index.html": "stock ok", "www/page.aspx": "<%= 1 %>"})
    r = httpx.get(server.url("/"), timeout=5)
    assert r.status_code == 200 and r.text == "stock ok"
    # the .NET handler mappings do not apply: .aspx is a static file without a MIME type
    assert httpx.get(server.url("/page.aspx"), timeout=5).status_code == 404
    assert "section is not implemented by Poolhouse" in server.stderr()


def test_broken_apphost_stops_serve_with_file_line_and_reason(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "applicationHost.config"
    (tmp_path / "a").mkdir()
    cfg.write_text(config(POOLS, SITE_A).replace("{root}", str(tmp_path))
                   .replace("{port0}", str(port)).replace('<add name="PA" />',
                                                          '<add name="PA" queueLength="5" />'))
    proc = subprocess.run([sys.executable, "-m", "poolhouse.admin.cli", "--state-dir",
                           str(tmp_path / "state"), "serve", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert f"{cfg}:5: system.applicationHost/applicationPools:" in proc.stderr
    assert "queueLength" in proc.stderr and "10-65535" in proc.stderr


MOVE_FILES = {
    "a/ok.txt": "ok A",
    "m/app.py": """
        import os

        def application(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [os.environ.get("APP_POOL_ID", "?").encode()]
        """,
    "m/web.config": """
        <configuration><system.webServer><handlers>
          <add name="m" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:application" />
        </handlers></system.webServer></configuration>
        """,
}
SITE_A_WITH_M = SITE_A.replace("""        <bindings>""", """        <application path="/m" applicationPool="PA">
          <virtualDirectory path="/" physicalPath="{root}/m" />
        </application>
        <bindings>""")


def test_moved_application_goes_to_its_new_pool_under_load(poolhouse_server) -> None:
    server = poolhouse_server(config(POOLS_B, SITE_A_WITH_M), MOVE_FILES)
    assert httpx.get(server.url("/m/x"), timeout=5).text == "PA"
    loads = [Load(server.url("/ok.txt")), MoveLoad(server.url("/m/x"))]
    for t in loads:
        t.start()
    try:
        time.sleep(0.3)
        text = server.config.read_text()
        server.config.write_text(text.replace('<application path="/m" applicationPool="PA">',
                                              '<application path="/m" applicationPool="PB">'))
        took = within(lambda: httpx.get(server.url("/m/x"), timeout=5).text == "PB")
        time.sleep(0.5)
    finally:
        for t in loads:
            t.stop.set()
            t.join(10)
    print("moved within", round(took, 2), "s; requests:", [t.ok for t in loads])
    assert all(t.failures == [] for t in loads), [t.failures[:3] for t in loads]
    recycled = {e.get("apppool") for e in server.events() if e["event"] == "worker_recycle"}
    assert "PA" in recycled  # it lost an application; PB had no worker yet


class MoveLoad(Load):
    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200 and r.text in ("PA", "PB"):
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
