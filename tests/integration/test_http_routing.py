"""Binding -> site -> application -> pool over real sockets, site and pool states, and
the pool's bounded queue (``queueLength``)."""

from __future__ import annotations

import concurrent.futures
import http.client
import socket
from collections.abc import Callable

from tests.integration.conftest import Server, apphost

APP = '''
import os, time

def app(environ, start_response):
    if environ["PATH_INFO"].startswith("/sleep"):
        time.sleep(float(environ["QUERY_STRING"] or "0.2"))
    body = ("%s %s %s %d" % (environ["INSTANCE_ID"], environ["SCRIPT_NAME"] or "/",
                             environ["PATH_INFO"], os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def web_config(module: str) -> str:
    # handler names differ per folder: a nested application inherits its parent's list
    return (f'<configuration><system.webServer><handlers><add name="{module}" path="*" verb="*" '
            f'modules="WsgiModule" scriptProcessor="{module}:app" /></handlers></system.webServer>'
            '</configuration>')


def site(name: str, sid: int, bindings: list[str], apps: list[tuple[str, str, str]]) -> str:
    """``apps``: (path, pool, folder)."""
    xml = [f'<site name="{name}" id="{sid}">']
    for path, pool, folder in apps:
        xml.append(f'<application path="{path}" applicationPool="{pool}">'
                   f'<virtualDirectory path="/" physicalPath="{{root}}/{folder}" /></application>')
    xml.append("<bindings>")
    xml.extend(f'<binding protocol="http" bindingInformation="{b}" />' for b in bindings)
    xml.append("</bindings></site>")
    return "".join(xml)


def app_files(*folders: str, parent: dict[str, str] | None = None) -> dict[str, str]:
    """``parent``: folder -> the folder of the application it is nested in (its handler
    is inherited and must be removed, or the worker tries to load it from here too)."""
    files = {}
    for folder in folders:
        module = f"app_{folder}"
        files[f"{folder}/{module}.py"] = APP
        config = web_config(module)
        if parent and folder in parent:
            config = config.replace("<handlers>", f'<handlers><remove name="app_{parent[folder]}" />')
        files[f"{folder}/web.config"] = config
    return files


def request(port: int, path: str, host: str | None = "x", method: str = "GET",
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_host_names_wildcard_and_longest_application_path(poolhouse_server: Callable[..., Server]) -> None:
    sites = "".join([
        site("A", 1, ["127.0.0.1:{port0}:a.example"], [("/", "PoolA", "a")]),
        site("B", 2, ["127.0.0.1:{port0}:b.example"], [("/", "PoolA", "b"), ("/api", "PoolApi", "api")]),
        site("Any", 3, ["*:{port0}:"], [("/", "PoolA", "any")]),
        site("HostOnly", 4, ["127.0.0.1:{port1}:only.example"], [("/", "PoolA", "only")]),
    ])
    pools = '<add name="PoolA" /><add name="PoolApi" />'
    server = poolhouse_server(apphost(sites, pools).lstrip(), app_files("a", "b", "api", "any", "only", parent={"api": "b"}),
                              extra_ports=1)
    port0, port1 = server.ports

    def body(port: int, path: str, host: str | None) -> list[str]:
        status, _, data = request(port, path, host)
        assert status == 200, (path, host, data)
        return data.decode().split()

    assert body(port0, "/x", "a.example")[:3] == ["1", "/", "/x"]
    assert body(port0, "/x", "A.Example:%d" % port0)[:3] == ["1", "/", "/x"]
    assert body(port0, "/x", "b.example")[:3] == ["2", "/", "/x"]
    assert body(port0, "/x", "c.example")[:3] == ["3", "/", "/x"]
    status, _, data = request(port0, "/x", None)  # HTTP/1.1 must name a host (RFC 9112 §3.2)
    assert status == 400 and b"hostname is invalid" in data
    assert body(port1, "/x", "only.example")[:3] == ["4", "/", "/x"]

    # longest application path wins, on segment boundaries, case-insensitively
    root = body(port0, "/apix", "b.example")
    api = body(port0, "/api/v1", "b.example")
    api_upper = body(port0, "/API", "b.example")
    assert root[:3] == ["2", "/", "/apix"]
    assert api[:3] == ["2", "/api", "/v1"]
    assert api_upper[1].lower() == "/api"
    assert root[3] != api[3]
    workers = {w["apppool"]: w["pid"] for w in server.workers()}
    assert workers["PoolA"] == int(root[3])
    assert workers["PoolApi"] == int(api[3])

    # a port whose bindings all name a host: an unknown host is HTTP.sys's 400
    for host in ("nobody.example", None):
        status, headers, data = request(port1, "/x", host)
        assert status == 400
        assert b"Invalid Hostname" in data or b"hostname is invalid" in data
        assert headers.get("connection") == "close"
    server.wait_for(lambda: " Hostname " in server.httperr(), timeout=5)


def test_stopped_site_and_stopped_pool_answer_503(poolhouse_server: Callable[..., Server]) -> None:
    sites = site("Web", 1, ["127.0.0.1:{port}:"], [("/", "P", "a")])
    server = poolhouse_server(apphost(sites, '<add name="P" />').lstrip(), app_files("a"))

    assert request(server.port, "/x")[0] == 200
    for kind, name in (("site", "Web"), ("apppool", "P")):
        result = server.cli("stop", kind, name)
        assert result.returncode == 0, result.stderr
        status, headers, _ = request(server.port, "/x")
        assert status == 503, kind
        result = server.cli("start", kind, name)
        assert result.returncode == 0, result.stderr
        server.wait_for(lambda: request(server.port, "/x")[0] == 200, timeout=10)
    # the log is flushed once a second
    server.wait_for(lambda: server.httperr().count(" 503 1 Disabled ") == 2, timeout=5)


def test_queue_length_overflow_gives_503_and_recovers(poolhouse_server: Callable[..., Server]) -> None:
    sites = site("Web", 1, ["127.0.0.1:{port}:"], [("/", "Small", "a")])
    pools = '<add name="Small" queueLength="10"><python threads="0" /></add>'
    server = poolhouse_server(apphost(sites, pools).lstrip(), app_files("a"))
    assert request(server.port, "/warm")[0] == 200

    def one(i: int) -> int:
        return request(server.port, "/sleep?0.05", timeout=30)[0]

    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(503) > 0, statuses
    assert statuses.count(200) > 0, statuses
    assert set(statuses) == {200, 503}, statuses
    server.wait_for(lambda: server.httperr().count(" QueueFull ") == statuses.count(503), timeout=5)
    assert request(server.port, "/after")[0] == 200


def test_unknown_port_is_not_served(poolhouse_server: Callable[..., Server]) -> None:
    """A binding's port is listened on; its neighbours are not."""
    sites = site("Web", 1, ["127.0.0.1:{port}:"], [("/", "P", "a")])
    server = poolhouse_server(apphost(sites, '<add name="P" />').lstrip(), app_files("a"))
    assert request(server.port, "/x")[0] == 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", free), timeout=1).close()
        raise AssertionError("an unconfigured port accepted a connection")
    except ConnectionRefusedError:
        pass
