"""IIS's ``StaticFile`` handler: StaticFileModule, DefaultDocumentModule and
DirectoryListingModule, as one pure core that answers with a :class:`StaticResponse`.

The worker's dispatcher maps the URL to a physical path and calls
:meth:`StaticFileHandler.serve`; this module never touches a socket and writes nothing.
It reads a file only when it is small enough to hold (and then keeps it in a bounded
LRU cache); anything larger comes back as a :class:`FileBody` slice for the caller to
send, so the listener may ``sendfile`` it.

What the caller can rely on:

* ``serve`` never raises for a request: every outcome is a status.  Errors (404, 404.3,
  403, 403.14, 405, 412, 416) carry only the headers that are part of their meaning
  (``Allow`` on 405, ``Content-Range`` on 416) and an empty body; the caller renders the
  error page and frames it.
* Every 200, 206 and 301 carries ``Content-Length`` (a HEAD gets the length a GET would
  have, and an empty body).  A 304 carries ``ETag`` and ``Last-Modified`` only: a
  ``Content-Length`` there must equal the full representation's and nothing needs it.
* ``url_path`` is the *decoded* URL path; ``Location`` and listing links are
  percent-encoded from it.  ``query_string`` is appended to a redirect as received
  (characters that may not appear in a URL are escaped).
* ``Range`` is honoured for GET only (RFC 9110 §14.2: range handling is defined for GET
  alone), so a HEAD with ``Range`` answers 200.  Several ranges give a real
  ``multipart/byteranges`` 206; overlapping or adjacent ranges are coalesced (then sent
  in ascending order, as RFC 9110 §14.3 allows), and a header asking for more than
  ``MAX_RANGES`` ranges is ignored.  A multipart response is assembled in memory, so
  when its parts of a large file total more than ``small_file_limit`` the full file is
  served with 200 instead (a server may always ignore ``Range``).
* ETags are strong, IIS-style ``"<hex mtime_ns>:<hex size>"``; they change whenever a
  file's modification time or size does.
* Cached bytes are valid for a ``(mtime_ns, size)`` pair.  A file (or a directory
  listing used to find default documents) modified within the last
  ``RACY_SECONDS`` is not cached, so a rewrite inside one timestamp tick that keeps the
  size cannot be served stale (git's "racy clean" rule).
"""

from __future__ import annotations

import html
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar
from urllib.parse import quote

from ...http import conditional
from ...http.dates import format_http_date
from ...http.ranges import MAX_RANGES, if_range_holds, parse_ranges

__all__ = ["FileBody", "StaticResponse", "StaticFileHandler", "MAX_RANGES", "RACY_SECONDS", "within_root"]

Headers = list[tuple[bytes, bytes]]
V = TypeVar("V")

RACY_SECONDS = 2
"""Content modified more recently than this is not cached (see the module docstring)."""

_RACY_NS = RACY_SECONDS * 1_000_000_000
_GET_HEAD = frozenset(("GET", "HEAD"))
_HTML_UTF8 = b"text/html; charset=utf-8"
_QUERY_SAFE = "!$%&'()*+,/:;=?@[]~"
_PATH_SAFE = "/!$&'()*+,;=:@~"

_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_LONG_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")

# directoryBrowse/@showFlags (IIS names; "None" is the empty set).
_SHOW_DATE, _SHOW_TIME, _SHOW_SIZE, _SHOW_EXTENSION, _SHOW_LONG_DATE = 2, 4, 8, 16, 32
_SHOW_FLAGS = {"none": 0, "date": _SHOW_DATE, "time": _SHOW_TIME, "size": _SHOW_SIZE,
               "extension": _SHOW_EXTENSION, "longdate": _SHOW_LONG_DATE}


@dataclass(slots=True)
class FileBody:
    """``length`` bytes of ``path`` from ``offset``, for the caller to send."""

    path: str
    offset: int
    length: int


@dataclass(slots=True)
class StaticResponse:
    """A response without framing: status, IIS sub-status, headers as sent, body."""

    status: int
    substatus: int
    headers: Headers
    body: bytes | FileBody


