"""Schema of the ``system.applicationHost`` sections (applicationHost.config only).

Defaults and ranges are IIS 10's (IIS_schema.xml).  Poolhouse extensions are marked
``extension=True`` and documented as such: the ``<python>`` child of an application pool
and the ``certificateFile``/``keyFile`` attributes of a binding.
"""

from __future__ import annotations

from .schema import B, C, E, EN, FL, I, I64, S, Section, T, U, Attr, Element, Member

APPHOST = dict(override="Deny", allow_definition="AppHostOnly")

LOGON_METHOD = "Interactive=0 Batch=1 Network=2 ClearText=3"
LOG_FLAGS = (
    "Date=1 Time=2 ClientIP=4 UserName=8 SiteName=16 ComputerName=32 ServerIP=64 "
    "Method=128 UriStem=256 UriQuery=512 HttpStatus=1024 Win32Status=2048 BytesSent=4096 "
    "BytesRecv=8192 TimeTaken=16384 ServerPort=32768 UserAgent=65536 Cookie=131072 "
    "Referer=262144 ProtocolVersion=524288 Host=1048576 HttpSubStatus=2097152"
)
PERIOD = "MaxSize=0 Daily=1 Weekly=2 Monthly=3 Hourly=4"


def _pool_members(is_default: bool) -> list[Member]:
    return [
        S("name", "", "Name of the application pool (the collection key).",
          required=not is_default, key=not is_default, validator="applicationPoolName"),
        U("queueLength", 1000, "Maximum number of requests queued for the pool; "
          "beyond it the listener answers 503.", range=(10, 65535)),
        B("autoStart", True, "Start the pool when the server starts."),
        B("enable32BitAppOnWin64", False, "Accepted for compatibility; no effect on Linux."),
        S("managedRuntimeVersion", "", "Accepted for compatibility (.NET CLR version); "
          "no effect."),
        S("managedRuntimeLoader", "webengine4.dll", "Accepted for compatibility; no effect."),
        B("enableConfigurationOverride", True,
          "false: web.config files are ignored for applications in this pool."),
        EN("managedPipelineMode", "Integrated", "Integrated=0 Classic=1",
           "Accepted for compatibility; Poolhouse always runs the integrated pipeline."),
        S("CLRConfigFile", "", "Accepted for compatibility; no effect.", expanded=True),
        B("passAnonymousToken", True, "Accepted for compatibility; no effect."),
        EN("startMode", "OnDemand", "OnDemand=0 AlwaysRunning=1",
           "OnDemand: start a worker on the first request; AlwaysRunning: at start-up."),
        E("processModel",
          EN("identityType", "ApplicationPoolIdentity",
             "LocalSystem=0 LocalService=1 NetworkService=2 SpecificUser=3 "
             "ApplicationPoolIdentity=4", "Identity the workers run as."),
          S("userName", "", "User for identityType=SpecificUser."),
          S("password", "", "Password for SpecificUser (unused on Linux)."),
          B("loadUserProfile", False, "Accepted for compatibility."),
          B("setProfileEnvironment", True, "Accepted for compatibility."),
          EN("logonType", "LogonBatch", "LogonBatch=0 LogonService=1",
             "Accepted for compatibility."),
          B("manualGroupMembership", False, "Accepted for compatibility."),
          T("idleTimeout", "00:20:00", "Shut a worker down after this long without "
            "requests; 0 disables.", range=(0, 2592000), granularity=60),
          EN("idleTimeoutAction", "Terminate", "Terminate=0 Suspend=1",
             "What to do at idle timeout (Suspend is treated as Terminate)."),
          U("maxProcesses", 1, "Worker processes per pool (>1 = web garden).",
            range=(0, 2147483647)),
          T("shutdownTimeLimit", "00:01:30", "Time a worker has to drain before it is "
            "killed.", range=(1, 4294967), granularity=1),
          T("startupTimeLimit", "00:01:30", "Time a worker has to become ready.",
            range=(1, 4294967), granularity=1),
          B("pingingEnabled", True, "Health-ping the workers."),
          T("pingInterval", "00:00:30", "Time between health pings.",
            range=(1, 4294967), granularity=1),
          T("pingResponseTime", "00:01:30", "A worker not answering a ping within this "
            "time is replaced.", range=(1, 4294967), granularity=1),
          FL("logEventOnProcessModel", "IdleTimeout", "IdleTimeout=1",
             "Log an event on idle shutdown."),
          doc="How worker processes are run and health-checked."),
        E("recycling",
          B("disallowOverlappingRotation", False,
            "true: the old worker stops before the new one starts."),
          B("disallowRotationOnConfigChange", False,
            "true: pool setting changes do not recycle the workers."),
          FL("logEventOnRecycle",
             "Time, Requests, Schedule, Memory, IsapiUnhealthy, OnDemand, ConfigChange, "
             "PrivateMemory",
             "Time=1 Requests=2 Schedule=4 Memory=8 IsapiUnhealthy=16 OnDemand=32 "
             "ConfigChange=64 PrivateMemory=128", "Recycle reasons that are logged."),
          E("periodicRestart",
            U("memory", 0, "Recycle when virtual memory exceeds this many KB; 0 = off."),
            U("privateMemory", 0, "Recycle when private memory exceeds this many KB; 0 = off."),
            U("requests", 0, "Recycle after this many requests; 0 = off."),
            T("time", "1.05:00:00", "Recycle after this uptime; 0 = off.",
              range=(0, 25920000), granularity=60),
            E("schedule",
              C(T("value", "00:00:00", "Local time of day to recycle at.", required=True,
                  key=True, range=(0, 86399), granularity=60), remove=None),
              doc="Times of day to recycle at."),
            doc="When workers are recycled."),
          doc="Recycling of the pool's workers."),
        E("failure",
          EN("loadBalancerCapabilities", "HttpLevel", "TcpLevel=1 HttpLevel=2",
             "HttpLevel: answer 503 when the pool is down; TcpLevel: reset the connection."),
          B("orphanWorkerProcess", False, "Leave an unhealthy worker running instead of "
            "killing it."),
          S("orphanActionExe", "", "Program run when a worker is orphaned.", expanded=True,
            path=True),
          S("orphanActionParams", "", "Its parameters (%1% = process id).", expanded=True),
          B("rapidFailProtection", True, "Stop the pool after too many worker failures."),
          T("rapidFailProtectionInterval", "00:05:00", "Window for counting failures.",
            range=(60, 8640000), granularity=60),
          U("rapidFailProtectionMaxCrashes", 5, "Failures within the window that stop "
            "the pool.", range=(1, 2147483647)),
          S("autoShutdownExe", "", "Program run when rapid-fail protection stops the pool.",
            expanded=True, path=True),
          S("autoShutdownParams", "", "Its parameters.", expanded=True),
          doc="Rapid-fail protection and orphaning."),
        E("cpu",
          U("limit", 0, "CPU limit in 1/1000 of a percent over resetInterval; 0 = off.",
            range=(0, 100000)),
          EN("action", "NoAction", "NoAction=0 KillW3wp=1 Throttle=2 ThrottleUnderLoad=3",
             "What happens when the limit is exceeded."),
          T("resetInterval", "00:05:00", "Period over which CPU use is measured.",
            range=(0, 86400), granularity=60),
          B("smpAffinitized", False, "Pin workers to the CPUs of the mask."),
          U("smpProcessorAffinityMask", 4294967295, "CPU mask (CPUs 0-31)."),
          U("smpProcessorAffinityMask2", 4294967295, "CPU mask (CPUs 32-63)."),
          I("processorGroup", 0, "Accepted for compatibility.", range=(0, 2147483647)),
          EN("numaNodeAssignment", "MostAvailableMemory",
             "MostAvailableMemory=0 WindowsScheduling=1", "Accepted for compatibility."),
          EN("numaNodeAffinityMode", "Soft", "Soft=0 Hard=1", "Accepted for compatibility."),
          doc="CPU limits of the pool's workers."),
        E("environmentVariables",
          C(S("name", "", "Variable name.", required=True, key=True),
            S("value", "", "Value.", case_sensitive=True)),
          doc="Environment variables set in the pool's workers (IIS 10)."),
        E("python",
          S("executable", "", "Python interpreter the workers run on (a virtualenv's, with "
            "Poolhouse's worker runtime installed: docs/hosting.md); empty: the "
            "interpreter Poolhouse runs on.", expanded=True, path=True, extension=True),
          U("threads", 0, "Threads per worker for WSGI applications; 0: one request at a "
            "time on the worker's event loop.", range=(0, 1024), extension=True),
          T("requestTimeout", "00:00:00", "A request not answered within this time gets "
            "504 (503 if it was still queued) and its worker is recycled if it does not "
            "recover; 0 = off.", range=(0, 4294967), granularity=1, extension=True),
          doc="Poolhouse extension: how the pool's Python workers run.", extension=True),
    ]


