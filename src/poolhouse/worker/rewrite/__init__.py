"""URL Rewrite (IIS's rewrite.dll) as a pure core: rule patterns, substitution strings,
inbound rules and outbound header rules, compiled once per configuration and evaluated
per request without I/O of their own.  ``poolhouse.worker.modules.rewrite`` is the
pipeline module that applies them (BeginRequest, SendResponse)."""

from .outbound import OutboundRule, apply_outbound, compile_outbound
from .patterns import PatternError, compile_pattern, translate_ecmascript
from .rules import (ABORT, CUSTOM, NONE, PROXY, REDIRECT, REWRITE, FileSystem, Outcome, Rule, compile_maps,
                    compile_rule, compile_rules, evaluate)
from .template import RewriteMap, Template, parse

__all__ = ["ABORT", "CUSTOM", "NONE", "PROXY", "REDIRECT", "REWRITE", "FileSystem", "OutboundRule", "Outcome",
           "PatternError", "RewriteMap", "Rule", "Template", "apply_outbound", "compile_maps", "compile_outbound",
           "compile_pattern", "compile_rule", "compile_rules", "evaluate", "parse", "translate_ecmascript"]
