"""iSCSI PDU headers (RFC 7143 §11): opcodes, flag bits, one class per PDU with the fields of its
48-byte Basic Header Segment named as the RFC names them, and the text data segment format.

Every class packs itself (`pack()`) and parses a received header (`parse(raw)`); the target,
the initiator and the tests all use these. TotalAHSLength is left to the framing: jiva-py sends
no additional header segments and skips received ones. Initiator PDUs keep the header they were
parsed from in `raw` (a Reject quotes it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Self

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF  # an ITT or TTT that refers to nothing
DSL_MASK = 0xFFFFFF  # DataSegmentLength: the low 24 bits of header word 1

# byte 0
IMMEDIATE = 0x40
OPCODE_MASK = 0x3F
# byte 1
FINAL = 0x80
READ, WRITE = 0x40, 0x20  # SCSI Command: data-in / data-out expected
TRANSIT, CONTINUE = 0x80, 0x40  # Login and Text
OVERFLOW, UNDERFLOW = 0x04, 0x02  # SCSI Response and Data-In residuals (O, U)
STATUS = 0x01  # Data-In: the PDU carries the command's status (S)


class Opcode(IntEnum):
    """PDU opcodes: initiator requests below 0x20, target responses from 0x20."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MANAGEMENT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MANAGEMENT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class TmfFunction(IntEnum):
    """Task Management Function Request: function codes (§11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(IntEnum):
    """Task Management Function Response: response codes (§11.6.1)."""

    COMPLETE = 0
    NO_SUCH_TASK = 1
    NO_SUCH_LUN = 2
    REASSIGN_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    REJECTED = 255


class LogoutReason(IntEnum):
    """Logout Request: reason codes (§11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    """Logout Response: response codes (§11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2


class RejectReason(IntEnum):
    """Reject: reason codes (§11.17.1)."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    INVALID_PDU_FIELD = 0x09
    WAITING_FOR_LOGOUT = 0x0C


class AsyncEvent(IntEnum):
    """Asynchronous Message: the events an initiator acts on (§11.9.1)."""

    LOGOUT_REQUESTED = 1


class PduError(Exception):
    """A PDU is malformed: the connection answers with a Reject or closes."""


def _op(opcode: Opcode, immediate: bool) -> int:
    return opcode | IMMEDIATE if immediate else opcode


def _layout(fmt: str) -> struct.Struct:
    s = struct.Struct(fmt)
    assert s.size == BHS_LEN, (fmt, s.size)
    return s


# ---------------------------------------------------------------------- initiator -> target
@dataclass(slots=True)
class NopOut:
    """NOP-Out (§11.18): a ping, or the answer to a target's NOP-In (then ITT is reserved)."""

    OPCODE: ClassVar[Opcode] = Opcode.NOP_OUT
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIII16x")

    itt: int
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    lun: bytes = bytes(8)
    immediate: bool = False
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(_op(self.OPCODE, self.immediate), FINAL, self.data_len, self.lun,
                            self.itt, self.ttt, self.cmdsn, self.exp_statsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        op, _, dlen, lun, itt, ttt, cmdsn, exp_statsn = cls._S.unpack_from(raw)
        return cls(itt, ttt, cmdsn, exp_statsn, lun, bool(op & IMMEDIATE), dlen & DSL_MASK, raw)


@dataclass(slots=True)
class ScsiCommand:
    """SCSI Command (§11.3)."""

    OPCODE: ClassVar[Opcode] = Opcode.SCSI_COMMAND
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIII16s")

    itt: int
    cdb: bytes  # 16 bytes (longer CDBs would need an AHS)
    edtl: int = 0  # Expected Data Transfer Length
    flags: int = FINAL  # F, R (READ), W (WRITE), ATTR
    cmdsn: int = 0
    exp_statsn: int = 0
    lun: bytes = bytes(8)
    immediate: bool = False
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(_op(self.OPCODE, self.immediate), self.flags, self.data_len, self.lun,
                            self.itt, self.edtl, self.cmdsn, self.exp_statsn,
                            self.cdb.ljust(16, b"\0"))  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        op, flags, dlen, lun, itt, edtl, cmdsn, exp_statsn, cdb = cls._S.unpack_from(raw)
        return cls(itt, cdb, edtl, flags, cmdsn, exp_statsn, lun, bool(op & IMMEDIATE),
                   dlen & DSL_MASK, raw)  # fmt: skip


@dataclass(slots=True)
class TaskManagementRequest:
    """Task Management Function Request (§11.5)."""

    OPCODE: ClassVar[Opcode] = Opcode.TASK_MANAGEMENT_REQUEST
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIIIII8x")

    itt: int
    function: int  # TmfFunction
    rtt: int = RESERVED_TAG  # Referenced Task Tag (ABORT TASK)
    cmdsn: int = 0
    exp_statsn: int = 0
    ref_cmdsn: int = 0
    exp_datasn: int = 0
    lun: bytes = bytes(8)
    immediate: bool = False
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(_op(self.OPCODE, self.immediate), FINAL | self.function,
                            self.data_len, self.lun, self.itt, self.rtt, self.cmdsn,
                            self.exp_statsn, self.ref_cmdsn, self.exp_datasn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (op, flags, dlen, lun, itt, rtt, cmdsn, exp_statsn, ref_cmdsn,
         exp_datasn) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, flags & 0x7F, rtt, cmdsn, exp_statsn, ref_cmdsn, exp_datasn, lun,
                   bool(op & IMMEDIATE), dlen & DSL_MASK, raw)  # fmt: skip


@dataclass(slots=True)
class LoginRequest:
    """Login Request (§11.12); always immediate."""

    OPCODE: ClassVar[Opcode] = Opcode.LOGIN_REQUEST
    _S: ClassVar[struct.Struct] = _layout(">BBBBI6sHIHxxII16x")

    itt: int
    isid: bytes  # 6 bytes
    csg: int  # current stage: 0 security, 1 operational
    nsg: int = 0  # next stage (meaningful with `transit`): 1 operational, 3 full feature
    transit: bool = False
    cont: bool = False  # the text continues in the next PDU
    tsih: int = 0
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    version_max: int = 0
    version_min: int = 0
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        flags = login_flags(self.transit, self.cont, self.csg, self.nsg)
        return self._S.pack(self.OPCODE | IMMEDIATE, flags, self.version_max, self.version_min,
                            self.data_len, self.isid, self.tsih, self.itt, self.cid, self.cmdsn,
                            self.exp_statsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, flags, vmax, vmin, dlen, isid, tsih, itt, cid, cmdsn,
         exp_statsn) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, isid, (flags >> 2) & 0x03, flags & 0x03, bool(flags & TRANSIT),
                   bool(flags & CONTINUE), tsih, cid, cmdsn, exp_statsn, vmax, vmin,
                   dlen & DSL_MASK, raw)  # fmt: skip


@dataclass(slots=True)
class TextRequest:
    """Text Request (§11.10)."""

    OPCODE: ClassVar[Opcode] = Opcode.TEXT_REQUEST
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIII16x")

    itt: int
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    flags: int = FINAL  # F, C
    lun: bytes = bytes(8)
    immediate: bool = False
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(_op(self.OPCODE, self.immediate), self.flags, self.data_len, self.lun,
                            self.itt, self.ttt, self.cmdsn, self.exp_statsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        op, flags, dlen, lun, itt, ttt, cmdsn, exp_statsn = cls._S.unpack_from(raw)
        return cls(itt, ttt, cmdsn, exp_statsn, flags, lun, bool(op & IMMEDIATE),
                   dlen & DSL_MASK, raw)  # fmt: skip


@dataclass(slots=True)
class DataOut:
    """SCSI Data-Out (§11.7): write data, unsolicited (TTT reserved) or answering an R2T."""

    OPCODE: ClassVar[Opcode] = Opcode.DATA_OUT
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIxxxxIxxxxIIxxxx")

    itt: int
    ttt: int = RESERVED_TAG
    offset: int = 0  # Buffer Offset
    datasn: int = 0
    exp_statsn: int = 0
    final: bool = True
    lun: bytes = bytes(8)
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL if self.final else 0, self.data_len, self.lun,
                            self.itt, self.ttt, self.exp_statsn, self.datasn,
                            self.offset)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        _, flags, dlen, lun, itt, ttt, exp_statsn, datasn, offset = cls._S.unpack_from(raw)
        return cls(itt, ttt, offset, datasn, exp_statsn, bool(flags & FINAL), lun,
                   dlen & DSL_MASK, raw)  # fmt: skip


@dataclass(slots=True)
class LogoutRequest:
    """Logout Request (§11.14)."""

    OPCODE: ClassVar[Opcode] = Opcode.LOGOUT_REQUEST
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8xIHxxII16x")

    itt: int
    reason: int = LogoutReason.CLOSE_SESSION
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    immediate: bool = False
    data_len: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(_op(self.OPCODE, self.immediate), FINAL | self.reason, self.data_len,
                            self.itt, self.cid, self.cmdsn, self.exp_statsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        op, flags, dlen, itt, cid, cmdsn, exp_statsn = cls._S.unpack_from(raw)
        return cls(itt, flags & 0x7F, cid, cmdsn, exp_statsn, bool(op & IMMEDIATE),
                   dlen & DSL_MASK, raw)  # fmt: skip


# ---------------------------------------------------------------------- target -> initiator
@dataclass(slots=True)
class NopIn:
    """NOP-In (§11.19): the answer to a NOP-Out, or a ping (ITT reserved, TTT set)."""

    OPCODE: ClassVar[Opcode] = Opcode.NOP_IN
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIIII12x")

    itt: int
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    lun: bytes = bytes(8)
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.data_len, self.lun, self.itt, self.ttt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        _, _, dlen, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn = cls._S.unpack_from(raw)
        return cls(itt, ttt, statsn, exp_cmdsn, max_cmdsn, lun, dlen & DSL_MASK)


@dataclass(slots=True)
class ScsiResponse:
    """SCSI Response (§11.4); sense data travels in the data segment."""

    OPCODE: ClassVar[Opcode] = Opcode.SCSI_RESPONSE
    _S: ClassVar[struct.Struct] = _layout(">BBBBI8xIIIIIIII")

    itt: int
    status: int = 0
    flags: int = FINAL  # o, u, O (OVERFLOW), U (UNDERFLOW)
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    exp_datasn: int = 0
    residual: int = 0
    data_len: int = 0
    response: int = 0  # 0: command completed at target
    bidi_residual: int = 0
    snack_tag: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, self.flags, self.response, self.status, self.data_len,
                            self.itt, self.snack_tag, self.statsn, self.exp_cmdsn,
                            self.max_cmdsn, self.exp_datasn, self.bidi_residual,
                            self.residual)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, flags, response, status, dlen, itt, snack_tag, statsn, exp_cmdsn, max_cmdsn,
         exp_datasn, bidi_residual, residual) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, status, flags, statsn, exp_cmdsn, max_cmdsn, exp_datasn, residual,
                   dlen & DSL_MASK, response, bidi_residual, snack_tag)  # fmt: skip


