"""The pool queue's dispatch rules (listener/request_queue.py), fed fake workers: given
back requests keep their order at the front, a pool whose workers are all busy asks for
another worker, and a demand answer that overtakes a starting worker's READY does not
ask again."""

from __future__ import annotations

from typing import Any

from poolhouse.listener.request_queue import PoolQueue


class FakeWorker:
    def __init__(self, credits: int) -> None:
        self.credits = credits
        self.draining = False
        self.write_paused = False
        self.streams: dict[int, Any] = {}
        self.got: list[Any] = []

    def assign(self, exch: Any) -> None:
        self.credits -= 1
        self.got.append(exch)


class FakeExchange:
    pool = None
    queued_at = 0.0

    def __init__(self, name: str) -> None:
        self.name = name


def make() -> tuple[PoolQueue, list[str]]:
    demands: list[str] = []
    return PoolQueue("P", 100, demands.append), demands


def test_given_back_requests_go_first_in_their_order() -> None:
    queue, _ = make()
    queue.waiting.extend([FakeExchange("later")])
    a, b = FakeExchange("a"), FakeExchange("b")
    queue.give_back([a, b])  # type: ignore[list-item]
    assert [e.name for e in queue.waiting] == ["a", "b", "later"]
    worker = FakeWorker(2)
    queue.worker_ready(worker)  # type: ignore[arg-type]
    assert [e.name for e in worker.got] == ["a", "b"]


def test_busy_workers_ask_for_another() -> None:
    queue, demands = make()
    worker = FakeWorker(1)
    queue.worker_ready(worker)  # type: ignore[arg-type]
    assert queue.submit(FakeExchange("one")) is None  # type: ignore[arg-type]
    assert demands == []  # it had a free credit
    assert queue.submit(FakeExchange("two")) is None  # type: ignore[arg-type]
    assert demands == ["P"]  # every worker busy: one more, please
    queue.demand_done(at_capacity=False, starting=True)
    assert demands == ["P"]  # the new worker's READY decides
    late = FakeWorker(0)
    queue.worker_ready(late)  # type: ignore[arg-type]
    assert demands == ["P", "P"]  # still waiting after its READY: busy, ask again
    queue.demand_done(at_capacity=True)
    queue.submit(FakeExchange("three"))  # type: ignore[arg-type]
    assert demands == ["P", "P"]  # at maxProcesses: not asked again


def test_a_worker_that_is_not_reading_gets_nothing_more() -> None:
    """Past the write buffer's high-water mark (the worker does not read its socket),
    a worker's credits do not count: requests wait in the queue, for it to read again
    or for another worker."""
    queue, _ = make()
    stuck, other = FakeWorker(100), FakeWorker(1)
    queue.workers.extend([stuck])
    stuck.write_paused = True
    queue.submit(FakeExchange("a"))  # type: ignore[arg-type]
    queue.worker_free(stuck)  # type: ignore[arg-type]
    assert stuck.got == [] and [e.name for e in queue.waiting] == ["a"]
    queue.workers.append(other)
    queue.drain_into_free_workers()
    assert [e.name for e in other.got] == ["a"] and stuck.got == []
    queue.submit(FakeExchange("b"))  # type: ignore[arg-type]
    stuck.write_paused = False
    queue.worker_free(stuck)  # type: ignore[arg-type]
    assert [e.name for e in stuck.got] == ["b"]