def _status(status: int, substatus: int = 0, headers: Headers | None = None) -> StaticResponse:
    return StaticResponse(status, substatus, headers if headers is not None else [], b"")


# ---------------------------------------------------------------------------- validators

@lru_cache(maxsize=4096)
def _validators(mtime_ns: int, size: int) -> tuple[bytes, str, bytes, int]:
    """(ETag bytes, ETag str, Last-Modified, Last-Modified as whole seconds)."""
    etag = f'"{mtime_ns:x}:{size:x}"'
    mtime_s = mtime_ns // 1_000_000_000
    return etag.encode("ascii"), etag, format_http_date(mtime_s), mtime_s


def _precondition(method: str, headers: dict[str, str], etag: str, mtime_s: int) -> int:
    """RFC 9110 §13.2.2, shared with the listener's response cache; 412, 304 or 0."""
    return conditional.evaluate(method, etag, mtime_s, headers.get("if-match"),
                                headers.get("if-unmodified-since"), headers.get("if-none-match"),
                                headers.get("if-modified-since"))


# ----------------------------------------------------------------------------------- cache

class _Lru(Generic[V]):
    """A thread-safe LRU of values that are valid for one (mtime_ns, size) stamp,
    bounded by entry count and total weight."""

    def __init__(self, max_entries: int, max_weight: int) -> None:
        self._entries: OrderedDict[str, tuple[tuple[int, int], V, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._weight = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, stamp: tuple[int, int]) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamp:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, stamp: tuple[int, int], value: V, weight: int) -> None:
        if weight > self._max_weight or self._max_entries <= 0:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._weight -= old[2]
            self._entries[key] = (stamp, value, weight)
            self._weight += weight
            while len(self._entries) > self._max_entries or self._weight > self._max_weight:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._weight -= dropped


