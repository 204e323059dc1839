"""StaticFileHandler: files, validators, ranges, default documents and listings, fed
real files under tmp_path and no sockets."""

from __future__ import annotations

import email
import email.policy
import os
import time
from email.message import Message
from pathlib import Path

import pytest

from poolhouse.worker.handlers import static
from poolhouse.worker.handlers.static import FileBody, StaticFileHandler, StaticResponse

MIME = {".html": "text/html", ".htm": "text/html", ".TXT": "text/plain", "css": "text/css",
        ".bin": "application/octet-stream", ".dll.config": "text/xml"}
DOCS = ["Default.htm", "Default.asp", "index.htm", "index.html", "iisstart.htm"]
OLD = 1_600_000_000  # an mtime well outside the "racy" window
TEXT = b"0123456789abcdefghijklmnopqrstuvwxyz"  # 36 bytes


def handler(**kwargs: object) -> StaticFileHandler:
    options: dict[str, object] = {"mime_maps": MIME, "default_documents": DOCS,
                                  "default_document_enabled": True}
    options.update(kwargs)
    return StaticFileHandler(**options)  # type: ignore[arg-type]


def write(path: Path, data: bytes, mtime: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def header(response: StaticResponse, name: bytes) -> bytes | None:
    values = [v for k, v in response.headers if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name!r} repeated"
    return values[0] if values else None


def get(h: StaticFileHandler, path: Path, url: str = "/f", method: str = "GET",
        query: str = "", **headers: str) -> StaticResponse:
    return h.serve(method, url, str(path),
                   {k.replace("_", "-"): v for k, v in headers.items()}, query)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write(tmp_path / "a.txt", TEXT)


# ------------------------------------------------------------------------------ files

def test_content_types_by_lower_case_extension(tmp_path: Path) -> None:
    h = handler()
    cases = {"page.HTML": b"text/html", "notes.txt": b"text/plain", "site.css": b"text/css",
             "app.dll.config": b"text/xml", "plain.config": None}
    for name, expected in cases.items():
        r = get(h, write(tmp_path / name, b"x"))
        if expected is None:
            assert (r.status, r.substatus) == (404, 3)
        else:
            assert (r.status, r.substatus, r.body) == (200, 0, b"x")
            assert header(r, b"Content-Type") == expected
            assert header(r, b"Content-Length") == b"1"
            assert header(r, b"Accept-Ranges") == b"bytes"


def test_unmapped_extension_is_404_3_and_wildcard_map_serves(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xyz", b"x")
    assert (get(handler(), path).status, get(handler(), path).substatus) == (404, 3)
    extensionless = write(tmp_path / "README", b"x")
    assert get(handler(), extensionless).substatus == 3
    wide = handler(mime_maps={".*": "application/octet-stream", ".": "text/plain"})
    assert header(get(wide, path), b"Content-Type") == b"application/octet-stream"
    assert header(get(wide, extensionless), b"Content-Type") == b"text/plain"


def test_bad_mime_type_is_rejected_at_configuration_time() -> None:
    with pytest.raises(ValueError):
        StaticFileHandler({".x": "text/plain\r\nSet-Cookie: a=b"}, [], False)


def test_validators(text_file: Path) -> None:
    r = get(handler(), text_file)
    st = text_file.stat()
    assert header(r, b"ETag") == f'"{st.st_mtime_ns:x}:{st.st_size:x}"'.encode()
    assert header(r, b"Last-Modified") == b"Sun, 13 Sep 2020 12:26:40 GMT"


def test_not_found_nul_dotdot_and_special_files(tmp_path: Path) -> None:
    h = handler()
    assert (get(h, tmp_path / "missing.txt").status, get(h, tmp_path / "missing.txt").substatus) \
        == (404, 0)
    write(tmp_path / "a.txt", TEXT)
    assert get(h, Path(str(tmp_path / "a.txt") + "\x00.html")).status == 404
    assert h.serve("GET", "/a.txt", f"{tmp_path}/sub/../a.txt", {}).status == 404
    os.mkfifo(tmp_path / "pipe.txt")
    assert get(h, tmp_path / "pipe.txt").status == 404
    # ".." inside a name is not traversal
    assert get(h, write(tmp_path / "a..b.txt", b"x")).status == 200


def test_other_verbs_are_405(text_file: Path) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "get"):
        r = get(handler(), text_file, method=method)
        assert (r.status, r.substatus, r.body) == (405, 0, b"")
        assert header(r, b"Allow") == b"GET, HEAD"


def test_head_has_get_headers_and_no_body(text_file: Path) -> None:
    h = handler()
    g, hd = get(h, text_file), get(h, text_file, method="HEAD")
    assert hd.status == 200 and hd.body == b""
    assert hd.headers == g.headers
    assert header(hd, b"Content-Length") == b"36"
    # Range is defined for GET only
    assert get(h, text_file, method="HEAD", range="bytes=0-1").status == 200


# -------------------------------------------------------------------------- validators

def test_if_none_match_gives_304(text_file: Path) -> None:
    h = handler()
    etag = header(get(h, text_file), b"ETag")
    assert etag is not None
    tag = etag.decode()
    for value in (tag, f'"other", {tag}', f"W/{tag}", "*", f' "x",W/{tag} '):
        r = get(h, text_file, if_none_match=value)
        assert (r.status, r.body) == (304, b""), value
        assert header(r, b"ETag") == etag and header(r, b"Last-Modified") is not None
        assert header(r, b"Content-Length") is None
    assert get(h, text_file, if_none_match='"nope"').status == 200
    # If-None-Match present: If-Modified-Since is not consulted
    r = get(h, text_file, if_none_match='"nope"', if_modified_since="Sun, 13 Sep 2020 12:26:40 GMT")
    assert r.status == 200


def test_if_modified_since_gives_304(text_file: Path) -> None:
    h = handler()
    for value in ("Sun, 13 Sep 2020 12:26:40 GMT", "Sunday, 13-Sep-20 12:26:40 GMT",
                  "Sun Sep 13 12:26:40 2020", "Mon, 14 Sep 2020 00:00:00 GMT"):
        assert get(h, text_file, if_modified_since=value).status == 304, value
    for value in ("Sun, 13 Sep 2020 12:26:39 GMT", "garbage", "Sun, 32 Sep 2020 12:26:40 GMT"):
        assert get(h, text_file, if_modified_since=value).status == 200, value


def test_sub_second_mtime_is_not_modified_since_its_own_date(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(TEXT)
    os.utime(path, ns=(OLD * 10**9 + 500_000_000,) * 2)
    h = handler()
    last_modified = header(get(h, path), b"Last-Modified")
    assert last_modified is not None
    assert get(h, path, if_modified_since=last_modified.decode()).status == 304


def test_failed_preconditions_are_412(text_file: Path) -> None:
    h = handler()
    etag = header(get(h, text_file), b"ETag")
    assert etag is not None
    assert get(h, text_file, if_match='"nope"').status == 412
    assert get(h, text_file, if_match=f"W/{etag.decode()}").status == 412  # strong comparison
    assert get(h, text_file, if_match=etag.decode()).status == 200
    assert get(h, text_file, if_match="*").status == 200
    assert get(h, text_file, if_unmodified_since="Sat, 12 Sep 2020 00:00:00 GMT").status == 412
    assert get(h, text_file, if_unmodified_since="Sun, 13 Sep 2020 12:26:40 GMT").status == 200
    r = get(h, text_file, if_match='"nope"')
    assert (r.substatus, r.body, r.headers) == (0, b"", [])


# ------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize(("spec", "first", "last"), [
    ("bytes=0-9", 0, 9), ("bytes=-10", 26, 35), ("bytes=5-", 5, 35), ("bytes=30-100", 30, 35),
    ("bytes=-100", 0, 35), ("BYTES = 3-3", 3, 3), ("bytes=1-2,", 1, 2), ("bytes=0-1,1-4", 0, 4),
])
def test_single_range_is_206(text_file: Path, spec: str, first: int, last: int) -> None:
    r = get(handler(), text_file, range=spec)
    assert r.status == 206
    assert r.body == TEXT[first:last + 1]
    assert header(r, b"Content-Range") == f"bytes {first}-{last}/36".encode()
    assert header(r, b"Content-Length") == str(last - first + 1).encode()
    assert header(r, b"Content-Type") == b"text/plain"


