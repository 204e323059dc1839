"""The W3C extended access log, one per site, as IIS writes it
(``logs/W3SVC<siteId>/u_exYYMMDD.log``; ref. iis.md §4.6.2).

The event loop only appends ``(time, exchange)`` to a list; once a second the listener
hands the list to a writer thread, which formats the lines and writes them, so neither
formatting nor disk I/O ever blocks a request.  Fields follow ``logExtFileFlags`` in
IIS's fixed order; times are UTC; files roll over per ``period`` (Daily, Hourly, Weekly,
Monthly, or MaxSize at ``truncateSize``), on UTC boundaries unless ``localTimeRollover``.
Requests the listener refuses itself are not here: they are in the HTTPERR log.

Custom fields (``logFile/customFields``, IIS 8.5+) follow the standard ones, named by
their ``logFieldName`` in the ``#Fields`` line, in files named ``u_ex…_x.log``: request
headers are read here; response headers and server variables are computed by the worker
(its HttpLoggingModule) and arrive with the response head.  Each value is cut at
``maxCustomFieldLength`` bytes.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.model import CustomLogField, LogFile, Site

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("poolhouse.listener")

SOFTWARE = "Poolhouse (Microsoft Internet Information Services 10.0 W3C format)"

# (logExtFileFlags name, W3C field) in the order IIS writes them, whatever the flag order
FIELD_ORDER: tuple[tuple[str, str], ...] = (
    ("Date", "date"), ("Time", "time"), ("SiteName", "s-sitename"),
    ("ComputerName", "s-computername"), ("ServerIP", "s-ip"), ("Method", "cs-method"),
    ("UriStem", "cs-uri-stem"), ("UriQuery", "cs-uri-query"), ("ServerPort", "s-port"),
    ("UserName", "cs-username"), ("ClientIP", "c-ip"), ("ProtocolVersion", "cs-version"),
    ("UserAgent", "cs(User-Agent)"), ("Cookie", "cs(Cookie)"), ("Referer", "cs(Referer)"),
    ("Host", "cs-host"), ("HttpStatus", "sc-status"), ("HttpSubStatus", "sc-substatus"),
    ("Win32Status", "sc-win32-status"), ("BytesSent", "sc-bytes"), ("BytesRecv", "cs-bytes"),
    ("TimeTaken", "time-taken"),
)
_FLAG_FIELD = {flag.lower(): name for flag, name in FIELD_ORDER}
_REQUEST_HEADERS = {"cs(User-Agent)": b"user-agent", "cs(Cookie)": b"cookie",
                    "cs(Referer)": b"referer", "cs-host": b"host"}
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
PERIODS = ("MaxSize", "Daily", "Weekly", "Monthly", "Hourly")
MIN_TRUNCATE_SIZE = 1048576


def fields_for(flags: str) -> list[str]:
    """The W3C fields a ``logExtFileFlags`` value selects, in IIS's order."""
    wanted = {f.strip().lower() for f in flags.split(",") if f.strip()}
    return [name for flag, name in FIELD_ORDER if flag.lower() in wanted]


def _esc(value: str) -> str:
    if not value:
        return "-"
    if " " in value or not value.isprintable():
        return _UNSAFE.sub("+", value)
    return value


def file_name(period: str, when: float, local: bool, index: int = 1, custom: bool = False) -> str:
    """``u_ex`` + the period's stamp: YYMMDD (daily), YYMMDDHH (hourly), YYMMWW (weekly,
    week of the month, weeks starting on Sunday), YYMM (monthly), or ``u_extend<N>`` for
    MaxSize; ``_x`` before ``.log`` when the log has custom fields (as IIS names them)."""
    ext = "_x.log" if custom else ".log"
    if period == "MaxSize":
        return f"u_extend{index}{ext}"
    t = time.localtime(when) if local else time.gmtime(when)
    if period == "Hourly":
        return time.strftime("u_ex%y%m%d%H", t) + ext
    if period == "Monthly":
        return time.strftime("u_ex%y%m", t) + ext
    if period == "Weekly":
        first_weekday = (t.tm_wday - (t.tm_mday - 1)) % 7  # Monday 0 .. Sunday 6
        offset = (first_weekday + 1) % 7  # days of the first week before the 1st (Sunday start)
        week = (t.tm_mday - 1 + offset) // 7 + 1
        return time.strftime("u_ex%y%m", t) + f"{week:02d}" + ext
    return time.strftime("u_ex%y%m%d", t) + ext


