"""AnonymousAuthenticationModule and BasicAuthenticationModule
(``system.webServer/security/authentication/*``) at AuthenticateRequest.

Basic authentication checks credentials against a users file named by Poolhouse's
schema extension ``basicAuthentication/@usersFile`` (absolute, or relative to the
application's physical folder — keep it outside the served folders).  One account a
line, ``#`` comments::

    alice:$2b$12$...bcrypt hash...:admins,editors
    bob:$argon2id$v=19$...:editors            (argon2 needs the argon2-cffi package)

The third field lists the user's groups (roles for URL authorization).  The deliberately
slow hash is checked on a thread (the worker goes on serving while it runs), and a
verified user and password are remembered for TOKEN_TTL (IIS's TokenCacheModule keeps
logon tokens the same way, for longer): keyed by an HMAC of both under a secret of the
process (no password, nor a plain hash of one, is kept), at most TOKEN_CACHE entries,
forgotten as soon as the users file changes.  Failures are never remembered.

Or PAM: the extension ``basicAuthentication/@pamService`` names a PAM service (a file
of ``/etc/pam.d``, e.g. ``login``); a user the users file does not list (or every user,
without a users file) is checked by PAM — authentication and account management — on
a thread of its own, so the worker keeps serving while a check blocks.  A PAM user's
roles are its Unix groups.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import logging
import os
import pwd
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...urlpath import host_name
from ..pipeline import FINISH, HttpContext
from .base import LAST, Module, ModuleConfig

log = logging.getLogger("poolhouse.worker")

TOKEN_TTL = 60.0
TOKEN_CACHE = 1024
_TOKEN_SECRET = os.urandom(32)  # per process: a token key says nothing outside it


class AnonymousAuthenticationModule(Module):
    """Anonymous is the state of a request no other module authenticated, so an enabled
    anonymousAuthentication costs nothing; disabled, a request nobody authenticated
    gets 401.2 (after the other authentication modules: priority LAST)."""

    priority = LAST
    per_client = True  # enabled only when anonymous access is off

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        self.allow = bool(config.section("security/authentication/anonymousAuthentication").get("enabled", True))

    def enabled(self) -> bool:
        return not self.allow

    def authenticate_request(self, ctx: HttpContext) -> Any:
        if ctx.user:
            return None
        return ctx.fail(401, 2, "Anonymous authentication is disabled and the request carried no valid "
                        "credentials of an enabled scheme.")


class UsersFile:
    """The accounts of a users file, re-read when the file changes."""

    _files: dict[str, "UsersFile"] = {}

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[float, int] | None = None
        self.users: dict[str, tuple[str, frozenset[str]]] = {}
        self.checked = 0.0
        self.generation = 0  # counts reloads: a remembered verification is of one generation

    @classmethod
    def get(cls, path: str) -> "UsersFile":
        f = cls._files.get(path)
        if f is None:
            f = cls._files[path] = cls(path)
        return f

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.checked < 1.0:
            return
        self.checked = now
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self.stamp is not None or not self.users:
                log.error("basicAuthentication usersFile %s: %s", self.path, exc)
            if self.stamp is not None:
                self.generation += 1
            self.users, self.stamp = {}, None
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self.stamp:
            return
        users: dict[str, tuple[str, frozenset[str]]] = {}
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, _, rest = line.partition(":")
                digest, _, groups = rest.partition(":")  # bcrypt and argon2 hashes hold no ':'
                if not name or not digest:
                    log.error("%s:%d: expected 'user:hash[:groups]'", self.path, n)
                    continue
                users[name.lower()] = (digest, frozenset(g.strip().lower() for g in groups.split(",") if g.strip()))
        self.users, self.stamp = users, stamp
        self.generation += 1

    def listed(self, user: str) -> bool:
        self.refresh()
        return user.lower() in self.users

    def roles(self, user: str) -> frozenset[str]:
        self.refresh()
        entry = self.users.get(user.lower())
        return entry[1] if entry else frozenset()

    def digest(self, user: str) -> str | None:
        self.refresh()
        entry = self.users.get(user.lower())
        return entry[0] if entry is not None else None

    def verify(self, user: str, password: str) -> bool:
        """Blocking (the hash is slow on purpose): for a thread, not the event loop."""
        digest = self.digest(user)
        return digest is not None and check_password(password, digest)


def check_password(password: str, digest: str) -> bool:
    if digest.startswith(("$2a$", "$2b$", "$2y$")):
        import bcrypt
        try:
            return bool(bcrypt.checkpw(password.encode(), digest.encode()))
        except ValueError:
            return False
    if digest.startswith("$argon2"):
        try:
            from argon2 import PasswordHasher  # type: ignore[import-not-found]
            from argon2.exceptions import VerificationError  # type: ignore[import-not-found]
        except ImportError:
            log.error("an argon2 hash needs the argon2-cffi package")
            return False
        try:
            return bool(PasswordHasher().verify(digest, password))
        except (VerificationError, ValueError):
            return False
    log.error("unsupported password hash (use bcrypt or argon2)")
    return False


def _hash_check(password: str, digest: str, generation: int) -> tuple[str, bool, frozenset[str], str]:
    """On an auth thread: the users file's hash (the generation it was read from comes back
    as the last field, so what is remembered is tied to the file that verified it)."""
    return "usersFile", check_password(password, digest), frozenset(), str(generation)


def _pam_source_check(service: str, user: str, password: str) -> tuple[str, bool, frozenset[str], str]:
    return ("PAM", *pam_check(service, user, password))


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for a users file (``python -c`` helper, tests)."""
    import bcrypt
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def unix_groups(user: str) -> frozenset[str]:
    """The names (lower-case) of the Unix groups of ``user``, its primary group included
    (empty for an unknown user).  Blocks on NSS: not for the event loop."""
    try:
        gid = pwd.getpwnam(user).pw_gid
        gids = os.getgrouplist(user, gid)
    except (KeyError, OSError):
        return frozenset()
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name.lower())
        except KeyError:
            pass
    return frozenset(names)


