"""``load_server_config``: built-in base configuration + applicationHost.config -> the
flat ``ServerConfig`` the activation service and the listener run on."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field

from . import model
from .delta import Merged, apply
from .document import ConfigDocument, Registration, read_document, unknown_warning
from .errors import ConfigError
from .hierarchy import applicable, merge, server_sources
from .paths import windows_path_problem
from .schema import SECTIONS
from .values import format_timespan
from .xmlsafe import read_config_bytes

log = logging.getLogger("poolhouse.config")

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_CONFIG = os.path.join(HERE, "base.config")
DEFAULT_CONFIG = os.path.join(HERE, "default.config")
APPHOST_PREFIX = "system.applicationHost/"

_BINDING = re.compile(r"^(\[[^\]]*\]|[^:\[\]]*):([^:]*):(.*)$")
_base_cache: dict[tuple[str, float], ConfigDocument] = {}


@dataclass
class ServerDocuments:
    """The parsed server-level files, kept so workers need not re-read them."""

    base: ConfigDocument
    apphost: ConfigDocument
    registrations: dict[str, Registration]
    mtimes: dict[str, float] = field(default_factory=dict)

    @property
    def docs(self) -> list[ConfigDocument]:
        return [self.base, self.apphost]


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def load_base() -> ConfigDocument:
    """The built-in base configuration, parsed once per process (and per change)."""
    key = (BASE_CONFIG, _mtime(BASE_CONFIG))
    doc = _base_cache.get(key)
    if doc is None:
        doc = read_document(read_config_bytes(BASE_CONFIG), BASE_CONFIG)
        _base_cache.clear()
        _base_cache[key] = doc
    return doc


def load_documents(path: str | None, data: bytes | None = None,
                   extra: dict[str, bytes] | None = None) -> ServerDocuments:
    """The base and the applicationHost.config at ``path`` (``data``/``extra``: its
    bytes and its configSource files' bytes as accepted earlier; then nothing is read
    from disk and nothing is watched)."""
    apphost_path = path or DEFAULT_CONFIG
    mtimes = {BASE_CONFIG: _mtime(BASE_CONFIG), apphost_path: _mtime(apphost_path)}
    base = load_base()
    if data is None:
        data = read_config_bytes(apphost_path)
    else:
        mtimes = {}
    apphost = read_document(data, apphost_path, extra)
    apphost.data = data
    if mtimes:
        mtimes.update({p: _mtime(p) for p in apphost.extra})
    registrations = dict(base.registrations)
    registrations.update(apphost.registrations)  # applicationHost.config may re-register
    return ServerDocuments(base, apphost, registrations, mtimes)


def load_server_config(path: str | None = None, data: bytes | None = None
                       ) -> model.ServerConfig:
    """Load the built-in base configuration, then the applicationHost.config at ``path``
    (None: the embedded default configuration; ``data``: these bytes instead of the
    file's, e.g. an edit being validated), and return the flat ServerConfig.
    Raises ConfigError (file, line, reason) on any violation."""
    docs = load_documents(path, data)
    warnings: list[str] = []
    seen_unknown: set[str] = set()
    for doc in docs.docs:
        warnings.extend(doc.warnings)
        for section, line in doc.unknown:
            if section not in seen_unknown:
                seen_unknown.add(section)
                warnings.append(unknown_warning(doc.path, line, section))
    _warn_foreign_modules(docs, warnings)
    apphost = _apphost_sections(docs)
    builder = _Builder(docs.apphost.path, warnings)
    cfg = model.ServerConfig(
        pools=builder.pools(apphost.get(APPHOST_PREFIX + "applicationPools")),
        web_limits=builder.web_limits(apphost.get(APPHOST_PREFIX + "webLimits")),
        config_history=builder.config_history(apphost.get(APPHOST_PREFIX + "configHistory")),
        config_path=os.path.abspath(path) if path else "",
        source_files=[BASE_CONFIG, docs.apphost.path, *docs.apphost.extra],
        warnings=warnings,
        config_text=docs.apphost.data.decode("latin-1"),
        config_extra={p: b.decode("latin-1") for p, b in docs.apphost.extra.items()},
    )
    cfg.sites = builder.sites(apphost.get(APPHOST_PREFIX + "sites"), cfg.pools)
    _validate_web_server(docs, cfg)
    if data is None:
        for w in warnings:
            log.warning("%s", w)
    setattr(cfg, "_poolhouse_documents", docs)
    return cfg


def documents_of(cfg: model.ServerConfig) -> ServerDocuments:
    """The parsed server files behind ``cfg`` (re-read when it came over the wire)."""
    docs = getattr(cfg, "_poolhouse_documents", None)
    if isinstance(docs, ServerDocuments):
        return docs
    data = cfg.config_text.encode("latin-1") if cfg.config_text else None
    extra = {p: t.encode("latin-1") for p, t in cfg.config_extra.items()}
    docs = load_documents(cfg.config_path or None, data, extra if data is not None else None)
    setattr(cfg, "_poolhouse_documents", docs)
    return docs


def _warn_foreign_modules(docs: ServerDocuments, warnings: list[str]) -> None:
    """One warning naming the globalModules of applicationHost.config that Poolhouse
    does not provide (IIS's native DLLs): handler mappings using them answer 500.21."""
    provided = set()
    for c in docs.base.contributions:
        if c.section.path == "system.webServer/globalModules":
            provided |= {str(op.item.attrs.get("name")) for op in c.delta.ops
                         if op.kind == "add" and op.item is not None}
    for c in docs.apphost.contributions:
        if c.section.path != "system.webServer/globalModules":
            continue
        foreign = [str(op.item.attrs.get("name")) for op in c.delta.ops
                   if op.kind == "add" and op.item is not None
                   and op.item.attrs.get("name") not in provided]
        if foreign:
            warnings.append(
                f"{docs.apphost.path}:{c.line}: system.webServer/globalModules: modules not "
                "provided by Poolhouse (accepted; handler mappings that use them answer "
                "500.21): " + ", ".join(foreign))


def web_fingerprints(cfg: model.ServerConfig) -> dict[str, str]:
    """Per site (lower-case name): a digest of the server-level configuration its
    workers merge — section registrations, the base's and applicationHost.config's
    system.webServer/appSettings, and the ``<location>`` tags for that site.  A pool
    whose sites' fingerprints changed must be recycled to see the change."""
    docs = documents_of(cfg)
    regs = sorted((r.path, r.override_mode_default, r.allow_definition, r.allow_location)
                  for r in docs.registrations.values())
    common = hashlib.sha1(repr(regs).encode())
    out: dict[str, str] = {}
    for site in cfg.sites:
        h = common.copy()
        for s in server_sources(docs.docs, site.name):
            c = s.contribution
            h.update(repr((s.rank, c.location_key, c.section.path, c.override_mode,
                           c.inherit_in_child_apps, c.digest)).encode())
        out[site.name.lower()] = h.hexdigest()
    return out


def _apphost_sections(docs: ServerDocuments) -> dict[str, Merged]:
    out: dict[str, Merged] = {}
    for level, doc in enumerate(docs.docs):
        for c in doc.contributions:
            path = c.section.path
            if not path.startswith(APPHOST_PREFIX):
                continue
            if c.location_key:
                raise ConfigError(
                    "system.applicationHost sections cannot be set in a <location> tag for "
                    "a site or application", doc.path, c.line, path)
            m = out.get(path)
            if m is None:
                m = out[path] = Merged(SECTIONS[path].element)
            apply(m, c.delta, path, level)
    return out


def _validate_web_server(docs: ServerDocuments, cfg: model.ServerConfig) -> None:
    """Merge the server-level system.webServer configuration (and each location of
    applicationHost.config) once, so errors surface at load time, not per request."""
    sources = server_sources(docs.docs, None)
    targets: set[str | None] = {None}
    site_names = {s.name.lower() for s in cfg.sites}
    for s in sources:
        key = s.contribution.location_key
        if key:
            name = key.partition("/")[0]
            if name not in site_names:
                cfg.warnings.append(
                    f"{s.doc.path}:{s.contribution.line}: <location path="
                    f"\"{s.contribution.location}\"> names no configured site; ignored")
                continue
            targets.add(key)
    for target in targets:
        if target is None:
            chosen = [s for s in sources if s.target is None]
        else:
            name, _, rest = target.partition("/")
            url = "/" + rest if rest else "/"
            per_site = server_sources(docs.docs, name)
            chosen = applicable(per_site, url, lambda _u: "/")
        chosen.sort(key=lambda s: (s.depth, s.rank, s.contribution.order))
        merge(chosen, docs.registrations)


def _first(name: str, *elements: Merged | None) -> object | None:
    for el in elements:
        if el is not None and name in el.attrs:
            value: object = el.attrs[name]
            return value
    return None


class _Builder:
    """Maps the merged system.applicationHost sections onto the flat model."""

    def __init__(self, path: str, warnings: list[str]) -> None:
        self.path = path
        self.dir = os.path.dirname(os.path.abspath(path))
        self.warnings = warnings

    def warn(self, line: int, section: str, message: str) -> None:
        self.warnings.append(f"{self.path}:{line}: {section}: {message}")

    def error(self, message: str, line: int | None, section: str) -> ConfigError:
        return ConfigError(message, self.path, line, section)

    # -- pools ---------------------------------------------------------------------

    def pools(self, section: Merged | None) -> dict[str, model.Pool]:
        out: dict[str, model.Pool] = {}
        if section is None:
            return out
        defaults = section.children.get("applicationPoolDefaults")
        for item in section.items:
            pool = self.pool(item.value, defaults)
            out[pool.name] = pool
        return out

    def pool(self, p: Merged, d: Merged | None) -> model.Pool:
        def get(name: str, element: str = "") -> object:
            mine: Merged | None = p
            theirs: Merged | None = d
            schema = p.schema
            for part in element.split("/") if element else []:
                mine = mine.children.get(part) if mine is not None else None
                theirs = theirs.children.get(part) if theirs is not None else None
                schema = schema.children[part]
            value = _first(name, mine, theirs)
            return schema.attrs[name].default if value is None else value

        def sub(element: str) -> tuple[Merged | None, Merged | None]:
            mine: Merged | None = p
            theirs: Merged | None = d
            for part in element.split("/"):
                mine = mine.children.get(part) if mine is not None else None
                theirs = theirs.children.get(part) if theirs is not None else None
            return mine, theirs

        sched_mine, sched_theirs = sub("recycling/periodicRestart/schedule")
        schedule = sched_mine if sched_mine is not None else sched_theirs
        env_mine, env_theirs = sub("environmentVariables")
        env: dict[str, str] = {}
        for source in (env_theirs, env_mine):
            if source is not None:
                for it in source.items:
                    env[str(it.value.get("name"))] = str(it.value.get("value"))
        pm, rc, pr = "processModel", "recycling", "recycling/periodicRestart"
        return model.Pool(
            name=str(get("name")),
            auto_start=bool(get("autoStart")),
            start_mode=str(get("startMode")),
            queue_length=int(get("queueLength")),  # type: ignore[call-overload]
            enable_32bit=bool(get("enable32BitAppOnWin64")),
            managed_runtime_version=str(get("managedRuntimeVersion")),
            managed_pipeline_mode=str(get("managedPipelineMode")),
            identity_type=str(get("identityType", pm)),
            user_name=str(get("userName", pm)),
            max_processes=int(get("maxProcesses", pm)),  # type: ignore[call-overload]
            idle_timeout=float(get("idleTimeout", pm)),  # type: ignore[arg-type]
            idle_timeout_action=str(get("idleTimeoutAction", pm)),
            ping_enabled=bool(get("pingingEnabled", pm)),
            ping_interval=float(get("pingInterval", pm)),  # type: ignore[arg-type]
            ping_response_time=float(get("pingResponseTime", pm)),  # type: ignore[arg-type]
            startup_time_limit=float(get("startupTimeLimit", pm)),  # type: ignore[arg-type]
            shutdown_time_limit=float(get("shutdownTimeLimit", pm)),  # type: ignore[arg-type]
            disallow_overlapping_rotation=bool(get("disallowOverlappingRotation", rc)),
            disallow_rotation_on_config_change=bool(
                get("disallowRotationOnConfigChange", rc)),
            log_event_on_recycle=[f.strip().lower() for f in str(get("logEventOnRecycle", rc)).split(",")
                                  if f.strip()],
            periodic_restart_time=float(get("time", pr)),  # type: ignore[arg-type]
            periodic_restart_requests=int(get("requests", pr)),  # type: ignore[call-overload]
            periodic_restart_memory_kb=int(get("memory", pr)),  # type: ignore[call-overload]
            periodic_restart_private_memory_kb=int(
                get("privateMemory", pr)),  # type: ignore[call-overload]
            periodic_restart_schedule=[
                format_timespan(float(it.value.get("value"))) for it in schedule.items
            ] if schedule is not None else [],
            rapid_fail_protection=bool(get("rapidFailProtection", "failure")),
            rapid_fail_protection_interval=float(
                get("rapidFailProtectionInterval", "failure")),  # type: ignore[arg-type]
            rapid_fail_protection_max_crashes=int(
                get("rapidFailProtectionMaxCrashes", "failure")),  # type: ignore[call-overload]
            load_balancer_capabilities=str(get("loadBalancerCapabilities", "failure")),
            orphan_worker_process=bool(get("orphanWorkerProcess", "failure")),
            orphan_action_exe=str(get("orphanActionExe", "failure")),
            orphan_action_params=str(get("orphanActionParams", "failure")),
            cpu_limit=int(get("limit", "cpu")),  # type: ignore[call-overload]
            cpu_action=str(get("action", "cpu")),
            cpu_reset_interval=float(get("resetInterval", "cpu")),  # type: ignore[arg-type]
            python_executable=str(get("executable", "python")),
            python_threads=int(get("threads", "python")),  # type: ignore[call-overload]
            python_request_timeout=float(get("requestTimeout", "python")),  # type: ignore[arg-type]
            enable_configuration_override=bool(get("enableConfigurationOverride")),
            environment_variables=env,
        )

    # -- sites -----------------------------------------------------------------------

    def sites(self, section: Merged | None, pools: dict[str, model.Pool]) -> list[model.Site]:
        out: list[model.Site] = []
        if section is None:
            return out
        sd = section.children.get("siteDefaults")
        ad0 = section.children.get("applicationDefaults")
        vd0 = section.children.get("virtualDirectoryDefaults")
        seen_bindings: dict[str, str] = {}
        for item in section.items:
            site = self.site(item.value, sd, ad0, vd0, pools)
            for b in site.bindings:
                key = f"{b.protocol}/{b.information}".lower()
                other = seen_bindings.get(key)
                if other is not None:
                    self.warn(item.value.line, "system.applicationHost/sites",
                              f"binding {b.protocol}/{b.information} of site '{site.name}' "
                              f"is also used by site '{other}'; only one of them can start")
                else:
                    seen_bindings[key] = site.name
            out.append(site)
        return out

    def site(self, s: Merged, sd: Merged | None, ad0: Merged | None, vd0: Merged | None,
             pools: dict[str, model.Pool]) -> model.Site:
        section = "system.applicationHost/sites"

        def child(m: Merged | None, name: str) -> Merged | None:
            return m.children.get(name) if m is not None else None

        def pick(name: str, *elements: Merged | None, schema_default: object) -> object:
            value = _first(name, *elements)
            return schema_default if value is None else value

        name = str(s.get("name"))
        limits_schema = s.schema.children["limits"].attrs
        lim, dlim = child(s, "limits"), child(sd, "limits")
        limits = model.SiteLimits(
            max_connections=int(pick("maxConnections", lim, dlim,  # type: ignore[call-overload]
                                     schema_default=limits_schema["maxConnections"].default)),
            max_bandwidth=int(pick("maxBandwidth", lim, dlim,  # type: ignore[call-overload]
                                   schema_default=limits_schema["maxBandwidth"].default)),
            connection_timeout=float(pick(  # type: ignore[arg-type]
                "connectionTimeout", lim, dlim,
                schema_default=limits_schema["connectionTimeout"].default)),
            max_url_segments=int(pick("maxUrlSegments", lim, dlim,  # type: ignore[call-overload]
                                      schema_default=limits_schema["maxUrlSegments"].default)),
        )
        lf, dlf = child(s, "logFile"), child(sd, "logFile")
        lf_schema = s.schema.children["logFile"].attrs

        def lfget(n: str) -> object:
            return pick(n, lf, dlf, schema_default=lf_schema[n].default)

        def folder(value: object) -> str:
            directory = str(value)
            if directory:
                if windows_path_problem(directory):
                    directory = ""  # already warned about when read; use the state dir's
                elif not os.path.isabs(directory):
                    directory = os.path.normpath(os.path.join(self.dir, directory))
            return directory

        # custom fields: the site's own collection, else siteDefaults' (like bindings)
        cf, dcf = child(lf, "customFields"), child(dlf, "customFields")
        csrc = cf if cf is not None and cf.items else dcf
        cf_schema = s.schema.children["logFile"].children["customFields"].attrs
        log_file = model.LogFile(
            directory=folder(lfget("directory")),
            enabled=bool(lfget("enabled")),
            log_format=str(lfget("logFormat")),
            period=str(lfget("period")),
            truncate_size=int(lfget("truncateSize")),  # type: ignore[call-overload]
            local_time_rollover=bool(lfget("localTimeRollover")),
            log_ext_file_flags=str(lfget("logExtFileFlags")),
            custom_fields=[
                model.CustomLogField(str(it.value.get("logFieldName")), str(it.value.get("sourceName")),
                                     str(it.value.get("sourceType") or "RequestHeader"))
                for it in (csrc.items if csrc is not None else [])],
            max_custom_field_length=int(pick(  # type: ignore[call-overload]
                "maxCustomFieldLength", cf, dcf, schema_default=cf_schema["maxCustomFieldLength"].default)),
        )
        tf, dtf = child(s, "traceFailedRequestsLogging"), child(sd, "traceFailedRequestsLogging")
        tf_schema = s.schema.children["traceFailedRequestsLogging"].attrs

        def tfget(n: str) -> object:
            return pick(n, tf, dtf, schema_default=tf_schema[n].default)

        tracing = model.FailedRequestsLogging(
            enabled=bool(tfget("enabled")),
            directory=folder(tfget("directory")),
            max_log_files=int(tfget("maxLogFiles")),  # type: ignore[call-overload]
            max_log_file_size_kb=int(tfget("maxLogFileSizeKB")),  # type: ignore[call-overload]
        )
        bindings: list[model.Binding] = []
        bsrc = child(s, "bindings")
        if bsrc is None or not bsrc.items:
            bsrc = child(sd, "bindings")
        for it in bsrc.items if bsrc is not None else []:
            b = self.binding(it.value, name)
            if b is not None:
                bindings.append(b)
        if not bindings:
            self.warn(s.line, section, f"site '{name}' has no http or https binding")
        ad1 = child(s, "applicationDefaults")
        ad_sd = child(sd, "applicationDefaults")
        vd1 = child(s, "virtualDirectoryDefaults")
        vd_sd = child(sd, "virtualDirectoryDefaults")
        apps: list[model.Application] = []
        for it in s.items:
            a = it.value
            app_path = str(a.get("path"))
            pool = _first("applicationPool", a, ad1, ad_sd, ad0)
            pool_name = str(pool) if pool else "DefaultAppPool"
            if pool_name not in pools:
                raise self.error(
                    f"application '{app_path}' of site '{name}' uses application pool "
                    f"'{pool_name}', which is not defined", a.line, section)
            vd2 = child(a, "virtualDirectoryDefaults")
            vdirs: list[model.VirtualDirectory] = []
            for vit in a.items:
                v = vit.value
                physical = _first("physicalPath", v, vd2, vd1, vd_sd, vd0)
                allow_sub = _first("allowSubDirConfig", v, vd2, vd1, vd_sd, vd0)
                vdirs.append(model.VirtualDirectory(
                    path=str(v.get("path")),
                    physical_path=self.physical_path(str(physical or ""), v.line, name,
                                                     app_path, str(v.get("path"))),
                    allow_sub_dir_config=True if allow_sub is None else bool(allow_sub),
                ))
            root = next((v for v in vdirs if v.path == "/"), None)
            if root is None:
                raise self.error(
                    f"application '{app_path}' of site '{name}' has no root virtual "
                    "directory (path=\"/\")", a.line, section)
            enabled = _first("enabledProtocols", a, ad1, ad_sd, ad0)
            preload = _first("preloadEnabled", a, ad1, ad_sd, ad0)
            apps.append(model.Application(
                path=app_path, pool=pool_name, physical_path=root.physical_path,
                virtual_directories=vdirs,
                enabled_protocols=str(enabled) if enabled is not None else "http",
                preload_enabled=bool(preload),
            ))
        if not any(a.path == "/" for a in apps):
            raise self.error(f"site '{name}' has no root application (path=\"/\")",
                             s.line, section)
        auto = _first("serverAutoStart", s, sd)
        links = pick("allowOutsideRoot", child(s, "symbolicLinks"), child(sd, "symbolicLinks"),
                     schema_default=False)
        return model.Site(
            id=int(s.get("id")), name=name,
            server_auto_start=True if auto is None else bool(auto),
            bindings=bindings, applications=apps, limits=limits, log_file=log_file,
            trace_failed_requests=tracing, symlinks_outside_root=bool(links),
        )

    def binding(self, b: Merged, site: str) -> model.Binding | None:
        section = "system.applicationHost/sites"
        protocol = str(b.get("protocol")).lower()
        info = str(b.get("bindingInformation"))
        if protocol not in ("http", "https"):
            self.warn(b.line, section, f"binding protocol '{protocol}' of site '{site}' is "
                      "not supported by Poolhouse; binding ignored")
            return None
        m = _BINDING.match(info)
        if not m:
            raise self.error(
                f"invalid bindingInformation '{info}'; expected ip:port:host, e.g. *:80: "
                "or [::1]:8080:www.example.com", b.line, section)
        ip, port_text, host = m.groups()
        if ip.startswith("["):
            ip = ip[1:-1]
        if ip in ("", "*"):
            ip = "*"
        else:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise self.error(f"invalid IP address '{ip}' in bindingInformation '{info}'",
                                 b.line, section) from None
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise self.error(f"invalid port '{port_text}' in bindingInformation '{info}'; "
                             "allowed 1-65535", b.line, section)
        cert, key = str(b.get("certificateFile")), str(b.get("keyFile"))
        for label in ("certificateFile", "keyFile"):
            value = cert if label == "certificateFile" else key
            if value and windows_path_problem(value):
                raise self.error(f"{label} {windows_path_problem(value)}", b.line, section)
        if cert and not os.path.isabs(cert):
            cert = os.path.normpath(os.path.join(self.dir, cert))
        if key and not os.path.isabs(key):
            key = os.path.normpath(os.path.join(self.dir, key))
        if protocol == "https" and not cert:
            self.warn(b.line, section, f"https binding {info} of site '{site}' has no "
                      "certificateFile (Poolhouse extension attribute)")
        return model.Binding(protocol=protocol, ip=ip, port=int(port_text),
                             host=host.lower(), certificate_file=cert, key_file=key,
                             ssl_flags=int(b.get("sslFlags")))

    def physical_path(self, value: str, line: int, site: str, app: str, vdir: str) -> str:
        section = "system.applicationHost/sites"
        what = f"virtual directory '{vdir}' of application '{app}' of site '{site}'"
        if not value:
            raise self.error(f"{what} has no physicalPath", line, section)
        problem = windows_path_problem(value)
        if problem:
            raise self.error(f"physicalPath of {what}: {problem}", line, section)
        path = value if os.path.isabs(value) else os.path.join(self.dir, value)
        path = os.path.normpath(path)
        if not os.path.isdir(path):
            self.warn(line, section, f"physicalPath '{path}' of {what} is not an existing "
                      "folder")
        return path

    # -- webLimits -----------------------------------------------------------------

    def config_history(self, section: Merged | None) -> model.ConfigHistory:
        schema = SECTIONS[APPHOST_PREFIX + "configHistory"].element

        def get(n: str) -> object:
            if section is not None and n in section.attrs:
                return section.attrs[n]
            return schema.attrs[n].default

        path = str(get("path"))
        if path and windows_path_problem(path):
            path = ""  # warned about when read; use <state dir>/config/history
        elif path and not os.path.isabs(path):
            path = os.path.normpath(os.path.join(self.dir, path))
        return model.ConfigHistory(
            enabled=bool(get("enabled")), path=path,
            max_histories=int(get("maxHistories")),  # type: ignore[call-overload]
            period=float(get("period")),  # type: ignore[arg-type]
        )

    def web_limits(self, section: Merged | None) -> model.WebLimits:
        from .schema import SECTIONS as ALL

        schema = ALL[APPHOST_PREFIX + "webLimits"].element

        def get(n: str) -> object:
            if section is not None and n in section.attrs:
                return section.attrs[n]
            return schema.attrs[n].default

        return model.WebLimits(
            connection_timeout=float(get("connectionTimeout")),  # type: ignore[arg-type]
            header_wait_timeout=float(get("headerWaitTimeout")),  # type: ignore[arg-type]
            min_bytes_per_second=int(get("minBytesPerSecond")),  # type: ignore[call-overload]
            max_global_bandwidth=int(get("maxGlobalBandwidth")),  # type: ignore[call-overload]
        )
