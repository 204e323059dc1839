"""gunicorn's HTTP/1 request corpus (tests/requests/valid and invalid in its sdist),
replayed as it is over real sockets: every malformed request is refused by the listener
(4xx, or the connection closed without a response) before any worker sees it, and every
well-formed one reaches the application parsed exactly (method, path, query, headers,
body) — or, where RFC 9112 lets a server refuse what gunicorn accepts (HTTP/1.1 without
Host, a transfer coding other than chunked), gets that refusal; header names with "_"
are dropped, and an absolute-form target arrives in origin-form with its authority as
Host.

The sdist is fetched with ``pip download`` into a cache directory during the test run;
the test is skipped (saying why) only when that is impossible.  Vectors that need a
non-default gunicorn option (PROXY protocol, obsolete line folding accepted, …) state an
application-server policy rather than HTTP, and are reported as skipped.
"""

from __future__ import annotations

import glob
import importlib.machinery
import json
import os
import socket
import subprocess
import sys
import tarfile
import types
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Server, apphost

CACHE = Path(os.environ.get("POOLHOUSE_TEST_CACHE", Path.home() / ".cache" / "poolhouse-tests"))

ECHO = '''
import json

def app(environ, start_response):
    body = environ["wsgi.input"].read()
    headers = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(k):
            headers[k] = environ[k]
    out = json.dumps({"method": environ["REQUEST_METHOD"], "uri": environ.get("REQUEST_URI", ""),
                      "query": environ.get("QUERY_STRING", ""), "headers": headers,
                      "body": body.decode("latin-1")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
'''
WEB_CONFIG = ('<configuration><system.webServer><handlers><add name="py" path="*" verb="*" '
              'modules="WsgiModule" scriptProcessor="echo:app" /></handlers>'
              '<security><requestFiltering allowDoubleEscaping="true"><requestLimits maxUrl="65536" '
              'maxQueryString="65536" /><fileExtensions allowUnlisted="true"><clear /></fileExtensions>'
              '<hiddenSegments><clear /></hiddenSegments><verbs allowUnlisted="true" /></requestFiltering>'
              '</security></system.webServer></configuration>')


