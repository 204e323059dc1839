"""CgiModule streams: the client sees what a CGI program wrote before it writes the
rest, the request body reaches the program as it arrives, cgi/@timeout still holds, a
program that dies mid-body resets the response (and shows in a failed-request trace
whose rule asks for Error events)."""

from __future__ import annotations

import re
import socket
import stat
import time

import httpx
import pytest

from .conftest import apphost

WEB = "<configuration><system.webServer>{}</system.webServer></configuration>"

SITE = apphost(
    sites="""
    <site name="Cgi" id="1">
      <application path="/" applicationPool="P">
        <virtualDirectory path="/" physicalPath="{root}/www" />
      </application>
      <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
    </site>""",
    pools='<add name="P" />',
    extra='<location path="Cgi"><system.webServer><cgi timeout="00:00:02" /></system.webServer></location>'
          '<system.webServer><security><isapiCgiRestriction notListedCgisAllowed="false">{allowed}'
          '</isapiCgiRestriction></security></system.webServer>',
)

HEAD = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
SCRIPTS = {
    "slow.cgi": HEAD + "printf 'first part\\n'\nsleep 1\nprintf 'second part\\n'\n",
    "echo.cgi": HEAD + "IFS= read -r line\nprintf 'got %s\\n' \"$line\"\ncat\n",
    "fast.cgi": HEAD + "printf 'all at once'\n",
    "dies.cgi": HEAD + "printf 'partial'\nsleep 0.3\nkill -9 $$\n",
    "short.cgi": "#!/bin/sh\nprintf 'Content-Length: 100\\r\\n\\r\\n'\nprintf 'only ten..'\nsleep 0.3\n",
    "late.cgi": "#!/bin/sh\nsleep 10\n" + HEAD[len("#!/bin/sh\n"):],
    "stalls.cgi": HEAD + "printf 'started'\nsleep 10\nprintf 'never'\n",
    "noheaders.cgi": "#!/bin/sh\nprintf 'just text'\nexit 3\n",
}

SITE = SITE.replace("{allowed}", "".join(f'<add path="{{root}}/www/{name}" allowed="true" />' for name in SCRIPTS))

FILES = {
    "www/web.config": WEB.format("""
      <handlers accessPolicy="Read, Script, Execute">
        <add name="cgi" path="*.cgi" verb="*" modules="CgiModule" resourceType="File" requireAccess="Execute" />
      </handlers>
      <tracing><traceFailedRequests>
        <add path="dies.cgi"><failureDefinitions verbosity="Error" /></add>
      </traceFailedRequests></tracing>"""),
    **{f"www/{name}": text for name, text in SCRIPTS.items()},
}


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def server(poolhouse_server):
    srv = poolhouse_server(SITE, FILES)
    for name in SCRIPTS:
        path = srv.root / "www" / name
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)  # the pool's user runs it
    return srv


def test_cgi_output_is_streamed_as_produced(server) -> None:
    with httpx.Client(base_url=server.base, timeout=20) as c:
        assert c.get("/fast.cgi").status_code == 200  # the worker is started: time the program only
        with c.stream("GET", "/slow.cgi") as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
            pieces = r.iter_raw()
            first = next(pieces)
            t1 = time.monotonic()
            rest = b"".join(pieces)
            t2 = time.monotonic()
        assert first == b"first part\n" and rest == b"second part\n"
        # the program sleeps 1 s between its parts: the first did not wait for the second
        # (a bound on t1 - t0 alone would measure the machine's load, not the streaming)
        assert t2 - t1 > 0.5, "the first part waited for the second"
        assert "content-length" not in r.headers

        # a program that is done at once is one whole response, with its length
        r = c.get("/fast.cgi")
        assert r.text == "all at once" and r.headers["content-length"] == "11"
        assert c.head("/fast.cgi").headers["content-length"] == "11"


def test_request_body_reaches_the_program_as_it_arrives(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /echo.cgi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n")
        got = read_until(s, b"got hello")
        assert got.startswith(b"HTTP/1.1 200") and b"got hello" in got  # before the body ended
        s.sendall(b"5\r\nmore\n\r\n0\r\n\r\n")
        got += read_until(s, b"\r\n0\r\n\r\n")
    body = re.sub(rb"\r\n[0-9a-f]+\r\n", b"", got.split(b"\r\n\r\n", 1)[1])
    assert b"more\n" in body


def test_timeout_and_programs_that_die(server) -> None:
    with httpx.Client(base_url=server.base, timeout=20) as c:
        # dies mid-body: the response is cut off, not passed off as complete
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/dies.cgi")
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/short.cgi")  # Content-Length 100, ten bytes written

        t0 = time.monotonic()
        r = c.get("/late.cgi")  # no header block within cgi/@timeout
        assert r.status_code == 502 and "502.1" in r.text and time.monotonic() - t0 < 6
        t0 = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/stalls.cgi")  # streaming when the timeout strikes: reset
        assert time.monotonic() - t0 < 6
        r = c.get("/noheaders.cgi")
        assert r.status_code == 502 and "502.2" in r.text and "exit status 3" in r.text
        assert c.get("/fast.cgi").text == "all at once"  # the worker is fine

    # failureDefinitions verbosity="Error": the premature end is an Error event
    traces = server.state_dir / "logs" / "FailedReqLogFiles" / "W3SVC1"
    server.wait_for(lambda: list(traces.glob("fr*.xml")))
    xml = "".join(p.read_text() for p in traces.glob("fr*.xml"))
    assert "CGI_PREMATURE_TERMINATION" in xml and "CGI_LAUNCH" in xml and 'failureReason="VERBOSITY"' in xml
