"""Controller <-> replica frame codec (DESIGN.md §3): a 40-byte big-endian header plus payload.

Kept allocation-light because every replicated block I/O crosses it twice.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

HEADER = struct.Struct(">HBBIQQQQ")
HEADER_SIZE = HEADER.size  # 40
MAGIC = 0x4A56  # "JV"
MAX_IO = 16 * 1024 * 1024  # largest READ/WRITE/UNMAP length in one frame
MAX_PAYLOAD = MAX_IO + 4096  # larger payload_len = malformed frame
SECTOR = 512
DEFAULT_REGION = 1 << 20  # a replica's dirty-region size unless it says otherwise (DIRTY_MAP)

# operation codes
HELLO = 1
AUTH = 2
PING = 3
INFO = 4
READ = 5
WRITE = 6
FLUSH = 7
UNMAP = 8
SET_META = 9
DIRTY_MAP = 10
CLEAR_DIRTY = 11
EXTENTS = 12
SET_MODE = 13
BYE = 14  # orderly close: nothing of this client is in flight; the replica answers and closes
READV = 15  # payload JSON [[offset, length], ..] -> the ranges' data, concatenated
WRITEV = 16  # payload: u32 JSON length, JSON [[offset, length], ..], the data concatenated
CLAIM = 17  # promise the header's epoch (a new controller term): strictly above the stored one
GROW = 18  # payload JSON {"size": bytes}: extend the replica (never shrink), persisted -> INFO
# offset/length (whole 4 KiB blocks, or up to the end) -> JSON {"sums": [per block, the CRC32C
# of its data as stored in volume.crc], "bad": [block numbers failing their check]} (scrub)
CHECKSUMS = 19
# snapshots (docs/ENGINE.md "Snapshots"); layers are named by the snapshot's id
# payload JSON {"id", "name", "created"}: the data written so far becomes a read-only layer under
# a new, empty head -> JSON {"snapshots": [..]} (as SNAP_LIST)
SNAPSHOT = 20
# payload JSON {"id"}: merge the snapshot's layer into its child (the next newer layer, or the
# head), a bounded step per request -> JSON {"done": bool, "merged": bytes so far}; when done the
# layer is gone (repeat until done; idempotent, safe to resume after a crash)
SNAP_DELETE = 21
SNAP_LIST = 22  # -> JSON {"snapshots": [{"id", "name", "created", "size", "bytes", "unique"}]}
# offset/length + payload JSON {"to": id | null (the head), "from": id | null (nothing)}: the
# [offset, length] runs of blocks present in a layer newer than `from`, up to `to` inclusive
SNAP_EXTENTS = 23
# offset/length + payload JSON {"id"}: the volume's contents as of that snapshot (checked; a bad
# block answers BAD_BLOCKS as READ does)
SNAP_READ = 24
# payload JSON {}: forget every snapshot layer and empty the head (a full rebuild's first step,
# before the replica takes writes; the rebuild then re-creates the source's layers)
SNAP_RESET = 25
# offset/length in whole blocks (or up to the end): the head keeps nothing of its own there, so
# the range reads through to the snapshots' layers (as UNMAP when there are none); a rebuild's
# copy of the source's holes
DROP = 26
MAX_VEC = 4096  # most ranges in one READV/WRITEV

OP_NAMES = {
    HELLO: "HELLO",
    AUTH: "AUTH",
    PING: "PING",
    INFO: "INFO",
    READ: "READ",
    WRITE: "WRITE",
    FLUSH: "FLUSH",
    UNMAP: "UNMAP",
    SET_META: "SET_META",
    DIRTY_MAP: "DIRTY_MAP",
    CLEAR_DIRTY: "CLEAR_DIRTY",
    EXTENTS: "EXTENTS",
    SET_MODE: "SET_MODE",
    BYE: "BYE",
    READV: "READV",
    WRITEV: "WRITEV",
    CLAIM: "CLAIM",
    GROW: "GROW",
    CHECKSUMS: "CHECKSUMS",
    SNAPSHOT: "SNAPSHOT",
    SNAP_DELETE: "SNAP_DELETE",
    SNAP_LIST: "SNAP_LIST",
    SNAP_EXTENTS: "SNAP_EXTENTS",
    SNAP_READ: "SNAP_READ",
    SNAP_RESET: "SNAP_RESET",
    DROP: "DROP",
}

# operations refused with STALE_EPOCH when their header epoch is below the replica's
FENCED_OPS = frozenset(
    {READ, WRITE, FLUSH, UNMAP, READV, WRITEV, SET_META, SET_MODE, CLEAR_DIRTY, GROW, CHECKSUMS}
    | {SNAPSHOT, SNAP_DELETE, SNAP_EXTENTS, SNAP_READ, SNAP_RESET, DROP}
)

# WRITE flags (carried in the `length` field)
FLAG_FUA = 1
FLAG_REBUILD = 2
# the written blocks (whole 4 KiB blocks of zeroes) are recorded as failing their checksum: a
# rebuild copies a block that has no good copy on any member as bad, not as data
FLAG_POISON = 4

# status codes
OK = 0
EINVAL = 1
EIO = 2
STALE_EPOCH = 3
AUTH_REQUIRED = 4
AUTH_FAILED = 5
WRONG_VOLUME = 6
UNKNOWN_OP = 7
# READ/READV: blocks failed their checksum (data withheld); payload JSON {"message": text,
# "bad": [[offset, length], ..]}
BAD_BLOCKS = 8

STATUS_NAMES = {
    OK: "OK",
    EINVAL: "EINVAL",
    EIO: "EIO",
    STALE_EPOCH: "STALE_EPOCH",
    AUTH_REQUIRED: "AUTH_REQUIRED",
    AUTH_FAILED: "AUTH_FAILED",
    WRONG_VOLUME: "WRONG_VOLUME",
    UNKNOWN_OP: "UNKNOWN_OP",
    BAD_BLOCKS: "BAD_BLOCKS",
}

_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class FrameError(ValueError):
    """Malformed input on the wire (bad magic, oversized payload, bad JSON, truncated frame)."""


class Frame(NamedTuple):
    """One decoded message."""

    op: int
    status: int
    req_id: int
    offset: int
    length: int
    epoch: int
    payload: bytes | bytearray


def pack_header(
    op: int,
    req_id: int,
    payload_len: int = 0,
    status: int = 0,
    offset: int = 0,
    length: int = 0,
    epoch: int = 0,
) -> bytes:
    """Return the 40-byte header for a frame (the payload is sent separately)."""
    return _pack(MAGIC, op, status, payload_len, req_id, offset, length, epoch)


def encode(
    op: int,
    req_id: int,
    payload: bytes = b"",
    status: int = 0,
    offset: int = 0,
    length: int = 0,
    epoch: int = 0,
) -> bytes:
    """Return a whole frame (header + payload) as bytes; FrameError if the payload is too big."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return _pack(MAGIC, op, status, len(payload), req_id, offset, length, epoch) + bytes(payload)


