"""HTTP and WSGI semantics over real sockets: header names with "_" never reach an
application, HTTP/1.1 needs Host, unknown transfer codings are 501, the head size is
counted as sent, absolute-form targets route by their authority; PEP 3333 PATH_INFO
(Flask matches /café, /x%ff is a 404); configuration paths matched as IIS on NTFS
(case, trailing dots and spaces) so URL authorization cannot be side-stepped by
spelling; a 1xx final status is a 500 and the connection stays in step; an undecodable
URL gets a proper 401 from the custom-errors module.

One server serves the module (static, WSGI, Flask, ASGI), so it pays one start-up.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Server, apphost, free_port
from tests.integration.test_http_connection import Reader

WSGI_APP = '''
import json

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/early":
        start_response("103 Early Hints", [("Link", "</a.css>; rel=preload")])
        return [b"too early"]
    if path == "/continue":
        start_response("100 Continue", [])
        return [b""]
    keys = ("PATH_INFO", "SCRIPT_NAME", "HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_CONTENT_LENGTH",
            "CONTENT_LENGTH", "REQUEST_URI")
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

FLASK_APP = '''
from flask import Flask

app = Flask(__name__)

@app.route("/café")
def cafe():
    return "un café"

@app.route("/plain")
def plain():
    return "plain"
'''

ASGI_APP = '''
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/early"):
        await send({"type": "http.response.start", "status": 100, "headers": []})
        await send({"type": "http.response.body", "body": b"too early"})
        return
    body = json.dumps({"path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
                       "root_path": scope["root_path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
'''

HANDLER = '''<?xml version="1.0" encoding="UTF-8"?>
<configuration><system.webServer><handlers>
  <add name="app" path="*" verb="*" modules="{module}" scriptProcessor="{script}:app" />
</handlers></system.webServer></configuration>
'''

DENY_ANONYMOUS = '''<?xml version="1.0" encoding="UTF-8"?>
<configuration><system.webServer><security><authorization>
  <add accessType="Deny" users="?" />
</authorization></security></system.webServer></configuration>
'''

SECURE_LOCATION = '''
<location path="S/secure">
  <system.webServer><security><authentication>
    <anonymousAuthentication enabled="false" />
    <basicAuthentication enabled="true" realm="Secure" usersFile="{root}/users.txt" />
  </authentication></security></system.webServer>
</location>'''

SITES = '''
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <application path="/py" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{root}/py" />
  </application>
  <application path="/fl" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{root}/fl" />
  </application>
  <application path="/asgi" applicationPool="Py">
    <virtualDirectory path="/" physicalPath="{root}/asgi" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>
<site name="B" id="2">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www-b" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:b.example" /></bindings>
</site>
'''

FILES = {
    "www/index.html": "site S",
    "www/static/a.txt": "public",
    "www/static/admin/web.config": DENY_ANONYMOUS,
    "www/static/admin/x.txt": "admins only",
    "www/secure/index.html": "secret",
    "www-b/index.html": "site B",
    "users.txt": "# no one\n",
    "py/semantics_wsgi.py": WSGI_APP,
    "py/web.config": HANDLER.format(module="WsgiModule", script="semantics_wsgi"),
    "py/admin/web.config": DENY_ANONYMOUS,
    "py/Private/web.config": DENY_ANONYMOUS,
    "fl/semantics_flask.py": FLASK_APP,
    "fl/web.config": HANDLER.format(module="WsgiModule", script="semantics_flask"),
    "asgi/semantics_asgi.py": ASGI_APP,
    "asgi/web.config": HANDLER.format(module="AsgiModule", script="semantics_asgi"),
}


@pytest.fixture(scope="module")
def sem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http_semantics")
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content).replace("{root}", str(root)), encoding="utf-8")
    port = free_port()
    cfg = root / "applicationHost.config"
    cfg.write_text(apphost(SITES, pools='<add name="DefaultAppPool" /><add name="Py" />', extra=SECURE_LOCATION)
                   .lstrip().replace("{root}", str(root)).replace("{port}", str(port)))
    srv = Server(root, cfg, port, [port])
    srv.start()
    yield srv
    code = srv.stop()
    left = srv.leftover()
    if code != 0 or left:
        print(srv.stderr()[-5000:])
    assert code == 0 and not left


def exchange(server: Server, data: bytes, n: int = 1) -> list:
    """Send raw bytes on one connection and read ``n`` responses."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        return [reader.response() for _ in range(n)]


