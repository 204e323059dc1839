"""The listener's response cache (HTTP.sys's kernel cache): static files after two hits,
served with the pool stopped, invalidated when the file changes; application opt-in with
``Cache-Control: public, s-maxage``; Vary; conditional requests; the exclusion rules one
by one; ``poolhouse list cache`` and ``poolhouse cache flush``; counters."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Server, apphost

APP = '''
import itertools
counter = itertools.count()

def app(environ, start_response):
    n = next(counter)
    path = environ["SCRIPT_NAME"] + environ["PATH_INFO"]
    body = ("%s %d" % (path, n)).encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    if path.startswith("/dyn/public"):
        headers.append(("Cache-Control", "public, s-maxage=60"))
    if path.startswith("/dyn/short"):
        headers.append(("Cache-Control", "public, s-maxage=1"))
    if path.startswith("/dyn/cookie"):
        headers += [("Cache-Control", "public, s-maxage=60"), ("Set-Cookie", "a=b")]
    if path.startswith("/dyn/private"):
        headers.append(("Cache-Control", "private, s-maxage=60"))
    if path.startswith("/dyn/nostore"):
        headers.append(("Cache-Control", "public, no-store, s-maxage=60"))
    if path.startswith("/dyn/vary"):
        headers += [("Cache-Control", "public, s-maxage=60"), ("Vary", "Accept-Language")]
    if path.startswith("/dyn/star"):
        headers += [("Cache-Control", "public, s-maxage=60"), ("Vary", "*")]
    if path.startswith("/dyn/plain"):
        pass
    start_response("200 OK", headers)
    return [body]
'''
WEB_CONFIG = ('<configuration><system.webServer><handlers>'
              '<add name="py" path="*" verb="*" modules="WsgiModule" scriptProcessor="app:app" />'
              '</handlers><caching><profiles><add extension=".html" policy="DontCache" '
              'kernelCachePolicy="CacheForTimePeriod" duration="00:00:30" varyByHeaders="X-Variant" />'
              '</profiles></caching></system.webServer></configuration>')


def config() -> str:
    return apphost(
        '<site name="S" id="1"><application path="/" applicationPool="DefaultAppPool">'
        '<virtualDirectory path="/" physicalPath="{root}/www" /></application>'
        '<application path="/dyn" applicationPool="DefaultAppPool">'
        '<virtualDirectory path="/" physicalPath="{root}/dyn" /></application>'
        '<bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings></site>'
    )


FILES = {"dyn/app.py": APP, "dyn/web.config": WEB_CONFIG, "www/f.txt": "version one",
         "www/g.txt": "other file"}


def get(server: Server, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def cache_listing(server: Server) -> dict:  # type: ignore[type-arg]
    out = server.cli("list", "cache", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def server(poolhouse_server) -> Server:  # type: ignore[no-untyped-def]
    return poolhouse_server(config(), files=FILES)  # type: ignore[no-any-return]


def test_static_file_cached_after_two_hits_and_served_with_the_pool_stopped(server: Server) -> None:
    assert get(server, "/f.txt")[2] == b"version one"
    assert cache_listing(server)["entries"] == []  # one hit is not "frequent"
    assert get(server, "/f.txt")[2] == b"version one"
    listing = cache_listing(server)
    assert [e["url"] for e in listing["entries"]] == ["/f.txt"]
    status, headers, body = get(server, "/f.txt")
    assert (status, body) == (200, b"version one")
    assert "x-poolhouse-file" not in headers and "etag" in headers
    assert cache_listing(server)["hits"] >= 1
    # conditional GET answered from the cache
    status, _, body = get(server, "/f.txt", {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    status, _, body = get(server, "/f.txt", method="HEAD")
    assert (status, body) == (200, b"")

    out = server.cli("stop", "apppool", "DefaultAppPool")
    assert out.returncode == 0, out.stderr
    server.wait_for(lambda: not server.workers("DefaultAppPool"))
    assert get(server, "/f.txt")[:3:2] == (200, b"version one")  # no worker needed
    assert get(server, "/g.txt")[0] == 503
    counters = json.loads(server.cli("counters", "--json").stdout)
    assert counters["cache"]["hits"] >= 3


def test_file_change_invalidates_the_entry(server: Server) -> None:
    get(server, "/f.txt")
    get(server, "/f.txt")
    assert len(cache_listing(server)["entries"]) == 1
    (server.root / "www" / "f.txt").write_text("version two")
    server.wait_for(lambda: cache_listing(server)["entries"] == [], timeout=5)
    assert get(server, "/f.txt")[2] == b"version two"


def test_application_opt_in_with_s_maxage(server: Server) -> None:
    first = get(server, "/dyn/public")
    second = get(server, "/dyn/public")
    assert first[2] == second[2] == b"/dyn/public 0"
    assert "age" in second[1] and "age" not in first[1]
    # expiry
    get(server, "/dyn/short")
    time.sleep(1.2)
    assert get(server, "/dyn/short")[2] != get(server, "/dyn/plain")[2]
    assert get(server, "/dyn/short")[2].startswith(b"/dyn/short")


def test_only_if_cached_is_not_for_an_origin_application(server: Server) -> None:
    # the application is the origin (no upstream): HTTP.sys's rules, the directive is ignored
    status, _, body = get(server, "/dyn/plain", {"Cache-Control": "only-if-cached"})
    assert status == 200 and body.startswith(b"/dyn/plain")


def test_vary_keys_the_variants(server: Server) -> None:
    en1 = get(server, "/dyn/vary", {"Accept-Language": "en"})[2]
    fr1 = get(server, "/dyn/vary", {"Accept-Language": "fr"})[2]
    assert en1 != fr1
    assert get(server, "/dyn/vary", {"Accept-Language": "en"})[2] == en1
    assert get(server, "/dyn/vary", {"Accept-Language": "fr"})[2] == fr1


@pytest.mark.parametrize("path, headers, method, body", [
    ("/dyn/public?x=1", {}, "GET", None),                             # query string
    ("/dyn/public", {"Authorization": "Basic dTpw"}, "GET", None),    # not anonymous
    ("/dyn/public", {"Range": "bytes=0-1"}, "GET", None),             # Range
    ("/dyn/public", {"If-Range": "x"}, "GET", None),                  # If-Range
    ("/dyn/public", {"Translate": "f"}, "GET", None),                 # WebDAV source
    ("/dyn/public", {}, "POST", b"abc"),                              # a body, not GET
    ("/dyn/cookie", {}, "GET", None),                                 # Set-Cookie
    ("/dyn/private", {}, "GET", None),                                # Cache-Control: private
    ("/dyn/nostore", {}, "GET", None),                                # no-store
    ("/dyn/star", {}, "GET", None),                                   # Vary: *
    ("/dyn/plain", {}, "GET", None),                                  # no opt-in, not a file
])
def test_exclusions(server: Server, path: str, headers: dict[str, str], method: str,
                    body: bytes | None) -> None:
    a = get(server, path, headers, method, body)[2]
    b = get(server, path, headers, method, body)[2]
    c = get(server, path, headers, method, body)[2]
    assert len({a, b, c}) == 3, (a, b, c)  # every one reached the application


def test_flush(server: Server) -> None:
    get(server, "/dyn/public")
    get(server, "/f.txt")
    get(server, "/f.txt")
    assert len(cache_listing(server)["entries"]) == 2
    out = server.cli("cache", "flush", "--url", "/dyn/public")
    assert out.returncode == 0 and "flushed 1" in out.stdout, out.stderr
    assert [e["url"] for e in cache_listing(server)["entries"]] == ["/f.txt"]
    out = server.cli("cache", "flush", "--site", "S")
    assert out.returncode == 0 and "flushed 1" in out.stdout
    assert cache_listing(server)["entries"] == []
    assert server.cli("cache", "flush", "--site", "nope").returncode != 0


def test_fast_path_for_repeated_requests(server: Server) -> None:
    """A keep-alive client repeating the same request bytes is answered by the cache's
    fast path (no parsing): the answers, the log lines and the invalidations must be
    exactly those of the normal path."""
    request = b"GET /f.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: fast/1.0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def ask() -> tuple[int, bytes]:
            sock.sendall(request)
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            return status, reader.read(length)

        assert [ask() for _ in range(8)] == [(200, b"version one")] * 8
        hits = cache_listing(server)["entries"][0]["hits"]
        assert hits >= 5  # the third request on were cache hits, counted as such
        counters = json.loads(server.cli("counters", "--json").stdout)["cache"]
        assert counters["fast_hits"] >= 4  # and from the fourth on, answered without parsing
        (server.root / "www" / "f.txt").write_text("version two")
        server.wait_for(lambda: cache_listing(server)["entries"] == [], timeout=5)
        assert ask() == (200, b"version two")  # the remembered answer went with its entry
        assert [ask() for _ in range(3)] == [(200, b"version two")] * 3
        assert server.cli("stop", "site", "S").returncode == 0
        server.wait_for(lambda: ask()[0] == 503, timeout=5)
    time.sleep(1.3)
    logs = list((server.state_dir / "logs" / "W3SVC1").glob("u_ex*.log"))
    lines = [x for x in logs[0].read_text().splitlines() if " /f.txt " in x and "fast/1.0" in x]
    assert len(lines) >= 12 and all(" 200 " in x for x in lines[:12])


def test_access_log_records_cache_hits(server: Server, tmp_path: Path) -> None:
    for _ in range(3):
        get(server, "/f.txt")
    time.sleep(1.3)
    logs = list((server.state_dir / "logs" / "W3SVC1").glob("u_ex*.log"))
    lines = [x for x in logs[0].read_text().splitlines() if " /f.txt " in x]
    assert len(lines) == 3


def test_kernel_cache_profile_by_extension(server: Server) -> None:
    """caching/profiles: kernelCachePolicy CacheForTimePeriod on .html, after two hits
    (frequentHitThreshold), keyed by varyByHeaders."""
    a = get(server, "/dyn/page.html")[2]
    b = get(server, "/dyn/page.html")[2]
    assert a != b  # the first two reach the application
    assert get(server, "/dyn/page.html")[2] == b
    other = get(server, "/dyn/page.html", {"X-Variant": "2"})[2]
    assert other not in (a, b)
    entry = next(e for e in cache_listing(server)["entries"] if e["url"] == "/dyn/page.html")
    assert 0 < entry["expires_in"] <= 30
    assert get(server, "/dyn/page.txt")[2] != get(server, "/dyn/page.txt")[2] != get(server, "/dyn/page.txt")[2]