@pytest.mark.parametrize("spec", ["bytes=36-", "bytes=100-200", "bytes=-0", "bytes=40-50,-0"])
def test_unsatisfiable_range_is_416(text_file: Path, spec: str) -> None:
    r = get(handler(), text_file, range=spec)
    assert (r.status, r.body) == (416, b"")
    assert header(r, b"Content-Range") == b"bytes */36"


@pytest.mark.parametrize("spec", ["items=0-1", "bytes=5-1", "bytes=a-b", "bytes=", "bytes=1",
                                  "bytes=" + ",".join(["0-0"] * (static.MAX_RANGES + 1))])
def test_invalid_range_is_ignored(text_file: Path, spec: str) -> None:
    r = get(handler(), text_file, range=spec)
    assert (r.status, r.body) == (200, TEXT)


def parse_multipart(response: StaticResponse) -> list[Message]:
    content_type = header(response, b"Content-Type")
    assert content_type is not None and content_type.startswith(b"multipart/byteranges; boundary=")
    assert isinstance(response.body, bytes)
    assert header(response, b"Content-Length") == str(len(response.body)).encode()
    raw = b"Content-Type: " + content_type + b"\r\n\r\n" + response.body
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    assert message.is_multipart() and not message.defects
    return list(message.iter_parts())


