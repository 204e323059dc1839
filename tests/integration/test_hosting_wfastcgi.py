"""Migration from IIS + wfastcgi: the web.config files of Microsoft's wfastcgi samples,
written as IIS users write them (Windows paths and all), serve unchanged — a Flask and a
bottle application in one pool, both named app.py, a nested application under one of
them, PYTHONPATH, WSGI_LOG, appSettings in os.environ and WSGI_RESTART_FILE_REGEX."""

from __future__ import annotations

import time

import httpx

from .conftest import apphost

FASTCGI = ('<add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule" '
           'scriptProcessor="C:\\Python311\\python.exe|C:\\Python311\\Lib\\site-packages\\wfastcgi.py" '
           'resourceType="Unspecified" requireAccess="Script" />')

FLASK_CONFIG = f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="app.app" />
    <add key="PYTHONPATH" value="C:\\inetpub\\wwwroot\\flaskapp;lib" />
    <add key="WSGI_LOG" value="wfastcgi.log" />
    <add key="GREETING" value="hello from appSettings" />
  </appSettings>
  <system.webServer>
    <handlers>
      {FASTCGI}
    </handlers>
  </system.webServer>
</configuration>"""

FLASK_APP = """\
import os
from flask import Flask, jsonify, request
import helper  # from PYTHONPATH's relative "lib"

app = Flask(__name__)

@app.route("/")
def index():
    return "Hello Flask via wfastcgi config"

@app.route("/info")
def info():
    return jsonify(greeting=os.environ.get("GREETING"), helper=helper.NAME, pid=os.getpid(),
                   script_root=request.script_root, path=request.path,
                   appsettings=request.environ["poolhouse.appsettings"].get("GREETING"))

@app.route("/boom")
def boom():
    raise RuntimeError("kaboom for WSGI_LOG")
"""

BOTTLE_CONFIG = f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="app.wsgi_app()" />
    <add key="WSGI_RESTART_FILE_REGEX" value="" />
  </appSettings>
  <system.webServer>
    <handlers>
      {FASTCGI}
    </handlers>
  </system.webServer>
</configuration>"""

BOTTLE_APP = """\
import bottle

@bottle.route("/")
def index():
    return "Hello bottle via wfastcgi config"

@bottle.route("/hello/<name>")
def hello(name):
    return {"hello": name}

def wsgi_app():
    return bottle.default_app()
"""

CHILD_CONFIG = """<configuration><system.webServer><handlers>
  <add name="child" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:application" />
</handlers></system.webServer></configuration>"""

CHILD_APP = """\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"child application " + environ["SCRIPT_NAME"].encode()]
"""

SITE = """
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <application path="/flask" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/flaskapp" />
  </application>
  <application path="/flask/child" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/child" />
  </application>
  <application path="/bottle" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/bottleapp" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


def test_wfastcgi_configurations(poolhouse_server) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(apphost(SITE), writable=("flaskapp",), files={  # WSGI_LOG
        "www/index.html": "root",
        "flaskapp/web.config": FLASK_CONFIG,
        "flaskapp/app.py": FLASK_APP,
        "flaskapp/lib/helper.py": "NAME = 'helper from lib'\n",
        "bottleapp/web.config": BOTTLE_CONFIG,
        "bottleapp/app.py": BOTTLE_APP,
        "child/web.config": CHILD_CONFIG,
        "child/app.py": CHILD_APP,
    })
    with httpx.Client(base_url=server.base, timeout=20) as c:
        r = c.get("/flask/")
        assert (r.status_code, r.text) == (200, "Hello Flask via wfastcgi config")
        info = c.get("/flask/info").json()
        assert info["greeting"] == "hello from appSettings"
        assert info["appsettings"] == "hello from appSettings"
        assert info["helper"] == "helper from lib"
        assert (info["script_root"], info["path"]) == ("/flask", "/info")

        # a second app.py in the same pool is its own module
        assert c.get("/bottle/").text == "Hello bottle via wfastcgi config"
        assert c.get("/bottle/hello/iis").json() == {"hello": "iis"}
        # a nested application shadowing the inherited FastCGI mapping
        assert c.get("/flask/child/x").text == "child application /flask/child"

        # WSGI_LOG gets the application's errors
        assert c.get("/flask/boom").status_code == 500
        log_text = (server.root / "flaskapp" / "wfastcgi.log").read_text()
        assert "kaboom for WSGI_LOG" in log_text

        # WSGI_RESTART_FILE_REGEX (wfastcgi's default: .py and .config files): recycle
        pid = info["pid"]
        (server.root / "flaskapp" / "lib" / "helper.py").write_text("NAME = 'helper changed'\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = c.get("/flask/info")
            if r.status_code == 200 and r.json()["pid"] != pid:
                break
            time.sleep(0.2)
        assert r.json()["pid"] != pid and r.json()["helper"] == "helper changed"
    err = server.stderr()
    assert "Windows path: ignored" in err
    assert "WSGI_RESTART_FILE_REGEX" in err
