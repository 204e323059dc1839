"""The listener's response cache never answers what the pipeline would refuse: a URL
behind IP restrictions, URL authorization or authentication is never stored; a
configuration change flushes the entries below it before it is reported applied; the
variants a compressing worker produces are kept apart; and a conditional request gets
from the cache what it gets from the worker.  Real clients, two client addresses on
loopback (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import json
import time
from typing import Any

import pytest

from poolhouse.worker.modules.authentication import hash_password

from .conftest import Server, apphost

BIG = "static text that compresses well, line after line\n" * 120  # > minFileSizeForComp

CONFIG = apphost(
    sites="""
    <site name="S" id="1">
      <application path="/" applicationPool="DefaultAppPool">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    extra="""
  <location path="S/intranet">
    <system.webServer><security>
      <ipSecurity allowUnlisted="false"><add ipAddress="127.0.0.1" allowed="true" /></ipSecurity>
    </security></system.webServer>
  </location>
  <location path="S/members">
    <system.webServer><security><authentication>
      <basicAuthentication enabled="true" realm="members" usersFile="{root}/users.txt" />
    </authentication></security></system.webServer>
  </location>""",
)

FILES = {
    "users.txt": f"alice:{hash_password('wonderland', 4)}:\n",
    "www/f.txt": "public file",
    "www/g.txt": "another public file",
    "www/big.txt": BIG,
    "www/intranet/f.txt": "intranet only",
    "www/members/f.txt": "members' file",
    "www/docs/f.txt": "documentation",
    "www/docs/sub/f.txt": "deeper documentation",
    "www/varies/f.txt": "a file each client sees with its own header",
    "www/web.config": """<configuration><system.webServer><modules>
        <add name="ClientStamp" type="client_stamp:ClientStampModule" />
        </modules></system.webServer></configuration>""",
    "www/rw/page.txt": "the page",
    "www/rw/blocked.txt": "not for 127.0.0.2",
    "www/rw/web.config": r"""<configuration><system.webServer><rewrite><rules>
        <rule name="SecondAddress" stopProcessing="true">
          <match url="^page\.txt$" />
          <conditions><add input="{REMOTE_ADDR}" pattern="^127\.0\.0\.2$" /></conditions>
          <action type="Rewrite" url="/rw/blocked.txt" />
        </rule>
        </rules></rewrite></system.webServer></configuration>""",
    "www/client_stamp.py": """
        from poolhouse.worker.pipeline import Module

        class ClientStampModule(Module):
            def begin_request(self, ctx):
                if ctx.path.startswith("/varies/"):
                    ctx.disable_kernel_cache()  # IIS's IHttpResponse::DisableKernelCache

            def send_response(self, ctx):
                if ctx.path.startswith("/varies/"):
                    ctx.response.add_header(b"X-Client", ctx.client_addr.encode())
        """,
}

ALICE = "Basic " + base64.b64encode(b"alice:wonderland").decode()


