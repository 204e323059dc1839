"""Real frameworks through Poolhouse, end to end: a compact Flask tutorial app (flaskr:
register, log in, create a post), a Django project with its admin (startproject,
migrate, createsuperuser, collectstatic served by Poolhouse through a /static virtual
directory; login and a form POST with CSRF), and a FastAPI app (JSON, a form upload, a
streaming response, a background task).  One server, two pools."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import apphost

FLASKR = """\
import os, sqlite3
from flask import Flask, g, redirect, request, session, url_for, abort
from werkzeug.security import check_password_hash, generate_password_hash

SCHEMA = '''
CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL,
                                 password TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS post (id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER NOT NULL,
                                 title TEXT NOT NULL, body TEXT NOT NULL);
'''

def create_app():
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "dev"
    app.config["DATABASE"] = os.path.join(os.path.dirname(__file__), "flaskr.sqlite")

    def db():
        if "db" not in g:
            g.db = sqlite3.connect(app.config["DATABASE"])
            g.db.row_factory = sqlite3.Row
            g.db.executescript(SCHEMA)
        return g.db

    @app.teardown_appcontext
    def close(exc):
        d = g.pop("db", None)
        if d is not None:
            d.close()

    @app.route("/auth/register", methods=["GET", "POST"])
    def register():
        if request.method == "POST":
            try:
                db().execute("INSERT INTO user (username, password) VALUES (?, ?)",
                             (request.form["username"], generate_password_hash(request.form["password"])))
                db().commit()
            except sqlite3.IntegrityError:
                return f"User {request.form['username']} is already registered.", 400
            return redirect(url_for("login"))
        return "<form method=post><input name=username><input name=password></form>"

    @app.route("/auth/login", methods=["GET", "POST"])
    def login():
        if request.method == "POST":
            user = db().execute("SELECT * FROM user WHERE username = ?", (request.form["username"],)).fetchone()
            if user is None or not check_password_hash(user["password"], request.form["password"]):
                return "Incorrect username or password.", 400
            session.clear()
            session["user_id"] = user["id"]
            return redirect(url_for("index"))
        return "<form method=post><input name=username><input name=password></form>"

    @app.route("/create", methods=["GET", "POST"])
    def create():
        if "user_id" not in session:
            return redirect(url_for("login"))
        if request.method == "POST":
            db().execute("INSERT INTO post (title, body, author_id) VALUES (?, ?, ?)",
                         (request.form["title"], request.form["body"], session["user_id"]))
            db().commit()
            return redirect(url_for("index"))
        return "<form method=post><input name=title><textarea name=body></textarea></form>"

    @app.route("/")
    def index():
        posts = db().execute("SELECT p.title, p.body, u.username FROM post p JOIN user u ON p.author_id = u.id"
                             " ORDER BY p.id DESC").fetchall()
        return "".join(f"<article><h1>{p['title']}</h1><p>by {p['username']}</p><p>{p['body']}</p></article>"
                       for p in posts) or "No posts."

    return app
"""

FASTAPI_APP = """\
import asyncio, os
from fastapi import BackgroundTasks, FastAPI, File, Form, UploadFile
from fastapi.responses import StreamingResponse

app = FastAPI()
DONE = os.path.join(os.path.dirname(__file__), "task-done.txt")

@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}

@app.post("/upload")
async def upload(note: str = Form(...), file: UploadFile = File(...)):
    data = await file.read()
    return {"note": note, "filename": file.filename, "size": len(data), "sum": sum(data) % 65521}

@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield f"chunk {i}\\n".encode()
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")

def write_done(text: str) -> None:
    with open(DONE, "w") as fh:
        fh.write(text)

@app.post("/task")
async def task(background: BackgroundTasks):
    background.add_task(write_done, "background task ran")
    return {"queued": True}
"""

DJANGO_WEB = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="django.core.wsgi.get_wsgi_application()" />
    <add key="PYTHONPATH" value="C:\\\\inetpub\\\\wwwroot\\\\mysite" />
    <add key="DJANGO_SETTINGS_MODULE" value="mysite.settings" />
  </appSettings>
  <system.webServer>
    <handlers>
      <add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule"
           scriptProcessor="C:\\\\Python311\\\\python.exe|C:\\\\Python311\\\\Lib\\\\site-packages\\\\wfastcgi.py"
           resourceType="Unspecified" requireAccess="Script" />
    </handlers>
  </system.webServer>
</configuration>"""

STATIC_WEB = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <system.webServer>
    <handlers>
      <remove name="Python FastCGI" />
    </handlers>
  </system.webServer>
</configuration>"""


def make_django(base: Path) -> Path:
    """startproject, settings for the test, migrate, createsuperuser, collectstatic."""
    proj = base / "mysite"
    proj.mkdir()
    env = dict(os.environ, DJANGO_SUPERUSER_PASSWORD="s3cret-pass", DJANGO_SUPERUSER_USERNAME="admin",
               DJANGO_SUPERUSER_EMAIL="admin@example.com")
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(proj)], check=True)
    settings = proj / "mysite" / "settings.py"
    text = settings.read_text()
    text = text.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['*']")
    text = text.replace("STATIC_URL = 'static/'", "STATIC_URL = '/django/static/'")
    text = text.replace('STATIC_URL = "static/"', 'STATIC_URL = "/django/static/"')
    text += "\nSTATIC_ROOT = BASE_DIR / 'staticfiles'\nDEBUG = False\n"
    settings.write_text(text)
    for cmd in (["migrate", "--noinput", "-v", "0"], ["createsuperuser", "--noinput"],
                ["collectstatic", "--noinput", "-v", "0"]):
        subprocess.run([sys.executable, "manage.py", *cmd], cwd=proj, env=env, check=True)
    (proj / "web.config").write_text(DJANGO_WEB)
    (proj / "staticfiles" / "web.config").write_text(STATIC_WEB)
    return proj


def site(django: Path) -> str:
    return f"""
