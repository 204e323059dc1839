"""The inline worker's credit policy (worker/credits.py) and the STALLED frame's
payload (ipc/queue.py), fed numbers and bytes."""

from __future__ import annotations

import marshal

import pytest

from poolhouse.ipc import queue as q
from poolhouse.ipc.frames import FrameDecoder
from poolhouse.worker.credits import ASGI_CREDITS, INLINE_CREDITS, MAX_LENT, CreditPolicy


def feed(policy: CreditPolicy, seconds: float, n: int) -> int:
    total = 0
    for _ in range(n):
        total += policy.finished(seconds)
    return total


def test_fixed_credits_for_threads_and_asgi() -> None:
    assert CreditPolicy(8, False).credits == 8 and not CreditPolicy(8, False).adaptive
    assert CreditPolicy(0, True).credits == ASGI_CREDITS and not CreditPolicy(0, True).adaptive
    assert CreditPolicy(0, False).credits == INLINE_CREDITS and CreditPolicy(0, False).adaptive


def test_a_fast_application_keeps_its_batch() -> None:
    policy = CreditPolicy(0, False)
    assert feed(policy, 0.0001, 200) == 0
    assert policy.credits == INLINE_CREDITS


def test_a_blocking_application_takes_one_at_a_time_and_recovers() -> None:
    policy = CreditPolicy(0, False)
    assert feed(policy, 0.05, 16) == 1 - INLINE_CREDITS  # the changes announced add up
    assert policy.credits == 1
    assert feed(policy, 0.0001, 16) == INLINE_CREDITS - 1
    assert policy.credits == INLINE_CREDITS


def test_the_odd_slow_request_changes_nothing() -> None:
    policy = CreditPolicy(0, False)
    for i in range(400):
        assert policy.finished(0.2 if i % 5 == 0 else 0.0002) == 0
    assert policy.credits == INLINE_CREDITS


def test_in_between_service_times_take_what_fits_in_the_prompt_budget() -> None:
    policy = CreditPolicy(0, False)
    feed(policy, 0.005, 32)
    assert policy.credits == 10  # 50 ms / 5 ms


def test_lending_is_bounded() -> None:
    policy = CreditPolicy(2, False)
    assert all(policy.lend() for _ in range(MAX_LENT))
    assert not policy.lend()
    policy.reclaim()
    assert policy.lend()


def test_stalled_frame_round_trip_and_hostile_payloads() -> None:
    data = q.encode_stalled(7, (3, 5, 7))
    [(ftype, flags, sid, payload)] = FrameDecoder().feed(data)
    assert (ftype, sid) == (q.STALLED, 7)
    assert q.decode_stalled(payload) == frozenset((3, 5, 7))
    assert q.decode_stalled(marshal.dumps((), 4)) == frozenset()
    for bad in (b"", b"\xff\x00", marshal.dumps([1, 2], 4), marshal.dumps((0,), 4), marshal.dumps((-1,), 4),
                marshal.dumps((1 << 32,), 4), marshal.dumps(("1",), 4),
                marshal.dumps(tuple(range(1, q.MAX_STALLED_STREAMS + 2)), 4)):
        with pytest.raises(ValueError):
            q.decode_stalled(bad)
