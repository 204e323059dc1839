"""Poolhouse's own pool settings that the flat ``Pool`` model does not carry (yet), read
from the merged ``applicationPools`` section once per configuration load.

- ``<python requestTimeout="hh:mm:ss">`` (per pool, or in ``applicationPoolDefaults``):
  the per-pool request timeout enforced by the listener (docs/process-model.md).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config.model import ServerConfig

log = logging.getLogger("poolhouse.activation")


def request_timeouts(cfg: ServerConfig) -> dict[str, float]:
    """Pool name -> requestTimeout in seconds, for the pools where it is not 0."""
    try:
        from ..config.server import APPHOST_PREFIX, _apphost_sections, documents_of

        section = _apphost_sections(documents_of(cfg)).get(APPHOST_PREFIX + "applicationPools")
    except Exception as exc:  # the configuration was valid when loaded; never fail here
        log.warning("cannot read <python requestTimeout>: %s", exc)
        return {}
    if section is None:
        return {}
    default = _python_attr(section.children.get("applicationPoolDefaults"), "requestTimeout")
    out: dict[str, float] = {}
    for item in section.items:
        name = str(item.value.attrs.get("name", ""))
        value = _python_attr(item.value, "requestTimeout")
        seconds = float(value if value is not None else default or 0.0)
        if name in cfg.pools and seconds > 0:
            out[name] = seconds
    return out


def _python_attr(element: Any, name: str) -> Any:
    if element is None:
        return None
    python = element.children.get("python")
    if python is None:
        return None
    return python.attrs.get(name)