@dataclass(slots=True)
class TaskManagementResponse:
    """Task Management Function Response (§11.6)."""

    OPCODE: ClassVar[Opcode] = Opcode.TASK_MANAGEMENT_RESPONSE
    _S: ClassVar[struct.Struct] = _layout(">BBBxI8xIxxxxIII12x")

    itt: int
    response: int = TmfResponse.COMPLETE
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.response, self.data_len, self.itt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        _, _, response, dlen, itt, statsn, exp_cmdsn, max_cmdsn = cls._S.unpack_from(raw)
        return cls(itt, response, statsn, exp_cmdsn, max_cmdsn, dlen & DSL_MASK)


@dataclass(slots=True)
class LoginResponse:
    """Login Response (§11.13)."""

    OPCODE: ClassVar[Opcode] = Opcode.LOGIN_RESPONSE
    _S: ClassVar[struct.Struct] = _layout(">BBBBI6sHIxxxxIIIH10x")

    itt: int
    isid: bytes
    csg: int
    nsg: int = 0
    transit: bool = False
    cont: bool = False
    tsih: int = 0
    status: int = 0  # Status-Class << 8 | Status-Detail
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    version_max: int = 0
    version_active: int = 0
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        flags = login_flags(self.transit, self.cont, self.csg, self.nsg)
        return self._S.pack(self.OPCODE, flags, self.version_max, self.version_active,
                            self.data_len, self.isid, self.tsih, self.itt, self.statsn,
                            self.exp_cmdsn, self.max_cmdsn, self.status)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, flags, vmax, vact, dlen, isid, tsih, itt, statsn, exp_cmdsn, max_cmdsn,
         status) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, isid, (flags >> 2) & 0x03, flags & 0x03, bool(flags & TRANSIT),
                   bool(flags & CONTINUE), tsih, status, statsn, exp_cmdsn, max_cmdsn, vmax,
                   vact, dlen & DSL_MASK)  # fmt: skip


