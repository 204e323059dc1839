"""Pure HTTP semantics shared by the listener and the workers: dates, conditional
requests, ranges, content codings.

Nothing here does I/O or knows about configuration: each function takes header values
and the representation's validators and returns a verdict, so that the listener's
response cache and the worker's static file handler answer the same request the same
way (a 304 from one is a 304 from the other).  ``dates``: HTTP-date parsing and
formatting; ``conditional``: entity tags and RFC 9110 §13 preconditions; ``ranges``:
``Range`` and ``If-Range`` (§14); ``encodings``: ``Accept-Encoding`` negotiation
(§12.5.3).
"""