def test_multiple_ranges_are_multipart(text_file: Path) -> None:
    r = get(handler(), text_file, range="bytes=20-22, 0-1,-2")
    assert r.status == 206 and header(r, b"Content-Range") is None
    parts = parse_multipart(r)
    assert [p["Content-Range"] for p in parts] == ["bytes 20-22/36", "bytes 0-1/36",
                                                   "bytes 34-35/36"]  # client's order kept
    assert [p.get_payload(decode=True) for p in parts] == [b"klm", b"01", b"yz"]
    assert all(p["Content-Type"] == "text/plain" for p in parts)


def test_overlapping_ranges_are_coalesced(text_file: Path) -> None:
    parts = parse_multipart(get(handler(), text_file, range="bytes=20-25,0-3,2-5,22-23"))
    assert [p["Content-Range"] for p in parts] == ["bytes 0-5/36", "bytes 20-25/36"]
    single = get(handler(), text_file, range="bytes=0-0,0-,0-")
    assert single.status == 206 and header(single, b"Content-Range") == b"bytes 0-35/36"


def test_if_range(text_file: Path) -> None:
    h = handler()
    full = get(h, text_file)
    etag, date = header(full, b"ETag"), header(full, b"Last-Modified")
    assert etag is not None and date is not None
    assert get(h, text_file, range="bytes=0-1", if_range=etag.decode()).status == 206
    assert get(h, text_file, range="bytes=0-1", if_range=date.decode()).status == 206
    for stale in ('"other"', f"W/{etag.decode()}", "Mon, 14 Sep 2020 00:00:00 GMT", "junk"):
        r = get(h, text_file, range="bytes=0-1", if_range=stale)
        assert (r.status, r.body) == (200, TEXT), stale


# ----------------------------------------------------------------------- large files, cache

