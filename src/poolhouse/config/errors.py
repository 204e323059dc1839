"""The one error type of the configuration system.

Every violation found while reading configuration — malformed or hostile XML, an unknown
attribute, a value out of range, a locked section, a duplicate collection entry — is a
``ConfigError`` naming the file, the line and the section, so an operator can fix it
without guessing.  A worker turns it into a 500.19 response; the activation service
refuses the new configuration and keeps serving the old one.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file violates the schema or the configuration rules.

    ``str(e)`` reads ``"<file>:<line>: <section>: <reason>"``; the line and the section
    are left out when unknown."""

    def __init__(
        self,
        reason: str,
        file: str = "",
        line: int | None = None,
        section: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.section = section
        self.reason = reason
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.file or "<configuration>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.section:
            return f"{where}: {self.section}: {self.reason}"
        return f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self._text()