<site name="S" id="1">
  <application path="/" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{{root}}/www" />
  </application>
  <application path="/flaskr" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{{root}}/flaskr" />
  </application>
  <application path="/fastapi" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{{root}}/fastapi" />
  </application>
  <application path="/django" applicationPool="Dj">
    <virtualDirectory path="/" physicalPath="{django}" />
    <virtualDirectory path="/static" physicalPath="{django}/staticfiles" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{{port}}:" /></bindings>
</site>"""


def handler(name: str, module: str, spec: str) -> str:
    return (f'<configuration><system.webServer><handlers><add name="{name}" path="*" verb="*" '
            f'modules="{module}" scriptProcessor="{spec}" /></handlers></system.webServer></configuration>')


def test_frameworks(poolhouse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    django = make_django(tmp_path)
    # the applications write their databases (and a marker) beside their code: as root
    # their workers run as the pools' users, who are given write access there
    django.chmod(0o1777)
    for db in django.glob("*.sqlite3"):
        db.chmod(0o666)
    server = poolhouse_server(apphost(site(django), pools='<add name="Py" /><add name="Dj" />'), writable=("flaskr", "fastapi"), files={
        "www/index.html": "home",
        "flaskr/flaskr.py": FLASKR,
        "flaskr/web.config": handler("flaskr", "WsgiModule", "flaskr:create_app()"),
        "fastapi/main.py": FASTAPI_APP,
        "fastapi/web.config": handler("fastapi", "AsgiModule", "main:app"),
    })
    base = server.base

    # ---- flaskr: register, log in, create a post ------------------------------------
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/flaskr/auth/register", data={"username": "ada", "password": "pw"})
        assert (r.status_code, r.headers["location"]) == (302, "/flaskr/auth/login")
        assert c.post("/flaskr/auth/register", data={"username": "ada", "password": "pw"}).status_code == 400
        assert c.post("/flaskr/auth/login", data={"username": "ada", "password": "nope"}).status_code == 400
        r = c.post("/flaskr/auth/login", data={"username": "ada", "password": "pw"})
        assert r.status_code == 302 and "session" in c.cookies
        r = c.post("/flaskr/create", data={"title": "Hello", "body": "First post through Poolhouse"})
        assert r.status_code == 302
        page = c.get("/flaskr/").text
        assert "<h1>Hello</h1>" in page and "by ada" in page

    # ---- FastAPI: JSON, form upload, streaming, background task ----------------------
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/fastapi/items/5?q=x").json() == {"item_id": 5, "q": "x"}
        blob = bytes(range(256)) * 1000
        r = c.post("/fastapi/upload", data={"note": "hi"}, files={"file": ("data.bin", blob)})
        assert r.json() == {"note": "hi", "filename": "data.bin", "size": len(blob), "sum": sum(blob) % 65521}
        with c.stream("GET", "/fastapi/stream") as r:
            pieces = [p for p in r.iter_bytes() if p]
        assert b"".join(pieces) == b"".join(f"chunk {i}\n".encode() for i in range(5))
        assert c.post("/fastapi/task").json() == {"queued": True}
        done = server.root / "fastapi" / "task-done.txt"
        # the task opens the file, then writes: wait for what it wrote, not for the name
        server.wait_for(lambda: done.exists() and done.read_text() == "background task ran", timeout=5)

    # ---- Django admin: static files by Poolhouse, login and a form POST with CSRF -----
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.get("/django/static/admin/css/base.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
        assert "x-frame-options" not in r.headers  # the static handler, not Django
        r = c.get("/django/admin/")
        assert r.status_code == 302 and r.headers["location"].startswith("/django/admin/login/")
        r = c.get("/django/admin/login/")
        assert r.status_code == 200 and "/django/static/admin/css/base.css" in r.text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text).group(1)
        r = c.post("/django/admin/login/?next=/django/admin/",
                   data={"csrfmiddlewaretoken": token, "username": "admin", "password": "s3cret-pass",
                         "next": "/django/admin/"})
        assert (r.status_code, r.headers.get("location")) == (302, "/django/admin/"), r.text[:500]
        r = c.get("/django/admin/")
        assert r.status_code == 200 and "Site administration" in r.text
        r = c.get("/django/admin/auth/group/add/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text).group(1)
        r = c.post("/django/admin/auth/group/add/", data={"csrfmiddlewaretoken": token, "name": "editors"})
        assert r.status_code == 302, r.text[:500]
        assert "editors" in c.get("/django/admin/auth/group/").text
        # without the token: Django's CSRF protection answers 403
        r = c.post("/django/admin/auth/group/add/", data={"name": "nope"})
        assert r.status_code == 403
