"""A handler mapping's ``<environmentVariables>`` (Poolhouse extension) given to the
application it names.

A worker hosts every application of its pool, and a process has one environment, so:

* each request of the application carries its own variables: in the WSGI environ (each
  name as a key, as mod_wsgi's ``SetEnv``; the keys the server sets for the request are
  kept) and as ``environ["poolhouse.environment"]`` / ``scope["poolhouse.environment"]``
  (a read-only mapping) for WSGI and ASGI;
* ``os.environ`` gets them just before the application is imported (so settings read at
  import time work), unless another application of this worker set the same name to a
  different value first: then ``os.environ`` keeps that first value, and a warning names
  both applications.  Applications that need different process environments belong in
  different pools.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

log = logging.getLogger("poolhouse.worker")

ENVIRON_KEY = "poolhouse.environment"

# name -> (value, the application that set it in os.environ)
_claims: dict[str, tuple[str, str]] = {}


def claim_process_environment(variables: Mapping[str, str], owner: str) -> None:
    """Put ``variables`` in ``os.environ`` where no other application of this worker
    has set a different value."""
    for name, value in variables.items():
        claim = _claims.get(name)
        if claim is None or claim[1] == owner:
            _claims[name] = (value, owner)
            os.environ[name] = value
        elif claim[0] != value:
            log.warning("environment variable %s: %s sets %r but %s set %r first in this worker's os.environ; "
                        "%s sees its own value in the request environ only (put the applications in different "
                        "pools to give each its own process environment)", name, owner, value, claim[1],
                        claim[0], owner)


def with_environment(app: Any, variables: Mapping[str, str], asgi: bool) -> Any:
    """``app`` wrapped so that each request carries ``variables``."""
    frozen = MappingProxyType(dict(variables))
    items = tuple(variables.items())
    if asgi:
        async def asgi_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                           send: Callable[[Any], Awaitable[None]]) -> None:
            scope[ENVIRON_KEY] = frozen
            await app(scope, receive, send)
        return asgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        for name, value in items:
            if name not in environ:
                environ[name] = value
        environ[ENVIRON_KEY] = frozen
        return app(environ, start_response)  # type: ignore[no-any-return]
    return wsgi_app
