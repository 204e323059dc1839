"""Framing shared by every Poolhouse channel: a fixed header, then a payload.

    +--------+--------+----------------+----------------+
    | type:1 | flags:1| stream id:4    | length:4       |  payload (length bytes)
    +--------+--------+----------------+----------------+

Integers are little-endian (every peer is a process on the same Linux machine).  The
decoder is a pure class: feed it bytes in any chunking, it returns whole frames.  It does
no I/O and knows nothing of what the types mean; the protocols in ``queue.py`` and
``control.py`` give them meaning.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct("<BBII")
HEADER_SIZE = HEADER.size  # 10
MAX_PAYLOAD = 64 * 1024 * 1024  # a peer announcing more is broken or hostile

# flags
END_STREAM = 0x01


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames; the channel must be closed."""


class Frame(NamedTuple):
    type: int
    flags: int
    stream: int
    payload: bytes


_pack = HEADER.pack
_new_frame = tuple.__new__  # a Frame without NamedTuple's keyword handling
_unpack_from = HEADER.unpack_from


def encode(type_: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame as bytes (small frames: one allocation is cheaper than a writelines entry)."""
    return _pack(type_, flags, stream, len(payload)) + payload


def header(type_: int, flags: int, stream: int, length: int) -> bytes:
    """Only the header, for a payload written separately (large bodies are not copied)."""
    return _pack(type_, flags, stream, length)


class FrameDecoder:
    """Turns a byte stream into frames.  ``feed`` accepts any split of the stream."""

    __slots__ = ("_buf", "max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        while end - pos >= HEADER_SIZE:
            type_, flags, stream, length = _unpack_from(view, pos)
            if length > self.max_payload:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_payload}")
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            payload = view[start:stop]
            frames.append(_new_frame(Frame, (type_, flags, stream,
                                             payload if view is data else bytes(payload))))
            pos = stop
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        return frames
