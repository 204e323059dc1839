"""The configuration hierarchy: which section contributions apply at a URL, in which
order, whether they are allowed there, and their merge.

Order (IIS): by the depth of the path a contribution targets (server, site root, each
folder below), and at the same depth by the file it comes from, top file first — so a
``<location path="Site/app">`` in applicationHost.config applies before the
application's own web.config, and both after everything for the site root.  A
contribution from a web.config must be allowed where it stands: its section may not be
locked above it (``overrideModeDefault="Deny"`` or ``<location overrideMode="Deny">``)
and ``allowDefinition`` must admit a file at that level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .delta import BELOW, Merged, apply
from .document import ConfigDocument, Contribution, Registration
from .errors import ConfigError

SERVER_RANK_MAX = 1  # base.config = 0, applicationHost.config = 1, web.config files > 1

LOCKED_REASON = (
    "This configuration section cannot be used at this path. This happens when the "
    "section is locked at a parent level. Locking is either by default "
    '(overrideModeDefault="Deny"), or set explicitly by a location tag with '
    'overrideMode="Deny" or the legacy allowOverride="false".'
)


@dataclass
class Source:
    """A contribution placed in the hierarchy."""

    contribution: Contribution
    doc: ConfigDocument
    rank: int
    target: str | None  # None: server level; else URL path in the site, lower case
    file_is_app_root: bool = False

    @property
    def depth(self) -> int:
        if self.target is None:
            return -1
        return 0 if self.target == "/" else self.target.count("/")

    @property
    def section(self) -> str:
        return self.contribution.section.path


def covers(target: str | None, url: str) -> bool:
    """Whether settings for ``target`` apply at ``url`` (both lower-case URL paths)."""
    if target is None or target == "/":
        return True
    return url == target or url.startswith(target + "/")


def join_url(folder: str, rel: str) -> str:
    rel = rel.strip("/")
    if not rel:
        return folder
    return ("" if folder == "/" else folder) + "/" + rel


def server_sources(docs: list[ConfigDocument], site_name: str | None) -> list[Source]:
    """Contributions of base.config (rank 0) and applicationHost.config (rank 1) that
    apply to the server or to ``site_name`` (all sites' locations when None)."""
    site = site_name.lower() if site_name is not None else None
    out: list[Source] = []
    for rank, doc in enumerate(docs):
        for c in doc.contributions:
            if c.section.path.startswith("system.applicationHost/"):
                continue
            key = c.location_key
            if not key:
                out.append(Source(c, doc, rank, None))
                continue
            name, _, rest = key.partition("/")
            if site is not None and name != site:
                continue
            out.append(Source(c, doc, rank, "/" + rest if rest else "/"))
    return out


def web_sources(doc: ConfigDocument, folder: str, rank: int, app_root: bool) -> list[Source]:
    """Contributions of a web.config found at URL ``folder`` (lower case)."""
    return [Source(c, doc, rank, join_url(folder, c.location_key), app_root)
            for c in doc.contributions]


def applicable(sources: list[Source], url: str,
               app_of: Callable[[str], str]) -> list[Source]:
    """The sources that apply at ``url``, in merge order."""
    app = app_of(url)
    out = [
        s for s in sources
        if covers(s.target, url)
        and (s.contribution.inherit_in_child_apps or s.target is None
             or app_of(s.target) == app)
    ]
    out.sort(key=lambda s: (s.depth, s.rank, s.contribution.order))
    return out


def check_allowed(source: Source, sources: list[Source],
                  registrations: dict[str, Registration]) -> None:
    """Raise unless ``source`` (from a web.config) may define its section there."""
    if source.rank <= SERVER_RANK_MAX:
        return
    c = source.contribution
    path = c.section.path
    reg = registrations.get(path)
    definition = reg.allow_definition if reg else c.section.allow_definition
    if definition in ("AppHostOnly", "MachineOnly", "MachineToWebRoot") or (
        definition == "MachineToApplication" and not source.file_is_app_root
    ):
        raise ConfigError(
            f"This configuration section cannot be used at this path "
            f'(allowDefinition="{definition}")', source.doc.path, c.line, path)
    if reg is not None and not reg.allow_location and c.location is not None:
        raise ConfigError("This configuration section cannot be used in a <location> tag "
                          '(allowLocation="false")', source.doc.path, c.line, path)
    mode = reg.override_mode_default if reg else c.section.override_mode_default
    best: tuple[int, int] | None = None
    for other in sources:
        oc = other.contribution
        if (other.rank < source.rank and oc.override_mode is not None
                and oc.section.path == path and covers(other.target, source.target or "/")):
            rank = (other.depth, other.rank)
            if best is None or rank >= best:
                best = rank
                mode = oc.override_mode
    if mode == "Deny":
        raise ConfigError(LOCKED_REASON, source.doc.path, c.line, path)


def merge(sources: list[Source], registrations: dict[str, Registration],
          all_sources: list[Source] | None = None) -> dict[str, Merged]:
    """Merge ordered sources into one effective element per section."""
    result: dict[str, Merged] = {}
    for s in sources:
        check_allowed(s, all_sources if all_sources is not None else sources, registrations)
        c = s.contribution
        m = result.get(c.section.path)
        if m is None:
            m = result[c.section.path] = Merged(c.section.element)
        apply(m, c.delta, c.section.path, min(s.rank, BELOW))
    return result
