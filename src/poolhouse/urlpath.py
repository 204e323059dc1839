"""URL path normalisation shared by the listener (routing) and the workers (mapping to
files), so both see the same path: percent-decoded, dot segments removed, no escape
above the root.  Pure functions, no policy beyond RFC 3986 §5.2.4."""

from __future__ import annotations

from urllib.parse import unquote


class BadPath(ValueError):
    """The path cannot be served (it climbs above the root or holds a NUL)."""


def split_target(target: bytes) -> tuple[str, str]:
    """``/a/b?x=1`` -> (``/a/b``, ``x=1``), still percent-encoded (latin-1 text)."""
    text = target.decode("latin-1")
    path, sep, query = text.partition("?")
    if not path.startswith("/"):
        if path.startswith(("http://", "https://")):  # absolute-form
            rest = path.split("//", 1)[1]
            slash = rest.find("/")
            path = rest[slash:] if slash != -1 else "/"
        elif path == "*":
            return "*", query
        else:
            path = "/" + path
    return path, query


def normalize(path: str) -> str:
    """Percent-decode (UTF-8) and remove dot segments; raises BadPath."""
    if "%" in path:
        path = unquote(path, errors="surrogateescape")
    if "\x00" in path:
        raise BadPath("NUL in path")
    if "/." not in path and "//" not in path and "\\" not in path:
        return path
    out: list[str] = []
    segments = path.replace("\\", "/").split("/")
    for seg in segments[1:]:
        if seg == "..":
            if not out:
                raise BadPath("path climbs above the root")
            out.pop()
        elif seg == "." or seg == "":
            continue
        else:
            out.append(seg)
    result = "/" + "/".join(out)
    if (segments[-1] in ("", ".", "..")) and result != "/":
        result += "/"
    return result


def host_name(host: str, default: str = "") -> str:
    """The name part of a Host header value: ``example.com:8080`` -> ``example.com``,
    ``[::1]:8080`` -> ``[::1]``, ``[::1]`` -> ``[::1]``; ``default`` when empty."""
    if not host:
        return default
    if host[0] == "[":
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] or default


def wsgi_str(path: str) -> str:
    """PEP 3333's "bytes in a str": a decoded URL path (UTF-8, undecodable bytes kept as
    surrogates by ``urlpath.normalize``) back to its bytes, as latin-1 text.  Frameworks
    re-encode with latin-1 and decode UTF-8 themselves (Werkzeug, Django), so ``/café``
    matches its route and ``/x%ff`` is theirs to refuse."""
    return path.encode("utf-8", "surrogateescape").decode("latin-1")