APPLICATION_POOLS = Section(
    "system.applicationHost/applicationPools",
    C(*_pool_members(False), remove=None, clear=None, doc="One application pool."),
    E("applicationPoolDefaults", *_pool_members(True),
      doc="Defaults for every application pool."),
    doc="Application pools: groups of applications served by the same worker processes.",
    **APPHOST,
)


def _vdir_members(is_default: bool) -> list[Member]:
    return [
        S("path", "/", "Path relative to the application, '/' for its root.",
          required=False, key=not is_default, validator="virtualDirectoryPath"),
        S("physicalPath", "", "Folder the virtual directory maps to (%VARS% expanded).",
          expanded=True, path=True),
        S("userName", "", "Accepted for compatibility (UNC credentials)."),
        S("password", "", "Accepted for compatibility."),
        EN("logonMethod", "ClearText", LOGON_METHOD, "Accepted for compatibility."),
        B("allowSubDirConfig", True, "false: no web.config is read below this virtual "
          "directory."),
    ]


def _app_members(is_default: bool) -> list[Member]:
    members: list[Member] = [
        S("path", "/", "URL path of the application, '/' for the site root.",
          required=not is_default, key=not is_default, validator="applicationPath"),
        S("applicationPool", "", "Pool the application runs in; default from "
          "applicationDefaults (DefaultAppPool).", validator="applicationPoolName"),
        S("enabledProtocols", "http", "Protocols enabled for the application."),
        B("serviceAutoStartEnabled", False, "Accepted for compatibility."),
        S("serviceAutoStartProvider", "", "Accepted for compatibility."),
        B("preloadEnabled", False, "Send the applicationInitialization requests when the "
          "pool starts."),
    ]
    if not is_default:
        members.append(C(*_vdir_members(False), add="virtualDirectory", remove=None,
                         clear=None, doc="One virtual directory."))
        members.append(E("virtualDirectoryDefaults", *_vdir_members(True),
                         doc="Defaults for the application's virtual directories."))
    return members


