"""Environment variables and Windows-style paths in configuration values.

IIS expands ``%VAR%`` in attributes marked ``expanded``; Poolhouse does the same, with
``%POOLHOUSE_ROOT%`` defaulting to the installed package folder.  Configuration written
for Windows (``C:\\inetpub\\wwwroot``, ``%SystemDrive%\\inetpub``) cannot apply on Linux:
such values are reported (warning, or an error where a real folder is required), and
backslashes in relative paths become slashes.
"""

from __future__ import annotations

import os
import re

_VAR = re.compile(r"%([A-Za-z_][A-Za-z0-9_().]*)%")
_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_lookup(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        upper = name.upper()
        for key, val in os.environ.items():
            if key.upper() == upper:
                return val
        if upper == "POOLHOUSE_ROOT":
            return PACKAGE_ROOT
    return value


def expand_env(text: str) -> str:
    """Replace ``%VAR%`` by the environment's value; unknown variables stay as written."""
    if "%" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        value = env_lookup(m.group(1))
        return m.group(0) if value is None else value

    return _VAR.sub(sub, text)


def windows_path_problem(text: str) -> str | None:
    """Why ``text`` (already expanded) cannot be a Linux path, or None."""
    if _DRIVE.match(text):
        return f"'{text}' is a Windows path (drive letter) and cannot apply on Linux"
    if text.startswith("\\\\"):
        return f"'{text}' is a Windows UNC path and cannot apply on Linux"
    m = _VAR.search(text)
    if m:
        return (
            f"'{text}' uses the environment variable %{m.group(1)}% which is not set "
            "(a Windows path?)"
        )
    return None


def normalize_path(text: str) -> str:
    """Backslashes -> slashes for paths that are not Windows-absolute."""
    if "\\" in text and not _DRIVE.match(text) and not text.startswith("\\\\"):
        return text.replace("\\", "/")
    return text
