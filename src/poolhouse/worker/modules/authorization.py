"""UrlAuthorizationModule: ``system.webServer/security/authorization`` at
AuthorizeRequest.

IIS's evaluation: Deny rules first (parents' before children's, as the merged list
holds them), then Allow rules, in order; the first rule whose users, roles and verbs
match decides; no match denies.  ``users``: ``*`` everyone, ``?`` anonymous, names;
``roles``: groups from the Basic users file, or Unix groups the user belongs to.
Denied: an anonymous request gets 401.2 (so the client may authenticate), an
authenticated one 401.3 (access denied)."""

from __future__ import annotations

import time
from typing import Any

from ..pipeline import HttpContext
from .authentication import unix_groups as _groups_of
from .base import Module, ModuleConfig


def _names(text: str) -> frozenset[str]:
    return frozenset(p.strip().lower() for p in str(text).split(",") if p.strip())


_UNIX: dict[str, tuple[float, frozenset[str]]] = {}


def unix_groups(user: str) -> frozenset[str]:
    """The user's Unix groups (primary included), remembered for a minute."""
    now = time.monotonic()
    hit = _UNIX.get(user)
    if hit is not None and hit[0] > now:
        return hit[1]
    groups = _groups_of(user)
    if len(_UNIX) > 10000:
        _UNIX.clear()
    _UNIX[user] = (now + 60.0, groups)
    return groups


class UrlAuthorizationModule(Module):
    per_client = True  # enabled only when the rules are not the stock allow-all
    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        rules = []
        for r in config.section("security/authorization").get("items", []):
            verbs = frozenset(v.strip().upper() for v in str(r.get("verbs", "")).split(",") if v.strip())
            rules.append((r.get("accessType", "Allow") == "Allow", _names(r.get("users", "")),
                          _names(r.get("roles", "")), verbs))
        self.rules = [r for r in rules if not r[0]] + [r for r in rules if r[0]]
        # the stock single "Allow users='*'" authorizes everything: no hook at all
        self.everyone = (len(self.rules) == 1 and self.rules[0][0] and self.rules[0][1] == {"*"}
                         and not self.rules[0][3])

    def enabled(self) -> bool:
        return not self.everyone

    def authorize_request(self, ctx: HttpContext) -> Any:
        user = ctx.user.lower()
        method = ctx.method
        roles: frozenset[str] | None = None
        for allow, users, rule_roles, verbs in self.rules:
            if verbs and method not in verbs:
                continue
            match = "*" in users or (not user and "?" in users) or (user and user in users)
            if not match and rule_roles and user:
                if roles is None:
                    roles = ctx.roles | unix_groups(ctx.user)
                match = not rule_roles.isdisjoint(roles)
            if match:
                if allow:
                    return None
                break
        ctx.trace_event("URL_AUTHORIZATION_DENIED", user=ctx.user, verb=method)
        if not user:
            return ctx.fail(401, 2, "Access is denied by URL authorization rules to anonymous requests.")
        return ctx.fail(401, 3, f"Access is denied by URL authorization rules to user {ctx.user!r}.")