@dataclass(slots=True)
class TextResponse:
    """Text Response (§11.11)."""

    OPCODE: ClassVar[Opcode] = Opcode.TEXT_RESPONSE
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIIII12x")

    itt: int
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    flags: int = FINAL  # F, C
    lun: bytes = bytes(8)
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, self.flags, self.data_len, self.lun, self.itt,
                            self.ttt, self.statsn, self.exp_cmdsn, self.max_cmdsn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        _, flags, dlen, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn = cls._S.unpack_from(raw)
        return cls(itt, ttt, statsn, exp_cmdsn, max_cmdsn, flags, lun, dlen & DSL_MASK)


@dataclass(slots=True)
class DataIn:
    """SCSI Data-In (§11.8); the last one may carry the status (STATUS flag)."""

    OPCODE: ClassVar[Opcode] = Opcode.DATA_IN
    _S: ClassVar[struct.Struct] = _layout(">BBxBI8sIIIIIIII")

    itt: int
    offset: int = 0  # Buffer Offset
    datasn: int = 0
    flags: int = 0  # F, A, O (OVERFLOW), U (UNDERFLOW), S (STATUS)
    status: int = 0  # valid with STATUS
    statsn: int = 0  # valid with STATUS
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    residual: int = 0
    lun: bytes = bytes(8)
    data_len: int = 0
    ttt: int = RESERVED_TAG

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, self.flags, self.status, self.data_len, self.lun,
                            self.itt, self.ttt, self.statsn, self.exp_cmdsn, self.max_cmdsn,
                            self.datasn, self.offset, self.residual)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, flags, status, dlen, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn, datasn, offset,
         residual) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, offset, datasn, flags, status, statsn, exp_cmdsn, max_cmdsn, residual,
                   lun, dlen & DSL_MASK, ttt)  # fmt: skip