def corpus_dir() -> Path:
    target = CACHE / "gunicorn-sdist"
    found = sorted(glob.glob(str(target / "gunicorn-*" / "tests" / "requests")))
    if found:
        return Path(found[-1])
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "gunicorn",
         "-d", str(target)], capture_output=True, text=True, timeout=300)
    archives = sorted(target.glob("gunicorn-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        pytest.skip(f"cannot download gunicorn's sdist for its request corpus: {proc.stderr.strip()[-300:]}")
    with tarfile.open(archives[-1]) as tar:
        tar.extractall(target, filter="data")
    found = sorted(glob.glob(str(target / "gunicorn-*" / "tests" / "requests")))
    if not found:
        pytest.skip("gunicorn's sdist has no tests/requests directory")
    return Path(found[-1])


class _Cfg:
    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def set(self, name: str, value: Any) -> None:
        self.options[name] = value


def _fake_gunicorn() -> None:
    """The .py expectations import gunicorn's error classes and Config: stand-ins."""
    if "gunicorn.http.errors" in sys.modules and getattr(sys.modules["gunicorn"], "_poolhouse_fake", False):
        return
    errors = types.ModuleType("gunicorn.http.errors")
    errors.__getattr__ = lambda name: type(name, (Exception,), {})  # type: ignore[method-assign]
    config = types.ModuleType("gunicorn.config")
    config.Config = _Cfg  # type: ignore[attr-defined]
    pkg = types.ModuleType("gunicorn")
    pkg._poolhouse_fake = True  # type: ignore[attr-defined]
    http = types.ModuleType("gunicorn.http")
    sys.modules.update({"gunicorn": pkg, "gunicorn.http": http, "gunicorn.http.errors": errors,
                        "gunicorn.config": config})


def _uri(data: str) -> dict[str, Any]:
    parts = urlsplit(data)
    return {"raw": data, "path": parts.path or "", "query": parts.query or "", "fragment": parts.fragment or ""}


def load_expectation(path: Path) -> tuple[Any, dict[str, Any]]:
    _fake_gunicorn()
    mod = types.ModuleType("__corpus__")
    mod.uri = _uri  # type: ignore[attr-defined]
    mod.cfg = _Cfg()  # type: ignore[attr-defined]
    importlib.machinery.SourceFileLoader("__corpus__", str(path)).exec_module(mod)
    return mod.request, mod.cfg.options  # type: ignore[attr-defined]


def load_data(path: Path) -> bytes:
    """As gunicorn's treq.py reads a vector."""
    data = path.read_bytes()
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    out = bytearray()
    i = 0
    while i < len(data):
        if i + 3 < len(data) and data[i:i + 2] == b"\\x":
            try:
                out.append(int(data[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(data[i])
        i += 1
    return bytes(out)


# Where the listener's answer differs from gunicorn's on purpose or by its parser (httptools
# / llhttp), each with the reason; everything else must pass.
POLICY = {
    # gunicorn's own limits (4094-byte request line, 8190-byte fields, 100 fields); the
    # listener applies HTTP.sys's (MaxFieldLength and MaxRequestBytes, 16 KB each)
    "LimitRequestLine": "gunicorn's request-line limit; HTTP.sys's is 16 KB",
    "LimitRequestHeaders": "gunicorn's header limits; HTTP.sys's are 16 KB per field and head",
}
KNOWN = {
    ("invalid", "041"): "a repeated Content-Type is passed on (IIS does the same); only Host is checked",
    ("invalid", "rfc9110_trailer_forbidden_host_01"): "trailer fields are not inspected",
    ("invalid", "rfc9112_leading_crlf_02"): "llhttp skips any number of empty lines before a request",
    ("valid", "013"): "llhttp refuses whitespace before a chunk extension's ';'",
    ("valid", "031"): "llhttp knows a fixed list of methods; '-BLARGH' is refused with 400",
    ("valid", "099"): "its Content-Length (17914) exceeds the body it carries (8599): over a socket the "
                      "server rightly waits for the rest",
}


def vectors(kind: str) -> list[Any]:
    try:
        root = corpus_dir()
    except pytest.skip.Exception as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))]
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.xfail(reason=KNOWN[(kind, p.stem)], strict=False)]
                         if (kind, p.stem) in KNOWN else [])
            for p in sorted((root / kind).glob("*.http"))]


@pytest.fixture(scope="module")
def echo_server(searchable_tmp: Callable[[str], Path], request: pytest.FixtureRequest) -> Any:
    from tests.integration import conftest

    root = searchable_tmp("corpus")
    (root / "www").mkdir()
    (root / "www" / "echo.py").write_text(ECHO)
    (root / "www" / "web.config").write_text(WEB_CONFIG)
    port = conftest.free_port()
    cfg = root / "applicationHost.config"
    cfg.write_text(apphost(
        '<site name="S" id="1"><application path="/" applicationPool="DefaultAppPool">'
        f'<virtualDirectory path="/" physicalPath="{root}/www" /></application>'
        f'<bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings></site>'))
    server = Server(root, cfg, port, [port])
    server.start()
    yield server
    server.stop()


