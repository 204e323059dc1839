"""Preconditions of modules and handler mappings (``preCondition="integratedMode,
runtimeVersionv4.0,bitness64"``), evaluated for the application pool that serves them.

IIS loads an entry only when every token of its comma list holds for the worker process.
Poolhouse's workers run the integrated pipeline of the pool's ``managedPipelineMode``,
as 64-bit processes unless ``enable32BitAppOnWin64``, and host no .NET runtime — so the
``runtimeVersionv…`` tokens never hold, and the stock ASP.NET handler mappings of an IIS
applicationHost.config drop out instead of catching requests they could not serve.
``managedHandler`` (modules only) depends on the request: the worker's pipeline lets such
a module run when the handler is a Python application; ``holds`` alone says False.
"""

from __future__ import annotations

from .model import Pool

KNOWN = ("integratedmode", "classicmode", "isapimode", "bitness32", "bitness64",
         "managedhandler", "runtimeversionv1.1", "runtimeversionv2.0", "runtimeversionv4.0")


def holds(pre_condition: str, pool: Pool | None) -> bool:
    """Whether every token of ``pre_condition`` holds for workers of ``pool``.  Unknown
    tokens do not hold (IIS refuses to load such an entry too)."""
    if not pre_condition.strip():
        return True
    classic = pool is not None and pool.managed_pipeline_mode == "Classic"
    bits32 = pool is not None and pool.enable_32bit
    for raw in pre_condition.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        if token == "integratedmode":
            ok = not classic
        elif token in ("classicmode", "isapimode"):
            ok = classic
        elif token == "bitness32":
            ok = bits32
        elif token == "bitness64":
            ok = not bits32
        else:  # runtimeVersionv*, managedHandler (no .NET runtime), unknown tokens
            ok = False
        if not ok:
            return False
    return True
