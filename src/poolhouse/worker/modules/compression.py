"""StaticCompressionModule and DynamicCompressionModule: ``urlCompression`` and
``httpCompression`` (SendResponse).

Schemes are ``httpCompression/scheme`` entries named ``gzip``, ``deflate`` or ``br``
(brotli, from the ``brotli`` package); the client's Accept-Encoding picks among them
(highest q, then configuration order).  Only 200 responses are compressed, not HEAD,
not ranges (``noCompressionForRange``), not HTTP/1.0 (``noCompressionForHttp10``), not
through proxies (``Via``, ``noCompressionForProxies``), not bodies already encoded;
the Content-Type must match the first ``staticTypes``/``dynamicTypes`` entry that
matches, with ``enabled="true"``.  Compressed responses carry ``Vary: Accept-Encoding``.

Static: the static file handler's responses of at least ``minFileSizeForComp`` bytes;
a file is compressed once it is "frequently hit" (``serverRuntime/@frequentHitThreshold``
hits within ``frequentHitTimePeriod``, unless ``staticCompressionIgnoreHitFrequency``)
and the result is cached on disk under ``httpCompression/@directory`` (default
``<state dir>/temp/IIS Temporary Compressed Files``), keyed by path, ETag and scheme,
and in memory.  The ETag of a compressed representation gets ``-<scheme>``.
Dynamic: every other handler's responses — whole bodies of at least
``minFileSizeForComp`` bytes, and streamed bodies, compressed piece by piece.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from ...http.encodings import choose_coding
from ..apps import ASGI, CGI, HTTP_PLATFORM, PROTOCOL, PROXY, STATIC, WSGI
from ..handlers.static import FileBody
from ..pipeline import HttpContext, Response
from .base import Module, ModuleConfig, items

log = logging.getLogger("poolhouse.worker")

SCHEMES = ("gzip", "deflate", "br")


def _level(level: int, scheme: str) -> int:
    if scheme == "br":
        return max(0, min(11, level))
    return max(1, min(9, level))


def compress(data: bytes, scheme: str, level: int) -> bytes:
    if scheme == "br":
        import brotli
        return bytes(brotli.compress(data, quality=_level(level, scheme)))
    if scheme == "gzip":
        return gzip.compress(data, _level(level, scheme), mtime=0)
    return zlib.compress(data, _level(level, scheme))


def stream_compressor(scheme: str, level: int) -> Callable[[bytes, bool], bytes]:
    if scheme == "br":
        import brotli
        c = brotli.Compressor(quality=_level(level, scheme))

        def br(data: bytes, end: bool) -> bytes:
            out = c.process(data) if data else b""
            return bytes(out + (c.finish() if end else c.flush()))
        return br
    wbits = 31 if scheme == "gzip" else 15
    z = zlib.compressobj(_level(level, scheme), zlib.DEFLATED, wbits)

    def deflate(data: bytes, end: bool) -> bytes:
        out = z.compress(data) if data else b""
        return out + (z.flush() if end else z.flush(zlib.Z_SYNC_FLUSH))
    return deflate


def _types(section: dict[str, Any], element: str) -> list[tuple[str, str, bool]]:
    out = []
    for t in items(section, element):
        major, _, minor = str(t["mimeType"]).lower().partition("/")
        out.append((major, minor, bool(t["enabled"])))
    return out


def _type_enabled(types: list[tuple[str, str, bool]], content_type: bytes | None) -> bool:
    if not content_type:
        return False
    major, _, minor = content_type.split(b";", 1)[0].strip().lower().decode("latin-1").partition("/")
    for t_major, t_minor, enabled in types:
        if t_major in ("*", major) and t_minor in ("*", minor):
            return enabled
    return False


def choose(accept: str, schemes: list[tuple[str, int, int]]) -> tuple[str, int, int] | None:
    """The scheme the client accepts best among the configured ones (the negotiation the
    listener's response cache repeats to pick a stored variant: ``poolhouse.http.encodings``)."""
    name = choose_coding(accept, [s[0] for s in schemes])
    return next((s for s in schemes if s[0] == name), None) if name is not None else None


class _Compression(Module):
    dynamic = False
    send_gate = b"accept-encoding"

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        url = config.section("urlCompression")
        sec = config.section("httpCompression")
        self.on = bool(url.get("doDynamicCompression" if self.dynamic else "doStaticCompression", True))
        flag = "doDynamicCompression" if self.dynamic else "doStaticCompression"
        level = "dynamicCompressionLevel" if self.dynamic else "staticCompressionLevel"
        self.schemes = [(s["name"].lower(), int(s.get(level, 7)), i) for i, s in enumerate(sec.get("items", []))
                        if s["name"].lower() in SCHEMES and s.get(flag, True)]
        self.types = _types(sec, "dynamicTypes" if self.dynamic else "staticTypes")
        self.min_size = int(sec.get("minFileSizeForComp", 2700))
        self.no_http10 = bool(sec.get("noCompressionForHttp10", True))
        self.no_proxies = bool(sec.get("noCompressionForProxies", True))
        self.no_range = bool(sec.get("noCompressionForRange", True))

    def enabled(self) -> bool:
        return self.on and bool(self.schemes) and any(t[2] for t in self.types)

    def _scheme(self, ctx: HttpContext, resp: Response) -> tuple[str, int, int] | None:
        head = ctx.stream.head
        if head.method == "HEAD" or (self.no_http10 and not head.http_minor):
            return None
        headers = ctx.headers
        if self.no_proxies and "via" in headers:
            return None
        if self.no_range and "range" in headers:
            return None
        if resp.header(b"Content-Encoding") is not None:
            return None
        if not _type_enabled(self.types, resp.header(b"Content-Type")):
            return None
        return choose(headers.get("accept-encoding", ""), self.schemes)


def _vary(resp: Response) -> None:
    vary = resp.header(b"Vary")
    if vary is None:
        resp.add_header(b"Vary", b"Accept-Encoding")
    elif b"accept-encoding" not in vary.lower() and vary.strip() != b"*":
        resp.set_header(b"Vary", vary + b", Accept-Encoding")


class DynamicCompressionModule(_Compression):
    dynamic = True
    handler_kinds = frozenset((WSGI, ASGI, CGI, PROTOCOL, PROXY, HTTP_PLATFORM))  # every handler but StaticFile

    def send_response(self, ctx: HttpContext) -> Any:
        resp = cast(Response, ctx.response)  # never a static file's: handler_kinds
        if resp.status != 200:
            return None
        body = resp.body
        if not isinstance(body, bytes) or resp.end and len(body) < self.min_size:
            return None
        scheme = self._scheme(ctx, resp)
        if scheme is None:
            return None
        name, level, _ = scheme
        if resp.end:
            resp.body = compress(body, name, level)
        else:
            f = stream_compressor(name, level)
            resp.body = f(body, False)
            resp.body_filter = f
        resp.remove_header(b"Content-Length")
        resp.set_header(b"Content-Encoding", name.encode())
        _vary(resp)
        if ctx.trace is not None:
            ctx.trace_event("DYNAMIC_COMPRESSION_SUCCESS", scheme=name, streamed=not resp.end,
                            original=len(body), compressed=len(resp.body))  # type: ignore[arg-type]
        return None


class StaticCompressionModule(_Compression):
    handler_kinds = frozenset((STATIC,))
    MEMORY_LIMIT = 32 * 1024 * 1024
    MAX_SIZE = 64 * 1024 * 1024  # larger files are sent as they are (compressed in one piece on the loop)

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("httpCompression")
        runtime = config.section("serverRuntime")
        self.ignore_frequency = bool(sec.get("staticCompressionIgnoreHitFrequency", False))
        self.threshold = int(runtime.get("frequentHitThreshold", 2))
        self.period = float(runtime.get("frequentHitTimePeriod", 10.0))
        directory = str(sec.get("directory", "") or "")
        if not directory:
            base = os.path.join(config.state_dir, "temp") if config.state_dir else tempfile.gettempdir()
            directory = os.path.join(base, "IIS Temporary Compressed Files")
        pool = getattr(getattr(config.app, "app", None), "pool", "") or "pool"
        self.directory = os.path.join(directory, pool)
        self._hits: dict[str, list[float]] = {}
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_size = 0

    def _frequent(self, key: str) -> bool:
        if self.ignore_frequency or self.threshold <= 1:
            return True
        now = time.monotonic()
        hits = [t for t in self._hits.get(key, ()) if now - t < self.period]
        hits.append(now)
        if len(self._hits) > 10000:
            self._hits.clear()
        self._hits[key] = hits
        return len(hits) >= self.threshold

    def send_response(self, ctx: HttpContext) -> Any:
        resp = ctx.response
        if resp is None or resp.status != 200 or ctx.selection.kind != STATIC:
            return None
        body = resp.body
        size = body.length if isinstance(body, FileBody) else len(body)
        if size < self.min_size or size > self.MAX_SIZE or (isinstance(body, FileBody) and body.offset):
            return None
        scheme = self._scheme(ctx, resp)
        if scheme is None:
            return None
        etag = (resp.header(b"ETag") or b"").decode("latin-1")
        physical = body.path if isinstance(body, FileBody) else ctx.physical_path
        if not self._frequent(physical):
            return None
        name, level, _ = scheme
        key = hashlib.sha256(f"{physical}\0{etag}\0{name}\0{level}".encode()).hexdigest()
        data = self._memory.get(key)
        if data is None:
            data = self._cached_file(key, name)
            if data is None:
                try:
                    raw = body if isinstance(body, bytes) else _read(body)
                except OSError as exc:
                    log.error("static compression of %s failed: %s", physical, exc)
                    return None
                data = compress(raw, name, level)
                self._store(key, name, data)
            self._remember(key, data)
        resp.body = data
        resp.remove_header(b"Content-Length")
        resp.set_header(b"Content-Encoding", name.encode())
        if etag.endswith('"'):
            resp.set_header(b"ETag", (etag[:-1] + "-" + name + '"').encode("latin-1"))
        _vary(resp)
        if ctx.trace is not None:
            ctx.trace_event("STATIC_COMPRESSION_SUCCESS", scheme=name, original=size, compressed=len(data))
        return None

    def _path(self, key: str, scheme: str) -> str:
        return os.path.join(self.directory, f"{key}.{scheme}")

    def _cached_file(self, key: str, scheme: str) -> bytes | None:
        try:
            with open(self._path(key, scheme), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def _store(self, key: str, scheme: str, data: bytes) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            tmp = self._path(key, scheme) + f".{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path(key, scheme))
        except OSError as exc:
            log.warning("cannot cache compressed file in %s: %s", self.directory, exc)

    def _remember(self, key: str, data: bytes) -> None:
        self._memory[key] = data
        self._memory_size += len(data)
        while self._memory_size > self.MEMORY_LIMIT and self._memory:
            _, old = self._memory.popitem(last=False)
            self._memory_size -= len(old)


def _read(body: FileBody) -> bytes:
    with open(body.path, "rb") as fh:
        fh.seek(body.offset)
        return fh.read(body.length)