def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every path the handler opens to read."""
    opened: list[str] = []
    real_open = static._open_regular

    def spy(path: str) -> int:
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(static, "_open_regular", spy)
    return opened


def test_large_files_are_file_bodies(tmp_path: Path) -> None:
    h = handler(small_file_limit=16)
    path = write(tmp_path / "big.bin", bytes(range(100)))
    r = get(h, path)
    assert r.status == 200 and r.body == FileBody(str(path), 0, 100)
    assert header(r, b"Content-Length") == b"100"
    r = get(h, path, range="bytes=10-19")
    assert r.status == 206 and r.body == FileBody(str(path), 10, 10)
    assert get(h, path, method="HEAD").body == b""
    # multipart parts of a large file are read while they are small...
    parts = parse_multipart(get(h, path, range="bytes=0-1,50-51"))
    assert [p.get_payload(decode=True) for p in parts] == [b"\x00\x01", b"\x32\x33"]
    # ...and past the limit the whole file is served instead
    r = get(h, path, range="bytes=0-9,50-59")
    assert r.status == 200 and r.body == FileBody(str(path), 0, 100)


def test_small_files_are_cached_until_they_change(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    h = handler()
    path = write(tmp_path / "a.txt", b"first")
    opened = count_opens(monkeypatch)
    assert get(h, path).body == b"first"
    assert get(h, path).body == b"first"
    assert len(opened) == 1
    write(path, b"second, longer", mtime=OLD)          # same mtime, new size
    assert get(h, path).body == b"second, longer"
    write(path, b"third, longer!", mtime=OLD + 60)     # same size, new mtime
    r = get(h, path)
    assert r.body == b"third, longer!"
    assert header(r, b"Last-Modified") == b"Sun, 13 Sep 2020 12:27:40 GMT"
    assert len(opened) == 3


def test_recently_modified_files_are_not_cached(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    h = handler()
    path = write(tmp_path / "a.txt", b"fresh", mtime=int(time.time()))
    opened = count_opens(monkeypatch)
    get(h, path)
    get(h, path)
    assert len(opened) == 2


def test_cache_is_bounded(tmp_path: Path) -> None:
    h = handler(cache_entries=3, cache_bytes=10)
    for i in range(5):
        get(h, write(tmp_path / f"{i}.txt", b"abcd"))
    assert len(h._files) == 2  # 10 bytes hold two 4-byte files
    h = handler(cache_entries=3)
    for i in range(5):
        get(h, write(tmp_path / f"{i}.txt", b"abcd"))
    assert len(h._files) == 3


# ------------------------------------------------------------------------- directories

def test_directory_without_slash_redirects(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    r = get(handler(), tmp_path / "docs", url="/app/docs")
    assert (r.status, r.body) == (301, b"")
    assert header(r, b"Location") == b"/app/docs/"
    assert header(r, b"Content-Length") == b"0"
    r = get(handler(), tmp_path / "docs", url="/app/my docs", query="a=1&b=x y")
    assert header(r, b"Location") == b"/app/my%20docs/?a=1&b=x%20y"


def test_default_documents_in_order(tmp_path: Path) -> None:
    h = handler()
    write(tmp_path / "index.html", b"<p>index.html</p>")
    r = get(h, tmp_path, url="/")
    assert (r.status, r.body) == (200, b"<p>index.html</p>")
    assert header(r, b"Content-Type") == b"text/html"
    write(tmp_path / "index.htm", b"<p>index.htm</p>")
    assert get(h, tmp_path, url="/").body == b"<p>index.htm</p>"
    (tmp_path / "Default.htm").mkdir()                 # a directory is not a document
    assert get(h, tmp_path, url="/").body == b"<p>index.htm</p>"
    assert h.find_default_document(str(tmp_path)) == str(tmp_path / "index.htm")
    assert get(h, tmp_path, url="/", method="HEAD").body == b""


def test_default_document_case_insensitive_and_exact_first(tmp_path: Path) -> None:
    h = handler(default_documents=["Index.HTML", "default.htm"])
    write(tmp_path / "INDEX.html", b"upper")
    assert get(h, tmp_path, url="/").body == b"upper"
    write(tmp_path / "Index.HTML", b"exact", mtime=OLD + 1)
    os.utime(tmp_path, (OLD + 2, OLD + 2))            # keep the directory out of the racy window
    assert get(h, tmp_path, url="/").body == b"exact"


def test_default_document_seen_after_directory_changes(tmp_path: Path) -> None:
    h = handler(directory_browse_enabled=False)
    os.utime(tmp_path, (OLD, OLD))
    assert get(h, tmp_path, url="/").status == 403
    write(tmp_path / "index.htm", b"new")              # bumps the directory's mtime
    assert get(h, tmp_path, url="/").body == b"new"


def test_default_document_with_unmapped_extension_is_404_3(tmp_path: Path) -> None:
    write(tmp_path / "default.asp", b"<% %>")
    r = get(handler(), tmp_path, url="/")
    assert (r.status, r.substatus) == (404, 3)


def test_no_default_document_and_no_browsing_is_403_14(tmp_path: Path) -> None:
    write(tmp_path / "other.txt", b"x")
    r = get(handler(), tmp_path, url="/")
    assert (r.status, r.substatus, r.body) == (403, 14, b"")
    write(tmp_path / "index.html", b"x")
    r = get(handler(default_document_enabled=False), tmp_path, url="/")
    assert (r.status, r.substatus) == (403, 14)


def test_directory_listing(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write(root / "sub" / "a&b <c>.txt", b"12345")
    (root / "sub" / "child dir").mkdir()
    write(root / "sub" / "100%.html", b"x")
    h = handler(directory_browse_enabled=True, default_document_enabled=False)
    r = get(h, root / "sub", url="/app/sub/", host="example.test")
    assert r.status == 200
    assert header(r, b"Content-Type") == b"text/html; charset=utf-8"
    assert isinstance(r.body, bytes)
    assert header(r, b"Content-Length") == str(len(r.body)).encode()
    page = r.body.decode()
    assert "<title>example.test - /app/sub/</title>" in page
    assert '<A HREF="/app/">[To Parent Directory]</A>' in page
    assert '<A HREF="/app/sub/a%26b%20%3Cc%3E.txt">a&amp;b &lt;c&gt;.txt</A>' in page
    assert '<A HREF="/app/sub/100%25.html">100%.html</A>' in page
    assert '&lt;dir&gt; <A HREF="/app/sub/child%20dir/">child dir</A>' in page
    assert "<c>" not in page
    line = next(line for line in page.split("<br>") if "a&amp;b" in line)
    assert "           5 <A" in line and ("AM" in line or "PM" in line)
    head = get(h, root / "sub", url="/app/sub/", method="HEAD", host="example.test")
    assert head.body == b"" and header(head, b"Content-Length") == header(r, b"Content-Length")


def test_directory_listing_root_and_show_flags(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", b"x")
    h = handler(directory_browse_enabled=True, default_document_enabled=False,
                directory_browse_show_flags="LongDate, Size")
    r = get(h, tmp_path, url="/")
    assert isinstance(r.body, bytes)
    page = r.body.decode()
    assert "[To Parent Directory]" not in page
    assert '<A HREF="/notes.txt">notes</A>' in page           # no Extension flag
    assert "day, " in page and ":" not in page.split("<pre>")[1].split("<A")[0]
    h = handler(directory_browse_enabled=True, directory_browse_show_flags="None")
    assert isinstance(body := get(h, tmp_path, url="/").body, bytes)
    assert '<pre><A HREF="/notes.txt">notes.txt</A>' not in body.decode()  # Extension off
    assert '<pre><A HREF="/notes.txt">notes</A><br>' in body.decode()


def test_default_document_wins_over_listing(tmp_path: Path) -> None:
    write(tmp_path / "index.html", b"doc")
    h = handler(directory_browse_enabled=True)
    assert get(h, tmp_path, url="/").body == b"doc"


def test_samples_exist() -> None:
    samples = Path(static.__file__).resolve().parents[2] / "samples"
    assert (samples / "wwwroot" / "1k.txt").stat().st_size == 1024
    page = handler().serve("GET", "/", str(samples / "wwwroot"), {})
    assert page.status == 200 and isinstance(page.body, bytes) and b"Poolhouse" in page.body


def test_hostile_headers_never_raise(text_file: Path) -> None:
    h = handler()
    huge = "9" * 5000
    for name, value in [("if-modified-since", f"Sun, 13 Sep {huge} 12:26:40 GMT"),
                        ("if-unmodified-since", f"Sun Sep 13 12:26:40 {huge}"),
                        ("range", f"bytes={huge}-"), ("range", f"bytes=-{huge}"),
                        ("if-none-match", '"' * 1000), ("if-match", "W/"),
                        ("if-range", "\x00")]:
        r = get(h, text_file, **{name.replace("-", "_"): value})
        assert r.status in (200, 412), (name, r.status)


def test_file_changed_between_stat_and_read_gets_fresh_validators(tmp_path: Path) -> None:
    h = handler(small_file_limit=8)
    path = write(tmp_path / "a.txt", b"now")
    st = path.stat()
    # as if serve() had stat'ed an older, shorter version a moment before
    r = h._serve_file("GET", str(path), st.st_mtime_ns - 10**9, 1, {})
    assert r.body == b"now" and header(r, b"Content-Length") == b"3"
    assert header(r, b"ETag") == f'"{st.st_mtime_ns:x}:3"'.encode()
    write(path, b"grown past the limit")
    r = handler(small_file_limit=8)._serve_file("GET", str(path), st.st_mtime_ns, 3, {})
    assert r.body == FileBody(str(path), 0, 20)