def check_header(magic: int, plen: int, limit: int = MAX_PAYLOAD) -> None:
    """FrameError unless a header's magic is ours and its payload within `limit` bytes."""
    if magic != MAGIC:
        raise FrameError(f"bad magic 0x{magic:04x} (expected 0x{MAGIC:04x})")
    if plen > limit:
        raise FrameError(f"payload_len {plen} exceeds the {limit}-byte limit")


def split_frames(
    src: bytes | bytearray | memoryview, pos: int = 0, limit: int = MAX_PAYLOAD
) -> tuple[list[Frame], int]:
    """Decode the whole frames in src[pos:]; return (frames, position after the last one).

    Payloads are copied out of `src`. Raises FrameError (bad magic, payload over `limit`).
    """
    frames: list[Frame] = []
    append = frames.append
    n = len(src)
    while n - pos >= HEADER_SIZE:
        magic, op, status, plen, req_id, offset, length, epoch = _unpack_from(src, pos)
        if magic != MAGIC or plen > limit:
            check_header(magic, plen, limit)
        end = pos + HEADER_SIZE + plen
        if end > n:
            break
        payload = bytes(src[pos + HEADER_SIZE : end]) if plen else b""
        append(Frame(op, status, req_id, offset, length, epoch, payload))
        pos = end
    return frames, pos


class FrameReader:
    """Incremental decoder for a byte stream: feed() returns the frames completed so far."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.limit = limit  # largest payload accepted (a header announcing more: FrameError)

    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume `data`; return the whole frames it completes (see split_frames)."""
        buf = self._buf
        if not buf:
            frames, pos = split_frames(data, 0, self.limit)
            if pos < len(data):
                buf += data[pos:]
            return frames
        buf += data
        with memoryview(buf) as src:
            frames, pos = split_frames(src, 0, self.limit)
        if pos:
            del buf[:pos]
        return frames


_JOIN_MAX = 256 * 1024  # below this, one joined buffer (one send); above, big pieces go alone


def send_pieces(transport: Any, out: list) -> None:
    """Write queued frame pieces with as few sends as possible and no copy of big payloads."""
    if len(out) == 1:
        transport.write(out[0])
        return
    if sum(map(len, out)) < _JOIN_MAX:
        transport.write(b"".join(out))
        return
    small: list = []
    for piece in out:
        if len(piece) >= 65536:
            if small:
                transport.write(b"".join(small))
                small = []
            transport.write(piece)
        else:
            small.append(piece)
    if small:
        transport.write(b"".join(small))


def dumps(obj: Any) -> bytes:
    """Encode a JSON payload."""
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(payload: bytes | bytearray | memoryview) -> Any:
    """Decode a JSON payload; FrameError when it is not valid JSON."""
    try:
        if not payload:
            return None
        return json.loads(bytes(payload) if isinstance(payload, memoryview) else payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise FrameError(f"bad JSON payload: {e}") from None


RECV_BUF = 256 * 1024  # per-connection receive buffer for small frames


class RecvBuffer:
    """The receive-buffer half of a BufferedProtocol shared by the client and the replica server.

    Small frames accumulate in `buf[start:end]`; a big payload (`big`, a bytearray the caller
    set up) is received straight into `big_mv` at `big_filled`, so it is never copied.
    """

    big: bytearray | memoryview | None
    big_mv: memoryview | None
    big_filled: int
    buf: bytearray
    mv: memoryview
    start: int
    end: int

    def get_buffer(self, _sizehint: int) -> memoryview:
        if self.big_mv is not None:
            return self.big_mv[self.big_filled :]
        if RECV_BUF - self.end < 4096:  # make room: move the partial frame to the front
            n = self.end - self.start
            part = self.mv[self.start : self.end]
            self.buf[:n] = part if self.start >= n else bytes(part)  # no overlapping copy
            self.start, self.end = 0, n
        return self.mv[self.end :]