def _site_members(is_default: bool) -> list[Member]:
    members: list[Member] = [
        S("name", "", "Name of the site.", required=not is_default, key=not is_default,
          validator="siteName"),
        U("id", 0, "Numeric id of the site (log folder W3SVC<id>).",
          required=not is_default, key=not is_default),
        B("serverAutoStart", True, "Start the site when the server starts."),
        E("bindings",
          C(S("protocol", "", "http or https.", required=True, combined_key=True,
              validator="nonEmptyString"),
            S("bindingInformation", "", "ip:port:host, e.g. *:80: or [::1]:8080:example.com",
              required=True, combined_key=True, validator="nonEmptyString"),
            U("sslFlags", 0, "1 = SNI; other bits accepted for compatibility."),
            S("certificateHash", "", "Accepted for compatibility; use certificateFile."),
            S("certificateStoreName", "", "Accepted for compatibility; use certificateFile."),
            S("certificateFile", "", "PEM certificate (chain) for an https binding.",
              expanded=True, path=True, extension=True),
            S("keyFile", "", "PEM private key for an https binding.", expanded=True,
              path=True, extension=True),
            add="binding", remove=None, clear="clear", doc="One binding."),
          doc="Where the site listens."),
        E("limits",
          U("maxBandwidth", 4294967295, "Bytes per second for the site.", range=(0, 1023),
            exclude=True),
          U("maxConnections", 4294967295, "Concurrent connections for the site."),
          T("connectionTimeout", "00:02:00", "Idle connection timeout.", range=(0, 65535),
            granularity=1),
          U("maxUrlSegments", 32, "Maximum URL segments (404.20 beyond).", range=(0, 16383)),
          doc="Connection limits of the site."),
        E("logFile",
          FL("logExtFileFlags",
             "Date, Time, ClientIP, UserName, ServerIP, Method, UriStem, UriQuery, "
             "TimeTaken, HttpStatus, Win32Status, ServerPort, UserAgent, HttpSubStatus, "
             "Referer", LOG_FLAGS, "W3C fields logged."),
          S("customLogPluginClsid", "", "Accepted for compatibility."),
          EN("logFormat", "W3C", "IIS=0 NCSA=1 W3C=2 Custom=3", "Log format."),
          S("directory", "", "Log folder; empty: <state dir>/logs (IIS default "
            "%SystemDrive%\\inetpub\\logs\\LogFiles).", expanded=True, path=True),
          EN("period", "Daily", PERIOD, "Log file rollover."),
          I64("truncateSize", 20971520, "Size in bytes for period=MaxSize.",
              range=(1048576, 4294967295)),
          B("localTimeRollover", False, "Roll over at local midnight instead of UTC."),
          B("enabled", True, "Write the access log."),
          B("logSiteId", True, "Accepted for compatibility."),
          E("customFields",
            U("maxCustomFieldLength", 4096, "Longest value logged for one custom field, in "
              "bytes (longer ones are cut).", range=(2, 65536)),
            C(S("logFieldName", "", "The field's name in the #Fields line.", required=True,
                key=True, validator="nonEmptyString"),
              S("sourceName", "", "The header or server variable logged.", required=True,
                validator="nonEmptyString"),
              EN("sourceType", "RequestHeader", "RequestHeader=0 ResponseHeader=1 ServerVariable=2",
                 "Where the value comes from: a server variable is one a module set (or put "
                 "in response.log_fields) or one of the worker's server variables.",
                 required=True),
              doc="One custom field."),
            doc="Custom fields (IIS 8.5+), logged after the standard fields; their log files "
                "are named u_ex..._x.log."),
          doc="The site's access log."),
        E("traceFailedRequestsLogging",
          B("enabled", False, "Failed-request tracing."),
          S("directory", "", "Folder of the traces (W3SVC<id> under it); empty: <state "
            "dir>/logs/FailedReqLogFiles.", expanded=True, path=True),
          U("maxLogFiles", 50, "Traces kept per site (the oldest are deleted).", range=(1, 10000)),
          U("maxLogFileSizeKB", 1024, "Size of one trace: events past it are left out.",
            range=(0, 1048576)),
          B("customActionsEnabled", False, "Accepted for compatibility."),
          doc="Failed-request tracing (FREB) output."),
        E("applicationDefaults", *_app_members(True),
          doc="Defaults for the site's applications."),
        E("virtualDirectoryDefaults", *_vdir_members(True),
          doc="Defaults for the site's virtual directories."),
        E("symbolicLinks",
          B("allowOutsideRoot", False,
            "Follow symbolic links whose target lies outside the physical folder of the "
            "virtual directory they are in (static files), or outside the folder of the "
            "configuration file that names them (configSource, appSettings/@file).  "
            "False: such a target answers 404 (content) or 500.19 (configuration), and its "
            "content is never shown.  Links that stay inside keep working either way.",
            extension=True),
          doc="Poolhouse extension, in the spirit of nginx's disable_symlinks: whether the "
              "site's files may be symbolic links out of their folder.", extension=True),
    ]
    if not is_default:
        members.append(C(*_app_members(False), add="application", remove=None,
                         clear=None, doc="One application."))
    return members


