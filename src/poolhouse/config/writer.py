"""Reading and changing configuration files: the API the admin CLI and the REST API use.

    w = ConfigWriter("/etc/poolhouse/applicationHost.config")
    w.get_section("system.webServer/defaultDocument", "Shop/app")       # effective, merged
    w.set_attribute("system.webServer/directoryBrowse", "enabled", "true",
                    at=Target.web_config("Shop/app"))
    w.add_item("system.webServer/staticContent", {"fileExtension": ".webmanifest",
               "mimeType": "application/manifest+json"}, at=Target.location("Shop"))
    w.remove_item("system.webServer/defaultDocument", {"value": "iisstart.htm"},
                  element="files", at=Target.web_config("Shop"))
    w.commit()   # writes every changed file atomically; returns their paths

An edit names the level it is written to (``Target``): applicationHost.config itself, a
``<location path="Site/app">`` in it, or the web.config of the folder a path maps to.
Each edit is checked against the schema first (unknown attribute, type, range, required
keys) and then by loading the changed file through the real loader and hierarchy merge —
so a lock (``overrideMode``, ``lockAttributes``, ``lockItem``...), an ``allowDefinition``,
or a duplicate collection key refuses the edit with the same ``ConfigError`` (file, line,
section, reason) a request would get, and the file stays as it was.

Files are edited in place with lxml: comments, the XML declaration, element order and
the indentation of surrounding siblings are kept; a new element is indented like its
siblings (or one step deeper than its parent).  Attribute values are re-serialised with
double quotes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from . import model
from .delta import Merged, apply, to_plain
from .document import ConfigDocument, read_document
from .errors import ConfigError
from .history import write_atomic
from .resolver import WS, WebConfigResolver, _norm, _Stat
from .schema import SECTIONS, Element, Section
from .server import documents_of, load_server_config
from .xmlsafe import element_children, local_name, parse_xml, read_config_bytes

APPHOST_LEVEL, LOCATION_LEVEL, WEB_CONFIG_LEVEL = "applicationHost", "location", "web.config"


@dataclass(frozen=True)
class Target:
    """Where an edit is written: ``kind`` is applicationHost / location / web.config;
    ``path`` is a configuration path "Site[/app[/folder]]" (empty for the server)."""

    kind: str = APPHOST_LEVEL
    path: str = ""

    @classmethod
    def apphost(cls) -> "Target":
        return cls(APPHOST_LEVEL, "")

    @classmethod
    def location(cls, path: str) -> "Target":
        return cls(LOCATION_LEVEL, path.strip("/"))

    @classmethod
    def web_config(cls, path: str) -> "Target":
        return cls(WEB_CONFIG_LEVEL, path.strip("/"))


class _File:
    """One file being edited: its tree, and what lies around the root element (the XML
    declaration, comments before and after it), which is written back verbatim."""

    def __init__(self, path: str, original: bytes | None) -> None:
        self.path = path
        self.original = original  # None: the file does not exist yet
        if original is None:
            self.root = etree.fromstring(b"<configuration>\n</configuration>")
            self.prologue, self.epilogue = b'<?xml version="1.0" encoding="utf-8"?>\n', b"\n"
            self.encoding = "utf-8"
        else:
            self.root = parse_xml(original, path)
            self.encoding = self.root.getroottree().docinfo.encoding or "utf-8"
            start = _root_start(original)
            end = original.rfind(b">", start) + 1
            self.prologue, self.epilogue = original[:start], original[end:]
            self.self_closing_space = original.count(b" />") >= original.count(b"/>") / 2
        self.dirty = False

    self_closing_space = True

    def data(self) -> bytes:
        body: bytes = etree.tostring(self.root, encoding=self.encoding, xml_declaration=False,
                                     with_tail=False)
        if self.self_closing_space:  # IIS's files write <add ... />; lxml writes <add .../>
            parts = _COMMENT.split(body)
            comments = _COMMENT.findall(body)
            body = b"".join(_SELF_CLOSING.sub(b" />", part) + (comments[i] if i < len(comments)
                                                               else b"")
                            for i, part in enumerate(parts))
        return self.prologue + body + self.epilogue


_COMMENT = re.compile(rb"<!--.*?-->", re.S)
_SELF_CLOSING = re.compile(rb"(?<=[^\s/])/>")


def _root_start(data: bytes) -> int:
    """Offset of the root element's start tag (after declaration, comments, DOCTYPE)."""
    i, n = 0, len(data)
    while i < n:
        while i < n and data[i:i + 1].isspace():
            i += 1
        if data.startswith(b"\xef\xbb\xbf", i):
            i += 3
        elif data.startswith(b"<?", i):
            i = data.index(b"?>", i) + 2
        elif data.startswith(b"<!--", i):
            i = data.index(b"-->", i) + 3
        elif data.startswith(b"<!", i):
            i = data.index(b">", i) + 1
        else:
            return i
    return n


