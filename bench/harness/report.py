"""The printed table, the ratios against the peers and the JSON results file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .targets import RATIOS


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("target", "series", "req/s", "p99 ms", "RSS MB", "procs", "notes")
    lines = []
    for r in rows:
        notes = r.get("status", "ok")
        if notes == "ok":
            bits = []
            if r.get("errors"):
                bits.append(f"{r['errors']} wrk errors")
            if r.get("spread_pct", 0) > 10:
                bits.append(f"spread {r['spread_pct']:.0f}%")
            bits += disturbance(r)
            if r.get("leftovers"):
                bits.append(f"LEFT {len(r['leftovers'])} process(es)")
            notes = ", ".join(bits)
        elif r.get("leftovers"):
            notes += f"; LEFT {len(r['leftovers'])} process(es)"
        lines.append((r["target"], r["series"], _num(r.get("requests_per_sec"), ",.0f"),
                      _num(r.get("p99_ms"), ".2f"), _num(r.get("rss_mb"), ".1f"),
                      _num(r.get("processes"), "d"), _shorten(notes, 90)))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    widths[-1] = 0
    right = {2, 3, 4, 5}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [fmt(head), fmt(tuple("-" * w for w in widths[:-1]) + ("-----",))]
    out += [fmt(line) for line in lines]
    return "\n".join(out)


# Above these shares of the machine's CPU during the load, a figure is flagged as taken on
# a disturbed machine: someone else ran (other processes, or the hypervisor's steal).
OTHER_CPU_FLAG = 5.0
STEAL_FLAG = 5.0


def disturbance(row: dict[str, Any]) -> list[str]:
    bits = []
    if row.get("other_cpu_pct", 0.0) > OTHER_CPU_FLAG:
        bits.append(f"busy machine: others used {row['other_cpu_pct']:.0f}% CPU")
    if row.get("steal_pct", 0.0) > STEAL_FLAG:
        bits.append(f"steal {row['steal_pct']:.0f}%")
    return bits


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Poolhouse / peer req/s for each pair of RATIOS, within each series."""
    by_key = {(r["target"], r["series"]): r for r in rows}
    series = list(dict.fromkeys(r["series"] for r in rows))
    out = []
    for s in series:
        for ours, peer, goal in RATIOS:
            a, b = by_key.get((ours, s)), by_key.get((peer, s))
            entry: dict[str, Any] = {"series": s, "poolhouse": ours, "peer": peer,
                                     "goal": goal, "ratio": None, "verdict": None}
            if a is None or b is None:
                missing = ours if a is None else peer
                entry["verdict"] = f"n/a ({missing} not run)"
            elif a.get("status") != "ok" or b.get("status") != "ok":
                broken = ours if a.get("status") != "ok" else peer
                entry["verdict"] = f"n/a ({broken}: {_shorten(by_key[(broken, s)]['status'], 40)})"
            elif not b.get("requests_per_sec"):
                entry["verdict"] = f"n/a ({peer} measured 0 req/s)"
            else:
                entry["ratio"] = a["requests_per_sec"] / b["requests_per_sec"]
                if goal is None:
                    entry["verdict"] = "info"
                else:
                    entry["verdict"] = "met" if entry["ratio"] >= goal else "not met"
            out.append(entry)
    return out


def ratio_text(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        goal = f">= {e['goal']:.1f}x" if e["goal"] is not None else ""
        ratio = f"{e['ratio']:.2f}x" if e["ratio"] is not None else "-"
        lines.append(f"  {e['series']:<9} {e['poolhouse']:<17} vs {e['peer']:<17} "
                     f"{ratio:>7}  {goal:<8} {e['verdict']}")
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]],
               ratio_entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "results": rows, "ratios": ratio_entries}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
