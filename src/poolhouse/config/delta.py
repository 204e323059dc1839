"""Parsed configuration elements and the merge of a hierarchy of them.

A ``Delta`` is what one configuration file says about one element: the attributes it
sets, its child elements, and its collection directives (add/remove/clear) — typed and
validated against the schema when the file is read, with file and line kept.  A
``Merged`` is the effective element after applying deltas from the top of the hierarchy
down: attributes by override, collections by directive with IIS's rules (duplicate keys,
``mergeAppend``), and the locks (``lockAttributes``, ``lockAllAttributesExcept``,
``lockElements``, ``lockAllElementsExcept``, ``lockItem``) that later deltas must obey.
``to_plain`` turns a Merged into dicts with every default filled in: attributes under
their XML names, collection entries as a list under ``"items"``.

Levels: the built-in base configuration is level ``DEFAULTS`` (0), applicationHost.config
``APPHOST`` (1), every web.config ``BELOW`` (2).  The base plays the part of IIS's schema
defaults and stock file, not of a parent file: applicationHost.config may redeclare an
entry the base already has (the file's entry replaces the base's, at the file's
position) and is not bound by the base's locks (``lockItem``, ``lockAttributes``, ...),
so a stock IIS applicationHost.config, which declares the same modules and handlers,
loads.  The base's locks do bind web.config files, as the stock file's would.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from lxml import etree  # type: ignore[import-untyped]

from .errors import ConfigError
from .paths import expand_env, normalize_path, windows_path_problem
from .schema import Attr, Collection, Element
from .xmlsafe import element_children, local_name

ITEMS = "items"
LOCK_ATTRS = ("lockAttributes", "lockAllAttributesExcept", "lockElements",
              "lockAllElementsExcept")

Warn = Callable[[str, int | None, str], None]  # (file, line, message)

DEFAULTS, APPHOST, BELOW = 0, 1, 2

_ENCRYPTED = re.compile(r"^\s*\[enc:[^:\]]+:.*:enc\]\s*$", re.S)


class Locks:
    __slots__ = ("attrs", "attrs_except", "elements", "elements_except")

    def __init__(self) -> None:
        self.attrs: set[str] = set()
        self.attrs_except: set[str] | None = None
        self.elements: set[str] = set()
        self.elements_except: set[str] | None = None

    def attr_locked(self, name: str) -> bool:
        if "*" in self.attrs or name in self.attrs:
            return True
        return self.attrs_except is not None and name not in self.attrs_except

    def element_locked(self, name: str) -> bool:
        if name in self.elements:
            return True
        return self.elements_except is not None and name not in self.elements_except

    def update(self, other: "Locks") -> None:
        self.attrs |= other.attrs
        self.elements |= other.elements
        if other.attrs_except is not None:
            self.attrs_except = (
                set(other.attrs_except) if self.attrs_except is None
                else self.attrs_except & other.attrs_except
            )
        if other.elements_except is not None:
            self.elements_except = (
                set(other.elements_except) if self.elements_except is None
                else self.elements_except & other.elements_except
            )


class Op:
    """One collection directive."""

    __slots__ = ("kind", "name", "item", "keys", "locked", "line")

    def __init__(self, kind: str, name: str, item: "Delta | None",
                 keys: tuple[Any, ...], locked: bool, line: int) -> None:
        self.kind = kind  # "add" | "remove" | "clear"
        self.name = name  # the directive's element name (add, mimeMap, clearSpns, ...)
        self.item = item
        self.keys = keys  # one normalized key per key group
        self.locked = locked
        self.line = line


class Delta:
    """What one file says about one element."""

    __slots__ = ("schema", "attrs", "children", "ops", "locks", "file", "line")

    def __init__(self, schema: Element, file: str, line: int) -> None:
        self.schema = schema
        self.attrs: dict[str, Any] = {}
        self.children: dict[str, Delta] = {}
        self.ops: list[Op] = []
        self.locks: Locks | None = None
        self.file = file
        self.line = line


def _csv(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


def _norm_key(attr: Attr, value: Any) -> Any:
    if isinstance(value, str) and not attr.case_sensitive:
        return value.lower()
    return value


def key_of(coll: Collection, attrs: dict[str, Any]) -> tuple[Any, ...]:
    """One normalized key per key group of the collection (defaults fill gaps)."""
    item = coll.item
    out = []
    for group in coll.key_groups:
        out.append(tuple(
            _norm_key(item.attrs[n], attrs.get(n, item.attrs[n].default)) for n in group
        ))
    return tuple(out)


class Parser:
    """Turns XML elements into Deltas for one file."""

    def __init__(self, file: str, section: str, warn: Warn) -> None:
        self.file = file
        self.section = section
        self.warn = warn

    def error(self, reason: str, line: int | None) -> ConfigError:
        return ConfigError(reason, self.file, line, self.section)

    def parse(self, el: etree._Element, schema: Element, *, item_of: Collection | None = None,
              remove: bool = False) -> tuple[Delta, bool]:
        """Parse ``el`` against ``schema``; returns the delta and its lockItem flag."""
        line = el.sourceline or 0
        d = Delta(schema, self.file, line)
        lock_item = False
        for raw_name, text in el.attrib.items():
            name = str(raw_name)
            if name.startswith("{"):
                continue  # namespaced attributes (xdt:Transform, ...) are not settings
            value = str(text)
            if name in LOCK_ATTRS:
                locks = d.locks or Locks()
                d.locks = locks
                names = _csv(value)
                if name == "lockAttributes":
                    locks.attrs |= names
                elif name == "lockAllAttributesExcept":
                    locks.attrs_except = names
                elif name == "lockElements":
                    locks.elements |= names
                else:
                    locks.elements_except = names
                continue
            if name == "lockItem" and item_of is not None:
                try:
                    lock_item = value.strip().lower() == "true" or (
                        value.strip().lower() != "false" and bool(int(value)))
                except ValueError:
                    raise self.error(f"invalid value '{value}' for lockItem", line) from None
                continue
            attr = schema.attrs.get(name)
            if attr is None:
                if item_of is not None and item_of.allow_unrecognized:
                    d.attrs[name] = value
                    continue
                allowed = ", ".join(schema.attrs) or "none"
                raise self.error(
                    f"unrecognized attribute '{name}' on <{local_name(el)}>; "
                    f"allowed: {allowed}", line)
            if remove and not attr.is_key:
                continue  # IIS ignores non-key attributes on remove
            if _ENCRYPTED.match(value):
                self.warn(self.file, line, f"{self.section}: {local_name(el)}/@{name}: the "
                          "value is encrypted ([enc:…:enc]) with a Windows key provider "
                          "Poolhouse cannot use; the attribute is ignored")
                continue
            d.attrs[name] = self.value(attr, value, line, local_name(el))
        if item_of is not None and not remove:
            for attr in schema.attrs.values():
                if attr.required and attr.name not in d.attrs:
                    raise self.error(
                        f"missing required attribute '{attr.name}' on <{local_name(el)}>",
                        line)
        if remove:
            return d, lock_item
        coll = schema.collection
        for child in element_children(el):
            name = local_name(child)
            cline = child.sourceline or 0
            sub = schema.children.get(name)
            if sub is not None:
                if name in d.children:
                    raise self.error(f"element <{name}> appears more than once", cline)
                d.children[name], _ = self.parse(child, sub)
                continue
            if coll is not None:
                if name == coll.add:
                    item, locked = self.parse(child, coll.item, item_of=coll)
                    d.ops.append(Op("add", name, item, key_of(coll, item.attrs), locked,
                                    cline))
                    continue
                if name == coll.remove:
                    item, _ = self.parse(child, coll.item, item_of=coll, remove=True)
                    d.ops.append(Op("remove", name, item, self._remove_keys(coll, item),
                                    False, cline))
                    continue
                if name == coll.clear:
                    if child.attrib or element_children(child):
                        raise self.error(f"<{name}> takes no attributes or elements", cline)
                    d.ops.append(Op("clear", name, None, (), False, cline))
                    continue
            choices = list(schema.children) + (coll.directive_names() if coll else [])
            raise self.error(
                f"unrecognized element <{name}> in <{local_name(el)}>; allowed: "
                + (", ".join(f"<{a}>" for a in choices) or "none"), cline)
        return d, lock_item

    def _remove_keys(self, coll: Collection, item: Delta) -> tuple[Any, ...]:
        for i, group in enumerate(coll.key_groups):
            if any(n in item.attrs for n in group):
                return (i, key_of(coll, item.attrs)[i])
        if not coll.key_groups:
            raise self.error(f"<{coll.remove}> is not supported by this collection", item.line)
        return (0, key_of(coll, item.attrs)[0])

    def value(self, attr: Attr, text: str, line: int, element: str) -> Any:
        if attr.expanded:
            text = expand_env(text)
        if attr.path and text:
            problem = windows_path_problem(text)
            if problem:
                self.warn(self.file, line, f"{self.section}: {element}/@{attr.name}: {problem}")
            else:
                text = normalize_path(text)
        try:
            return attr.parse(text)
        except ValueError as e:
            raise self.error(
                f"invalid value for attribute '{attr.name}' of <{element}>: {e}", line
            ) from None


# ---------------------------------------------------------------------------------------
# Merge


class Item:
    __slots__ = ("keys", "value", "locked", "name", "level")

    def __init__(self, keys: tuple[Any, ...], value: "Merged", locked: bool, name: str,
                 level: int = BELOW):
        self.keys = keys
        self.value = value
        self.locked = locked
        self.name = name
        self.level = level

    def locked_for(self, level: int) -> bool:
        """lockItem binds the levels below the one that set it, except that the
        defaults layer never binds applicationHost.config."""
        return self.locked and not (self.level == DEFAULTS and level <= APPHOST)


class Merged:
    """The effective state of one element after some deltas."""

    __slots__ = ("schema", "attrs", "children", "items", "locks", "default_locks", "file",
                 "line")

    def __init__(self, schema: Element) -> None:
        self.schema = schema
        self.attrs: dict[str, Any] = {}
        self.children: dict[str, Merged] = {}
        self.items: list[Item] = []
        self.locks: Locks | None = None  # set by applicationHost.config or a web.config
        self.default_locks: Locks | None = None  # set by the base configuration
        self.file = ""
        self.line = 0

    def locks_for(self, level: int) -> Locks | None:
        """The locks a delta at ``level`` must obey."""
        if level <= APPHOST or self.default_locks is None:
            return self.locks if level > DEFAULTS else self.default_locks
        if self.locks is None:
            return self.default_locks
        combined = Locks()
        combined.update(self.default_locks)
        combined.update(self.locks)
        return combined

    def get(self, name: str) -> Any:
        """Effective attribute value: explicit, else the schema default."""
        if name in self.attrs:
            return self.attrs[name]
        return self.schema.attrs[name].default

    def child(self, name: str) -> "Merged":
        m = self.children.get(name)
        if m is None:
            m = Merged(self.schema.children[name])
        return m


def apply(m: Merged, d: Delta, section: str, level: int = BELOW) -> None:
    """Apply one delta (from a file at ``level``) to the effective element, enforcing the
    locks of earlier ones."""
    locks = m.locks_for(level)
    for name, value in d.attrs.items():
        if locks is not None and locks.attr_locked(name):
            raise ConfigError(
                f"the attribute '{name}' is locked at a parent level (lockAttributes) "
                "and cannot be set here", d.file, d.line, section)
        m.attrs[name] = value
    for name, cd in d.children.items():
        if locks is not None and locks.element_locked(name):
            raise ConfigError(
                f"the element <{name}> is locked at a parent level (lockElements) and "
                "cannot be set here", d.file, cd.line, section)
        sub = m.children.get(name)
        if sub is None:
            sub = m.children[name] = Merged(cd.schema)
        apply(sub, cd, section, level)
    if d.ops:
        _apply_ops(m, d, section, level, locks)
    if d.locks is not None:
        if level == DEFAULTS:
            if m.default_locks is None:
                m.default_locks = Locks()
            m.default_locks.update(d.locks)
        else:
            if m.locks is None:
                m.locks = Locks()
            m.locks.update(d.locks)
    m.file, m.line = d.file, d.line


def _describe_key(coll: Collection, op: Op) -> str:
    item = op.item
    assert item is not None
    group = coll.key_groups[0] if coll.key_groups else ()
    values = [str(item.attrs.get(n, coll.item.attrs[n].default)) for n in group]
    if len(group) == 1:
        return f"unique key attribute '{group[0]}' set to '{values[0]}'"
    return (f"combined key attributes '{', '.join(group)}' respectively set to "
            f"'{', '.join(values)}'")


def _apply_ops(m: Merged, d: Delta, section: str, level: int, locks: Locks | None) -> None:
    coll = m.schema.collection
    assert coll is not None
    inherited = list(m.items)
    new: list[Item] = []
    check_dupes = bool(coll.key_groups) and not coll.allow_duplicates
    index: list[dict[Any, Item]] = [{} for _ in coll.key_groups]
    if check_dupes:
        for it in inherited:
            for g, key in enumerate(it.keys):
                index[g][key] = it
    for op in d.ops:
        if locks is not None and locks.element_locked(op.name):
            raise ConfigError(
                f"<{op.name}> is locked at a parent level (lockElements) and cannot be "
                "used here", d.file, op.line, section)
        if op.kind == "add":
            assert op.item is not None
            if check_dupes and level == APPHOST:
                # applicationHost.config redeclaring a built-in entry: it replaces it
                for g, key in enumerate(op.keys):
                    old = index[g].get(key)
                    if old is not None and old.level == DEFAULTS and old in inherited:
                        inherited.remove(old)
                        for g2, k2 in enumerate(old.keys):
                            if index[g2].get(k2) is old:
                                del index[g2][k2]
            if check_dupes:
                for g, key in enumerate(op.keys):
                    if key in index[g]:
                        raise ConfigError(
                            f"Cannot add duplicate collection entry of type '{op.name}' "
                            f"with {_describe_key(coll, op)}", d.file, op.line, section)
            value = Merged(coll.item)
            apply(value, op.item, section, level)
            it = Item(op.keys, value, op.locked, op.name, level)
            new.append(it)
            if check_dupes:
                for g, key in enumerate(op.keys):
                    index[g][key] = it
        elif op.kind == "remove":
            group, key = op.keys
            for lst in (new, inherited):
                for it in lst:
                    if it.keys[group] == key:
                        if it.locked_for(level):
                            raise ConfigError(
                                "the collection entry is locked at a parent level "
                                "(lockItem) and cannot be removed", d.file, op.line, section)
                        lst.remove(it)
                        for g, k in enumerate(it.keys):
                            if index[g].get(k) is it:
                                del index[g][k]
                        break
                else:
                    continue
                break
        else:  # clear
            if any(it.locked_for(level) for it in inherited):
                raise ConfigError(
                    "the collection cannot be cleared because it holds entries locked at "
                    "a parent level (lockItem)", d.file, op.line, section)
            inherited = []
            new = []
            index = [{} for _ in coll.key_groups]
    m.items = inherited + new if coll.merge_append else new + inherited


def to_plain(m: Merged | None, schema: Element) -> dict[str, Any]:
    """The element as plain dicts with every default filled in."""
    out: dict[str, Any] = {}
    explicit = m.attrs if m is not None else {}
    for name, attr in schema.attrs.items():
        out[name] = explicit.get(name, attr.default)
    if m is not None:
        for name, value in explicit.items():
            if name not in out:  # allowUnrecognizedAttributes
                out[name] = value
    for name, sub in schema.children.items():
        out[name] = to_plain(m.children.get(name) if m is not None else None, sub)
    if schema.collection is not None:
        item_schema = schema.collection.item
        out[ITEMS] = [to_plain(it.value, item_schema) for it in (m.items if m else [])]
    return out
