"""iSCSI PDU layout (RFC 7143 §11): opcodes, the 48-byte BHS, text keys, and header builders."""

from __future__ import annotations

import struct

BHS_LEN = 48
# initiator opcodes
NOP_OUT, SCSI_CMD, TMF_REQ, LOGIN_REQ, TEXT_REQ, DATA_OUT, LOGOUT_REQ, SNACK = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x10,
)
# target opcodes
NOP_IN, SCSI_RSP, TMF_RSP, LOGIN_RSP, TEXT_RSP, DATA_IN, LOGOUT_RSP, R2T, ASYNC, REJECT = (
    0x20,
    0x21,
    0x22,
    0x23,
    0x24,
    0x25,
    0x26,
    0x31,
    0x32,
    0x3F,
)
INITIATOR_OPS = {NOP_OUT, SCSI_CMD, TMF_REQ, LOGIN_REQ, TEXT_REQ, DATA_OUT, LOGOUT_REQ, SNACK}
RSVD = 0xFFFFFFFF

# Reject reasons
REJ_DIGEST = 0x02
REJ_SNACK = 0x03
REJ_PROTOCOL = 0x04
REJ_NOT_SUPPORTED = 0x05
REJ_IMMEDIATE = 0x06
REJ_INVALID_FIELD = 0x09
REJ_WAITING_LOGOUT = 0x0C

# One layout serves every target PDU: op, byte1, byte2, byte3, (AHS len<<24 | data len),
# bytes 8-15, ITT, then the six words at 20..44 and the one at 44.
HDR = struct.Struct(">BBBBI8sIIIIIIII")
_IN = struct.Struct(">BBBBI8sIIIIIIII")


class PduError(Exception):
    """A PDU is malformed: the connection answers with a Reject or closes."""


class Bhs:
    """A parsed Basic Header Segment (fields named per RFC 7143; meaning depends on opcode)."""

    __slots__ = (
        "raw",
        "opcode",
        "immediate",
        "flags",
        "b2",
        "b3",
        "ahs_len",
        "data_len",
        "lun",
        "itt",
        "w20",
        "w24",
        "w28",
        "w32",
        "w36",
        "w40",
        "w44",
    )

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        """Parse 48 bytes; raises PduError if too short."""
        if len(raw) < BHS_LEN:
            raise PduError(f"short BHS ({len(raw)} bytes)")
        raw = bytes(raw[:BHS_LEN])
        (b0, self.flags, self.b2, self.b3, lens, self.lun, self.itt, self.w20, self.w24,
         self.w28, self.w32, self.w36, self.w40, self.w44) = _IN.unpack(raw)  # fmt: skip
        self.raw = raw
        self.immediate = bool(b0 & 0x40)
        self.opcode = b0 & 0x3F
        self.ahs_len = (lens >> 24) * 4
        self.data_len = lens & 0xFFFFFF

    @property
    def final(self) -> bool:
        """The F (or T for login) bit."""
        return bool(self.flags & 0x80)

    @property
    def cdb(self) -> bytes:
        """Bytes 32-47 of a SCSI Command PDU."""
        return self.raw[32:48]


def header(
    op: int,
    flags: int = 0x80,
    b2: int = 0,
    b3: int = 0,
    data_len: int = 0,
    b8: bytes = bytes(8),
    itt: int = RSVD,
    w20: int = 0,
    w24: int = 0,
    w28: int = 0,
    w32: int = 0,
    w36: int = 0,
    w40: int = 0,
    w44: int = 0,
) -> bytes:
    """Pack one 48-byte BHS."""
    return HDR.pack(op, flags, b2, b3, data_len, b8, itt, w20, w24, w28, w32, w36, w40, w44)


def pad_len(n: int) -> int:
    """Bytes of padding after an n-byte data segment."""
    return -n % 4


def parse_text(data: bytes | memoryview) -> list[tuple[str, str]]:
    """Split `key=value\\0...` text into pairs; PduError on a pair without '='."""
    out = []
    for item in bytes(data).split(b"\0"):
        if not item:
            continue
        k, sep, v = item.partition(b"=")
        if not sep or not k:
            raise PduError(f"malformed text key {item[:64]!r}")
        try:
            out.append((k.decode("utf-8"), v.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise PduError("text key is not UTF-8") from e
    return out


def build_text(pairs: list[tuple[str, str]]) -> bytes:
    """Join pairs as `key=value\\0`."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def sn_lt(a: int, b: int) -> bool:
    """Serial-number a < b (RFC 1982, 32-bit)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    """Serial-number a <= b."""
    return a == b or sn_lt(a, b)
