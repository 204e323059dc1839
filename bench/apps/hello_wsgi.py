"""The WSGI "hello, world" every WSGI target of the benchmark serves.

Kept minimal on purpose (pre-built body and headers, nothing per request) so that the
figures measure the server, not the application.
"""

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!"
HEADERS = [
    ("Content-Type", "text/plain"),
    ("Content-Length", str(len(BODY))),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
