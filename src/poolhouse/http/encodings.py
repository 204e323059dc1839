"""Content-coding negotiation (RFC 9110 §12.5.3, ``Accept-Encoding``)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["accepted_codings", "choose_coding"]


def accepted_codings(accept: str) -> dict[str, float]:
    """coding (lower case) -> qvalue.  A qvalue that is not a number counts as 0."""
    q: dict[str, float] = {}
    for part in accept.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if not token:
            continue
        value = 1.0
        for param in params.split(";"):
            name, eq, arg = param.strip().partition("=")
            if eq and name.strip().lower() == "q":
                try:
                    value = float(arg.strip())
                except ValueError:
                    value = 0.0
                if not 0.0 <= value <= 1.0:
                    value = 0.0
        q[token] = value
    return q


def choose_coding(accept: str, codings: Sequence[str]) -> str | None:
    """The coding among ``codings`` (lower case, in the server's order of preference)
    the client accepts best: highest qvalue, then the server's order; ``*`` stands for
    any coding not named.  None: none is acceptable (or no ``Accept-Encoding``), the
    identity representation is sent."""
    if not accept:
        return None
    q = accepted_codings(accept)
    star = q.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in codings:
        value = q.get(coding, star)
        if value > best_q:
            best, best_q = coding, value
    return best
