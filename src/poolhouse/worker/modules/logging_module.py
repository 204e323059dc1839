"""HttpLoggingModule.  The W3C access log is written by the listener (HTTP.sys's role),
so this module adds no hooks of its own.  Modules that want extra log fields put them
in ``ctx.response.log_fields`` (a dict); see docs/pipeline.md for what becomes of them."""

from __future__ import annotations

from .base import PassiveModule


class HttpLoggingModule(PassiveModule):
    pass