@dataclass
class SiteLog:
    site_id: int
    site_name: str
    directory: str
    settings: LogFile
    fields: list[str]
    path: str = ""
    size: int = 0
    index: int = 1
    fh: Any = None
    checked: int = -1  # the second the file choice was last made for
    formatter: Any = None
    custom: tuple[CustomLogField, ...] = ()

    @property
    def header_fields(self) -> str:
        return " ".join(self.fields + [_field_name(c.log_field_name) for c in self.custom])


def _field_name(name: str) -> str:
    """A custom field's name as the #Fields line can hold it (no spaces)."""
    return _UNSAFE.sub("-", name) or "-"


class W3CLogs:
    """The access logs of every site, written by one thread."""

    def __init__(self, logs_root: str) -> None:
        self.logs_root = logs_root
        self.computer = os.uname().nodename
        self._sites: dict[int, SiteLog] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="w3c-log", daemon=True)
        self._thread.start()
        self.lines_written = 0
        self.errors = 0
        self._stamp_second = -1
        self._stamp = [b"", b""]

    # ---- called on the event loop ---------------------------------------------------

    def configure(self, sites: Iterable[Site]) -> None:
        self._queue.put(("configure", list(sites)))

    def submit(self, entries: list[tuple[float, "Exchange"]]) -> None:
        self._queue.put(("entries", entries))

    def sync(self) -> None:
        """Block until everything submitted so far is written (call off the loop)."""
        done = threading.Event()
        self._queue.put(("sync", done))
        done.wait(10)

    def close(self) -> None:
        self._queue.put(("close", None))
        self._thread.join(10)

    # ---- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            op, arg = self._queue.get()
            try:
                if op == "entries":
                    self._write(arg)
                elif op == "configure":
                    self._configure(arg)
                elif op == "sync":
                    arg.set()
                elif op == "close":
                    for site_log in self._sites.values():
                        self._close_file(site_log)
                    return
            except Exception:  # a full disk must not take the listener down
                self.errors += 1
                if self.errors <= 3 or self.errors % 1000 == 0:
                    log.exception("W3C log: writing failed (%d failures so far)", self.errors)

    def _configure(self, sites: list[Site]) -> None:
        new: dict[int, SiteLog] = {}
        for site in sites:
            settings = site.log_file
            if not settings.enabled or settings.log_format.upper() != "W3C":
                continue
            root = settings.directory or self.logs_root
            directory = os.path.join(os.path.expandvars(root), f"W3SVC{site.id}")
            fields = fields_for(settings.log_ext_file_flags)
            custom = tuple(settings.custom_fields)
            old = self._sites.get(site.id)
            if (old is not None and old.directory == directory and old.fields == fields
                    and old.settings.period == settings.period and old.custom == custom
                    and old.settings.max_custom_field_length == settings.max_custom_field_length):
                old.settings = settings
                new[site.id] = old
                continue
            if old is not None:
                self._close_file(old)
            new[site.id] = SiteLog(site.id, site.name, directory, settings, fields, custom=custom)
        for site_id, old in self._sites.items():
            if site_id not in new:
                self._close_file(old)
        self._sites = new

    def _close_file(self, log: SiteLog) -> None:
        if log.fh is not None:
            log.fh.close()
            log.fh = None
            log.path = ""

    def _open(self, log: SiteLog, when: float) -> None:
        settings = log.settings
        period = settings.period if settings.period in PERIODS else "Daily"
        os.makedirs(log.directory, exist_ok=True)
        if period == "MaxSize":
            limit = max(settings.truncate_size, MIN_TRUNCATE_SIZE)
            suffix = r"_x\.log" if log.custom else r"\.log"
            if not log.path:
                indices = [int(m.group(1)) for n in os.listdir(log.directory)
                           if (m := re.fullmatch(r"u_extend(\d+)" + suffix, n))]
                log.index = max(indices, default=1)
            path = os.path.join(log.directory, file_name(period, when, False, log.index, bool(log.custom)))
            if path == log.path and log.size < limit:
                return
            if path == log.path or (os.path.exists(path) and os.path.getsize(path) >= limit):
                log.index += 1
                path = os.path.join(log.directory, file_name(period, when, False, log.index, bool(log.custom)))
        else:
            path = os.path.join(log.directory, file_name(period, when, settings.local_time_rollover,
                                                         custom=bool(log.custom)))
            if path == log.path:
                return
        self._close_file(log)
        log.fh = open(path, "ab")
        log.path = path
        log.size = log.fh.tell()
        # every file, and every time this process starts writing to one, gets the header
        header = (f"#Software: {SOFTWARE}\r\n#Version: 1.0\r\n"
                  f"#Date: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))}\r\n"
                  f"#Fields: {log.header_fields}\r\n").encode()
        log.fh.write(header)
        log.size += len(header)

    def _write(self, entries: list[tuple[float, "Exchange"]]) -> None:
        by_site: dict[int, list[tuple[float, Exchange]]] = {}
        for entry in entries:
            route = entry[1].route
            if route is not None:
                by_site.setdefault(route.site_id, []).append(entry)
        for site_id, items in by_site.items():
            log = self._sites.get(site_id)
            if log is None:
                continue
            out: list[bytes] = []
            limit = max(log.settings.truncate_size, MIN_TRUNCATE_SIZE)
            max_size = log.settings.period == "MaxSize"
            for when, exch in items:
                second = int(when)
                if second != log.checked or log.fh is None or (max_size and log.size >= limit):
                    if out and log.fh is not None:  # these belong to the file before a rollover
                        log.fh.write(b"".join(out))
                        out.clear()
                    self._open(log, when)
                    log.checked = second
                line = self.format(log, when, exch)
                out.append(line)
                log.size += len(line)
            if out and log.fh is not None:
                log.fh.write(b"".join(out))
            if log.fh is not None:
                log.fh.flush()
            self.lines_written += len(items)

    def format(self, log: SiteLog, when: float, exch: "Exchange") -> bytes:
        if log.formatter is None:
            log.formatter = compile_formatter(log.fields, log.site_id, self.computer, log.custom,
                                              log.settings.max_custom_field_length)
        second = int(when)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)).encode().split(b" ")
        return log.formatter(exch, self._stamp[0], self._stamp[1])  # type: ignore[no-any-return]


