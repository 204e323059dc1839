"""The queue protocol: what the listener and a worker say to each other.

One Unix stream socket per worker, handed to it at spawn; requests are multiplexed on it
by stream id (chosen by the listener).  Flow control has two parts:

* requests: the worker announces in READY how many requests it takes at once (its
  credits); every finished response (END_STREAM or RESET) gives one back.  The listener
  never sends a REQUEST to a worker without a free credit; CREDIT adjusts the number.
* bodies: each direction has a per-stream window.  The sender may have at most
  ``BODY_WINDOW`` unacknowledged body bytes in flight; the receiver returns window with
  WINDOW (payload: u32 increment) as it consumes them.  So a 1 GB upload or download never
  sits in either process's memory.

Heads are ``marshal``-encoded tuples of bytes/str/int (format version 4, stable across
Python 3.x): the cheapest safe encoding for two trusted processes of ours.  The listener
decodes a worker's heads defensively (type-checked), since application code runs there.

A worker says nothing about who it is: its pid and identity are the activation
service's to tell the listener (``attach_worker``).  Files the listener sends for a
worker (RESPONSE_FILE) are opened by the worker, as its own user, and travel as open
descriptors on a second socket of the worker's, its *file channel* (SOCK_SEQPACKET,
created with the queue socket at spawn): one record per descriptor, the record's bytes
``FILE_RECORD`` (the stream id), the descriptor as ``SCM_RIGHTS``.  The worker sends the
record before the RESPONSE_FILE frame that uses it, so when the listener reads the frame
the descriptor is already queued on the file channel; a frame without its descriptor is
refused.  The listener never opens a path on a worker's word.
"""

from __future__ import annotations

import marshal
import struct
from typing import NamedTuple

from .frames import END_STREAM, encode, header

# RESPONSE flag: close the client connection after this response
CLOSE = 0x02
# REQUEST flag: the client asked to switch protocols (a WebSocket handshake).  If the
# worker answers 101, the stream becomes a byte tunnel both ways: REQUEST_BODY frames then
# carry what the client sends, RESPONSE_BODY frames what goes back, END_STREAM either way
# ends it.  Any other answer is an ordinary response, after which the listener closes the
# connection.
UPGRADE = 0x04
# RESPONSE flag: the response depends on who asked (the URL's pipeline runs IP
# restrictions, URL authorization other than allow-all, authentication other than
# anonymous, or a module disabled the kernel cache): the listener's response cache never
# stores it, and drops what it holds for the URL.
PER_CLIENT = 0x08

__all__ = [
    "END_STREAM", "CLOSE", "UPGRADE", "PER_CLIENT", "BODY_WINDOW",
    "REQUEST", "REQUEST_BODY", "CANCEL", "WINDOW", "PING", "PONG",
    "READY", "RESPONSE", "RESPONSE_BODY", "RESET", "CREDIT", "DRAINING", "RESPONSE_FILE",
    "STALLED", "STALLED_ACK", "encode_stalled", "decode_stalled",
    "RequestHead", "encode_request", "decode_request",
    "ResponseHead", "encode_response", "decode_response",
    "encode_window", "decode_window", "encode_ready", "decode_ready",
    "FILE_RECORD", "FileRange", "encode_file", "decode_file", "encode_file_record", "decode_file_record",
]

# listener -> worker
REQUEST = 1        # payload: request head; END_STREAM if no body follows
REQUEST_BODY = 2   # payload: body bytes; END_STREAM on the last
CANCEL = 3         # the client went away: stop working on this stream
STALLED_ACK = 12   # stream 0; the streams a STALLED frame gave back are taken back: every
                   # REQUEST before this frame was given back, every one after it is new
# both ways
WINDOW = 4         # payload: u32 body-window increment for this stream
PING = 5
PONG = 6
# worker -> listener
READY = 16         # stream 0; payload: i32 credits (once, when the worker takes requests)
RESPONSE = 17      # payload: response head (+ whole body when END_STREAM)
RESPONSE_BODY = 18
RESET = 19         # the worker abandons the stream (the response cannot be completed)
CREDIT = 20        # stream 0; payload: i32 change in credits
DRAINING = 21      # stream 0; the worker takes no new requests (recycle); in-flight go on
RESPONSE_FILE = 22  # the rest of the response body is a file range, sent by the listener
                    # itself (sendfile) from the descriptor the worker passed on its file
                    # channel for this stream: payload i64 offset, length, size, mtime_ns,
                    # the last two the file's as the worker saw them; always END_STREAM

