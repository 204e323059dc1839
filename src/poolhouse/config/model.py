"""The flat, precomputed configuration the processes run on.

The configuration system (schema, XML loading, hierarchy merge) produces these objects
once per load or change; the listener, the activation service and the workers read them
and never look at XML.  Every object here round-trips through ``to_dict``/``from_dict`` so
the activation service can hand it to the listener over the control channel as JSON.

Times are seconds (float); sizes are bytes unless a name says KB.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _from(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict made by ``dataclasses.asdict``, recursing into
    the nested dataclass fields and lists of them declared in ``_NESTED``."""
    nested: dict[str, Any] = getattr(cls, "_NESTED", {})
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key not in names:
            continue
        sub = nested.get(key)
        if sub is None:
            kwargs[key] = value
        elif isinstance(sub, list):
            kwargs[key] = [_from(sub[0], v) for v in value]
        elif isinstance(sub, dict):
            kwargs[key] = {k: _from(sub["*"], v) for k, v in value.items()}
        else:
            kwargs[key] = _from(sub, value)
    return cls(**kwargs)


@dataclass
class Binding:
    """One `<binding protocol="http" bindingInformation="ip:port:host">`.

    ``ip`` is ``"*"`` for all addresses; ``host`` is ``""`` for any host name.
    ``certificate_file``/``key_file``/``ssl_flags`` are used by https bindings."""

    protocol: str
    ip: str
    port: int
    host: str = ""
    certificate_file: str = ""
    key_file: str = ""
    ssl_flags: int = 0

    @property
    def information(self) -> str:
        ip = f"[{self.ip}]" if ":" in self.ip else self.ip  # IPv6 is stored unbracketed
        return f"{ip}:{self.port}:{self.host}"


@dataclass
class VirtualDirectory:
    path: str  # relative to its application, "/" for the root one
    physical_path: str
    allow_sub_dir_config: bool = True  # false: no web.config is read below this folder


@dataclass
class Application:
    path: str  # "/" or "/app" (no trailing slash except the root)
    pool: str
    physical_path: str  # the physical path of the application's root virtual directory
    virtual_directories: list[VirtualDirectory] = field(default_factory=list)
    enabled_protocols: str = "http"
    preload_enabled: bool = False

    _NESTED = {"virtual_directories": [VirtualDirectory]}


@dataclass
class SiteLimits:
    max_connections: int = 4294967295
    max_bandwidth: int = 4294967295
    connection_timeout: float = 120.0
    max_url_segments: int = 32


@dataclass
class CustomLogField:
    """``logFile/customFields/add``: a W3C log field from a header or server variable."""
    log_field_name: str
    source_name: str
    source_type: str = "RequestHeader"  # | "ResponseHeader" | "ServerVariable"


@dataclass
class LogFile:
    directory: str = ""  # empty: <state dir>/logs
    enabled: bool = True
    log_format: str = "W3C"
    period: str = "Daily"
    truncate_size: int = 20971520
    local_time_rollover: bool = False
    log_ext_file_flags: str = (
        "Date, Time, ClientIP, UserName, ServerIP, Method, UriStem, UriQuery, HttpStatus, "
        "Win32Status, TimeTaken, ServerPort, UserAgent, Referer, HttpSubStatus"
    )
    custom_fields: list[CustomLogField] = field(default_factory=list)
    max_custom_field_length: int = 4096

    _NESTED = {"custom_fields": [CustomLogField]}


@dataclass
class FailedRequestsLogging:
    """The site's ``traceFailedRequestsLogging``: where Failed Request Tracing writes."""
    enabled: bool = False
    directory: str = ""  # empty: <state dir>/logs/FailedReqLogFiles
    max_log_files: int = 50
    max_log_file_size_kb: int = 1024


@dataclass
class Site:
    id: int
    name: str
    server_auto_start: bool = True
    bindings: list[Binding] = field(default_factory=list)
    applications: list[Application] = field(default_factory=list)
    limits: SiteLimits = field(default_factory=SiteLimits)
    log_file: LogFile = field(default_factory=LogFile)
    trace_failed_requests: FailedRequestsLogging = field(default_factory=FailedRequestsLogging)
    # symbolicLinks/@allowOutsideRoot: symbolic links may lead out of their folder
    symlinks_outside_root: bool = False

    _NESTED = {
        "bindings": [Binding],
        "applications": [Application],
        "limits": SiteLimits,
        "log_file": LogFile,
        "trace_failed_requests": FailedRequestsLogging,
    }


