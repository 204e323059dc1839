"""What changed between two versions of applicationHost.config, coarsely, for the audit
log: sections added, removed or changed (per ``<location>`` path), and for the
``system.applicationHost`` content the pools and sites (with their bindings) added,
removed or changed.  Pure functions over parsed documents and ServerConfigs."""

from __future__ import annotations

from .document import ConfigDocument, read_document
from .errors import ConfigError
from .model import ServerConfig
from .server import documents_of


def _sections(doc: ConfigDocument) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for c in doc.contributions:
        out[(c.location or "", c.section.path)] = c.digest
    for path, _line in doc.unknown:
        out.setdefault(("", path), "?")
    return out


def _where(location: str, section: str) -> str:
    return f"{section} (location '{location}')" if location else section


def section_changes(old: ConfigDocument | None, new: ConfigDocument) -> list[str]:
    """``["changed system.webServer/handlers (location 'Shop')", "added …", …]``."""
    before = _sections(old) if old is not None else {}
    after = _sections(new)
    out: list[str] = []
    for key in sorted(after):
        if key not in before:
            out.append("added " + _where(*key))
        elif before[key] != after[key]:
            out.append("changed " + _where(*key))
    for key in sorted(before):
        if key not in after:
            out.append("removed " + _where(*key))
    if old is not None and old.registrations.keys() != new.registrations.keys():
        out.append("changed configSections")
    return out


def object_changes(old: ServerConfig, new: ServerConfig) -> list[str]:
    """Pools, sites and bindings added, removed or changed."""
    out: list[str] = []
    for name in sorted(new.pools.keys() - old.pools.keys()):
        out.append(f"added application pool '{name}'")
    for name in sorted(old.pools.keys() - new.pools.keys()):
        out.append(f"removed application pool '{name}'")
    for name in sorted(new.pools.keys() & old.pools.keys()):
        if new.pools[name] != old.pools[name]:
            out.append(f"changed application pool '{name}'")
    old_sites = {s.name: s for s in old.sites}
    new_sites = {s.name: s for s in new.sites}
    for name in sorted(new_sites.keys() - old_sites.keys()):
        out.append(f"added site '{name}'")
    for name in sorted(old_sites.keys() - new_sites.keys()):
        out.append(f"removed site '{name}'")
    for name in sorted(new_sites.keys() & old_sites.keys()):
        a, b = old_sites[name], new_sites[name]
        if a == b:
            continue
        ab = {f"{x.protocol}/{x.information}" for x in a.bindings}
        bb = {f"{x.protocol}/{x.information}" for x in b.bindings}
        for info in sorted(bb - ab):
            out.append(f"added binding {info} to site '{name}'")
        for info in sorted(ab - bb):
            out.append(f"removed binding {info} from site '{name}'")
        if a.applications != b.applications:
            out.append(f"changed applications of site '{name}'")
        if (a.id, a.server_auto_start, a.limits, a.log_file) != (
                b.id, b.server_auto_start, b.limits, b.log_file):
            out.append(f"changed site '{name}'")
    return out


def describe_accepted(old: ServerConfig | None, new: ServerConfig) -> list[str]:
    """Everything that changed from ``old`` (None: nothing before) to ``new``."""
    new_doc = documents_of(new).apphost
    old_doc = documents_of(old).apphost if old is not None and old.config_text else None
    changes = section_changes(old_doc, new_doc)
    if old is not None:
        changes += object_changes(old, new)
        for path in sorted(new.config_extra.keys() | old.config_extra.keys()):
            if new.config_extra.get(path) != old.config_extra.get(path):
                changes.append(f"changed included file {path}")
    return changes


def describe_refused(old: ServerConfig | None, data: bytes, path: str) -> list[str]:
    """The section-level changes of a file that was refused, as far as it parses."""
    try:
        new_doc = read_document(data, path)
    except ConfigError:
        return ["the file is not well-formed configuration XML"]
    old_doc = documents_of(old).apphost if old is not None and old.config_text else None
    return section_changes(old_doc, new_doc)


__all__ = ["describe_accepted", "describe_refused", "object_changes", "section_changes"]
