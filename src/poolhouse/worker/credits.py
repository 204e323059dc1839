"""How many requests a worker takes at once: its credits (see ipc/queue.py).

* A threaded worker (``threads="N"``) takes N: one per thread.
* A worker with an ASGI application takes ``ASGI_CREDITS``: requests are tasks.
* An inline worker (``threads="0"``) runs one request at a time on its event loop; what
  it takes ahead is only there so that a batch arrives in one read and leaves in one
  write.  It takes ahead what it can answer *promptly*: as many requests as fit in
  ``PROMPT`` seconds at its measured service time (the median of recent requests), between 1 and
  ``INLINE_CREDITS``.  A hello-world application keeps all 32 (its batching is the
  benchmark figure); an application that takes 50 ms a request takes one at a time, so
  the others wait in the listener's queue where any worker can take them — which is also
  what makes a web garden grow: a pool needs another worker when no worker has a free
  credit.

Besides, a request waiting for its body (one larger than the listener's read-ahead,
coming slowly) lends its credit back while it waits (``lend``/``reclaim``), up to
``MAX_LENT`` at a time: it occupies no slot that other requests need.  A threaded worker
has that many spare threads for the requests taken meanwhile.
"""

from __future__ import annotations

INLINE_CREDITS = 32
ASGI_CREDITS = 100
PROMPT = 0.05        # seconds of work an inline worker takes ahead
SAMPLES = 15         # the service time is the median of this many recent requests...
EVERY = 8            # ...recomputed every this many requests
MAX_LENT = 64        # requests at once that may wait for their bodies without a credit


class CreditPolicy:
    """The median resists the odd slow request and the moments a busy machine does not
    schedule the worker (which inflate wall-clock times but are not the application's
    cost, and which more workers would not help)."""

    __slots__ = ("credits", "adaptive", "samples", "count", "lent")

    def __init__(self, threads: int, asgi: bool) -> None:
        self.adaptive = threads <= 0 and not asgi
        credits = threads if threads > 0 else INLINE_CREDITS
        if asgi:
            credits = max(credits, ASGI_CREDITS)
        self.credits = credits
        self.samples: list[float] = []
        self.count = 0
        self.lent = 0

    def finished(self, seconds: float) -> int:
        """A request took ``seconds``: the change in credits to announce (0: none)."""
        samples = self.samples
        samples.append(seconds)
        self.count += 1
        if self.count % EVERY:
            return 0
        if len(samples) > SAMPLES:
            del samples[:-SAMPLES]
        median = sorted(samples)[len(samples) // 2]
        target = INLINE_CREDITS if median * INLINE_CREDITS <= PROMPT else max(1, int(PROMPT / median))
        current = self.credits
        # only a change worth a frame: a quarter of the current figure, or one at the bottom
        if target == current or abs(target - current) < max(1, current // 4):
            return 0
        self.credits = target
        return target - current

    def lend(self) -> bool:
        if self.lent >= MAX_LENT:
            return False
        self.lent += 1
        return True

    def reclaim(self) -> None:
        self.lent -= 1
