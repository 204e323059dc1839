"""The listener's response cache in front of the reverse proxy (RFC 9111 shared-cache
rules for what the worker relays from an upstream): a fresh ``max-age`` response served
with the upstream gone, ``Age``, ``no-store``, ``Vary``, revalidation answered 304 by the
upstream, invalidation by a POST, ``only-if-cached``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .upstream import proxy_site, serve_http


class Origin(BaseHTTPRequestHandler):
    """An upstream whose answers are chosen by path; it counts and records requests."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str]]] = []
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.answer()

    def do_HEAD(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        self.answer()

    def answer(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.lock:
            self.seen.append((self.command, self.path, headers))
            n = sum(1 for _, p, _ in self.seen if p == self.path)
        path = self.path
        status = 200
        extra: list[tuple[str, str]] = []
        if path.startswith("/fresh"):
            extra.append(("Cache-Control", "max-age=60"))
        elif path.startswith("/nostore"):
            extra.append(("Cache-Control", "no-store, max-age=60"))
        elif path.startswith("/vary"):
            extra += [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")]
            path = f"{path} {headers.get('accept-language', '-')}"
        elif path.startswith("/etag"):
            extra += [("Cache-Control", "max-age=1"), ("ETag", '"v1"')]
            if headers.get("if-none-match") == '"v1"':
                status = 304
                extra.append(("X-Revalidated", str(n)))
        elif path.startswith("/auth-public"):
            extra.append(("Cache-Control", "public, max-age=60"))
        elif path.startswith("/auth"):
            extra.append(("Cache-Control", "max-age=60"))
        elif path.startswith("/lm"):
            extra += [("Cache-Control", "max-age=0, must-revalidate"), ("Last-Modified", "Wed, 01 Jan 2020 00:00:00 GMT")]
            if headers.get("if-modified-since") == "Wed, 01 Jan 2020 00:00:00 GMT":
                status = 304
        elif path.startswith("/sie"):
            extra.append(("Cache-Control", "max-age=1, stale-if-error=60"))
            status = 200 if n == 1 else 503
        elif path.startswith("/item") and self.command == "GET":
            extra.append(("Cache-Control", "max-age=60"))
        body = b"" if status == 304 else f"{path} #{n}".encode()
        self.send_response(status)  # with the origin's Date
        for k, v in extra:
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @classmethod
    def requests(cls, path: str) -> list[tuple[str, dict[str, str]]]:
        with cls.lock:
            return [(m, h) for m, p, h in cls.seen if p == path]


@pytest.fixture
def origin() -> Iterator[ThreadingHTTPServer]:
    Origin.seen = []
    with serve_http(Origin) as srv:
        yield srv


def start(poolhouse_server, origin: ThreadingHTTPServer):  # type: ignore[no-untyped-def]
    """Every URL of the site proxied to the origin."""
    return proxy_site(poolhouse_server, f"""<rule name="origin" stopProcessing="true">
    <match url=".*" />
    <action type="Rewrite" url="http://127.0.0.1:{origin.server_address[1]}/{{R:0}}" />
  </rule>""")


def test_fresh_response_served_with_upstream_stopped_and_aged(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    with httpx.Client(base_url=server.base, timeout=20) as c:
        first = c.get("/fresh")
        assert first.status_code == 200 and first.text == "/fresh #1"
        assert first.headers.get_list("date") == [first.headers["date"]]  # one Date, not two
        origin.shutdown()
        origin.server_close()  # the upstream is gone: only the cache can answer now
        time.sleep(1.2)
        hit = c.get("/fresh")
        assert hit.status_code == 200 and hit.text == "/fresh #1"
        assert int(hit.headers["age"]) >= 1
        assert hit.headers["cache-control"] == "max-age=60"
        assert hit.headers.get_list("date") == [first.headers["date"]]  # the origin's Date, kept
        head = c.head("/fresh")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "9"
    assert len(Origin.requests("/fresh")) == 1
    listing = server.cli("list", "cache", "--json")
    assert '"rfc9111": true' in listing.stdout


def test_no_store_is_not_stored_and_vary_keys_variants(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    with httpx.Client(base_url=server.base, timeout=20) as c:
        assert c.get("/nostore").text == "/nostore #1"
        assert c.get("/nostore").text == "/nostore #2"
        assert "age" not in c.get("/nostore").headers

        en = c.get("/vary", headers={"Accept-Language": "en"})
        fr = c.get("/vary", headers={"Accept-Language": "fr"})
        assert (en.text, fr.text) == ("/vary en #1", "/vary fr #2")
        again_en = c.get("/vary", headers={"Accept-Language": "en"})
        again_fr = c.get("/vary", headers={"Accept-Language": "fr"})
        assert (again_en.text, again_fr.text) == ("/vary en #1", "/vary fr #2")
        assert "age" in again_en.headers and "age" in again_fr.headers
        assert c.get("/vary", headers={"Accept-Language": "de"}).text == "/vary de #3"
    assert len(Origin.requests("/nostore")) == 3
    assert len(Origin.requests("/vary")) == 3


def test_stale_entry_revalidated_with_304(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    with httpx.Client(base_url=server.base, timeout=20) as c:
        first = c.get("/etag")
        assert first.text == "/etag #1" and first.headers["etag"] == '"v1"'
        assert c.get("/etag").text == "/etag #1"  # fresh: from the cache
        assert len(Origin.requests("/etag")) == 1
        time.sleep(1.3)
        revalidated = c.get("/etag")  # stale: the upstream is asked, conditionally
        assert revalidated.status_code == 200 and revalidated.text == "/etag #1"
        assert revalidated.headers["x-revalidated"] == "2"  # the 304's fields freshen the entry
        requests = Origin.requests("/etag")
        assert len(requests) == 2 and requests[1][1]["if-none-match"] == '"v1"'
        assert c.get("/etag").headers["x-revalidated"] == "2"  # fresh again: from the cache
        assert len(Origin.requests("/etag")) == 2
        not_modified = c.get("/etag", headers={"If-None-Match": '"v1"'})
        assert not_modified.status_code == 304  # the client's own conditional, from the cache
    assert len(Origin.requests("/etag")) == 2


def test_post_invalidates_and_only_if_cached(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    with httpx.Client(base_url=server.base, timeout=20) as c:
        assert c.get("/item").text == "/item #1"
        assert c.get("/item").text == "/item #1"
        assert c.post("/item", content=b"x").status_code == 200
        assert c.get("/item").text == "/item #3"  # the POST invalidated the stored response
        assert c.get("/item").text == "/item #3"

        oic = c.get("/never-stored", headers={"Cache-Control": "only-if-cached"})
        assert oic.status_code == 504
        assert c.get("/item", headers={"Cache-Control": "only-if-cached"}).text == "/item #3"
        assert c.get("/item", headers={"Cache-Control": "no-cache"}).text == "/item #4"
    assert Origin.requests("/never-stored") == []
    assert [m for m, _ in Origin.requests("/item")] == ["GET", "POST", "GET", "GET"]


def test_authorization_and_last_modified_revalidation(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    auth = {"Authorization": "Basic dTpw"}
    with httpx.Client(base_url=server.base, timeout=20) as c:
        # §3.5: a response to a request with Authorization is stored only if it says public
        assert c.get("/auth", headers=auth).text == "/auth #1"
        assert c.get("/auth").text == "/auth #2"
        assert c.get("/auth-public", headers=auth).text == "/auth-public #1"
        assert c.get("/auth-public").text == "/auth-public #1"
        # must-revalidate, max-age=0: every use asks the upstream with If-Modified-Since
        assert c.get("/lm").text == "/lm #1"
        again = c.get("/lm")
        assert again.status_code == 200 and again.text == "/lm #1"
        head = c.head("/lm")
        assert head.status_code == 200 and head.headers["last-modified"] == "Wed, 01 Jan 2020 00:00:00 GMT"
    requests = Origin.requests("/lm")
    assert [m for m, _ in requests] == ["GET", "GET", "HEAD"]
    assert "if-modified-since" not in requests[0][1]
    assert all(h["if-modified-since"] == "Wed, 01 Jan 2020 00:00:00 GMT" for _, h in requests[1:])


def test_stale_if_error_answers_for_an_upstream_5xx(poolhouse_server, origin) -> None:  # type: ignore[no-untyped-def]
    server = start(poolhouse_server, origin)
    with httpx.Client(base_url=server.base, timeout=20) as c:
        assert c.get("/sie").text == "/sie #1"
        time.sleep(1.3)
        stale = c.get("/sie")  # the upstream answers 503: the stored response, stale, instead
        assert stale.status_code == 200 and stale.text == "/sie #1" and int(stale.headers["age"]) >= 1
    assert len(Origin.requests("/sie")) == 2
    counters = server.cli("counters", "--json")
    assert '"stale_served": 1' in counters.stdout
