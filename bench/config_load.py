"""Configuration load time: a generated applicationHost.config with 1,000 sites (two
applications each) and 1,000 pools, loaded and validated as `poolhouse serve` does
(target: under 2 s).  Prints the median of five loads."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poolhouse.config import load_server_config  # noqa: E402
from tests.unit.test_config_scale import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = generate(Path(tmp), args.sites)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            config = load_server_config(path)
            times.append(time.perf_counter() - start)
        assert len(config.sites) == args.sites and len(config.pools) == args.sites
    median = statistics.median(times)
    print(f"configuration load: {args.sites} sites, {args.sites} pools: median {median:.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}); target < 2 s: {'met' if median < 2 else 'NOT met'}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"sites": args.sites, "median_s": median, "runs_s": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
