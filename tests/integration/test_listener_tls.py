"""https bindings: SNI picks between two certificates, the port's certificate without SNI,
ALPN http/1.1, no TLS below 1.2, certificate files reloaded on change without a restart,
and the request reaches the application as https."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from poolhouse.admin.cert import generate
from tests.integration.conftest import apphost

APP = '''
def app(environ, start_response):
    body = ("%s %s" % (environ["wsgi.url_scheme"], environ.get("HTTPS", ""))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
WEB_CONFIG = ('<configuration><system.webServer><handlers><add name="py" path="*" verb="*" '
              'modules="WsgiModule" scriptProcessor="app:app" /></handlers></system.webServer>'
              '</configuration>')


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    out = tmp_path / "certs"
    return {h: generate([h], str(out)) for h in ("a.test", "b.test", "default.test")}


def config(certs: dict[str, tuple[str, str]]) -> str:
    def binding(host: str, flags: int, cert: str) -> str:
        c, k = certs[cert]
        return (f'<binding protocol="https" bindingInformation="127.0.0.1:{{port}}:{host}" '
                f'sslFlags="{flags}" certificateFile="{c}" keyFile="{k}" />')
    return apphost(
        '<site name="S" id="1"><application path="/" applicationPool="DefaultAppPool">'
        '<virtualDirectory path="/" physicalPath="{root}/www" /></application><bindings>'
        + binding("a.test", 1, "a.test") + binding("b.test", 1, "b.test") + binding("", 0, "default.test")
        + "</bindings></site>"
    )


def handshake(port: int, server_name: str | None, cafile: str | None = None,
              max_version: ssl.TLSVersion | None = None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cafile:
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def common_name(sock: ssl.SSLSocket) -> str:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.rfc4514_string())


def get(sock: ssl.SSLSocket, host: str) -> bytes:
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_sni_chooses_the_certificate(poolhouse_server, certs) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(certs), files={"www/app.py": APP, "www/web.config": WEB_CONFIG})
    with handshake(server.port, "a.test", cafile=certs["a.test"][0]) as s:
        assert common_name(s) == "CN=a.test"
        assert s.selected_alpn_protocol() == "http/1.1"
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        response = get(s, "a.test")
        assert response.startswith(b"HTTP/1.1 200") and response.split(b"\r\n\r\n", 1)[1].startswith(b"https")
    with handshake(server.port, "b.test", cafile=certs["b.test"][0]) as s:
        assert common_name(s) == "CN=b.test"
    with handshake(server.port, None) as s:  # no SNI: the port's certificate
        assert common_name(s) == "CN=default.test"
    with handshake(server.port, "other.test") as s:  # unknown name: the port's certificate
        assert common_name(s) == "CN=default.test"


def test_old_tls_versions_are_refused(poolhouse_server, certs) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(certs), files={"www/app.py": APP, "www/web.config": WEB_CONFIG})
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with handshake(server.port, "a.test", max_version=ssl.TLSVersion.TLSv1_1):
            pass


def test_certificate_reloaded_on_change(poolhouse_server, certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = poolhouse_server(config(certs), files={"www/app.py": APP, "www/web.config": WEB_CONFIG})
    with handshake(server.port, "b.test") as s:
        before = s.getpeercert(binary_form=True)
    time.sleep(1.1)  # a new mtime second
    generate(["b.test"], str(tmp_path / "certs"))  # replaces b.test.crt/.key in place
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with handshake(server.port, "b.test") as s:
            after = s.getpeercert(binary_form=True)
        if after != before:
            break
        time.sleep(0.2)
    assert after != before
    with handshake(server.port, "b.test", cafile=certs["b.test"][0]) as s:
        assert get(s, "b.test").startswith(b"HTTP/1.1 200")