SITES = Section(
    "system.applicationHost/sites",
    C(*_site_members(False), add="site", remove=None, clear=None, doc="One site."),
    E("siteDefaults", *_site_members(True), doc="Defaults for every site."),
    E("applicationDefaults", *_app_members(True), doc="Defaults for every application."),
    E("virtualDirectoryDefaults", *_vdir_members(True),
      doc="Defaults for every virtual directory."),
    doc="Sites with their bindings, applications and virtual directories.",
    **APPHOST,
)

WEB_LIMITS = Section(
    "system.applicationHost/webLimits",
    U("maxGlobalBandwidth", 4294967295, "Server-wide bytes per second.", range=(0, 1023),
      exclude=True),
    T("connectionTimeout", "00:02:00", "Default idle connection timeout."),
    U("demandStartThreshold", 2147483647, "Maximum running workers.",
      range=(10, 2147483647)),
    U("dynamicIdleThreshold", 0, "Accepted for compatibility.", range=(0, 10000)),
    T("headerWaitTimeout", "00:00:00", "Time to receive the request headers; 0 = 120 s.",
      range=(0, 65535), granularity=1),
    U("minBytesPerSecond", 240, "Minimum response send rate."),
    doc="Server-wide connection limits (HTTP.sys).",
    **APPHOST,
)