def exchange(port: int, data: bytes, expected_responses: int) -> list[tuple[int, bytes]]:
    """Send ``data``, read responses until the connection closes or the expected number
    arrived; returns (status, body) pairs (status 0: closed without a response)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(data)
        buf = b""
        out: list[tuple[int, bytes]] = []
        while len(out) < expected_responses:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return out or [(0, b"")]
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            out.append((status, buf[:length]))
            buf = buf[length:]
        return out
    except (ConnectionResetError, socket.timeout):
        return [(0, b"")]
    finally:
        sock.close()


@pytest.mark.parametrize("path", vectors("invalid"))
def test_invalid_requests_are_refused(echo_server: Server, path: Path) -> None:
    expect, options = load_expectation(path.with_suffix(".py"))
    if options:
        pytest.skip(f"needs gunicorn option(s) {sorted(options)}")
    if getattr(expect, "__name__", "") in POLICY:
        pytest.skip(POLICY[expect.__name__])
    responses = exchange(echo_server.port, load_data(path), 1)
    status, body = responses[0]
    assert status == 0 or 400 <= status < 500 or status in (501, 505), (status, body[:200])
    if status != 0:
        assert not body.startswith(b"{"), "the application saw it"


def refused_by_rfc9112(want: dict[str, Any]) -> int:
    """The status the listener answers (then closing the connection) where RFC 9112 lets
    a server refuse what gunicorn accepts: an HTTP/1.1 request without Host (§3.2, 400 as
    HTTP.sys does) and a transfer coding other than chunked (§6.1, 501; "identity" too,
    as nginx does: a coding one hop ignores and another does not is how requests are
    smuggled).  0: the request is passed on."""
    names = [n.upper() for n, _ in want["headers"]]
    if want.get("version") == (1, 1) and "HOST" not in names:
        return 400
    for name, value in want["headers"]:
        if name.upper() == "TRANSFER-ENCODING" and any(
                c.strip().lower() not in ("chunked", "") for c in value.split(",")):
            return 501
    return 0


@pytest.mark.parametrize("path", vectors("valid"))
def test_valid_requests_reach_the_application_exactly(echo_server: Server, path: Path) -> None:
    expect, options = load_expectation(path.with_suffix(".py"))
    if options:
        pytest.skip(f"needs gunicorn option(s) {sorted(options)}")
    expected = expect if isinstance(expect, list) else [expect]
    refused = [refused_by_rfc9112(want) for want in expected]
    if any(refused):  # answered up to the refused one, which ends the connection
        expected = expected[:next(i for i, r in enumerate(refused) if r) + 1]
    responses = exchange(echo_server.port, load_data(path), len(expected))
    assert len(responses) == len(expected), responses
    for (status, body), want, refusal in zip(responses, expected, refused):
        if refusal:
            assert status == refusal, (status, body[:300])
            assert not body.startswith(b"{"), "the application saw it"
            continue
        assert status == 200, (status, body[:300])
        got = json.loads(body)
        assert got["method"] == want["method"]
        raw = want["uri"]["raw"].split("#")[0]  # a fragment is not passed on
        authority = None
        if raw.lower().startswith(("http://", "https://")):
            # absolute-form: its authority replaces Host (RFC 9112 §3.2.2), the target
            # goes on in origin-form
            rest = raw.split("//", 1)[1]
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
            authority = rest[:cut].rpartition("@")[2]
            raw = rest[cut:] if rest[cut:cut + 1] == "/" else "/" + rest[cut:]
        assert got["uri"] == raw
        assert got["query"] == want["uri"]["query"]
        assert got["body"] == want["body"].decode("latin-1")
        headers = got["headers"]
        merged: dict[str, list[str]] = {}
        for name, value in want["headers"]:
            key = name.upper().replace("-", "_")
            if key in ("TRANSFER_ENCODING", "CONTENT_LENGTH", "CONNECTION"):
                continue  # framing: consumed by the server (the body is compared instead)
            if "_" in name:
                continue  # dropped by the listener (names with "_" never reach an application)
            key = key if key == "CONTENT_TYPE" else "HTTP_" + key
            merged.setdefault(key, []).append(value)
        if authority is not None:
            merged["HTTP_HOST"] = [authority]
        for key, values in merged.items():
            assert key in headers, (key, headers)
            assert headers[key] in (",".join(values), ", ".join(values)), (key, headers[key], values)
