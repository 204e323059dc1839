"""TLS to ``https://`` upstreams of the reverse proxy.

The certificate is verified by default, against the system's CAs (OpenSSL's default
paths, so ``SSL_CERT_FILE``/``SSL_CERT_DIR`` in a pool's ``environmentVariables`` apply
to the whole pool), and the name checked is the upstream URL's host, which is also
sent as SNI.  A rewrite rule may change that for its own requests with two server
variables (Poolhouse's names; a rule sets them in ``<serverVariables>``):

* ``POOLHOUSE_PROXY_CA_FILE``: a PEM file of the CAs to trust instead of the system's
  (an internal CA, a self-signed upstream);
* ``POOLHOUSE_PROXY_VERIFY``: ``false`` (or ``0``, ``off``, ``no``) turns verification
  off: the traffic is encrypted but the upstream is not authenticated.  A warning is
  logged once per upstream.

One ``SSLContext`` is built per (CA file, verification) and kept: building one reads
the CA store, which is far too slow to do per request.
"""

from __future__ import annotations

import logging
import ssl
from typing import NamedTuple

log = logging.getLogger("poolhouse.worker")

CA_FILE_VARIABLE = "POOLHOUSE_PROXY_CA_FILE"
VERIFY_VARIABLE = "POOLHOUSE_PROXY_VERIFY"
_OFF = frozenset(("false", "0", "off", "no"))


class TlsSettings(NamedTuple):
    ca_file: str = ""  # "": the system's CAs
    verify: bool = True


class TlsConfigError(Exception):
    """The settings a rule gave cannot be used (a CA file that does not load)."""


def settings_from(variables: dict[str, str] | None) -> TlsSettings:
    """The TLS settings of one proxied request, from the server variables its rule set
    (names compared case-insensitively, as IIS does)."""
    if not variables:
        return TlsSettings()
    ca_file, verify = "", True
    for name, value in variables.items():
        upper = name.upper()
        if upper == CA_FILE_VARIABLE:
            ca_file = value.strip()
        elif upper == VERIFY_VARIABLE:
            verify = value.strip().lower() not in _OFF
    return TlsSettings(ca_file, verify)


_contexts: dict[TlsSettings, ssl.SSLContext] = {}
_warned: set[tuple[str, int]] = set()


def context_for(settings: TlsSettings, host: str, port: int) -> ssl.SSLContext:
    """The client context for ``settings`` (built once); raises TlsConfigError."""
    ctx = _contexts.get(settings)
    if ctx is not None:
        if not settings.verify:
            _warn_unverified(host, port)
        return ctx
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{CA_FILE_VARIABLE} {settings.ca_file!r} cannot be loaded: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _warn_unverified(host, port)
    ctx.set_alpn_protocols(["http/1.1"])
    _contexts[settings] = ctx
    return ctx


def _warn_unverified(host: str, port: int) -> None:
    if (host, port) not in _warned:
        _warned.add((host, port))
        log.warning("reverse proxy to https://%s:%d without certificate verification (%s)", host, port,
                    VERIFY_VARIABLE)


def describe_failure(exc: ssl.SSLError, host: str, port: int) -> str:
    """A handshake failure as the error log line's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {host}:{port} is not trusted: {exc.verify_message or exc.reason}"
    return f"TLS handshake with {host}:{port} failed: {exc.reason or exc}"
