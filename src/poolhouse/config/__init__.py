"""Poolhouse configuration: IIS-compatible applicationHost.config and web.config.

Public API (what the listener, the activation service and the workers call):

- ``load_server_config(path=None) -> ServerConfig`` — the built-in base configuration,
  then applicationHost.config (None: the embedded default), as flat dataclasses.
- ``WebConfigResolver(server, site_name, app_path).for_path(url) -> WebConfig`` — the
  effective ``system.webServer`` + ``appSettings`` configuration at a URL, cached per
  folder and refreshed when a contributing file changes.
- ``config_path(url) -> str`` — the configuration path a URL path is matched by (lower
  case, trailing dots and spaces of each segment dropped, as IIS on NTFS): the key for
  anything kept per configuration path.
- ``ConfigError`` — every violation, with file, line, section and reason.

Around them: ``writer.ConfigWriter`` (read and change configuration at a level, keeping
the files' comments and formatting), ``history`` (CFGHISTORY_ snapshots and backups),
``audit`` (what changed between two versions), ``preconditions`` (handler/module
``preCondition`` per pool).  See docs/configuration-system.md.
"""

from .errors import ConfigError
from .model import (
    Application,
    Binding,
    HandlerMapping,
    LogFile,
    MimeMap,
    Pool,
    ServerConfig,
    Site,
    SiteLimits,
    VirtualDirectory,
    WebConfig,
    WebLimits,
)
from .resolver import WebConfigResolver, config_path
from .server import load_server_config

__all__ = [
    "Application", "Binding", "ConfigError", "HandlerMapping", "LogFile", "MimeMap", "Pool",
    "ServerConfig", "Site", "SiteLimits", "VirtualDirectory", "WebConfig",
    "WebConfigResolver", "WebLimits", "config_path", "load_server_config",
]
