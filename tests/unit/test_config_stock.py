"""A stock IIS (IIS Express-shaped) applicationhost.config loads next to the built-in base
configuration: redeclared modules and handlers merge, unimplemented sections and Windows
paths are warnings, and handler preconditions drop the .NET mappings."""

from pathlib import Path

import pytest

from poolhouse.config import ConfigError, WebConfigResolver, load_server_config
from poolhouse.config.preconditions import holds
from poolhouse.config.model import Pool

STOCK = Path(__file__).parent.parent / "data" / "stock" / "iisexpress-applicationhost.config"


def stock(tmp_path: Path, edit: str = "", port: int = 8999) -> str:
    (tmp_path / "www").mkdir(exist_ok=True)
    text = STOCK.read_text().replace("{root}", str(tmp_path)).replace("{port}", str(port))
    if edit:
        old, new = edit.split("=>")
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "applicationHost.config"
    path.write_text(text)
    return str(path)


def test_stock_file_loads_with_warnings_for_what_is_not_implemented(tmp_path: Path) -> None:
    cfg = load_server_config(stock(tmp_path))
    assert [s.name for s in cfg.sites] == ["WebSite1"]
    assert set(cfg.pools) >= {"Clr4IntegratedAppPool", "Clr4ClassicAppPool"}
    assert cfg.pools["Clr4ClassicAppPool"].managed_pipeline_mode == "Classic"
    text = "\n".join(cfg.warnings)
    for section in ("configProtectedData", "system.webServer/asp", "system.webServer/webdav",
                    "system.webServer/isapiFilters", "system.webServer/serverSideInclude"):
        assert f"{section}: section is not implemented by Poolhouse; ignored" in text
    assert "%IIS_USER_HOME%" in text  # Windows paths are reported, not fatal
    assert "modules not provided by Poolhouse" in text and "IsapiModule" in text
    assert "StaticFileModule," not in text.split("modules not provided")[1].split("\n")[0]


def test_stock_handlers_keep_their_order_and_preconditions_apply(tmp_path: Path) -> None:
    cfg = load_server_config(stock(tmp_path))
    web = WebConfigResolver(cfg, "WebSite1", "/").for_path("/index.html")
    names = [h.name for h in web.handlers]
    # every base handler was redeclared: the file's order is the effective order
    assert names[-3:] == ["TRACEVerbHandler", "OPTIONSVerbHandler", "StaticFile"]
    # .NET mappings need a runtime Poolhouse does not host; classic ones a classic pool
    assert not any("Integrated-4.0" in n or "ISAPI-4.0" in n for n in names)
    assert "ExtensionlessUrlHandler-Integrated-4.0" not in names
    assert "CGI-exe" in names and "SSINC-shtml" in names
    # the built-in Python modules stay available next to the file's modules
    assert {"WsgiModule", "AsgiModule", "IsapiModule", "StaticFileModule"} <= set(web.modules)
    # preCondition="managedHandler": enabled, the pipeline runs it for Python handlers only
    assert "OutputCache" in web.modules
    assert "UrlRoutingModule-4.0" not in web.modules  # runtimeVersionv4.0
    assert web.sections["system.webServer/httpProtocol"]["customHeaders"]["items"] == [
        {"name": "X-Powered-By", "value": "ASP.NET"}]


def test_stock_file_base_locks_still_bind_web_config(tmp_path: Path) -> None:
    cfg_path = stock(tmp_path)
    (tmp_path / "www" / "web.config").write_text(
        '<configuration><system.webServer><modules><remove name="StaticFileModule" />'
        "</modules></system.webServer></configuration>")
    cfg = load_server_config(cfg_path)
    with pytest.raises(ConfigError, match="lockItem") as exc:
        WebConfigResolver(cfg, "WebSite1", "/").for_path("/")
    assert exc.value.file.endswith("web.config") and exc.value.line == 1


def test_stock_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = stock(tmp_path, edit='<webLimits />=><webLimits maxGlobalBandwidth="12" />')
    with pytest.raises(ConfigError) as exc:
        load_server_config(path)
    assert exc.value.file == path and exc.value.section == "system.applicationHost/webLimits"
    lines = Path(path).read_text().splitlines()
    assert "maxGlobalBandwidth" in lines[exc.value.line - 1]


def test_apphost_duplicate_within_the_file_is_still_an_error(tmp_path: Path) -> None:
    path = stock(tmp_path, edit='<add value="index.html" />=><add value="index.html" /><add value="INDEX.html" />')
    with pytest.raises(ConfigError, match="duplicate collection entry"):
        load_server_config(path)


@pytest.mark.parametrize("pre, mode, bits32, expected", [
    ("", "Integrated", False, True),
    ("integratedMode", "Integrated", False, True),
    ("integratedMode", "Classic", False, False),
    ("classicMode,bitness64", "Classic", False, True),
    ("bitness32", "Integrated", False, False),
    ("bitness32", "Integrated", True, True),
    ("integratedMode,runtimeVersionv4.0", "Integrated", False, False),
    ("managedHandler", "Integrated", False, False),
    ("somethingElse", "Integrated", False, False),
])
def test_preconditions(pre: str, mode: str, bits32: bool, expected: bool) -> None:
    pool = Pool(name="p", managed_pipeline_mode=mode, enable_32bit=bits32)
    assert holds(pre, pool) is expected