# One bytes expression per field; ``e`` is the exchange, ``c`` its connection, ``h`` the
# request headers as a dict (built only when a header field is logged).  Values parsed by
# httptools (method, target) cannot hold spaces or control characters; header values and
# user names can, and go through ``ESC`` (space, controls -> "+").
_EXPR = {
    "date": "d",
    "time": "t",
    "s-sitename": "SITENAME",
    "s-computername": "COMPUTER",
    "s-ip": "ip(c.server[0])",
    "cs-method": "ip(e.method)",
    "cs-uri-stem": "stem",
    "cs-uri-query": "query",
    "s-port": "c.server[1]",
    "cs-username": "(e.username.encode('utf-8', 'surrogateescape').translate(ESC) if e.username else b'-')",
    "c-ip": "ip(c.client[0])",
    "cs-version": "b'HTTP/1.1' if e.http_minor == 1 else b'HTTP/1.0'",
    "cs(User-Agent)": "(h.get(b'user-agent') or b'-').translate(ESC)",
    "cs(Cookie)": "(h.get(b'cookie') or b'-').translate(ESC)",
    "cs(Referer)": "(h.get(b'referer') or b'-').translate(ESC)",
    "cs-host": "(h.get(b'host') or b'-').translate(ESC)",
    "sc-status": "e.status",
    "sc-substatus": "e.substatus",
    "sc-win32-status": "0",
    "sc-bytes": "e.bytes_sent",
    "cs-bytes": "request_bytes(e)",
    "time-taken": "max(0, int((e.finished_at - e.started_at) * 1000 + 0.5))",
}
_INT_FIELDS = {"s-port", "sc-status", "sc-substatus", "sc-win32-status", "sc-bytes", "cs-bytes", "time-taken"}
ESC = bytes(b if 32 < b < 127 or b > 127 else 43 for b in range(256))  # 43: "+"
_ENCODED: dict[str, bytes] = {}


