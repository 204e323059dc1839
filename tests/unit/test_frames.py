"""The frame decoder fed whole, byte by byte and in random chunks."""

from __future__ import annotations

import random

import pytest

from poolhouse.ipc import queue as q
from poolhouse.ipc.control import MessageDecoder, encode_message
from poolhouse.ipc.frames import END_STREAM, FrameDecoder, FrameError, encode, header


def _stream() -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    frames = [
        (q.REQUEST, END_STREAM, 1, b"head"),
        (q.REQUEST_BODY, 0, 2, b"x" * 70000),
        (q.REQUEST_BODY, END_STREAM, 2, b""),
        (q.PING, 0, 0, b""),
        (q.RESPONSE, 0, 0xFFFFFFFF, bytes(range(256))),
    ]
    return b"".join(encode(*f) for f in frames), frames


def test_whole() -> None:
    data, frames = _stream()
    assert [tuple(f) for f in FrameDecoder().feed(data)] == frames


def test_byte_by_byte() -> None:
    data, frames = _stream()
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):
        out.extend(dec.feed(data[i : i + 1]))
    assert [tuple(f) for f in out] == frames
    assert dec.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    data, frames = _stream()
    dec = FrameDecoder()
    out = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 5000)
        out.extend(dec.feed(data[pos : pos + n]))
        pos += n
    assert [tuple(f) for f in out] == frames


def test_partial_frame_waits() -> None:
    dec = FrameDecoder()
    data = encode(q.RESPONSE_BODY, 0, 7, b"abcdef")
    assert dec.feed(data[:12]) == []
    assert dec.buffered == 12
    assert [tuple(f) for f in dec.feed(data[12:])] == [(q.RESPONSE_BODY, 0, 7, b"abcdef")]


def test_oversized_frame_is_refused() -> None:
    dec = FrameDecoder(max_payload=1024)
    with pytest.raises(FrameError):
        dec.feed(header(q.RESPONSE_BODY, 0, 1, 1025))


def test_request_head_round_trip() -> None:
    head = q.RequestHead("1/", "POST", b"/a?b=1", 1, (b"host", b"x", b"content-length", b"3"),
                         "127.0.0.1", 5555, "127.0.0.1", 8080, "http", 3)
    frame = FrameDecoder().feed(q.encode_request(9, head, False))[0]
    assert frame.type == q.REQUEST and frame.stream == 9 and not frame.flags & END_STREAM
    assert q.decode_request(frame.payload) == head


def test_response_head_is_checked() -> None:
    ok = q.marshal_response(200, b"A: b\r\n", 3, b"abc")
    assert q.decode_response(ok) == q.ResponseHead(200, b"A: b\r\n", 3, b"abc")
    import marshal

    for bad in (marshal.dumps((200, "str", 3, b"")), marshal.dumps((99, b"", 0, b"")),
                marshal.dumps([200, b"", 0, b""]), b"\xff\x00garbage"):
        with pytest.raises(ValueError):
            q.decode_response(bad)


def test_response_head_carries_custom_log_fields() -> None:
    import marshal

    # no extra fields: the four-element head (the fast path)
    assert marshal.loads(q.marshal_response(200, b"", 0, b"x")) == (200, b"", 0, b"x")
    assert marshal.loads(q.marshal_response(200, b"", 0, b"x", 0, "", ())) == (200, b"", 0, b"x")
    assert len(marshal.loads(q.marshal_response(404, b"", 0, b"", 2, "bob"))) == 6
    fields = (("Tenant", "acme"), ("X-Cache", ""))
    head = q.decode_response(q.marshal_response(200, b"A: b\r\n", 1, b"a", 0, "", fields))
    assert head == q.ResponseHead(200, b"A: b\r\n", 1, b"a", 0, "", fields)
    assert head.log_fields == fields and q.decode_response(q.marshal_response(200, b"", 0, b"")).log_fields == ()

    def seven(extra: object) -> bytes:
        return marshal.dumps((200, b"", 0, b"", 0, "", extra), 4)

    for bad in (["a", "b"], (("a",),), (("a", "b", "c"),), (("a", 1),), ((b"a", "b"),), [("a", "b")],
                (["a", "b"],), tuple(("f%d" % i, "v") for i in range(q.MAX_LOG_FIELDS + 1)),
                (("n" * (q.MAX_LOG_FIELD_NAME + 1), "v"),), (("n", "v" * (q.MAX_LOG_FIELD_VALUE + 1)),)):
        with pytest.raises(ValueError):
            q.decode_response(seven(bad))
    with pytest.raises(ValueError):  # eight elements
        q.decode_response(marshal.dumps((200, b"", 0, b"", 0, "", (), 1), 4))
    assert q.decode_response(seven(tuple(("f%d" % i, "v") for i in range(q.MAX_LOG_FIELDS)))).log_fields