class ConfigWriter:
    def __init__(self, apphost_path: str) -> None:
        self.apphost_path = os.path.abspath(apphost_path)
        self._files: dict[str, _File] = {}

    # ---- reading ----------------------------------------------------------------------

    def server(self) -> model.ServerConfig:
        """The ServerConfig of applicationHost.config as currently edited."""
        f = self._files.get(self.apphost_path)
        return load_server_config(self.apphost_path, f.data() if f is not None else None)

    def get_section(self, section: str, path: str = "") -> dict[str, Any]:
        """The effective (merged, defaults filled in) section at a configuration path:
        "" for the server level, "Site", "Site/app", "Site/app/folder"."""
        schema = _section(section)
        cfg = self.server()
        if not path.strip("/"):
            docs = documents_of(cfg)
            merged: Merged | None = None
            for level, doc in enumerate(docs.docs):
                for c in doc.contributions:
                    if c.section is schema and not c.location_key:
                        merged = merged or Merged(schema.element)
                        apply(merged, c.delta, section, level)
            return to_plain(merged, schema.element)
        if not (section.startswith(WS) or section == "appSettings"):
            raise ConfigError(f"{section} exists only at the server level (path \"\")",
                              self.apphost_path, section=section)
        resolver, url = self._resolver(cfg, path)
        result: dict[str, Any] = resolver.for_path(url).sections[section]
        return result

    # ---- changing -----------------------------------------------------------------------

    def set_attribute(self, section: str, name: str, value: Any, *, element: str = "",
                      at: Target = Target()) -> None:
        """Set ``name`` on the section element (or its child ``element``, "a/b")."""
        schema = _section(section)
        el_schema = _child_schema(schema, element)
        attr = el_schema.attrs.get(name)
        if attr is None:
            raise ConfigError(f"unrecognized attribute '{name}' on <{el_schema.name}>; allowed: "
                              + ", ".join(el_schema.attrs), section=section)
        text = _text(value)
        try:
            attr.parse(text)
        except ValueError as e:
            raise ConfigError(f"invalid value for attribute '{name}': {e}",
                              section=section) from None
        self._edit(at, section, element, lambda el: el.set(name, text))

    def add_item(self, section: str, attrs: dict[str, Any], *, element: str = "",
                 at: Target = Target()) -> None:
        """Add a collection entry (``<add>``, ``<mimeMap>``, ...) to the collection of the
        section element (or of its child ``element``)."""
        schema = _section(section)
        coll = _child_schema(schema, element).collection
        if coll is None:
            raise ConfigError(f"<{element or schema.element.name}> holds no collection",
                              section=section)
        texts = {k: _text(v) for k, v in attrs.items()}
        for k, v in texts.items():
            attr = coll.item.attrs.get(k)
            if attr is None:
                raise ConfigError(f"unrecognized attribute '{k}' on <{coll.add}>; allowed: "
                                  + ", ".join(coll.item.attrs), section=section)
            try:
                attr.parse(v)
            except ValueError as e:
                raise ConfigError(f"invalid value for attribute '{k}': {e}",
                                  section=section) from None
        missing = [a.name for a in coll.item.attrs.values() if a.required and a.name not in texts]
        if missing:
            raise ConfigError(f"missing required attribute '{missing[0]}' on <{coll.add}>",
                              section=section)

        def edit(el: etree._Element) -> None:
            new = etree.Element(coll.add)
            for k, v in texts.items():
                new.set(k, v)
            _append(el, new)

        self._edit(at, section, element, edit)

    def remove_item(self, section: str, key: dict[str, Any], *, element: str = "",
                    at: Target = Target()) -> None:
        """Remove a collection entry: an entry this file adds is deleted from the file;
        an inherited one gets a ``<remove>`` directive (where the collection has one)."""
        schema = _section(section)
        coll = _child_schema(schema, element).collection
        if coll is None:
            raise ConfigError(f"<{element or schema.element.name}> holds no collection",
                              section=section)
        texts = {k: _text(v) for k, v in key.items()}

        def matches(child: etree._Element) -> bool:
            for k, v in texts.items():
                attr = coll.item.attrs.get(k)
                mine = child.get(k)
                if mine is None or attr is None:
                    return False
                if (mine != v) if attr.case_sensitive else (mine.lower() != v.lower()):
                    return False
            return True

        def edit(el: etree._Element) -> None:
            for child in element_children(el):
                if local_name(child) == coll.add and matches(child):
                    _remove(child)
                    return
            if coll.remove is None:
                raise ConfigError(f"the collection has no <remove> directive; the inherited "
                                  f"entry cannot be removed here (use <{coll.clear}/>)"
                                  if coll.clear else "the collection has no <remove> directive",
                                  section=section)
            new = etree.Element(coll.remove)
            for k, v in texts.items():
                new.set(k, v)
            _append(el, new)

        self._edit(at, section, element, edit)

    def commit(self) -> list[str]:
        """Write every changed file (atomically); returns their paths."""
        written = []
        for f in self._files.values():
            if f.dirty:
                os.makedirs(os.path.dirname(f.path), exist_ok=True)
                write_atomic(f.path, f.data())
                f.original, f.dirty = f.data(), False
                written.append(f.path)
        return written

    def discard(self) -> None:
        self._files.clear()

    # ---- internals --------------------------------------------------------------------

    def _file(self, path: str) -> _File:
        f = self._files.get(path)
        if f is None:
            data = read_config_bytes(path) if os.path.exists(path) else None
            f = self._files[path] = _File(path, data)
        return f

    def _edit(self, at: Target, section: str, element: str, change: Any) -> None:
        cfg = self.server()
        if at.kind == WEB_CONFIG_LEVEL:
            if section.startswith("system.applicationHost/"):
                raise ConfigError(f"{section} can only be set in applicationHost.config",
                                  section=section)
            resolver, url = self._resolver(cfg, at.path)
            folder = resolver._physical(url)
            if folder is None:
                raise ConfigError(f"web.config files are not read at '{at.path}' "
                                  "(allowSubDirConfig=\"false\" above it)", section=section)
            path = os.path.join(folder[0], "web.config")
            for name in ("web.config", "Web.config", "Web.Config"):
                if os.path.exists(os.path.join(folder[0], name)):
                    path = os.path.join(folder[0], name)
                    break
        else:
            path = self.apphost_path
            if at.kind == LOCATION_LEVEL and section.startswith("system.applicationHost/"):
                raise ConfigError("system.applicationHost sections cannot be set in a "
                                  "<location> tag", path, section=section)
        f = self._file(path)
        was_dirty, before = f.dirty, f.data()
        container = f.root
        if at.kind == LOCATION_LEVEL:
            container = _location(f.root, at.path)
        el = _ensure(container, section.split("/") + ([p for p in element.split("/") if p]))
        try:
            change(el)
            self._validate(f, at, cfg)
        except ConfigError:
            f.root, f.dirty = parse_xml(before, path), was_dirty  # the edit never happened
            raise
        f.dirty = True

    def _validate(self, f: _File, at: Target, cfg: model.ServerConfig) -> None:
        data = f.data()
        if f.path == self.apphost_path:
            load_server_config(self.apphost_path, data)
            return
        doc = read_document(data, f.path)
        resolver, url = self._resolver(cfg, at.path, preview=(f.path, doc))
        resolver.for_path(url)

    def _resolver(self, cfg: model.ServerConfig, path: str,
                  preview: tuple[str, ConfigDocument] | None = None
                  ) -> tuple[WebConfigResolver, str]:
        site_name, _, rest = path.strip("/").partition("/")
        site = cfg.site_by_name(site_name)
        if site is None:
            raise ConfigError(f"no site named '{site_name}' is configured", self.apphost_path)
        url = _norm("/" + rest)
        lower = url.lower()
        app = max((a for a in site.applications
                   if a.path == "/" or lower == a.path.lower()
                   or lower.startswith(a.path.lower() + "/")), key=lambda a: len(a.path))
        resolver = (_PreviewResolver(cfg, site.name, app.path, preview) if preview
                    else WebConfigResolver(cfg, site.name, app.path))
        return resolver, url