def _is_racy(mtime_ns: int) -> bool:
    return time.time_ns() - mtime_ns < _RACY_NS


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = os.pread(fd, remaining, size - remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@lru_cache(maxsize=256)
def _real_root(root: str) -> str:
    return os.path.realpath(root).rstrip("/") + "/"


def within_root(path: str, root: str) -> bool:
    """Is ``path``, symbolic links resolved, ``root`` or below it (its real path)?

    On the request path: the components below ``root`` are ``lstat``'ed (usually one or
    two), and only when one is a link is the whole path resolved; ``root``'s own links
    are resolved once.  A component that does not exist ends the walk (nothing there to
    serve: the caller's stat answers 404)."""
    if path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/" or root.endswith("/")):
        current = root.rstrip("/")
        for part in path[len(root):].split("/"):
            if not part:
                continue
            current += "/" + part
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                return True
            if stat.S_ISLNK(mode):
                break
        else:
            return True
    real_root = _real_root(root)
    real = os.path.realpath(path)
    return real.startswith(real_root) or real + "/" == real_root


def _open_regular(path: str) -> int:
    """Open for reading without ever blocking on a FIFO swapped in since the stat."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    return fd


# --------------------------------------------------------------------------------- handler

class StaticFileHandler:
    """One application's static content settings (``staticContent/mimeMap``,
    ``defaultDocument``, ``directoryBrowse``), built once per configuration."""

    def __init__(self, mime_maps: dict[str, str], default_documents: list[str],
                 default_document_enabled: bool, directory_browse_enabled: bool = False,
                 directory_browse_show_flags: str = "Date, Time, Size, Extension",
                 small_file_limit: int = 256 * 1024, cache_entries: int = 1000,
                 cache_bytes: int = 32 * 1024 * 1024) -> None:
        """``mime_maps`` maps extensions (``".html"``; compound ``".dll.config"``; ``"."``
        for extensionless names; ``".*"`` for any other) to MIME types.  Raises
        ValueError on a MIME type that cannot be a header value."""
        self._mime: dict[str, bytes] = {}
        for extension, mime_type in mime_maps.items():
            key = extension.strip().lower()
            if not key.startswith("."):
                key = "." + key
            if any(c in mime_type for c in "\r\n\x00") or not mime_type.isascii():
                raise ValueError(f"MIME type for {extension!r} is not a valid header value: "
                                 f"{mime_type!r}")
            self._mime[key] = mime_type.strip().encode("ascii")
        self._compound = sorted((k for k in self._mime if k.count(".") > 1 and k != ".*"),
                                key=len, reverse=True)
        self._fallback = self._mime.get(".*")
        # Default documents are file names; a name that could leave the directory is ignored.
        self._default_documents = tuple(
            (name, name.lower()) for name in default_documents
            if name and "/" not in name and "\x00" not in name and name not in (".", ".."))
        self._default_document_enabled = default_document_enabled
        self._browse = directory_browse_enabled
        self._show = 0
        for flag in directory_browse_show_flags.split(","):
            self._show |= _SHOW_FLAGS.get(flag.strip().lower(), 0)
        self._small = small_file_limit
        self._files: _Lru[bytes] = _Lru(cache_entries, cache_bytes)
        self._directories: _Lru[tuple[frozenset[str], dict[str, str]]] = _Lru(256, 1 << 62)

    # -------------------------------------------------------------------------- entry

    def serve(self, method: str, url_path: str, physical_path: str, headers: dict[str, str],
              query_string: str = "", root: str | None = None) -> StaticResponse:
        """Answer one request for ``physical_path``; ``headers`` have lower-case names.
        ``root``: the physical folder of the virtual directory; a path whose real path
        (symbolic links resolved) leaves it is 404, as is a default document that does.
        None: symbolic links are followed wherever they lead."""
        if "\x00" in physical_path or (".." in physical_path
                                       and ".." in physical_path.split("/")):
            return _status(404)
        if root is not None and not within_root(physical_path, root):
            return _status(404)
        try:
            st = os.stat(physical_path)
        except (OSError, ValueError):
            return _status(404)
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return _status(404)                   # never open a FIFO, socket or device
        if method not in _GET_HEAD:
            return _status(405, 0, [(b"Allow", b"GET, HEAD")])
        if stat.S_ISREG(mode):
            return self._serve_file(method, physical_path, st.st_mtime_ns, st.st_size, headers)
        if not url_path.endswith("/"):
            return self._redirect_to_directory(url_path, query_string)
        if self._default_document_enabled:
            found = self._find_default_document(physical_path, st)
            if found is not None and (root is None or within_root(found[0], root)):
                path, doc = found
                return self._serve_file(method, path, doc.st_mtime_ns, doc.st_size, headers)
        if self._browse:
            return self._listing(method, url_path, physical_path, headers, root)
        return _status(403, 14)

    def find_default_document(self, directory: str) -> str | None:
        """The physical path of the default document ``serve`` would use for
        ``directory``, or None; for a dispatcher that re-maps it to another handler."""
        try:
            st = os.stat(directory)
        except (OSError, ValueError):
            return None
        found = self._find_default_document(directory, st)
        return found[0] if found is not None else None

    # -------------------------------------------------------------------------- files

    def _content_type(self, path: str) -> bytes | None:
        name = path[path.rfind("/") + 1:].lower()
        for extension in self._compound:
            if name.endswith(extension):
                return self._mime[extension]
        dot = name.rfind(".")
        found = self._mime.get(name[dot:] if dot >= 0 else ".")
        return found if found is not None else self._fallback

    def _serve_file(self, method: str, path: str, mtime_ns: int, size: int,
                    headers: dict[str, str], data: bytes | None = None) -> StaticResponse:
        content_type = self._content_type(path)
        if content_type is None:
            return _status(404, 3)
        etag, etag_text, last_modified, mtime_s = _validators(mtime_ns, size)
        verdict = _precondition(method, headers, etag_text, mtime_s) if headers else 0
        if verdict == 412:
            return _status(412)
        if verdict == 304:
            return _status(304, 0, [(b"Last-Modified", last_modified), (b"ETag", etag)])

        ranges = None
        if method == "GET":
            range_header = headers.get("range")
            if range_header is not None:
                if_range = headers.get("if-range")
                if if_range is None or if_range_holds(if_range, etag_text, mtime_s):
                    ranges = parse_ranges(range_header, size, MAX_RANGES)
            if data is None and size <= self._small:
                try:
                    data, new_mtime_ns, new_size = self._load(path, mtime_ns, size)
                except PermissionError:
                    return _status(403)
                except OSError:
                    return _status(404)
                if (new_mtime_ns, new_size) != (mtime_ns, size):   # changed since the stat
                    return self._serve_file(method, path, new_mtime_ns, new_size, headers, data)

        response_headers: Headers = [(b"Content-Type", content_type),
                                     (b"Last-Modified", last_modified),
                                     (b"Accept-Ranges", b"bytes"), (b"ETag", etag)]
        if ranges is None:
            body: bytes | FileBody = (b"" if method == "HEAD" else
                                      data if data is not None else FileBody(path, 0, size))
            response_headers.append((b"Content-Length", b"%d" % size))
            return StaticResponse(200, 0, response_headers, body)
        if not ranges:
            return _status(416, 0, [(b"Content-Range", b"bytes */%d" % size)])
        if len(ranges) == 1:
            first, last = ranges[0]
            length = last - first + 1
            body = data[first:last + 1] if data is not None else FileBody(path, first, length)
            response_headers.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)))
            response_headers.append((b"Content-Length", b"%d" % length))
            return StaticResponse(206, 0, response_headers, body)
        try:
            multipart = self._multipart(path, data, ranges, size, content_type)
        except PermissionError:
            return _status(403)
        except OSError:
            return _status(404)
        if multipart is None:                     # too large to assemble: full file
            response_headers.append((b"Content-Length", b"%d" % size))
            return StaticResponse(200, 0, response_headers, FileBody(path, 0, size))
        boundary, payload = multipart
        response_headers[0] = (b"Content-Type", b"multipart/byteranges; boundary=" + boundary)
        response_headers.append((b"Content-Length", b"%d" % len(payload)))
        return StaticResponse(206, 0, response_headers, payload)

    def _load(self, path: str, mtime_ns: int, size: int) -> tuple[bytes | None, int, int]:
        """The file's bytes and the (mtime_ns, size) they belong to; bytes are None when
        the file has grown past the small-file limit since it was stat'ed."""
        cached = self._files.get(path, (mtime_ns, size))
        if cached is not None:
            return cached, mtime_ns, size
        fd = _open_regular(path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(path)
            if st.st_size > self._small:
                return None, st.st_mtime_ns, st.st_size
            data = _read_exactly(fd, st.st_size)
        finally:
            os.close(fd)
        if len(data) == st.st_size and not _is_racy(st.st_mtime_ns):
            self._files.put(path, (st.st_mtime_ns, st.st_size), data, len(data))
        return data, st.st_mtime_ns, len(data)

    def _multipart(self, path: str, data: bytes | None, ranges: list[tuple[int, int]],
                   size: int, content_type: bytes) -> tuple[bytes, bytes] | None:
        """``multipart/byteranges`` (RFC 9110 §14.6): (boundary, payload), or None when
        the parts of a large file are too big to hold in memory."""
        if data is None and sum(last - first + 1 for first, last in ranges) > self._small:
            return None
        boundary = secrets.token_hex(16).encode("ascii")
        parts: list[bytes] = []
        fd = _open_regular(path) if data is None else -1
        try:
            for first, last in ranges:
                parts.append(b"--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
                             % (boundary, content_type, first, last, size))
                parts.append(data[first:last + 1] if data is not None
                             else os.pread(fd, last - first + 1, first))
                parts.append(b"\r\n")
        finally:
            if fd >= 0:
                os.close(fd)
        parts.append(b"--%s--\r\n" % boundary)
        return boundary, b"".join(parts)

    # -------------------------------------------------------------------- directories

    @staticmethod
    def _redirect_to_directory(url_path: str, query_string: str) -> StaticResponse:
        location = quote(url_path, safe=_PATH_SAFE, errors="surrogateescape") + "/"
        if query_string:
            location += "?" + quote(query_string, safe=_QUERY_SAFE, errors="surrogateescape")
        return _status(301, 0, [(b"Location", location.encode("ascii")),
                                (b"Content-Length", b"0")])

    def _directory_names(self, directory: str,
                         st: os.stat_result) -> tuple[frozenset[str], dict[str, str]]:
        """The directory's names, and lower-cased name -> first name with that spelling."""
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._directories.get(directory, stamp)
        if cached is not None:
            return cached
        names = sorted(os.listdir(directory))
        folded: dict[str, str] = {}
        for name in names:
            folded.setdefault(name.lower(), name)
        result = (frozenset(names), folded)
        if not _is_racy(st.st_mtime_ns):
            self._directories.put(directory, stamp, result, 1)
        return result

    def _find_default_document(self, directory: str,
                               st: os.stat_result) -> tuple[str, os.stat_result] | None:
        """First default document that is a regular file: the exact name if present,
        else a case-insensitive match (IIS on Windows is case-insensitive)."""
        if not self._default_documents:
            return None
        try:
            names, folded = self._directory_names(directory, st)
        except OSError:
            return None
        prefix = directory if directory.endswith("/") else directory + "/"
        for name, lower in self._default_documents:
            actual = name if name in names else folded.get(lower)
            if actual is None:
                continue
            try:
                doc = os.stat(prefix + actual)
            except OSError:
                continue
            if stat.S_ISREG(doc.st_mode):
                return prefix + actual, doc
        return None

    def _listing(self, method: str, url_path: str, directory: str,
                 headers: dict[str, str], root: str | None = None) -> StaticResponse:
        """An IIS-style listing: ``<pre>`` lines of date, time, size and a link."""
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: (entry.name.lower(), entry.name))
        except PermissionError:
            return _status(403)
        except OSError:
            return _status(404)
        host = headers.get("host", "")
        title = html.escape(f"{host} - {url_path}" if host else url_path)
        out = [f"<html><head><title>{title}</title></head><body><H1>{title}</H1><hr>\r\n\r\n<pre>"]
        if url_path != "/":
            parent = url_path[:url_path.rstrip("/").rfind("/") + 1] or "/"
            out.append(f'<A HREF="{_href(parent)}">[To Parent Directory]</A><br><br>')
        show = self._show
        for entry in entries:
            if root is not None and entry.is_symlink() and not within_root(entry.path, root):
                continue                              # a link out of the root: not shown
            try:
                st = entry.stat()
                local = time.localtime(st.st_mtime)
            except (OSError, OverflowError, ValueError):
                continue                              # e.g. a dangling symlink
            is_dir = stat.S_ISDIR(st.st_mode)
            name = entry.name
            columns: list[str] = []
            if show & _SHOW_LONG_DATE:
                columns.append(f"{_LONG_DAYS[local.tm_wday]}, {_LONG_MONTHS[local.tm_mon - 1]} "
                               f"{local.tm_mday}, {local.tm_year}")
            elif show & _SHOW_DATE:
                columns.append(f"{local.tm_mon}/{local.tm_mday}/{local.tm_year}".rjust(10))
            if show & _SHOW_TIME:
                hour = local.tm_hour % 12 or 12
                noon = "AM" if local.tm_hour < 12 else "PM"
                columns.append(f"{hour}:{local.tm_min:02d} {noon}".rjust(8))
            if show & _SHOW_SIZE:
                columns.append(html.escape(("<dir>" if is_dir else str(st.st_size)).rjust(12)))
            shown = name
            if not is_dir and not show & _SHOW_EXTENSION and name.rfind(".") > 0:
                shown = name[:name.rfind(".")]
            href = _href(url_path + name + ("/" if is_dir else ""))
            lead = " ".join(columns) + " " if columns else ""
            out.append(f'{lead}<A HREF="{href}">{html.escape(_displayable(shown))}</A><br>')
        out.append("</pre><hr></body></html>")
        payload = "".join(out).encode("utf-8", "replace")
        response_headers: Headers = [(b"Content-Type", _HTML_UTF8),
                                     (b"Content-Length", b"%d" % len(payload))]
        return StaticResponse(200, 0, response_headers, b"" if method == "HEAD" else payload)


def _href(path: str) -> str:
    return html.escape(quote(path, safe="/", errors="surrogateescape"))


def _displayable(name: str) -> str:
    """A file name that may hold undecodable bytes, made printable."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
