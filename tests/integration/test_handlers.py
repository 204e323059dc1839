"""Handlers through the whole server: ASGI (http + lifespan), static files with their
validators and ranges, default documents, handler mapping by path and verb."""

from __future__ import annotations

import httpx

from .conftest import apphost

ASGI_APP = """\
import asyncio, json, os

STATE = {"started": False}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                STATE["started"] = True
                scope["state"]["greeting"] = "hi"
                open(os.path.join(os.path.dirname(__file__), "lifespan.log"), "a").write("startup\\n")
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                open(os.path.join(os.path.dirname(__file__), "lifespan.log"), "a").write("shutdown\\n")
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    # as with uvicorn, "path" includes "root_path" (the application's mount point)
    path = scope["path"][len(scope["root_path"]):]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk%d;" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/echo":
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/raise":
        raise ValueError("asgi boom")
    info = {"path": scope["path"], "root_path": scope["root_path"], "query": scope["query_string"].decode(),
            "method": scope["method"], "started": STATE["started"],
            "greeting": scope["state"].get("greeting"), "http_version": scope["http_version"]}
    body = json.dumps(info).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

ASGI_WEBCONFIG = """\
<configuration>
  <system.webServer>
    <handlers>
      <add name="asgi" path="*" verb="*" modules="AsgiModule" scriptProcessor="main:app" />
    </handlers>
  </system.webServer>
</configuration>
"""

SITE = apphost(
    sites="""
    <site name="Main" id="1">
      <application path="/" applicationPool="Static">
        <virtualDirectory path="/" physicalPath="{root}/www" />
        <virtualDirectory path="/assets" physicalPath="{root}/assets" />
      </application>
      <application path="/api" applicationPool="Asgi">
        <virtualDirectory path="/" physicalPath="{root}/api" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="Static" /><add name="Asgi" />',
)

FILES = {
    "www/index.html": "<h1>home</h1>\n",
    "www/docs/readme.txt": "0123456789" * 10,
    "www/data.unknownext": "x",
    "assets/app.css": "body { color: red }\n",
    "api/main.py": ASGI_APP,
    "api/web.config": ASGI_WEBCONFIG,
}


def test_asgi_http_and_lifespan(poolhouse_server) -> None:
    server = poolhouse_server(SITE, FILES, writable=("api",))  # lifespan.log
    r = httpx.get(server.url("/api/items?x=1"), timeout=20)
    assert r.status_code == 200
    info = r.json()
    assert info == {"path": "/api/items", "root_path": "/api", "query": "x=1", "method": "GET",
                    "started": True, "greeting": "hi", "http_version": "1.1"}
    r = httpx.get(server.url("/api/stream"), timeout=10)
    assert r.text == "chunk0;chunk1;chunk2;chunk3;chunk4;"
    assert r.headers.get("transfer-encoding") == "chunked"
    payload = b"z" * 300_000
    r = httpx.post(server.url("/api/echo"), content=payload, timeout=10)
    assert r.status_code == 201 and r.content == payload
    assert httpx.get(server.url("/api/raise"), timeout=10).status_code == 500
    assert httpx.get(server.url("/api/again"), timeout=10).status_code == 200
    server.wait_for(lambda: "asgi boom" in server.stderr())
    # lifespan shutdown runs when the worker stops
    assert server.cli("recycle", "apppool", "Asgi").returncode == 0
    log = server.root / "api" / "lifespan.log"
    server.wait_for(lambda: log.read_text().count("shutdown") == 1, timeout=10)
    assert log.read_text().startswith("startup\n")


def test_static_files_validators_and_ranges(poolhouse_server) -> None:
    server = poolhouse_server(SITE, FILES)
    with httpx.Client(base_url=server.base, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.text == "<h1>home</h1>\n"  # default document
        assert r.headers["content-type"].startswith("text/html")
        r = c.get("/docs/readme.txt")
        etag, modified = r.headers["etag"], r.headers["last-modified"]
        assert r.status_code == 200 and len(r.content) == 100
        assert c.get("/docs/readme.txt", headers={"If-None-Match": etag}).status_code == 304
        assert c.get("/docs/readme.txt", headers={"If-Modified-Since": modified}).status_code == 304
        r = c.get("/docs/readme.txt", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == b"0123456789"
        assert r.headers["content-range"] == "bytes 10-19/100"
        r = c.head("/docs/readme.txt")
        assert r.status_code == 200 and r.headers["content-length"] == "100" and r.content == b""
        r = c.get("/docs", follow_redirects=False)
        assert r.status_code == 301 and r.headers["location"].endswith("/docs/")
        assert c.get("/docs/").status_code == 403  # 403.14: no default document, no listing
        assert c.get("/nothing-here.txt").status_code == 404
        assert c.get("/data.unknownext").status_code == 404  # 404.3: no MIME map entry
        assert c.get("/assets/app.css").text == "body { color: red }\n"  # virtual directory
        assert c.post("/docs/readme.txt").status_code == 405
