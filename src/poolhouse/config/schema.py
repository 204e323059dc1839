"""The configuration schema: every section, element and attribute Poolhouse implements,
declared once.

Each attribute carries its IIS type, its IIS default, its validator and a one-line doc;
each collection its directive names (add/remove/clear), key attributes and merge order;
each section its registration defaults (``overrideModeDefault``, ``allowDefinition``).
Validation errors, the merge and the configuration reference in ``docs/`` are all
generated from these declarations.  The declarations themselves live in
``schema_apphost.py`` (``system.applicationHost``) and ``schema_webserver.py``
(``system.webServer`` and ``appSettings``); this module holds the building blocks and the
registry.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

from . import values as V

TYPES = ("string", "bool", "int", "uint", "int64", "timeSpan", "enum", "flags")


class Attr:
    """One attribute: name, type, IIS default, validation, doc."""

    __slots__ = (
        "name", "type", "default", "doc", "required", "unique_key", "combined_key",
        "case_sensitive", "choices", "range", "exclude", "granularity", "validator",
        "expanded", "path", "extension",
    )

    def __init__(
        self,
        name: str,
        type: str,
        default: Any = None,
        doc: str = "",
        *,
        required: bool = False,
        key: bool = False,
        combined_key: bool = False,
        case_sensitive: bool = False,
        choices: str | tuple[tuple[str, int], ...] = (),
        range: tuple[int, int] | None = None,
        exclude: bool = False,
        granularity: int = 0,
        validator: str = "",
        expanded: bool = False,
        path: bool = False,
        extension: bool = False,
    ) -> None:
        assert type in TYPES, type
        self.name = name
        self.type = type
        self.doc = doc
        self.required = required
        self.unique_key = key
        self.combined_key = combined_key
        self.case_sensitive = case_sensitive
        self.choices: tuple[tuple[str, int], ...] = (
            _parse_choices(choices) if isinstance(choices, str) else choices
        )
        self.range = range
        self.exclude = exclude
        self.granularity = granularity
        self.validator = validator
        self.expanded = expanded
        self.path = path
        self.extension = extension
        # Defaults are declared as IIS writes them and stored parsed.
        self.default: Any = (
            self.parse(default) if isinstance(default, str) and type != "string" else default
        )
        if self.default is None:
            self.default = {"string": "", "bool": False, "timeSpan": 0.0}.get(type, 0)
            if type in ("enum", "flags"):
                self.default = self.choices[0][0] if self.choices else ""

    @property
    def is_key(self) -> bool:
        return self.unique_key or self.combined_key

    def parse(self, text: str) -> Any:
        """XML text -> typed, validated value; ``ValueError`` says what is allowed."""
        t = self.type
        value: Any
        if t == "string":
            if self.validator:
                V.validate_string(self.validator, text)
            return text
        if t == "bool":
            return V.parse_bool(text)
        if t == "enum":
            return V.parse_enum(text, self.choices)
        if t == "flags":
            return V.parse_flags(text, self.choices)
        if t == "timeSpan":
            value = V.parse_timespan(text)
        elif t == "uint":
            value = V.parse_integer(text, 0, V.UINT_MAX, "uint (0-4294967295)")
        elif t == "int":
            value = V.parse_integer(text, V.INT_MIN, V.INT_MAX, "int")
        else:
            value = V.parse_integer(text, V.INT64_MIN, V.INT64_MAX, "int64")
        self.check_range(value, text)
        return value

    def check_range(self, value: float, text: str) -> None:
        if self.range is not None:
            lo, hi = self.range
            inside = lo <= value <= hi
            unit = " seconds" if self.type == "timeSpan" else ""
            if self.exclude and inside:
                raise ValueError(f"'{text}' is not allowed; values {lo}-{hi}{unit} are excluded")
            if not self.exclude and not inside:
                if self.type == "timeSpan":
                    raise ValueError(
                        f"'{text}' is out of range; allowed "
                        f"{V.format_timespan(lo)}-{V.format_timespan(hi)}"
                    )
                raise ValueError(f"'{text}' is out of range; allowed {lo}-{hi}")
        if self.granularity > 1 and value % self.granularity:
            raise ValueError(
                f"'{text}' must be a whole multiple of {self.granularity} seconds"
            )

    def describe_type(self) -> str:
        if self.type in ("enum", "flags"):
            return f"{self.type} ({' | '.join(n for n, _ in self.choices)})"
        return self.type

    def describe_default(self) -> str:
        d = self.default
        if self.type == "timeSpan":
            return V.format_timespan(float(d))
        if self.type == "bool":
            return "true" if d else "false"
        return str(d)


def _parse_choices(text: str) -> tuple[tuple[str, int], ...]:
    """``"A=0 B=1"`` -> ((A, 0), (B, 1))."""
    out = []
    for token in text.split():
        name, _, number = token.partition("=")
        out.append((name, int(number)))
    return tuple(out)


class Collection:
    """A collection inside an element: directives and item schema."""

    __slots__ = (
        "add", "remove", "clear", "item", "merge_append", "allow_duplicates",
        "allow_unrecognized", "key_groups",
    )

    def __init__(
        self,
        item: "Element",
        add: str = "add",
        remove: str | None = "remove",
        clear: str | None = "clear",
        merge_append: bool = True,
        allow_duplicates: bool = False,
        allow_unrecognized: bool = False,
    ) -> None:
        self.item = item
        self.add = add
        self.remove = remove
        self.clear = clear
        self.merge_append = merge_append
        self.allow_duplicates = allow_duplicates
        self.allow_unrecognized = allow_unrecognized
        groups: list[tuple[str, ...]] = [(a.name,) for a in item.attrs.values() if a.unique_key]
        combined = tuple(a.name for a in item.attrs.values() if a.combined_key)
        if combined:
            groups.append(combined)
        self.key_groups: tuple[tuple[str, ...], ...] = tuple(groups)

    def directive_names(self) -> list[str]:
        return [n for n in (self.add, self.remove, self.clear) if n]


Member = Union[Attr, "Element", Collection]


class Element:
    """An element: attributes, child elements, and at most one collection."""

    __slots__ = ("name", "attrs", "children", "collection", "doc", "extension")

    def __init__(self, name: str, *members: Member, doc: str = "", extension: bool = False):
        self.name = name
        self.doc = doc
        self.extension = extension
        self.attrs: dict[str, Attr] = {}
        self.children: dict[str, Element] = {}
        self.collection: Collection | None = None
        for m in members:
            if isinstance(m, Attr):
                self.attrs[m.name] = m
            elif isinstance(m, Element):
                self.children[m.name] = m
            else:
                assert self.collection is None, f"{name}: two collections"
                self.collection = m


class Section:
    """A configuration section: its root element and its registration defaults."""

    __slots__ = ("path", "element", "override_mode_default", "allow_definition", "doc")

    def __init__(
        self,
        path: str,
        *members: Member,
        doc: str,
        override: str = "Allow",
        allow_definition: str = "Everywhere",
    ) -> None:
        self.path = path
        self.element = Element(path.rsplit("/", 1)[-1], *members, doc=doc)
        self.override_mode_default = override
        self.allow_definition = allow_definition
        self.doc = doc


# ---------------------------------------------------------------------------------------
# Small constructors, so the declarations read like the IIS schema.


def S(name: str, default: str = "", doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "string", default, doc, **kw)


def B(name: str, default: bool, doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "bool", default, doc, **kw)


def U(name: str, default: int = 0, doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "uint", default, doc, **kw)


def I(name: str, default: int = 0, doc: str = "", **kw: Any) -> Attr:  # noqa: E741
    return Attr(name, "int", default, doc, **kw)


def I64(name: str, default: int = 0, doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "int64", default, doc, **kw)


def T(name: str, default: str = "00:00:00", doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "timeSpan", default, doc, **kw)


def EN(name: str, default: str, choices: str, doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "enum", default, doc, choices=choices, **kw)


def FL(name: str, default: str, choices: str, doc: str = "", **kw: Any) -> Attr:
    return Attr(name, "flags", default, doc, choices=choices, **kw)


def E(name: str, *members: Member, doc: str = "", extension: bool = False) -> Element:
    return Element(name, *members, doc=doc, extension=extension)


def C(*members: Member, add: str = "add", remove: str | None = "remove",
      clear: str | None = "clear", merge_append: bool = True,
      allow_duplicates: bool = False, doc: str = "") -> Collection:
    return Collection(Element(add, *members, doc=doc), add=add, remove=remove, clear=clear,
                      merge_append=merge_append, allow_duplicates=allow_duplicates)


# ---------------------------------------------------------------------------------------
# The registry.

SECTIONS: dict[str, Section] = {}
GROUPS: set[str] = set()


def register(sections: Iterable[Section]) -> None:
    for section in sections:
        SECTIONS[section.path] = section
        parts = section.path.split("/")
        for i in range(1, len(parts)):
            GROUPS.add("/".join(parts[:i]))


def _load() -> None:
    from . import schema_apphost, schema_webserver

    register(schema_apphost.SECTIONS)
    register(schema_webserver.SECTIONS)


_load()