_auth_threads: ThreadPoolExecutor | None = None


def auth_executor() -> ThreadPoolExecutor:
    """The worker's credential-checking threads (password hashes, PAM): a few, apart
    from the application's, so slow checks (bcrypt by design; pam_unix delays a failure
    by seconds) never hold up the event loop or a WSGI request."""
    global _auth_threads
    if _auth_threads is None:
        _auth_threads = ThreadPoolExecutor(4, thread_name_prefix="auth")
    return _auth_threads


pam_executor = auth_executor


def pam_check(service: str, user: str, password: str) -> tuple[bool, frozenset[str], str]:
    """(verified, the user's Unix groups, why not): PAM authentication and account
    management for ``service``.  Blocking; runs on a PAM thread."""
    try:
        import pamela
    except ImportError:
        return False, frozenset(), "the pamela package is not installed"
    try:
        pamela.authenticate(user, password, service=service, resetcred=0, check=True)
    except pamela.PAMError as exc:
        return False, frozenset(), str(exc)
    return True, unix_groups(user), ""


class BasicAuthenticationModule(Module):
    """``Authorization: Basic`` against the users file or PAM: success sets
    ``ctx.user`` (AUTH_USER/REMOTE_USER, AUTH_TYPE "Basic") and ``ctx.roles``; bad
    credentials get 401.1.  Every 401 carries ``WWW-Authenticate: Basic realm="…"``
    (the realm, or the Host)."""

    send_errors_only = True
    per_client = True

    def __init__(self, name: str, config: ModuleConfig) -> None:
        super().__init__(name, config)
        sec = config.section("security/authentication/basicAuthentication")
        self.on = bool(sec.get("enabled", False))
        self.realm = str(sec.get("realm", ""))
        path = str(sec.get("usersFile", "") or "")
        if path and not os.path.isabs(path):
            path = os.path.join(config.physical_path, path)
        self.users = UsersFile.get(path) if path else None
        self.pam_service = str(sec.get("pamService", "") or "").strip()
        # HMAC(user, password) -> (valid until, roles, users file generation)
        self._tokens: OrderedDict[bytes, tuple[float, frozenset[str], int]] = OrderedDict()

    def enabled(self) -> bool:
        if self.on and self.users is None and not self.pam_service:
            log.warning("basicAuthentication is enabled without a usersFile or pamService: "
                        "no credentials can succeed")
        return self.on

    def authenticate_request(self, ctx: HttpContext) -> Any:
        header = ctx.headers.get("authorization", "")
        if not header[:6].lower() == "basic ":
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return ctx.fail(401, 1, "Malformed Basic credentials.")
        if not sep or not user:
            return ctx.fail(401, 1, "Malformed Basic credentials.")
        if ctx.trace is not None and ctx.waited is None:
            ctx.trace_event("AUTH_START", authType="Basic", user=user)
        users = self.users
        listed = users is not None and users.listed(user)  # re-reads a changed file (once a second)
        generation = users.generation if users is not None else 0
        key = hmac.new(_TOKEN_SECRET, user.lower().encode("utf-8", "surrogatepass") + b"\0"
                       + password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        now = time.monotonic()
        tokens = self._tokens
        token = tokens.get(key)
        if token is None or token[0] < now or token[2] != generation:
            waited = ctx.waited
            if waited is None:
                if listed:
                    assert users is not None
                    digest = users.digest(user)
                    if digest is not None:  # the hash runs on a thread; this hook runs again after
                        return ctx.run_in_thread(_hash_check, password, digest, generation,
                                                 executor=auth_executor())
                elif self.pam_service and "\x00" not in user + password:
                    return ctx.run_in_thread(_pam_source_check, self.pam_service, user, password,
                                             executor=auth_executor())
                source, ok, groups, reason = "usersFile", False, frozenset[str](), "not listed"
            else:
                ctx.waited = None
                source, ok, groups, reason = waited.result()
                if source == "PAM" and not ok:
                    log.info("PAM service %s refused user %r: %s", self.pam_service, user, reason)
            roles: frozenset[str] | None = None
            if ok:
                if source == "PAM":
                    roles = groups  # remembered until the users file (if any) changes too
                elif users is not None:
                    roles, generation = users.roles(user), int(reason)
            if roles is None:
                tokens.pop(key, None)
                ctx.trace_event("AUTH_FAILED", authType="Basic", user=user, source=source)
                return ctx.fail(401, 1, f"Logon failed for user {user!r}.")
            token = tokens[key] = (now + TOKEN_TTL, roles, generation)
            if len(tokens) > TOKEN_CACHE:
                # the oldest verifications go first; an expired one is dropped when met
                tokens.popitem(last=False)
        ctx.user = user
        ctx.auth_type = "Basic"
        ctx.roles = token[1]
        if ctx.trace is not None:
            ctx.trace_event("AUTH_SUCCEEDED", authType="Basic", user=user, roles=",".join(sorted(token[1])))
        return None

    def send_response(self, ctx: HttpContext) -> Any:
        resp = ctx.response
        if resp is None or resp.status != 401:
            return None
        realm = self.realm or host_name(ctx.headers.get("host", ""))
        resp.add_header(b"WWW-Authenticate", b'Basic realm="%s"' % realm.replace('"', "").encode("latin-1", "replace"))
        return None


__all__ = ["AnonymousAuthenticationModule", "BasicAuthenticationModule", "UsersFile", "auth_executor",
           "check_password", "hash_password", "pam_check", "unix_groups", "FINISH"]
