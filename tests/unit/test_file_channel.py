"""The listener's end of a worker's file channel (listener/file_channel.py), fed
by a real SOCK_SEQPACKET pair: descriptors are matched to their stream whichever arrives
first, and every forged or unused descriptor is closed, refused and logged."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolhouse.ipc import queue as q
from poolhouse.listener.file_channel import LOGGED_FORGERIES, FileChannel, FileRefused


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    return path


def channel(loop: asyncio.AbstractEventLoop, owned: set[int]) -> tuple[FileChannel, socket.socket]:
    ours, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def make() -> FileChannel:
        return FileChannel(ours, "pool#1", owned.__contains__)

    return loop.run_until_complete(make()), worker


def turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.01))


def same_file(a: int, path: Path) -> bool:
    st, other = os.fstat(a), path.stat()
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def test_descriptor_read_before_or_with_its_frame(loop: asyncio.AbstractEventLoop, secret: Path) -> None:
    base = open_fds()
    chan, worker = channel(loop, {1, 2})
    fd = os.open(secret, os.O_RDONLY)
    send(worker, q.encode_file_record(1), [fd])
    turn(loop)  # read by the loop before the frame comes
    assert 1 in chan.pending
    got = chan.take(1)
    assert same_file(got, secret)
    os.close(got)
    # not yet read when the frame comes: take reads the channel itself
    send(worker, q.encode_file_record(2), [fd])
    got = chan.take(2)
    assert same_file(got, secret)
    os.close(got)
    os.close(fd)
    chan.close()
    worker.close()
    assert open_fds() == base


def test_forgeries_are_closed_refused_and_logged(loop: asyncio.AbstractEventLoop, secret: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "poolhouse.listener")
    owned = {1, 2, 3, 4, 5}
    chan, worker = channel(loop, owned)
    fd = os.open(secret, os.O_RDONLY)
    base = open_fds()
    # a frame without a descriptor
    with pytest.raises(FileRefused, match="without a descriptor"):
        chan.take(1)
    # a descriptor for a stream the worker does not own: closed at once, nothing pending
    send(worker, q.encode_file_record(99), [fd])
    # several descriptors at once, for an owned stream: all closed, and the stream refused
    send(worker, q.encode_file_record(2), [fd, fd])
    # more than the listener reads in one record: the kernel closes the rest
    send(worker, q.encode_file_record(3), [fd] * 40)
    # a second descriptor for one stream: both closed, the stream refused
    send(worker, q.encode_file_record(4), [fd])
    send(worker, q.encode_file_record(4), [fd])
    # a record without a descriptor, and a malformed one
    send(worker, q.encode_file_record(5), [])
    send(worker, b"garbage!", [fd])
    turn(loop)
    assert open_fds() == base  # every received descriptor was closed
    for sid, reason in ((2, "several descriptors"), (3, "several descriptors"), (4, "a second descriptor"),
                        (5, "without a descriptor")):
        with pytest.raises(FileRefused, match=reason):
            chan.take(sid)
    text = caplog.text
    for reason in ("RESPONSE_FILE without a descriptor", "a descriptor for a stream it does not own",
                   "several descriptors at once", "a second descriptor for one stream",
                   "a file channel record without a descriptor", "a malformed file channel record"):
        assert f"worker pool#1 sent {reason}" in text, reason
    os.close(fd)
    chan.close()
    worker.close()


def test_a_flood_holds_nothing_and_logs_a_bounded_number_of_lines(
        loop: asyncio.AbstractEventLoop, secret: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "poolhouse.listener")
    chan, worker = channel(loop, {1})
    worker.setblocking(False)
    fd = os.open(secret, os.O_RDONLY)
    base = open_fds()
    sent = 0
    for _ in range(200):
        try:
            while True:
                send(worker, q.encode_file_record(7), [fd])  # not its stream
                sent += 1
        except BlockingIOError:
            pass
        turn(loop)
        if sent > 3000:
            break
    turn(loop)
    assert sent > 3000 and chan.forgeries == sent
    assert not chan.pending and open_fds() == base
    assert len(caplog.records) <= LOGGED_FORGERIES + 1 + sent // 1000
    # the stream it owns still gets its file
    send(worker, q.encode_file_record(1), [fd])
    got = chan.take(1)
    assert same_file(got, secret)
    os.close(got)
    os.close(fd)
    chan.close()
    worker.close()


def test_unused_and_unread_descriptors_are_released(loop: asyncio.AbstractEventLoop, secret: Path) -> None:
    base = open_fds()
    chan, worker = channel(loop, {1, 2})
    fd = os.open(secret, os.O_RDONLY)
    send(worker, q.encode_file_record(1), [fd])
    turn(loop)
    chan.drop(1)  # the stream ended (RESET, a whole RESPONSE) without using it
    assert not chan.pending
    send(worker, q.encode_file_record(2), [fd])
    turn(loop)
    send(worker, q.encode_file_record(2), [fd])  # queued, never read
    os.close(fd)
    chan.close()  # the worker's link went away
    assert chan.pending == {} and open_fds() == base + 1  # only the worker's end is left
    worker.close()
    assert open_fds() == base


def test_the_worker_end_closing_closes_the_channel(loop: asyncio.AbstractEventLoop) -> None:
    chan, worker = channel(loop, {1})
    worker.close()
    turn(loop)
    assert chan.closed
    with pytest.raises(FileRefused, match="after the file channel closed"):
        chan.take(1)


def test_attach_record_carries_the_queue_socket_and_the_file_channel(loop: asyncio.AbstractEventLoop) -> None:
    """The activation service hands a worker's two sockets to the listener in one record
    of its descriptor channel; a record with too many descriptors is dropped whole."""
    from poolhouse.ipc.control import MAX_FDS, FdReceiver, fd_pair, send_fds

    base = open_fds()
    ours, theirs = fd_pair()
    got: list[tuple[dict[str, object], list[int]]] = []

    async def make() -> FdReceiver:
        return FdReceiver(ours, lambda label, fds: got.append((label, fds)))

    receiver = loop.run_until_complete(make())
    queue_a, queue_b = socket.socketpair()
    files_a, files_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    send_fds(theirs, {"op": "attach_worker", "pool": "P", "worker_id": "P#1", "pid": 42},
             [queue_a.fileno(), files_a.fileno()])
    with pytest.raises(ValueError):
        send_fds(theirs, {"op": "x"}, [])
    sock = socket.socket(fileno=os.dup(theirs.fileno()))
    sock.sendmsg([b'{"op": "attach_worker"}'],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [queue_a.fileno()] * (MAX_FDS + 1)))])
    sock.close()
    turn(loop)
    assert len(got) == 1 and got[0][0]["pid"] == 42
    q_fd, f_fd = got[0][1]
    assert socket.socket(fileno=f_fd).type == socket.SOCK_SEQPACKET
    os.close(q_fd)
    receiver.close()
    for s in (theirs, queue_a, queue_b, files_a, files_b):
        s.close()
    assert open_fds() == base


def test_looking_for_a_descriptor_is_bounded(loop: asyncio.AbstractEventLoop, secret: Path) -> None:
    """A worker that keeps its file channel full cannot hold the listener's loop in
    ``take``: it reads at most RECORDS_PER_TAKE records, then refuses."""
    from poolhouse.listener.file_channel import RECORDS_PER_TAKE

    chan, worker = channel(loop, {1})
    worker.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", socket.SO_SNDBUF), 16 << 20)
    worker.setblocking(False)
    fd = os.open(secret, os.O_RDONLY)
    queued = 0
    try:
        while queued < RECORDS_PER_TAKE + 500:
            send(worker, q.encode_file_record(9), [fd])
            queued += 1
    except BlockingIOError:
        pass
    if queued <= RECORDS_PER_TAKE:
        pytest.skip(f"the socket buffer holds only {queued} records here")
    with pytest.raises(FileRefused, match="without a descriptor"):
        chan.take(1)
    assert chan.forgeries == RECORDS_PER_TAKE + 1  # the records read, and the refusal
    os.close(fd)
    chan.close()
    worker.close()