@dataclass(slots=True)
class LogoutResponse:
    """Logout Response (§11.15)."""

    OPCODE: ClassVar[Opcode] = Opcode.LOGOUT_RESPONSE
    _S: ClassVar[struct.Struct] = _layout(">BBBxI8xIxxxxIIIxxxxHHxxxx")

    itt: int
    response: int = LogoutResponseCode.SUCCESS
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.response, self.data_len, self.itt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.time2wait,
                            self.time2retain)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, _, response, dlen, itt, statsn, exp_cmdsn, max_cmdsn, t2w,
         t2r) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, response, statsn, exp_cmdsn, max_cmdsn, t2w, t2r, dlen & DSL_MASK)


@dataclass(slots=True)
class R2T:
    """Ready To Transfer (§11.8): asks for `length` bytes of write data at `offset`."""

    OPCODE: ClassVar[Opcode] = Opcode.R2T
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIIIIIIII")

    itt: int
    ttt: int
    offset: int
    length: int  # Desired Data Transfer Length
    r2tsn: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    lun: bytes = bytes(8)
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.data_len, self.lun, self.itt, self.ttt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.r2tsn,
                            self.offset, self.length)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, _, dlen, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn, r2tsn, offset,
         length) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(itt, ttt, offset, length, r2tsn, statsn, exp_cmdsn, max_cmdsn, lun,
                   dlen & DSL_MASK)  # fmt: skip