def get(server: Server, path: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1",
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request from the client address ``source`` (any 127.0.0.0/8 address)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def cached(server: Server) -> list[dict[str, Any]]:
    out = server.cli("list", "cache", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["entries"]  # type: ignore[no-any-return]


def cached_urls(server: Server) -> list[str]:
    return sorted(e["url"] for e in cached(server))


def audit(server: Server) -> list[dict[str, Any]]:
    path = server.state_dir / "logs" / "config-audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stop_pool(server: Server) -> None:
    out = server.cli("stop", "apppool", "DefaultAppPool")
    assert out.returncode == 0, out.stderr
    server.wait_for(lambda: not server.workers("DefaultAppPool"), timeout=30)


@pytest.fixture
def server(poolhouse_server) -> Server:  # type: ignore[no-untyped-def]
    return poolhouse_server(CONFIG, files=FILES)  # type: ignore[no-any-return]


def test_ip_restrictions_are_not_bypassed_through_the_cache(server: Server) -> None:
    # the public file is cached after two hits (so the cache is on and would store)
    for _ in range(3):
        assert get(server, "/f.txt")[0] == 200
    assert "/f.txt" in cached_urls(server)
    # the intranet's: 127.0.0.1 is allowed, as often as it likes ...
    for _ in range(4):
        status, _, body = get(server, "/intranet/f.txt")
        assert (status, body) == (200, b"intranet only")
    assert "/intranet/f.txt" not in cached_urls(server)
    # ... and 127.0.0.2 is refused every time, never served from a cache entry
    for _ in range(3):
        assert get(server, "/intranet/f.txt", source="127.0.0.2")[0] == 403
    # the public file is for everyone, from the cache
    assert get(server, "/f.txt", source="127.0.0.2")[:3:2] == (200, b"public file")


def test_an_authenticated_url_is_never_cached(server: Server) -> None:
    # Basic authentication next to anonymous (both enabled): what anyone gets depends
    # on who asks, so neither answer is stored
    for _ in range(3):
        status, _, body = get(server, "/members/f.txt")
        assert (status, body) == (200, b"members' file")
        status, _, body = get(server, "/members/f.txt", {"Authorization": ALICE})
        assert (status, body) == (200, b"members' file")
    assert "/members/f.txt" not in cached_urls(server)
    # a wrong password is refused every time (a 200 from a cache would not be)
    wrong = "Basic " + base64.b64encode(b"alice:nope").decode()
    assert get(server, "/members/f.txt", {"Authorization": wrong})[0] == 401
    # and with the pool stopped nothing of it is answered any more
    get(server, "/f.txt")
    get(server, "/f.txt")
    stop_pool(server)
    assert get(server, "/members/f.txt")[0] == 503
    assert get(server, "/f.txt")[0] == 200  # (the public one is, from the cache)


def test_a_web_config_denying_anonymous_flushes_the_cache_before_it_is_reported(server: Server) -> None:
    for _ in range(3):
        assert get(server, "/docs/f.txt")[:3:2] == (200, b"documentation")
    assert "/docs/f.txt" in cached_urls(server)
    web_config = server.root / "www" / "web.config"
    web_config.write_text('<configuration><system.webServer><security><authorization>'
                          '<add accessType="Deny" users="?" /></authorization></security><modules>'
                          '<add name="ClientStamp" type="client_stamp:ClientStampModule" /></modules>'
                          '</system.webServer></configuration>')
    server.wait_for(lambda: any(a["file"] == str(web_config) and a["result"] == "accepted"
                                for a in audit(server)), timeout=20)
    # reported applied: the entry is gone already
    assert cached_urls(server) == []
    # the workers apply the file on their next look at it (within about two seconds);
    # from then on every anonymous request is refused, and nothing comes back into the cache
    server.wait_for(lambda: get(server, "/docs/f.txt")[0] == 401, timeout=20)
    for _ in range(8):
        assert get(server, "/docs/f.txt")[0] == 401
        time.sleep(0.4)
    assert cached_urls(server) == []


def test_reload_flushes_the_cache_before_it_returns(server: Server) -> None:
    for _ in range(3):
        assert get(server, "/docs/f.txt")[0] == 200
    assert "/docs/f.txt" in cached_urls(server)
    cfg = server.config
    text = cfg.read_text().replace(
        "</configuration>",
        '<location path="S/docs"><system.webServer><security>'
        '<ipSecurity allowUnlisted="false"><add ipAddress="127.0.0.2" allowed="true" /></ipSecurity>'
        "</security></system.webServer></location>\n</configuration>")
    cfg.write_text(text)
    out = server.cli("reload")
    assert out.returncode == 0, out.stderr
    assert "/docs/f.txt" not in cached_urls(server)  # flushed before the reload returned
    # the recycled pool's new worker refuses 127.0.0.1; what the old one answered
    # meanwhile was not stored
    server.wait_for(lambda: get(server, "/docs/f.txt")[0] == 403, timeout=30)
    for _ in range(3):
        assert get(server, "/docs/f.txt")[0] == 403
        assert get(server, "/docs/f.txt", source="127.0.0.2")[0] == 200
    assert "/docs/f.txt" not in cached_urls(server)


def test_gzip_and_identity_variants_are_both_served_from_the_cache(server: Server) -> None:
    identity = [get(server, "/big.txt") for _ in range(3)]
    for status, headers, body in identity:
        assert (status, body) == (200, BIG.encode()) and "content-encoding" not in headers
    assert "/big.txt" in cached_urls(server)

    def gzipped() -> tuple[int, dict[str, str], bytes] | None:
        answer = get(server, "/big.txt", {"Accept-Encoding": "gzip"})
        return answer if answer[1].get("content-encoding") == "gzip" else None

    # the worker compresses a file once it is frequently hit (2 hits in 10 s)
    server.wait_for(gzipped, timeout=20, interval=0.2)
    for accept in ("gzip", "gzip, deflate, br", "br;q=0.1, gzip"):
        status, headers, body = get(server, "/big.txt", {"Accept-Encoding": accept})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert "accept-encoding" in headers["vary"].lower()
        assert gzip.decompress(body) == BIG.encode()
    variants = [e for e in cached(server) if e["url"] == "/big.txt"]
    assert sorted(e["vary"] for e in variants) == [[""], ["gzip"]]
    # both variants are answered by the cache alone
    stop_pool(server)
    status, headers, body = get(server, "/big.txt", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == BIG.encode()
    status, headers, body = get(server, "/big.txt")
    assert (status, body) == (200, BIG.encode()) and "content-encoding" not in headers
    status, headers, body = get(server, "/big.txt", {"Accept-Encoding": "identity"})
    assert (status, body) == (200, BIG.encode()) and "content-encoding" not in headers


def test_conditional_requests_get_the_same_answer_from_the_cache_and_the_worker(server: Server) -> None:
    # /f.txt is cached; with a query string the same file is always the worker's
    for _ in range(3):
        status, f_headers, _ = get(server, "/f.txt")
    assert cached_urls(server) == ["/f.txt"]

    def later(headers: dict[str, str], seconds: int) -> str:
        when = email.utils.parsedate_to_datetime(headers["last-modified"]).timestamp() + seconds
        return email.utils.formatdate(when, usegmt=True)

    def asctime(headers: dict[str, str]) -> str:
        when = email.utils.parsedate_to_datetime(headers["last-modified"])
        return when.strftime("%a %b ") + f"{when.day:2d}" + when.strftime(" %H:%M:%S %Y")

    cases = [
        (lambda h: {"If-Modified-Since": later(h, 3600)}, 304),      # a later date, not the same string
        (lambda h: {"If-Modified-Since": asctime(h)}, 304),          # another date format
        (lambda h: {"If-Modified-Since": later(h, -3600)}, 200),
        (lambda h: {"If-Modified-Since": "not a date"}, 200),
        (lambda h: {"If-None-Match": "W/" + h["etag"]}, 304),        # weak comparison
        (lambda h: {"If-None-Match": '"x", ' + h["etag"]}, 304),
        (lambda h: {"If-None-Match": '"x"', "If-Modified-Since": later(h, 3600)}, 200),
        (lambda h: {"If-Match": '"x"'}, 412),                        # handed to the worker
        (lambda h: {"If-Match": h["etag"]}, 200),
        (lambda h: {"If-Unmodified-Since": later(h, -3600)}, 412),
    ]
    for make, expected in cases:
        worker = get(server, "/f.txt?worker", make(f_headers))[0]
        cache = get(server, "/f.txt", make(f_headers))[0]
        assert worker == cache == expected, (make(f_headers), worker, cache)
    assert cached_urls(server) == ["/f.txt"]
    hits = json.loads(server.cli("counters", "--json").stdout)["cache"]["hits"]
    assert hits >= 7


def test_a_web_config_in_a_cached_files_folder_flushes_its_entries(server: Server) -> None:
    # (a folder below the virtual directory's: the listener sees the file appear itself)
    for _ in range(3):
        assert get(server, "/docs/sub/f.txt")[0] == 200
    assert "/docs/sub/f.txt" in cached_urls(server)
    (server.root / "www" / "docs" / "sub" / "web.config").write_text(
        '<configuration><system.webServer><security><authorization>'
        '<add accessType="Deny" users="?" /></authorization></security></system.webServer></configuration>')
    server.wait_for(lambda: "/docs/sub/f.txt" not in cached_urls(server), timeout=10)
    server.wait_for(lambda: get(server, "/docs/sub/f.txt")[0] == 401, timeout=20)
    for _ in range(5):
        assert get(server, "/docs/sub/f.txt")[0] == 401
        time.sleep(0.4)
    assert get(server, "/docs/sub/f.txt", {"Authorization": ALICE})[0] == 401  # (no authentication there)
    assert "/docs/sub/f.txt" not in cached_urls(server)


def test_a_module_can_keep_a_response_out_of_the_cache(server: Server) -> None:
    for _ in range(4):
        status, headers, _ = get(server, "/varies/f.txt")
        assert status == 200 and headers["x-client"] == "127.0.0.1"
    assert "/varies/f.txt" not in cached_urls(server)
    status, headers, _ = get(server, "/varies/f.txt", source="127.0.0.2")
    assert status == 200 and headers["x-client"] == "127.0.0.2"


def test_rewrite_rules_reading_the_client_keep_the_url_out_of_the_cache(server: Server) -> None:
    # (URL Rewrite's rule: a condition on a variable that is not derived from the URL)
    for _ in range(4):
        assert get(server, "/rw/page.txt")[:3:2] == (200, b"the page")
    assert "/rw/page.txt" not in cached_urls(server)
    assert get(server, "/rw/page.txt", source="127.0.0.2")[:3:2] == (200, b"not for 127.0.0.2")
