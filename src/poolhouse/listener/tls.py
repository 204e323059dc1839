"""TLS for https bindings: one server context per listening port whose SNI callback picks
the certificate, as HTTP.sys's ``sslcert`` table does (ref. iis.md §4.8).

A binding names its PEM files with ``certificateFile``/``keyFile`` (a Poolhouse extension:
IIS names a certificate by hash in a Windows store).  With ``sslFlags="1"`` (SNI) the
certificate is chosen by the host name the client asked for (``hostnameport``); otherwise
it is the port's certificate (``ipport``), also used for clients that send no SNI.
TLS 1.2 or newer, ALPN ``http/1.1``, forward-secret AEAD ciphers.  Certificate files are
checked once a second and a changed pair is loaded for new connections, no restart.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from ..config.model import Site

log = logging.getLogger("poolhouse.listener")

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


@dataclass
class CertPair:
    certificate_file: str
    key_file: str
    stamp: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)
    context: ssl.SSLContext | None = None
    error: str = ""

    def _stat(self) -> tuple[float, float, int, int]:
        c = os.stat(self.certificate_file)
        k = os.stat(self.key_file or self.certificate_file)
        return (c.st_mtime, k.st_mtime, c.st_size, k.st_size)

    def refresh(self) -> bool:
        """(Re)load the pair if its files changed; True if a new context was made."""
        try:
            stamp = self._stat()
        except OSError as exc:
            if not self.error:
                log.error("TLS: cannot read %s: %s", self.certificate_file, exc)
            self.error = str(exc)
            return False
        if stamp == self.stamp and self.context is not None:
            return False
        try:
            ctx = new_context()
            ctx.load_cert_chain(self.certificate_file, self.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            # a half-written file: keep the old context, try again next second
            log.error("TLS: cannot load %s / %s: %s", self.certificate_file, self.key_file, exc)
            self.error = str(exc)
            return False
        self.stamp = stamp
        self.context = ctx
        self.error = ""
        return True


def new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TlsStore:
    """Certificates per (port, host name) and the server context of each https port."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], CertPair] = {}
        self.by_host: dict[int, dict[str, CertPair]] = {}  # SNI bindings
        self.by_port: dict[int, CertPair] = {}  # the port's certificate (no SNI)
        self.servers: dict[int, ssl.SSLContext] = {}

    def configure(self, sites: list[Site]) -> None:
        pairs: dict[tuple[str, str], CertPair] = {}
        by_host: dict[int, dict[str, CertPair]] = {}
        by_port: dict[int, CertPair] = {}
        for site in sites:
            for b in site.bindings:
                if b.protocol != "https" or not b.certificate_file:
                    continue
                key = (b.certificate_file, b.key_file)
                pair = pairs.get(key) or self.pairs.get(key) or CertPair(*key)
                pairs[key] = pair
                if b.ssl_flags & 1 and b.host:
                    by_host.setdefault(b.port, {}).setdefault(b.host.lower(), pair)
                else:
                    by_port.setdefault(b.port, pair)
        self.pairs, self.by_host, self.by_port = pairs, by_host, by_port
        self.refresh()

    def refresh(self) -> None:
        for pair in self.pairs.values():
            pair.refresh()

    def lookup(self, port: int, server_name: str | None) -> ssl.SSLContext | None:
        pair = None
        if server_name:
            hosts = self.by_host.get(port)
            if hosts:
                pair = hosts.get(server_name.lower().rstrip("."))
        if pair is None:
            pair = self.by_port.get(port)
        if pair is None:  # no port certificate: any SNI certificate of the port
            hosts = self.by_host.get(port)
            if hosts:
                pair = next(iter(hosts.values()))
        return pair.context if pair is not None else None

    def server_context(self, port: int) -> ssl.SSLContext:
        """The context a port's server is created with; its SNI callback switches each
        connection to the certificate chosen for it."""
        ctx = self.servers.get(port)
        if ctx is None:
            ctx = self.servers[port] = new_context()

            def choose(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
                chosen = self.lookup(port, server_name)
                if chosen is None:
                    return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
                sslobj.context = chosen
                return None

            ctx.sni_callback = choose
        return ctx
