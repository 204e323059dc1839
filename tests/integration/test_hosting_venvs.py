"""Pools in their own virtualenvs (``<python executable>``): two versions of one framework
side by side, and a clear error for an interpreter that cannot run workers.

``make install`` creates ``.venv-alt`` (Flask 2.x and Poolhouse's worker runtime) beside
``.venv`` (Flask 3.x)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import apphost

ROOT = Path(__file__).resolve().parents[2]
MAIN_PYTHON = Path(sys.executable)
ALT_PYTHON = ROOT / ".venv-alt" / "bin" / "python"

APP = """
import importlib.metadata
import sys
import warnings

import flask

app = flask.Flask(__name__)


@app.route("/")
def info():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Flask 3.1 deprecates __version__
        dunder = getattr(flask, "__version__", None)
    return flask.jsonify(flask=importlib.metadata.version("flask"), dunder=dunder,
                         werkzeug=importlib.metadata.version("werkzeug"), prefix=sys.prefix,
                         flask_file=flask.__file__)
"""


def site(name: str, site_id: int, pool: str, port: str) -> str:
    return f"""
<site name="{name}" id="{site_id}">
  <application path="/" applicationPool="{pool}">
    <virtualDirectory path="/" physicalPath="{{root}}/{name}" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


WEB = """<configuration><system.webServer><handlers>
  <add name="flask" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />
</handlers></system.webServer></configuration>"""


def alt_flask_version() -> str:
    out = subprocess.run([str(ALT_PYTHON), "-c", "import importlib.metadata as m; print(m.version('flask'))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_two_pools_two_flask_versions(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    assert ALT_PYTHON.exists(), f"{ALT_PYTHON} is missing: `make install` creates it"
    main_flask, alt_flask = importlib.metadata.version("flask"), alt_flask_version()
    assert main_flask.split(".")[0] != alt_flask.split(".")[0]  # the environments really differ
    pools = (f'<add name="Modern"><python executable="{MAIN_PYTHON}" /></add>'
             f'<add name="Legacy"><python executable="{ALT_PYTHON}" /></add>')
    sites = site("modern", 1, "Modern", "{port0}") + site("legacy", 2, "Legacy", "{port1}")
    server = poolhouse_server(apphost(sites, pools), extra_ports=1, files={
        "modern/app.py": APP, "modern/web.config": WEB, "legacy/app.py": APP, "legacy/web.config": WEB})
    modern = httpx.get(f"http://127.0.0.1:{server.ports[0]}/", timeout=30).json()
    legacy = httpx.get(f"http://127.0.0.1:{server.ports[1]}/", timeout=30).json()
    assert modern["flask"] == main_flask and modern["dunder"] in (main_flask, None)  # __version__ goes in Flask 3.2
    assert legacy["flask"] == legacy["dunder"] == alt_flask
    assert legacy["werkzeug"].split(".")[0] == "2"
    assert Path(modern["prefix"]) == MAIN_PYTHON.parent.parent
    assert Path(legacy["prefix"]) == ALT_PYTHON.parent.parent
    assert legacy["flask_file"].startswith(str(ROOT / ".venv-alt"))
    workers = {w["apppool"]: w["pid"] for w in server.workers()}
    for pool, python in (("Modern", MAIN_PYTHON), ("Legacy", ALT_PYTHON)):
        exe = Path(f"/proc/{workers[pool]}/exe").resolve()
        assert exe == python.resolve(), (pool, exe)


def test_unusable_python_stops_the_pool(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bare = tmp_path / "bare"  # a virtualenv without Poolhouse's worker runtime
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    pools = ('<add name="Missing"><python executable="{root}/no/such/python" /></add>'
             f'<add name="Bare"><python executable="{bare}/bin/python" /></add>')
    sites = site("missing", 1, "Missing", "{port0}") + site("bare", 2, "Bare", "{port1}")
    server = poolhouse_server(apphost(sites, pools), extra_ports=1, files={
        "missing/app.py": APP, "missing/web.config": WEB, "bare/app.py": APP, "bare/web.config": WEB})
    for port in server.ports:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 503
    events = server.wait_for(lambda: [e for e in server.events() if e["event"] == "apppool_python_invalid"]
                             if len([e for e in server.events() if e["event"] == "apppool_python_invalid"]) >= 2
                             else None)
    reasons = {e["apppool"]: e["reason"] for e in events}
    assert "No such file or directory" in reasons["Missing"]
    assert "lacks Poolhouse's worker runtime" in reasons["Bare"] and "poolhouse" in reasons["Bare"]
    states = {p["name"]: p for p in server.api("list", what="apppools")}
    assert states["Missing"]["rapid_fail_stopped"] and states["Bare"]["rapid_fail_stopped"]
    assert "apppool_python_invalid" in server.stderr()  # the log line
    assert not server.workers()
