"""Poolhouse: a web application server for Python on Linux built on the architecture of
IIS 7+ — a listener, an activation service and pools of worker processes."""

__version__ = "0.1.0"