def environ_of(server: Server, data: bytes) -> dict:
    (resp,) = exchange(server, data)
    assert resp.status == 200, resp.body[:300]
    return json.loads(resp.body)


# ---- the listener's request validation ---------------------------------------------


def test_underscore_headers_never_reach_the_application(sem: Server) -> None:
    env = environ_of(sem, b"GET /py/h HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n"
                          b"Content_Length: 99\r\nConnection: close\r\n\r\n")
    assert env["HTTP_X_FORWARDED_FOR"] is None
    assert env["HTTP_CONTENT_LENGTH"] is None
    assert env["CONTENT_LENGTH"] in (None, "")
    env = environ_of(sem, b"GET /py/h HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n"
                          b"X-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n\r\n")
    assert env["HTTP_X_FORWARDED_FOR"] == "10.1.2.3"  # the dashed header alone, not joined
    counters = json.loads(sem.cli("counters", "--json").stdout)
    assert counters["headers_dropped"] >= 3


def test_http11_without_host_is_400(sem: Server) -> None:
    (resp,) = exchange(sem, b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n")
    assert resp.status == 400
    sem.wait_for(lambda: " 400 - Hostname" in sem.httperr() or "Hostname" in sem.httperr())
    (resp,) = exchange(sem, b"GET / HTTP/1.0\r\n\r\n")
    assert resp.status == 200 and resp.body == b"site S"


def test_unknown_transfer_coding_is_501(sem: Server) -> None:
    (resp,) = exchange(sem, b"POST /py/h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                            b"5\r\nhello\r\n0\r\n\r\n")
    assert resp.status == 501
    sem.wait_for(lambda: "N/I" in sem.httperr())


def test_head_of_2000_small_headers_is_too_long(sem: Server) -> None:
    head = b"GET /py/h HTTP/1.1\r\nHost: x\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    assert len(head) > 16 * 1024
    (resp,) = exchange(sem, head)
    assert resp.status == 400
    sem.wait_for(lambda: "RequestLength" in sem.httperr())


def test_absolute_form_is_routed_by_its_authority(sem: Server) -> None:
    port = sem.port
    (resp,) = exchange(sem, b"GET http://b.example:%d/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % port)
    assert resp.status == 200 and resp.body == b"site B"
    (resp,) = exchange(sem, b"GET / HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n")
    assert resp.body == b"site B"
    (resp,) = exchange(sem, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n" % port)
    assert resp.body == b"site S"
    env = environ_of(sem, b"GET http://a.example:%d/py/h?q=1 HTTP/1.1\r\nHost: b.example\r\n"
                          b"Connection: close\r\n\r\n" % port)
    assert env["HTTP_HOST"] == f"a.example:{port}"
    assert env["REQUEST_URI"] == "/py/h?q=1"


# ---- PEP 3333 paths -----------------------------------------------------------------


def test_wsgi_path_info_is_latin1_of_the_bytes(sem: Server) -> None:
    r = httpx.get(sem.url("/py/caf%C3%A9/x"), timeout=30)
    env = r.json()
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/x"  # b"/caf\xc3\xa9/x" as latin-1
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/x"
    assert env["SCRIPT_NAME"] == "/py"
    r = httpx.get(sem.url("/py/x%ff"), timeout=30)
    assert r.status_code == 200 and r.json()["PATH_INFO"] == "/x\u00ff"


def test_flask_matches_unicode_routes_and_404s_bad_utf8(sem: Server) -> None:
    r = httpx.get(sem.url("/fl/caf%C3%A9"), timeout=30)
    assert r.status_code == 200 and r.text == "un café"
    assert httpx.get(sem.url("/fl/plain"), timeout=30).text == "plain"
    r = httpx.get(sem.url("/fl/x%ff"), timeout=30)
    assert r.status_code == 404
    assert "Traceback" not in sem.stderr()


def test_asgi_path_is_text_and_raw_path_bytes(sem: Server) -> None:
    r = httpx.get(sem.url("/asgi/caf%C3%A9"), timeout=30)
    assert r.json() == {"path": "/asgi/café", "raw_path": "/asgi/caf%C3%A9", "root_path": "/asgi"}
    r = httpx.get(sem.url("/asgi/x%ff"), timeout=30)
    assert r.status_code == 200
    assert r.json()["path"] == "/asgi/x\ufffd" and r.json()["raw_path"] == "/asgi/x%ff"


# ---- configuration paths as IIS matches them on NTFS --------------------------------


@pytest.mark.parametrize("path", ["/py/admin/x", "/py/ADMIN/x", "/py/admin./x", "/py/admin%20/x",
                                  "/py/Admin.%20./x", "/PY/admin/x", "/py/private/x", "/py/PRIVATE./x"])
def test_folder_authorization_holds_for_every_spelling(sem: Server, path: str) -> None:
    r = httpx.get(sem.url(path), timeout=30)
    assert r.status_code == 401, (path, r.text[:300])
    assert httpx.get(sem.url("/py/public/x"), timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/py./admin/x", "/py%20/ADMIN/x"])
def test_an_application_spelled_otherwise_is_not_reached(sem: Server, path: str) -> None:
    """Applications are routed by their path as spelled (case aside): ``/py./`` belongs to
    the root application, whose pool is given nothing of /py's folders (per-pool
    configuration), so it finds no such file — never /py's application or content."""
    r = httpx.get(sem.url(path), timeout=30)
    assert r.status_code == 404, (path, r.text[:300])
    assert "PATH_INFO" not in r.text


@pytest.mark.parametrize("path", ["/static/admin/x.txt", "/static/ADMIN/x.txt", "/static/admin./x.txt",
                                  "/static/admin%20/x.txt", "/STATIC/Admin/X.TXT"])
def test_static_folder_authorization_holds_for_every_spelling(sem: Server, path: str) -> None:
    r = httpx.get(sem.url(path), timeout=30)
    assert r.status_code == 401, (path, r.text[:300])
    assert "admins only" not in r.text
    assert httpx.get(sem.url("/static/a.txt"), timeout=30).text == "public"


# ---- responses the connection must stay in step with -------------------------------


@pytest.mark.parametrize("path", ["/py/early", "/py/continue", "/asgi/early"])
def test_interim_status_as_final_answer_is_500_and_the_connection_stays_in_step(sem: Server, path: str) -> None:
    req = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()
    follow = b"GET /py/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sem.port), timeout=30) as sock:
        reader = Reader(sock)
        sock.sendall(req)
        status, _, headers = reader.head()
        assert status == 500
        body = reader._exact(int(headers["content-length"]))
        assert b"too early" not in body
        sock.sendall(follow)
        resp = reader.response()
        assert resp.status == 200 and json.loads(resp.body)["PATH_INFO"] == "/next"
        assert reader.closed()


def test_undecodable_url_gets_a_proper_401(sem: Server) -> None:
    before = sem.stderr().count("Traceback")
    for path in ("/secure/%ff", "/secure/%ff%fe/x", "/secure/"):
        r = httpx.get(sem.url(path), timeout=30)
        assert r.status_code == 401, path
        assert r.headers.get("www-authenticate") == 'Basic realm="Secure"', path
    time.sleep(0.5)  # a traceback would be logged as the response left
    assert sem.stderr().count("Traceback") == before