def test_response_head_carries_an_httperr_reason() -> None:
    import marshal

    payload = q.marshal_response(502, b"", 5, b"error", 3, "", (), "Connection_Refused_By_Upstream")
    assert len(marshal.loads(payload)) == 8
    head = q.decode_response(payload)
    assert (head.status, head.substatus, head.log_fields, head.httperr_reason) == (
        502, 3, (), "Connection_Refused_By_Upstream")
    fields = (("Tenant", "acme"),)
    head = q.decode_response(q.marshal_response(504, b"", 0, b"", 0, "bob", fields, "Timer_UpstreamResponse"))
    assert (head.username, head.log_fields, head.httperr_reason) == ("bob", fields, "Timer_UpstreamResponse")
    assert q.decode_response(q.marshal_response(502, b"", 0, b"", 3)).httperr_reason == ""

    def eight(reason: object) -> bytes:
        return marshal.dumps((502, b"", 0, b"", 3, "", (), reason), 4)

    # a worker runs application code: the reason is one word of the HTTPERR log, nothing else
    for bad in ("", "two words", "tab\there", "new\nline", "Ünicode", "x" * (q.MAX_HTTPERR_REASON + 1), b"Bytes", 1,
                None):
        with pytest.raises(ValueError):
            q.decode_response(eight(bad))
    assert q.decode_response(eight("x" * q.MAX_HTTPERR_REASON)).httperr_reason


def test_ready_and_window() -> None:
    frame = FrameDecoder().feed(q.encode_ready(8))[0]
    assert frame.type == q.READY and q.decode_ready(frame.payload) == 8
    # READY carries credits and nothing else: the old (pid, credits) form is refused, so a
    # worker cannot name a process for the listener to look up
    import marshal
    for bad in (marshal.dumps((1, 8), 4), b"", b"\x00" * 8):
        with pytest.raises(ValueError):
            q.decode_ready(bad)
    frame = FrameDecoder().feed(q.encode_window(3, 65536))[0]
    assert frame.stream == 3 and q.decode_window(frame.payload) == 65536


def test_control_messages_any_chunking() -> None:
    msgs = [{"op": "need_worker", "pool": "A"}, {"op": "reply", "id": 3, "result": {"x": [1, 2]}}]
    data = b"".join(encode_message(m) for m in msgs)
    dec = MessageDecoder()
    out = []
    for i in range(0, len(data), 3):
        out.extend(dec.feed(data[i : i + 3]))
    assert out == msgs


def test_control_message_without_op_is_refused() -> None:
    from poolhouse.ipc.control import MESSAGE

    with pytest.raises(FrameError):
        MessageDecoder().feed(encode(MESSAGE, 0, 0, b'{"no": "op"}'))
    with pytest.raises(FrameError):
        MessageDecoder().feed(encode(MESSAGE, 0, 0, b"not json"))


def test_file_reference_round_trip_and_limits() -> None:
    ref = q.FileRange(10, 90, 100, 1_700_000_000_123_456_789)
    frame = FrameDecoder().feed(q.encode_file(7, ref))[0]
    assert (frame.type, frame.flags, frame.stream) == (q.RESPONSE_FILE, q.END_STREAM, 7)
    assert q.decode_file(frame.payload) == ref
    assert q.decode_file(q.encode_file(1, q.FileRange(0, 0, 0, -5))[10:]).mtime_ns == -5
    # the range must lie inside the size the worker reported; no path travels any more
    import marshal
    for bad in (q.FileRange(0, 101, 100, 0), q.FileRange(-1, 1, 100, 0), q.FileRange(5, -1, 100, 0),
                q.FileRange(2**62, 2**62, 2**62, 0)):
        with pytest.raises(ValueError):
            q.decode_file(q.encode_file(1, bad)[10:])
    for payload in (b"", b"x" * 31, b"x" * 33, marshal.dumps(("/etc/shadow", 0, 10, 10, 0), 4)):
        with pytest.raises(ValueError):
            q.decode_file(payload)


def test_file_channel_record() -> None:
    assert q.decode_file_record(q.encode_file_record(0xFFFFFFFF)) == 0xFFFFFFFF
    for bad in (b"", b"abc", b"abcde"):
        with pytest.raises(ValueError):
            q.decode_file_record(bad)