STALLED = 30       # stream: the one the worker's event loop is stuck in (0: none known);
                   # payload: the ids of the streams it has started.  Every other stream the
                   # listener sent is given back unstarted (queued again).  The worker drops
                   # every REQUEST that arrives before STALLED_ACK, and the listener sends
                   # it none until its next CREDIT frame (sent when its loop runs again)

BODY_WINDOW = 1 << 20
MAX_STALLED_STREAMS = 1 << 16

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
FILE_RECORD = _U32  # a file channel record: the stream id the descriptor is for


class RequestHead(NamedTuple):
    app: str                 # application key "<siteId>/<app path>", as in the worker's config
    method: str
    target: bytes            # request-target as received (path and query, not decoded)
    http_minor: int          # 0 or 1
    headers: tuple[bytes, ...]  # name, value, name, value, ... names lower-case
    client_addr: str
    client_port: int
    server_addr: str
    server_port: int
    scheme: str              # "http" | "https"
    body_length: int         # -1 unknown (chunked), 0 none, n bytes


class ResponseHead(NamedTuple):
    status: int
    header_block: bytes      # b"Name: value\r\n" * n, already validated by the worker
    content_length: int      # -1 when the body length is not known in advance
    body: bytes              # the whole body when the frame carries END_STREAM, else b""
    # For the W3C log (sc-substatus, cs-username).  Optional on the wire: a head of four
    # elements means (0, ""), so workers that predate them stay compatible.
    substatus: int = 0
    username: str = ""
    # For the W3C log's custom fields (logFile/customFields): (logFieldName, value) pairs
    # the worker computed (response headers, server variables).  Optional: a seventh
    # element, sent only when there are some.
    log_fields: tuple[tuple[str, str], ...] = ()
    # An HTTPERR reason for a response the worker produced on the listener's behalf (the
    # reverse proxy's 502/504: ``Connection_Refused_By_Upstream``, ``Timer_UpstreamResponse``,
    # ...): the listener writes an HTTPERR line with it when the exchange finishes.
    # Optional: an eighth element (the seventh then present, possibly empty), sent only
    # with a reason; a word of letters, digits and ``_``, at most ``MAX_HTTPERR_REASON``.
    httperr_reason: str = ""


MAX_LOG_FIELDS = 64
MAX_LOG_FIELD_NAME = 256
MAX_LOG_FIELD_VALUE = 65536
MAX_HTTPERR_REASON = 64


def encode_request(stream: int, head: RequestHead, end_stream: bool) -> bytes:
    return encode(REQUEST, END_STREAM if end_stream else 0, stream, marshal.dumps(tuple(head), 4))


def decode_request(payload: bytes) -> RequestHead:
    return RequestHead(*marshal.loads(payload))


def encode_response(stream: int, head: ResponseHead, end_stream: bool) -> bytes:
    return encode(RESPONSE, END_STREAM if end_stream else 0, stream, marshal.dumps(tuple(head), 4))


def marshal_response(status: int, header_block: bytes, content_length: int, body: bytes,
                     substatus: int = 0, username: str = "",
                     log_fields: tuple[tuple[str, str], ...] = (), httperr_reason: str = "") -> bytes:
    """The payload of a RESPONSE frame (see ``ResponseHead``): four elements, six when
    there is a substatus or a user name to log, seven when there are custom log fields,
    eight when the listener is asked for an HTTPERR line."""
    if httperr_reason:
        return marshal.dumps((status, header_block, content_length, body, substatus, username, log_fields,
                              httperr_reason), 4)
    if log_fields:
        return marshal.dumps((status, header_block, content_length, body, substatus, username, log_fields), 4)
    if substatus or username:
        return marshal.dumps((status, header_block, content_length, body, substatus, username), 4)
    return marshal.dumps((status, header_block, content_length, body), 4)


def _log_fields_ok(fields: object) -> bool:
    return (type(fields) is tuple and len(fields) <= MAX_LOG_FIELDS
            and all(type(f) is tuple and len(f) == 2 and type(f[0]) is str and type(f[1]) is str
                    and len(f[0]) <= MAX_LOG_FIELD_NAME and len(f[1]) <= MAX_LOG_FIELD_VALUE
                    for f in fields))