@dataclass(slots=True)
class AsyncMessage:
    """Asynchronous Message (§11.9)."""

    OPCODE: ClassVar[Opcode] = Opcode.ASYNC_MESSAGE
    _S: ClassVar[struct.Struct] = _layout(">BBxxI8sIxxxxIIIBBHHHxxxx")

    event: int  # AsyncEvent
    vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    lun: bytes = bytes(8)
    itt: int = RESERVED_TAG
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.data_len, self.lun, self.itt, self.statsn,
                            self.exp_cmdsn, self.max_cmdsn, self.event, self.vcode,
                            self.parameter1, self.parameter2, self.parameter3)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        (_, _, dlen, lun, itt, statsn, exp_cmdsn, max_cmdsn, event, vcode, p1, p2,
         p3) = cls._S.unpack_from(raw)  # fmt: skip
        return cls(event, vcode, p1, p2, p3, statsn, exp_cmdsn, max_cmdsn, lun, itt,
                   dlen & DSL_MASK)  # fmt: skip


@dataclass(slots=True)
class Reject:
    """Reject (§11.17); the data segment is the complete header of the rejected PDU."""

    OPCODE: ClassVar[Opcode] = Opcode.REJECT
    _S: ClassVar[struct.Struct] = _layout(">BBBxI8xIxxxxIIIIxxxxxxxx")

    reason: int  # RejectReason
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    datasn: int = 0  # DataSN/R2TSN of a rejected Data-Out or SNACK
    itt: int = RESERVED_TAG
    data_len: int = 0

    def pack(self) -> bytes:
        """The 48 header bytes."""
        return self._S.pack(self.OPCODE, FINAL, self.reason, self.data_len, self.itt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.datasn)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Decode the first 48 bytes of `raw`."""
        _, _, reason, dlen, itt, statsn, exp_cmdsn, max_cmdsn, datasn = cls._S.unpack_from(raw)
        return cls(reason, statsn, exp_cmdsn, max_cmdsn, datasn, itt, dlen & DSL_MASK)


Request = (
    NopOut | ScsiCommand | TaskManagementRequest | LoginRequest | TextRequest | DataOut
    | LogoutRequest
)  # fmt: skip
Response = (
    NopIn | ScsiResponse | TaskManagementResponse | LoginResponse | TextResponse | DataIn
    | LogoutResponse | R2T | AsyncMessage | Reject
)  # fmt: skip

_RESPONSES: dict[int, type[Response]] = {
    cls.OPCODE: cls
    for cls in (
        NopIn,
        ScsiResponse,
        TaskManagementResponse,
        LoginResponse,
        TextResponse,
        DataIn,
        LogoutResponse,
        R2T,
        AsyncMessage,
        Reject,
    )  # fmt: skip
}


def opcode_of(raw: bytes | bytearray | memoryview) -> int:
    """The opcode of a header (without the immediate bit)."""
    return raw[0] & OPCODE_MASK


def parse_response(raw: bytes) -> Response:
    """Decode a target PDU's header into its class; PduError for an opcode targets do not send."""
    cls = _RESPONSES.get(raw[0] & OPCODE_MASK)
    if cls is None:
        raise PduError(f"opcode {raw[0] & OPCODE_MASK:#04x} is not a target PDU")
    return cls.parse(raw)


def login_flags(transit: bool, cont: bool, csg: int, nsg: int) -> int:
    """Byte 1 of a Login Request or Response: T, C, CSG, and NSG (sent as 0 without T)."""
    return (
        (TRANSIT if transit else 0)
        | (CONTINUE if cont else 0)
        | (csg << 2)
        | (nsg if transit else 0)
    )


# ---------------------------------------------------------------------- text data segments
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
