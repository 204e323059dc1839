"""One configuration file (base.config, applicationHost.config or a web.config) read
into section contributions.

A contribution is one section element found in the file, at the file's own level or
inside a ``<location>`` tag, parsed into a ``Delta``.  The file's ``<configSections>``
registrations are kept too.  Sections Poolhouse does not implement (``system.web``,
``runtime``, ``system.webServer/aspNetCore``, ...) are skipped with one warning each.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from lxml import etree  # type: ignore[import-untyped]

from .delta import Delta, Parser, Warn
from .errors import ConfigError
from .schema import GROUPS, SECTIONS, Section
from .xmlsafe import element_children, local_name, parse_xml, read_config_bytes

OVERRIDE_MODES = ("Allow", "Deny")
ALLOW_DEFINITIONS = ("Everywhere", "MachineToApplication", "MachineOnly",
                     "MachineToWebRoot", "AppHostOnly")
LOCATION_ATTRS = ("path", "overrideMode", "allowOverride", "inheritInChildApplications")


@dataclass
class Registration:
    path: str
    override_mode_default: str = "Allow"
    allow_definition: str = "Everywhere"
    allow_location: bool = True
    file: str = ""
    line: int = 0


@dataclass
class Contribution:
    section: Section
    delta: Delta
    location: str | None  # None: the file's own level; else the location path as written
    override_mode: str | None  # Allow / Deny from the location tag, None = Inherit
    inherit_in_child_apps: bool
    order: int
    line: int
    digest: str = ""  # of the section element's canonical XML, to tell what changed

    @property
    def location_key(self) -> str:
        loc = (self.location or "").strip().strip("/").replace("\\", "/")
        return "" if loc == "." else loc.lower()


@dataclass
class ConfigDocument:
    path: str
    registrations: dict[str, Registration] = field(default_factory=dict)
    contributions: list[Contribution] = field(default_factory=list)
    # (section path, file, line) of the sections skipped because Poolhouse lacks them
    unknown: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data: bytes = b""  # the file's bytes as read (applicationHost.config only)
    # files read for this one (configSource, appSettings/@file) -> their bytes
    # (b"" when an optional one is missing); a change to any of them is a change here
    extra: dict[str, bytes] = field(default_factory=dict)


def _bool(text: str, what: str, file: str, line: int) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ConfigError(f"invalid value '{text}' for {what}; expected true or false", file, line)


class _Reader:
    def __init__(self, path: str, files: dict[str, bytes] | None = None, contained: bool = True) -> None:
        self.doc = ConfigDocument(path)
        self.files = files  # given: the extra files' bytes as accepted earlier
        self.contained = contained  # extra files must really be in this file's folder
        self.seen: set[tuple[str, str]] = set()
        self.unknown_seen: set[str] = set()

    def warn(self, file: str, line: int | None, message: str) -> None:
        where = f"{file}:{line}" if line else file
        self.doc.warnings.append(f"{where}: {message}")

    def read(self, root: etree._Element) -> ConfigDocument:
        path = self.doc.path
        if local_name(root) != "configuration":
            raise ConfigError(
                f"the root element must be <configuration>, not <{local_name(root)}>",
                path, root.sourceline)
        for el in element_children(root):
            name = local_name(el)
            if name == "configSections":
                self.read_registrations(el, "")
            elif name == "location":
                self.read_location(el)
            else:
                self.read_member(el, "", None)
        return self.doc

    def read_registrations(self, el: etree._Element, prefix: str) -> None:
        for child in element_children(el):
            name = local_name(child)
            line = child.sourceline or 0
            cname = child.get("name", "")
            if name == "sectionGroup":
                if not cname:
                    raise ConfigError("<sectionGroup> needs a name", self.doc.path, line)
                self.read_registrations(child, prefix + cname + "/")
            elif name == "section":
                if not cname:
                    raise ConfigError("<section> needs a name", self.doc.path, line)
                reg = Registration(prefix + cname, file=self.doc.path, line=line)
                mode = child.get("overrideModeDefault")
                if mode is not None:
                    if mode not in OVERRIDE_MODES:
                        raise ConfigError(
                            f"invalid overrideModeDefault '{mode}'; allowed: Allow, Deny",
                            self.doc.path, line)
                    reg.override_mode_default = mode
                allow = child.get("allowDefinition")
                if allow is not None:
                    if allow not in ALLOW_DEFINITIONS:
                        raise ConfigError(
                            f"invalid allowDefinition '{allow}'; allowed: "
                            + ", ".join(ALLOW_DEFINITIONS), self.doc.path, line)
                    reg.allow_definition = allow
                loc = child.get("allowLocation")
                if loc is not None:
                    reg.allow_location = _bool(loc, "allowLocation", self.doc.path, line)
                if reg.path in self.doc.registrations:
                    raise ConfigError(
                        f"the section '{reg.path}' is registered twice", self.doc.path, line)
                self.doc.registrations[reg.path] = reg
            elif name in ("remove", "clear"):
                continue  # .NET-style directives on configSections: nothing to undo here
            else:
                raise ConfigError(
                    f"unrecognized element <{name}> in <configSections>", self.doc.path, line)

    def read_location(self, el: etree._Element) -> None:
        line = el.sourceline or 0
        for attr in el.attrib:
            if str(attr) not in LOCATION_ATTRS and not str(attr).startswith("{"):
                raise ConfigError(
                    f"unrecognized attribute '{attr}' on <location>; allowed: "
                    + ", ".join(LOCATION_ATTRS), self.doc.path, line)
        path = el.get("path", "")
        mode = el.get("overrideMode")
        legacy = el.get("allowOverride")
        if mode is not None and legacy is not None:
            raise ConfigError(
                "overrideMode and allowOverride cannot both be used on one <location>",
                self.doc.path, line)
        if legacy is not None:
            mode = "Allow" if _bool(legacy, "allowOverride", self.doc.path, line) else "Deny"
        if mode is not None:
            if mode == "Inherit":
                mode = None
            elif mode not in OVERRIDE_MODES:
                raise ConfigError(
                    f"invalid overrideMode '{mode}'; allowed: Allow, Deny, Inherit",
                    self.doc.path, line)
        inherit = _bool(el.get("inheritInChildApplications", "true"),
                        "inheritInChildApplications", self.doc.path, line)
        for child in element_children(el):
            name = local_name(child)
            if name in ("location", "configSections"):
                raise ConfigError(f"<{name}> is not allowed inside <location>",
                                  self.doc.path, child.sourceline)
            self.read_member(child, "", (path, mode, inherit))

    def read_member(self, el: etree._Element, prefix: str,
                    location: tuple[str, str | None, bool] | None) -> None:
        path = prefix + local_name(el)
        section = SECTIONS.get(path)
        if section is not None:
            self.add_contribution(el, section, location)
            return
        if path in GROUPS:
            for attr in el.attrib:
                if not str(attr).startswith("{"):
                    raise ConfigError(
                        f"unrecognized attribute '{attr}' on section group <{local_name(el)}>",
                        self.doc.path, el.sourceline)
            for child in element_children(el):
                self.read_member(child, path + "/", location)
            return
        if path not in self.unknown_seen:
            self.unknown_seen.add(path)
            self.doc.unknown.append((path, el.sourceline or 0))

    def add_contribution(self, el: etree._Element, section: Section,
                         location: tuple[str, str | None, bool] | None) -> None:
        line = el.sourceline or 0
        source, source_file = self.config_source(el, section)
        parser = Parser(source_file, section.path, self.warn)
        delta, _ = parser.parse(source, section.element)
        digest = _digest(source)
        if section.path == "appSettings" and source.get("file"):
            digest += self.app_settings_file(source, source_file, delta, section)
        loc_path, mode, inherit = location if location else (None, None, True)
        c = Contribution(section, delta, loc_path, mode, inherit,
                         len(self.doc.contributions), line, digest)
        key = (c.location_key, section.path)
        if key in self.seen:
            raise ConfigError(
                "the section is defined more than once for the same path in this file "
                "(a section may appear only once per file and location path)",
                self.doc.path, line, section.path)
        self.seen.add(key)
        self.doc.contributions.append(c)

    def extra_bytes(self, path: str, optional: bool) -> bytes | None:
        if self.files is not None and path in self.files:
            data: bytes | None = self.files[path] or None
        elif optional and not os.path.isfile(path):
            data = None
        else:
            data = read_config_bytes(path)
        self.doc.extra[path] = data or b""
        return data

    def config_source(self, el: etree._Element, section: Section
                      ) -> tuple[etree._Element, str]:
        """The element to read for a section: itself, or the root of the file its
        ``configSource`` names (which must be the section's only attribute)."""
        ref = el.get("configSource")
        if ref is None:
            return el, self.doc.path
        line = el.sourceline
        if len(el.attrib) > 1 or element_children(el):
            raise ConfigError("a section with configSource can have no other attributes or "
                              "elements", self.doc.path, line, section.path)
        path = _inside(self.doc.path, ref, "configSource", line, section.path, self.contained)
        data = self.extra_bytes(path, optional=False)
        assert data is not None
        root = parse_xml(data, path)
        if local_name(root) != local_name(el):
            raise ConfigError(f"the root element of a configSource file must be "
                              f"<{local_name(el)}>, not <{local_name(root)}>", path,
                              root.sourceline, section.path)
        return root, path

    def app_settings_file(self, el: etree._Element, file: str, delta: Delta,
                          section: Section) -> str:
        """``<appSettings file="…">``: the named file's entries (an ``<appSettings>``
        root) are merged over the section's own, overriding equal keys, as .NET does; a
        missing file is ignored.  Returns a digest of what was read."""
        path = _inside(file, el.get("file", ""), "appSettings/@file", el.sourceline,
                       section.path, self.contained)
        data = self.extra_bytes(path, optional=True)
        if data is None:
            return ""
        root = parse_xml(data, path)
        if local_name(root) != "appSettings":
            raise ConfigError(f"the root element of an appSettings file must be "
                              f"<appSettings>, not <{local_name(root)}>", path,
                              root.sourceline, section.path)
        extra, _ = Parser(path, section.path, self.warn).parse(root, section.element)
        keys = {op.keys for op in extra.ops if op.kind == "add"}
        delta.ops = [op for op in delta.ops
                     if not (op.kind == "add" and op.keys in keys)] + extra.ops
        return _digest(root)


def _inside(base_file: str, ref: str, what: str, line: int | None,
            section: str, contained: bool = True) -> str:
    """``ref`` as a path relative to ``base_file``'s folder, refusing absolute paths and
    ``..`` (as .NET does for configSource): a config file can only pull in files
    beside or below it.  ``contained``: the same holds for the real path, symbolic links
    resolved (a link out of the folder is refused without reading its target: the error
    names the referencing file and line, so a 500.19 page shows none of the target)."""
    rel = ref.strip().replace("\\", "/")
    if not rel or rel.startswith("/") or ".." in rel.split("/") or ":" in rel:
        raise ConfigError(f"{what} '{ref}' must be a relative path to a file in the same "
                          "folder or below", base_file, line, section)
    folder = os.path.dirname(os.path.abspath(base_file))
    path = os.path.join(folder, rel)
    if contained:
        real_folder = os.path.realpath(folder)
        real = os.path.realpath(path)
        if real != real_folder and not real.startswith(real_folder.rstrip("/") + "/"):
            raise ConfigError(f"{what} '{ref}' is a symbolic link to a file outside the folder of "
                              "the configuration file (the site's symbolicLinks/@allowOutsideRoot "
                              "allows it)", base_file, line, section)
    return path


def _digest(el: etree._Element) -> str:
    try:
        text = etree.tostring(el, method="c14n", with_comments=False)
    except (ValueError, etree.C14NError):
        text = etree.tostring(el)
    return hashlib.sha1(text).hexdigest()


def read_document(data: bytes, path: str,
                  files: dict[str, bytes] | None = None, contained: bool = True) -> ConfigDocument:
    """Parse one configuration file; ``ConfigError`` on any violation.  ``files``: the
    bytes of its configSource / appSettings files as read earlier (else from disk).
    ``contained``: refuse configSource / appSettings files whose real path (symbolic
    links resolved) leaves this file's folder."""
    return _Reader(path, files, contained).read(parse_xml(data, path))


def unknown_warning(path: str, line: int, section: str) -> str:
    return (f"{path}:{line}: {section}: section is not implemented by Poolhouse; "
            "ignored")


__all__ = ["ConfigDocument", "Contribution", "Registration", "read_document", "Warn",
           "unknown_warning"]