LOG = Section(
    "system.applicationHost/log",
    B("logInUTF8", True, "Write logs in UTF-8."),
    EN("centralLogFileMode", "Site", "Site=0 CentralBinary=1 CentralW3C=2",
       "Site: one log per site; Central modes are accepted but log per site."),
    E("centralBinaryLogFile",
      B("enabled", False, ""), S("directory", "", "", expanded=True, path=True),
      EN("period", "Daily", PERIOD, ""), I64("truncateSize", 20971520, "",
                                             range=(1048576, 4294967295)),
      B("localTimeRollover", False, ""), doc="Accepted for compatibility."),
    E("centralW3CLogFile",
      B("enabled", True, ""), S("directory", "", "", expanded=True, path=True),
      EN("period", "Daily", PERIOD, ""), I64("truncateSize", 20971520, "",
                                             range=(1048576, 4294967295)),
      B("localTimeRollover", False, ""),
      FL("logExtFileFlags",
         "Date, Time, ClientIP, UserName, SiteName, ServerIP, Method, UriStem, UriQuery, "
         "TimeTaken, HttpStatus, Win32Status, ServerPort, UserAgent, HttpSubStatus, Referer",
         LOG_FLAGS, ""),
      doc="Accepted for compatibility."),
    doc="Server-wide logging options.",
    **APPHOST,
)

CONFIG_HISTORY = Section(
    "system.applicationHost/configHistory",
    B("enabled", True, "Keep copies of applicationHost.config when it changes."),
    S("path", "", "Folder of the copies; empty: <state dir>/config/history.",
      expanded=True, path=True),
    U("maxHistories", 10, "Copies kept.", range=(1, 4294967295)),
    T("period", "00:02:00", "How often the file is checked.", range=(10, 2147483647),
      granularity=1),
    doc="Configuration history (backups).",
    **APPHOST,
)

LISTENER_ADAPTERS = Section(
    "system.applicationHost/listenerAdapters",
    C(S("name", "", "Protocol name.", required=True, key=True),
      S("identity", "", ""), S("protocolManagerDll", "", ""),
      S("protocolManagerDllInitFunction", "", ""), remove=None, clear=None),
    doc="Accepted for compatibility; Poolhouse serves http and https.",
    **APPHOST,
)

SECTIONS = [APPLICATION_POOLS, SITES, WEB_LIMITS, LOG, CONFIG_HISTORY, LISTENER_ADAPTERS]

__all__ = ["SECTIONS", "Attr", "Element"]
