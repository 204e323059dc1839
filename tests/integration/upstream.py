"""What the reverse-proxy and httpPlatform tests share: a site with one application at
``{root}/www``, an HTTP upstream started in a thread on a free loopback port, and the
URL Rewrite rules that send requests to it."""

from __future__ import annotations

import socket
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .conftest import apphost

# one site, one application (DefaultAppPool) whose files are under www/
SITE = """
<site name="S" id="1">
  <application path="/" applicationPool="DefaultAppPool">
    <virtualDirectory path="/" physicalPath="{root}/www" />
  </application>
  <bindings><binding protocol="http" bindingInformation="127.0.0.1:{port}:" /></bindings>
</site>"""


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler],
               tls: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on 127.0.0.1 (a free port: ``server.server_address[1]``) by a
    thread per connection, over TLS with ``tls``; shut down on leaving."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def rule(name: str, url: str, variables: dict[str, str] | None = None) -> str:
    """A rule sending ``/<name>/<rest>`` to ``<url>/<rest>``, setting ``variables``."""
    sets = "".join(f'<set name="{k}" value="{v}" />' for k, v in (variables or {}).items())
    return (f'<rule name="{name}" stopProcessing="true"><match url="^{name}/(.*)" />'
            f'<serverVariables>{sets}</serverVariables>'
            f'<action type="Rewrite" url="{url}/{{R:1}}" /></rule>')


def rewrite_config(*rules: str, extra: str = "") -> str:
    """A web.config with these rewrite rules (and ``extra`` inside system.webServer)."""
    return ("<configuration><system.webServer><rewrite><rules>" + "".join(rules)
            + f"</rules></rewrite>{extra}</system.webServer></configuration>")


def proxy_site(poolhouse_server: Any, *rules: str, extra: str = "", files: dict[str, str] | None = None) -> Any:
    """A started server whose application has these rules (and an ``index.html``)."""
    return poolhouse_server(apphost(SITE), files={"www/web.config": rewrite_config(*rules, extra=extra),
                                                  "www/index.html": "home", **(files or {})})


class RawUpstream(ABC):
    """A TCP server on a free loopback port for answers no HTTP library would write:
    each connection's request head is read, then ``answer(conn, method, path)`` writes
    what it likes (the connection is closed afterwards unless it returns True: kept)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                conn.close()
                return
            data += piece
        method, path = data.split(b" ", 2)[:2]
        try:
            if self.answer(conn, method.decode(), path.decode()):
                self.held.append(conn)
                return
        except OSError:
            pass
        conn.close()

    @abstractmethod
    def answer(self, conn: socket.socket, method: str, path: str) -> bool:
        """Write the answer to ``method path`` on ``conn``; True keeps the connection."""

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