class _PreviewResolver(WebConfigResolver):
    """A resolver that sees one web.config as edited in memory."""

    def __init__(self, cfg: model.ServerConfig, site: str, app: str,
                 preview: tuple[str, ConfigDocument]) -> None:
        self._preview_path, self._preview_doc = preview
        super().__init__(cfg, site, app)

    def _web_config_at(self, url: str, now: float) -> _Stat:
        mapped = self._physical(url)
        if mapped is not None and os.path.dirname(self._preview_path) == mapped[0].rstrip("/"):
            return _Stat(now, self._preview_path, -2.0)
        return super()._web_config_at(url, now)

    def _document(self, path: str, mtime: float) -> ConfigDocument | ConfigError:
        if path == self._preview_path:
            self._files[path] = (mtime, self._preview_doc)
            return self._preview_doc
        return super()._document(path, mtime)


# ---- helpers ------------------------------------------------------------------------------


def _section(path: str) -> Section:
    section = SECTIONS.get(path)
    if section is None:
        raise ConfigError(f"the section '{path}' is not implemented by Poolhouse")
    return section


def _child_schema(section: Section, element: str) -> Element:
    schema = section.element
    for part in [p for p in element.split("/") if p]:
        child = schema.children.get(part)
        if child is None:
            raise ConfigError(f"<{schema.name}> has no child element <{part}>",
                              section=section.path)
        schema = child
    return schema


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _indent_of(el: etree._Element) -> str:
    """The whitespace in front of ``el`` on its line."""
    prev = el.getprevious()
    text = prev.tail if prev is not None else (el.getparent().text
                                               if el.getparent() is not None else "")
    text = text or ""
    return text[text.rfind("\n") + 1:] if "\n" in text else ""


