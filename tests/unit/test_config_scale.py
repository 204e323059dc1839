"""A configuration with 1,000 sites and 1,000 pools must load and validate quickly
(target: well under 2 s).  The figure is printed, not asserted, so a slow CI machine
does not fail the suite; what is asserted is that loading stays linear."""

import time
from pathlib import Path

from poolhouse.config import WebConfigResolver, load_server_config


def generate(tmp_path: Path, n: int) -> str:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    pools = "\n".join(
        f'      <add name="pool{i}" queueLength="2000"><processModel idleTimeout="00:10:00" />'
        f'<recycling><periodicRestart time="00:00:00"><schedule><add value="03:00:00" />'
        f'</schedule></periodicRestart></recycling></add>' for i in range(n))
    sites = "\n".join(
        f'      <site name="site{i}" id="{i + 1}">\n'
        f'        <application path="/" applicationPool="pool{i}">'
        f'<virtualDirectory path="/" physicalPath="{www}" /></application>\n'
        f'        <application path="/api" applicationPool="pool{i}">'
        f'<virtualDirectory path="/" physicalPath="{www}" /></application>\n'
        f'        <bindings><binding protocol="http" bindingInformation="*:80:site{i}.example" />'
        f'</bindings>\n'
        f'        <limits connectionTimeout="00:01:00" /><logFile period="Hourly" />\n'
        f'      </site>' for i in range(n))
    path = tmp_path / f"applicationHost-{n}.config"
    path.write_text(f"""<configuration>
  <system.applicationHost>
    <applicationPools>
{pools}
    </applicationPools>
    <sites>
{sites}
    </sites>
  </system.applicationHost>
</configuration>
""")
    return str(path)


def timed_load(path: str) -> float:
    start = time.perf_counter()
    cfg = load_server_config(path)
    elapsed = time.perf_counter() - start
    assert cfg.sites
    return elapsed


def test_thousand_sites_and_pools_load_fast(tmp_path: Path) -> None:
    small = generate(tmp_path, 250)
    large = generate(tmp_path, 1000)
    timed_load(small)  # warm-up: base.config parsed and cached
    t_small = min(timed_load(small) for _ in range(2))
    t_large = min(timed_load(large) for _ in range(2))
    print(f"\nconfig scale: 250 sites+pools {t_small:.3f} s, "
          f"1000 sites+pools {t_large:.3f} s (target < 2 s)")
    cfg = load_server_config(large)
    assert len(cfg.sites) == 1000 and len(cfg.pools) == 1000
    assert cfg.pools["pool999"].periodic_restart_schedule == ["03:00:00"]
    assert cfg.sites[999].bindings[0].host == "site999.example"
    # linear, with generous slack for noisy machines: 4x the input, < 10x the time
    assert t_large < max(10 * t_small, 0.5)
    start = time.perf_counter()
    wc = WebConfigResolver(cfg, "site500", "/api").for_path("/api/x")
    print(f"config scale: first WebConfigResolver.for_path {time.perf_counter() - start:.3f} s")
    assert wc.handlers
