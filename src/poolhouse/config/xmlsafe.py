"""Reading configuration XML safely.

Configuration files may come from anyone who can write a web.config, so the parser is
hardened: no DTD loading, no entity expansion, no network, no huge trees, a size limit,
and any document that declares entities or an external DTD is refused outright (billion
laughs, external entity file disclosure).  Element line numbers are kept for errors.
"""

from __future__ import annotations

import re

from lxml import etree  # type: ignore[import-untyped]

from .errors import ConfigError

MAX_CONFIG_BYTES = 10 * 1024 * 1024

_ENTITY_DECL = re.compile(rb"<!ENTITY", re.IGNORECASE)
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_EXTERNAL_ID = re.compile(rb"<!DOCTYPE[^>\[]*\b(SYSTEM|PUBLIC)\b", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=True,
    )


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_config_bytes(path: str) -> bytes:
    """Read a configuration file, refusing files above the size limit."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read configuration file: {e.strerror}", path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration file is larger than {MAX_CONFIG_BYTES} bytes; refused", path
        )
    return data


def parse_xml(data: bytes, filename: str) -> etree._Element:
    """Parse configuration XML and return the root element; ``ConfigError`` for
    malformed or hostile documents."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration file is larger than {MAX_CONFIG_BYTES} bytes; refused", filename
        )
    m = _ENTITY_DECL.search(data)
    if m:
        raise ConfigError(
            "the document declares XML entities (<!ENTITY>); entity declarations are "
            "refused to prevent entity-expansion and external-entity attacks",
            filename, _line_of(data, m.start()),
        )
    m = _EXTERNAL_ID.search(data)
    if m:
        raise ConfigError(
            "the document references an external DTD; refused",
            filename, _line_of(data, m.start()),
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        line = e.lineno if e.lineno else None
        raise ConfigError(f"malformed XML: {e.msg}", filename, line) from None
    except ValueError as e:  # e.g. a str with an encoding declaration
        raise ConfigError(f"malformed XML: {e}", filename) from None
    tree = root.getroottree()
    dtd = tree.docinfo.internalDTD
    if dtd is not None and (list(dtd.iterentities()) or tree.docinfo.system_url):
        raise ConfigError("the document declares a DTD with entities; refused", filename, 1)
    return root


def local_name(el: etree._Element) -> str:
    """Element name without an XML namespace (old web.config files declare
    ``xmlns="http://schemas.microsoft.com/.NetConfiguration/v2.0"``)."""
    tag = el.tag
    assert isinstance(tag, str)
    return tag.rsplit("}", 1)[-1] if tag.startswith("{") else tag


def element_children(el: etree._Element) -> list[etree._Element]:
    """Child elements, skipping comments and processing instructions."""
    return [c for c in el if isinstance(c.tag, str)]
