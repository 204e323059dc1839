"""A stuck event loop gives back the requests it has not started (q.STALLED).

An inline worker (``threads="0"``) takes a batch of requests ahead and runs them one at a
time on its event loop.  When one of them hangs, the loop can do nothing more — not even
answer the health ping — and the requests behind it in the batch would wait for the
worker to be killed, then be lost with it.  This thread notices instead: once the loop has
made no progress for ``STALL_AFTER`` seconds, it writes to the queue socket itself, from
outside the loop, the responses the loop had finished but not yet flushed and a STALLED
frame naming the stream the loop is stuck in and the streams it has started.  The
listener queues every other stream of this worker again (for another worker, or for
this one's replacement), marks the stuck one so that it is never replayed, and sends
nothing more here until that stream ends.  The loop, if it ever comes back, drops every
REQUEST that arrives before the listener's STALLED_ACK: those were given back.

The loop's cost is one integer increment per request and a heartbeat every
``HEARTBEAT`` seconds; writes to the queue socket take a lock once per flushed batch.

Safety of writing from this thread: the loop writes to the queue socket only in
``WorkerProcess._flush``, which holds ``lock``; this thread writes only while holding it
and only when the transport has nothing buffered, so frames never interleave.  The
frames waiting in ``_out`` are taken by copying the list and deleting the copied prefix
(each a single step under the GIL): what the loop appends meanwhile stays for its next
flush.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING

from ..ipc import queue as q

if TYPE_CHECKING:
    from .process import WorkerProcess

log = logging.getLogger("poolhouse.worker")

STALL_AFTER = 0.5  # seconds without progress before the loop counts as stuck
HEARTBEAT = 0.1


class StallWatch:
    def __init__(self, worker: "WorkerProcess", after: float = STALL_AFTER) -> None:
        self.worker = worker
        self.after = after
        self.lock = threading.Lock()
        self.reported = -1  # the progress count last reported as stuck
        self.stopped = False
        self.resumed = True  # the loop has run since the last report
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> None:
        self.worker.loop.call_later(HEARTBEAT, self._beat)
        self._thread.start()

    def stop(self) -> None:
        self.stopped = True

    def _beat(self) -> None:
        self.worker.progress += 1
        if not self.resumed:
            self.resumed = True
            self.worker.loop_resumed()
        if not self.stopped:
            self.worker.loop.call_later(HEARTBEAT, self._beat)

    def _run(self) -> None:
        worker = self.worker
        seen = worker.progress
        since = last = time.monotonic()
        while not self.stopped:
            time.sleep(HEARTBEAT)
            now = time.monotonic()
            progress = worker.progress
            starved, last = now - last > 3 * HEARTBEAT, now
            if progress != seen or starved:
                # progress; or this thread itself was not scheduled for a while (a busy
                # machine, a stopped process): the loop may simply not have run either
                seen, since = progress, now
                continue
            if now - since >= self.after and self.reported != progress:
                try:
                    if self._report(progress):
                        self.reported = progress
                except OSError as exc:
                    log.error("cannot report a stuck event loop: %s", exc)
                    self.reported = progress

    def _report(self, progress: int) -> bool:
        worker = self.worker
        with self.lock:
            transport = worker.transport
            if transport is None or transport.is_closing() or transport.get_write_buffer_size():
                return False  # nothing to write on, or the loop's own write is half done
            sock = transport.get_extra_info("socket")
            if sock is None:
                return False
            worker.disowning = True
            started = tuple(sid for sid in list(worker.streams) if 0 < sid < 0xFFFFFF00)
            if worker.progress != progress:
                worker.disowning = False  # the loop moved on meanwhile: not stuck after all
                return False
            sid = worker.running_sid
            pending = worker._out.copy()
            del worker._out[:len(pending)]
            pending.append(q.encode_stalled(sid if sid in started else 0, started))
            _write_all(sock.fileno(), b"".join(pending))
            self.resumed = False
        log.warning("event loop stuck for %.1f s in stream %d (%s): %d started stream(s) kept, "
                    "the others given back to the listener", self.after, sid,
                    _target(worker, sid), len(started))
        return True


def _target(worker: "WorkerProcess", sid: int) -> str:
    stream = worker.streams.get(sid)
    return stream.head.target[:200].decode("latin-1") if stream is not None else "unknown"


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the (non-blocking) socket, waiting for room as needed."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            poller.poll(1000)
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                poller.poll(1000)
                continue
            raise
        view = view[n:]