@dataclass
class Pool:
    """An application pool with its `processModel`, `recycling`, `failure` and `cpu`
    settings flattened, plus Poolhouse's `python` extension element."""

    name: str
    auto_start: bool = True
    start_mode: str = "OnDemand"  # OnDemand | AlwaysRunning
    queue_length: int = 1000
    enable_32bit: bool = False
    managed_runtime_version: str = ""
    managed_pipeline_mode: str = "Integrated"  # Integrated | Classic (preconditions only)
    # processModel
    identity_type: str = "ApplicationPoolIdentity"
    user_name: str = ""
    max_processes: int = 1
    idle_timeout: float = 1200.0
    idle_timeout_action: str = "Terminate"
    ping_enabled: bool = True
    ping_interval: float = 30.0
    ping_response_time: float = 90.0
    startup_time_limit: float = 90.0
    shutdown_time_limit: float = 90.0
    # recycling
    disallow_overlapping_rotation: bool = False
    disallow_rotation_on_config_change: bool = False
    # recycle reasons written to the event log (logEventOnRecycle), lower-case names
    log_event_on_recycle: list[str] = field(default_factory=lambda: [
        "time", "requests", "schedule", "memory", "isapiunhealthy", "ondemand", "configchange", "privatememory"])
    periodic_restart_time: float = 104400.0  # 29 hours; 0 = off
    periodic_restart_requests: int = 0
    periodic_restart_memory_kb: int = 0
    periodic_restart_private_memory_kb: int = 0
    periodic_restart_schedule: list[str] = field(default_factory=list)  # "hh:mm:ss"
    # failure
    rapid_fail_protection: bool = True
    rapid_fail_protection_interval: float = 300.0
    rapid_fail_protection_max_crashes: int = 5
    load_balancer_capabilities: str = "HttpLevel"
    orphan_worker_process: bool = False
    orphan_action_exe: str = ""
    orphan_action_params: str = ""
    # cpu
    cpu_limit: int = 0  # 1/1000ths of a percent, as IIS
    cpu_action: str = "NoAction"
    cpu_reset_interval: float = 300.0
    # Poolhouse extension: <python executable="…" threads="…" />
    python_executable: str = ""  # empty: the interpreter Poolhouse runs on
    python_threads: int = 0  # 0: one request at a time, run on the worker's event loop
    python_request_timeout: float = 0.0  # <python requestTimeout>, seconds; 0: off
    # more of <add>/<processModel>
    enable_configuration_override: bool = True  # false: web.config files are ignored
    environment_variables: dict[str, str] = field(default_factory=dict)


@dataclass
class WebLimits:
    connection_timeout: float = 120.0
    header_wait_timeout: float = 0.0  # 0: HTTP.sys default (120 s)
    min_bytes_per_second: int = 240
    max_global_bandwidth: int = 4294967295


@dataclass
class ConfigHistory:
    """`system.applicationHost/configHistory`: snapshots of applicationHost.config."""

    enabled: bool = True
    path: str = ""  # empty: <state dir>/config/history
    max_histories: int = 10
    period: float = 120.0  # seconds between checks of the file (besides inotify)


@dataclass
class ServerConfig:
    """Everything the activation service and the listener need, flat."""

    pools: dict[str, Pool] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    web_limits: WebLimits = field(default_factory=WebLimits)
    config_history: ConfigHistory = field(default_factory=ConfigHistory)
    config_path: str = ""  # the applicationHost.config this was loaded from ("" = embedded)
    source_files: list[str] = field(default_factory=list)  # every file read, for watching
    warnings: list[str] = field(default_factory=list)
    # The accepted applicationHost.config as read (bytes decoded as latin-1, so they
    # round-trip through JSON): workers merge system.webServer from these bytes, never
    # from the file on disk, which may have changed — or broken — since.
    config_text: str = ""
    config_extra: dict[str, str] = field(default_factory=dict)  # its configSource files, ditto

    _NESTED = {"pools": {"*": Pool}, "sites": [Site], "web_limits": WebLimits,
               "config_history": ConfigHistory}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerConfig":
        return _from(cls, data)

    def site_by_name(self, name: str) -> Site | None:
        for site in self.sites:
            if site.name.lower() == name.lower():
                return site
        return None


# ---------------------------------------------------------------------------------------
# What a worker needs for one URL: the effective system.webServer configuration there.


@dataclass
class HandlerMapping:
    """One entry of `system.webServer/handlers`, in effective order (child level first)."""

    name: str
    path: str
    verb: str = "*"
    modules: str = ""
    script_processor: str = ""
    resource_type: str = "Unspecified"  # File | Directory | Either | Unspecified
    require_access: str = "Script"  # None | Read | Write | Script | Execute
    pre_condition: str = ""
    response_buffer_limit: int = 4194304
    type: str = ""
    allow_path_info: bool = False
    # Poolhouse extension: <environmentVariables> of a WsgiModule/AsgiModule application
    environment_variables: dict[str, str] = field(default_factory=dict)


@dataclass
class MimeMap:
    file_extension: str
    mime_type: str


@dataclass
class WebConfig:
    """The effective `system.webServer` (and `appSettings`) configuration at one URL.

    Sections Poolhouse implements but that have no field here are available raw, merged,
    in ``sections`` (section path -> merged element as nested dicts) for the modules."""

    handlers: list[HandlerMapping] = field(default_factory=list)
    access_policy: str = "Read, Script"
    default_document_enabled: bool = True
    default_documents: list[str] = field(default_factory=list)
    directory_browse_enabled: bool = False
    directory_browse_show_flags: str = "Date, Time, Size, Extension"
    mime_maps: dict[str, str] = field(default_factory=dict)  # ".ext" (lower) -> type
    app_settings: dict[str, str] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)  # names of the enabled modules
    sections: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. sections Poolhouse ignores

    _NESTED = {"handlers": [HandlerMapping]}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WebConfig":
        return _from(cls, data)
