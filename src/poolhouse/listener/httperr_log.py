"""The HTTPERR log: one line for every request or connection the listener refused,
dropped or answered with an error itself, with HTTP.sys's field list and reason phrases.

Lines are buffered in memory and written by ``flush`` (called every second by the
listener and at shutdown); files roll over to ``httperr<N+1>.log`` past ``truncate_size``
bytes, as HTTP.sys does with ``ErrorLogFileTruncateSize``.
"""

from __future__ import annotations

import os
import re
import time

FIELDS = (
    "date time c-ip c-port s-ip s-port cs-version cs-method cs-uri sc-status "
    "s-siteid s-reason s-queuename"
)
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


def field(value: object) -> str:
    if value is None or value == "":
        return "-"
    return _UNSAFE.sub("+", str(value))


class HttpErrLog:
    def __init__(self, directory: str, truncate_size: int = 1024 * 1024) -> None:
        self.directory = directory
        self.truncate_size = max(truncate_size, 1024 * 1024)
        self._lines: list[str] = []
        self._file_size = 0
        self._index = 0
        self._path = ""

    def write(
        self,
        reason: str,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        version: str = "",
        method: str = "",
        uri: str | bytes = "",
        status: int | None = None,
        site_id: int | None = None,
        queue: str = "",
    ) -> None:
        now = time.gmtime()
        if isinstance(uri, bytes):
            uri = uri.decode("latin-1")
        self._lines.append(
            " ".join(
                (
                    time.strftime("%Y-%m-%d %H:%M:%S", now),
                    field(client[0] if client else None),
                    field(client[1] if client else None),
                    field(server[0] if server else None),
                    field(server[1] if server else None),
                    field(version),
                    field(method[:255]),
                    field(uri[:4096]),
                    field(status),
                    field(site_id),
                    field(reason),
                    field(queue),
                )
            )
        )

    @property
    def pending(self) -> int:
        return len(self._lines)

    def _open_path(self) -> str:
        if not self._path:
            os.makedirs(self.directory, exist_ok=True)
            indices = [
                int(m.group(1))
                for name in os.listdir(self.directory)
                if (m := re.fullmatch(r"httperr(\d+)\.log", name))
            ]
            self._index = max(indices, default=1)
            self._path = os.path.join(self.directory, f"httperr{self._index}.log")
            try:
                self._file_size = os.path.getsize(self._path)
            except OSError:
                self._file_size = 0
        if self._file_size >= self.truncate_size:
            self._index += 1
            self._path = os.path.join(self.directory, f"httperr{self._index}.log")
            self._file_size = 0
        return self._path

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        path = self._open_path()
        chunks: list[str] = []
        if self._file_size == 0:
            chunks.append(
                "#Software: Poolhouse HTTP listener\n#Version: 1.0\n"
                f"#Date: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}\n#Fields: {FIELDS}\n"
            )
        chunks.extend(line + "\n" for line in lines)
        data = "".join(chunks).encode()
        with open(path, "ab") as fh:
            fh.write(data)
        self._file_size += len(data)