def _ip(text: str) -> bytes:
    """Addresses and methods, encoded once."""
    value = _ENCODED.get(text)
    if value is None:
        if len(_ENCODED) > 4096:
            _ENCODED.clear()
        value = _ENCODED[text] = (text or "-").encode("utf-8", "surrogateescape").translate(ESC)
    return value


def _request_bytes(e: "Exchange") -> int:
    h = e.headers
    return len(e.method) + len(e.target) + 12 + sum(map(len, h)) + 4 * (len(h) // 2) + 2 + e.body_received


def _custom_value(fields: tuple[tuple[str, str], ...], name: str, limit: int) -> bytes:
    """A custom field the worker computed, escaped and cut at maxCustomFieldLength."""
    for key, value in fields:
        if key == name:
            if not value:
                return b"-"
            return value.encode("utf-8", "surrogateescape")[:limit].translate(ESC)
    return b"-"


def compile_formatter(fields: list[str], site_id: int, computer: str,
                      custom: tuple[CustomLogField, ...] = (), max_custom: int = 4096) -> Any:
    """A function (exchange, date, time) -> the log line as bytes, made for one field
    list and its custom fields (the field choice is made once, not per line)."""
    exprs = [_EXPR.get(name, "b'-'") for name in fields]
    for c in custom:
        if c.source_type == "RequestHeader":
            exprs.append(f"(h.get({c.source_name.lower().encode('latin-1', 'replace')!r}) or b'-')"
                         f"[:{max_custom}].translate(ESC)")
        else:
            exprs.append(f"custom(e.log_fields, {c.log_field_name!r}, {max_custom})")
    src = ["def fmt(e, d, t):", "    c = e.conn"]
    if any(n in ("cs-uri-stem", "cs-uri-query") for n in fields):
        src.append("    target = e.target")
        src.append("    q = target.find(b'?')")
        src.append("    stem, query = (target, b'-') if q < 0 else (target[:q], target[q + 1:] or b'-')")
    if any(n in _REQUEST_HEADERS for n in fields) or any(c.source_type == "RequestHeader" for c in custom):
        src.append("    hl = e.headers")
        src.append("    h = dict(zip(hl[::2], hl[1::2]))")
    kinds = ["%d" if n in _INT_FIELDS else "%s" for n in fields] + ["%s"] * len(custom)
    template = " ".join(kinds) + "\\r\\n"
    src.append(f"    return b'{template}' % ({', '.join(exprs)},)")
    namespace: dict[str, Any] = {
        "ESC": ESC, "ip": _ip, "request_bytes": _request_bytes, "custom": _custom_value,
        "SITENAME": f"W3SVC{site_id}".encode(), "COMPUTER": _ip(computer),
    }
    exec("\n".join(src), namespace)
    return namespace["fmt"]