def _httperr_reason_ok(reason: object) -> bool:
    return (type(reason) is str and 0 < len(reason) <= MAX_HTTPERR_REASON
            and reason.replace("_", "").isalnum() and reason.isascii())


def decode_response(payload: bytes) -> ResponseHead:
    """Decodes and type-checks a worker's response head (raises ValueError if malformed)."""
    try:
        value = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"undecodable response head: {exc}") from None
    if (
        type(value) is not tuple
        or not (len(value) == 4 or (
            6 <= len(value) <= 8 and type(value[4]) is int and type(value[5]) is str
            and 0 <= value[4] <= 999 and len(value[5]) <= 512
            and (len(value) == 6 or _log_fields_ok(value[6]))
            and (len(value) < 8 or _httperr_reason_ok(value[7]))))
        or type(value[0]) is not int
        or type(value[1]) is not bytes
        or type(value[2]) is not int
        or type(value[3]) is not bytes
        or not 100 <= value[0] <= 999
    ):
        raise ValueError("malformed response head")
    return ResponseHead(*value)


def body_header(type_: int, stream: int, length: int, end_stream: bool) -> bytes:
    return header(type_, END_STREAM if end_stream else 0, stream, length)


def encode_window(stream: int, increment: int) -> bytes:
    return encode(WINDOW, 0, stream, _U32.pack(increment))


def decode_window(payload: bytes) -> int:
    return int(_U32.unpack(payload)[0])


def encode_credit(change: int) -> bytes:
    return encode(CREDIT, 0, 0, _I32.pack(change))


def decode_credit(payload: bytes) -> int:
    return int(_I32.unpack(payload)[0])


def encode_ready(credits: int) -> bytes:
    return encode(READY, 0, 0, _I32.pack(credits))


def decode_ready(payload: bytes) -> int:
    """The credits a worker announces (raises ValueError if malformed).  READY carries no
    pid: whatever a worker says about itself is not evidence of anything."""
    if len(payload) != _I32.size:
        raise ValueError(f"malformed READY ({len(payload)} bytes, expected {_I32.size})")
    return int(_I32.unpack(payload)[0])


def encode_file_record(stream: int) -> bytes:
    """The bytes of the file channel record carrying the descriptor for ``stream``."""
    return FILE_RECORD.pack(stream)


def decode_file_record(data: bytes) -> int:
    """The stream id of a file channel record (raises ValueError if malformed)."""
    if len(data) != FILE_RECORD.size:
        raise ValueError(f"file channel record of {len(data)} bytes, expected {FILE_RECORD.size}")
    return int(FILE_RECORD.unpack(data)[0])


def encode_stalled(stream: int, started: tuple[int, ...]) -> bytes:
    return encode(STALLED, 0, stream, marshal.dumps(started, 4))


def decode_stalled(payload: bytes) -> frozenset[int]:
    """The started stream ids of a STALLED frame (raises ValueError if malformed)."""
    try:
        value = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"undecodable STALLED: {exc}") from None
    if (type(value) is not tuple or len(value) > MAX_STALLED_STREAMS
            or not all(type(v) is int and 0 < v <= 0xFFFFFFFF for v in value)):
        raise ValueError("malformed STALLED")
    return frozenset(value)


class FileRange(NamedTuple):
    """A range of the file whose descriptor the worker passed for the stream."""
    offset: int
    length: int
    size: int       # the file's size and modification time when the worker built the
    mtime_ns: int   # response head: the listener refuses to send a file that changed since


_FILE_RANGE = struct.Struct("<qqqq")


def encode_file(stream: int, ref: FileRange) -> bytes:
    return encode(RESPONSE_FILE, END_STREAM, stream, _FILE_RANGE.pack(*ref))


def decode_file(payload: bytes) -> FileRange:
    """Decodes and checks a RESPONSE_FILE payload (raises ValueError if malformed)."""
    if len(payload) != _FILE_RANGE.size:
        raise ValueError(f"malformed file reference ({len(payload)} bytes, expected {_FILE_RANGE.size})")
    offset, length, size, mtime_ns = _FILE_RANGE.unpack(payload)
    if offset < 0 or length < 0 or size < 0 or offset + length > size:
        raise ValueError(f"file reference outside its file: {length} bytes at {offset} of {size}")
    return FileRange(offset, length, size, mtime_ns)