def _append(parent: etree._Element, child: etree._Element) -> None:
    """Append ``child`` as the last element of ``parent``, indented like its siblings."""
    kids = list(parent)
    if kids:
        last = kids[-1]
        indent = _indent_of(kids[0]) if isinstance(kids[0].tag, str) else _indent_of(last)
        closing = last.tail or "\n" + _indent_of(parent)
        last.tail = "\n" + indent
        child.tail = closing
    else:
        outer = _indent_of(parent) if parent.getparent() is not None else ""
        parent.text = "\n" + outer + "  "
        child.tail = "\n" + outer
    parent.append(child)


def _remove(el: etree._Element) -> None:
    """Remove ``el`` and the whitespace in front of it, keeping the closing indentation."""
    parent = el.getparent()
    prev = el.getprevious()
    if prev is not None:
        prev.tail = el.tail
    else:
        parent.text = el.tail if el.tail and el.tail.strip() else (
            el.tail if len(parent) > 1 else (el.tail or ""))
    parent.remove(el)


def _ensure(parent: etree._Element, names: list[str]) -> etree._Element:
    el = parent
    for name in names:
        found = next((c for c in element_children(el) if local_name(c) == name), None)
        if found is None:
            found = etree.Element(name)
            _append(el, found)
        el = found
    return el


def _location(root: etree._Element, path: str) -> etree._Element:
    wanted = path.strip("/").lower()
    for child in element_children(root):
        if local_name(child) == "location":
            loc = (child.get("path") or "").strip().strip("/").replace("\\", "/").lower()
            if loc == wanted and child.get("overrideMode") in (None, "Inherit"):
                return child
    new = etree.Element("location")
    new.set("path", path)
    _append(root, new)
    return new


__all__ = ["APPHOST_LEVEL", "LOCATION_LEVEL", "WEB_CONFIG_LEVEL", "ConfigWriter", "Target"]
