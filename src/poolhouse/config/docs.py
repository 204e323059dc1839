"""Generate the configuration reference from the schema.

    python -m poolhouse.config.docs > docs/configuration.md

The page lists every section Poolhouse implements with its registration defaults, and
every element and attribute with its type, IIS default, allowed range and meaning, so it
can never drift from what the loader accepts.
"""

from __future__ import annotations

import sys
from typing import TextIO

from . import values as V
from .schema import SECTIONS, Attr, Element

HEADER = """\
<!-- GENERATED FILE — do not edit. Regenerate with:
     python -m poolhouse.config.docs > docs/configuration.md -->

# Configuration reference

Poolhouse reads IIS's own configuration files: `applicationHost.config` for the server
(pools, sites, bindings, applications, virtual directories, limits) and `web.config`
files in content folders for `system.webServer` and `appSettings`.  This page is
generated from the schema in `src/poolhouse/config/schema_*.py`, so it lists exactly
what the loader accepts.

## How configuration is read

- **Files, in order**: Poolhouse's built-in base configuration
  (`src/poolhouse/config/base.config`: section registrations, modules, handler mappings,
  default documents, MIME map, request filtering), then `applicationHost.config` (the
  embedded default `src/poolhouse/config/default.config` when `poolhouse serve` gets no
  `-c`), then its `<location path="Site/app/dir">` tags, then the `web.config` files in
  the physical folders along the URL path (site root, application roots, virtual
  directories, sub-folders).  A deeper path wins; at the same path, the upper file's
  `<location>` tag applies before the folder's own `web.config`.
- **Attributes** take the deepest value set, else the IIS default listed below.
- **Collections** merge by directive: `add` appends (an existing key is an error,
  "Cannot add duplicate collection entry" — use `remove` first), `remove` deletes by key,
  `clear` drops everything inherited.  Collections marked *child entries first*
  (handlers, default documents, cache profiles) put a lower level's entries before the
  inherited ones.
- **Locking**: a section registered with `overrideModeDefault="Deny"` cannot be used in
  a `web.config` unless a `<location path="..." overrideMode="Allow">` above unlocks it
  (handlers and modules are unlocked this way in the base configuration, as in IIS);
  `allowDefinition` limits where a section may appear (`AppHostOnly`:
  applicationHost.config; `MachineToApplication`: also application-root web.config).
  `lockAttributes`, `lockAllAttributesExcept`, `lockElements`, `lockAllElementsExcept`
  and `lockItem="true"` work as in IIS.  `inheritInChildApplications="false"` on a
  `<location>` keeps its content out of child applications.
- **Errors**: malformed or hostile XML (DTDs with entities, external DTDs, files over
  10 MB), unknown attributes and elements, values of the wrong type or out of range,
  duplicate keys and lock violations are errors naming file, line, section and reason.
  A bad applicationHost.config is refused at load (the running configuration keeps
  serving); a bad web.config makes requests under it fail with 500.19.
- **Sections Poolhouse does not implement** (`system.web`, `runtime`,
  `system.webServer/aspNetCore`, ...) are ignored with one warning each.
- **Paths**: `%VAR%` is expanded in attributes marked *expanded*; `%POOLHOUSE_ROOT%`
  defaults to the installed package folder.  Windows paths (`C:\\...`,
  `%SystemDrive%\\...`) are reported: a warning, or an error for a virtual directory's
  `physicalPath`; relative paths are taken from the applicationHost.config folder, with
  backslashes turned into slashes.
- **Poolhouse extensions** to IIS's schema are marked *extension*.

"""


def _range(a: Attr) -> str:
    parts: list[str] = []
    if a.range is not None:
        lo, hi = a.range
        if a.type == "timeSpan":
            text = f"{V.format_timespan(lo)}–{V.format_timespan(hi)}"
        else:
            text = f"{lo}–{hi}"
        parts.append(("not " if a.exclude else "") + text)
    if a.granularity > 1:
        parts.append(f"whole {'minutes' if a.granularity == 60 else f'{a.granularity} s'}")
    if a.validator:
        parts.append(a.validator)
    return ", ".join(parts)


def _flags(a: Attr) -> str:
    out = []
    if a.required:
        out.append("required")
    if a.unique_key:
        out.append("key")
    if a.combined_key:
        out.append("combined key")
    if a.expanded:
        out.append("expanded")
    if a.extension:
        out.append("**extension**")
    return ", ".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _attrs(el: Element, out: TextIO) -> None:
    if not el.attrs:
        return
    out.write("| Attribute | Type | Default | Range | | Description |\n")
    out.write("|---|---|---|---|---|---|\n")
    for a in el.attrs.values():
        default = a.describe_default()
        out.write(
            f"| `{a.name}` | {_cell(a.describe_type())} | "
            f"{'`' + _cell(default) + '`' if default != '' else '(empty)'} | "
            f"{_cell(_range(a))} | {_flags(a)} | {_cell(a.doc)} |\n"
        )
    out.write("\n")


def _element(el: Element, path: str, level: int, out: TextIO) -> None:
    heading = "#" * min(level, 6)
    ext = " (Poolhouse extension)" if el.extension else ""
    out.write(f"{heading} `{path}`{ext}\n\n")
    if el.doc:
        out.write(f"{el.doc}\n\n")
    _attrs(el, out)
    coll = el.collection
    if coll is not None:
        directives = [f"`<{coll.add}>`"]
        if coll.remove:
            directives.append(f"`<{coll.remove}>`")
        if coll.clear:
            directives.append(f"`<{coll.clear}>`")
        keys = " + ".join("/".join(f"`{k}`" for k in g) for g in coll.key_groups) or "none"
        order = "child entries first" if not coll.merge_append else "parent entries first"
        dup = "; duplicates allowed" if coll.allow_duplicates else ""
        out.write(f"Collection: {', '.join(directives)}; key {keys}; {order}{dup}.\n\n")
        _element(coll.item, f"{path}/{coll.add}", level + 1, out)
    for child in el.children.values():
        _element(child, f"{path}/{child.name}", level + 1, out)


def generate(out: TextIO) -> None:
    out.write(HEADER)
    out.write("## Sections\n\n")
    out.write("| Section | overrideModeDefault | allowDefinition | Description |\n")
    out.write("|---|---|---|---|\n")
    for path, s in SECTIONS.items():
        out.write(f"| [`{path}`](#{_anchor(path)}) | {s.override_mode_default} | "
                  f"{s.allow_definition} | {_cell(s.doc)} |\n")
    out.write("\n")
    for path, s in SECTIONS.items():
        _element(s.element, path, 2, out)


def _anchor(path: str) -> str:
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def main() -> None:
    generate(sys.stdout)


if __name__ == "__main__":
    main()
