"""SCSI status codes, sense keys and sense-data builders (SPC-4 §4.5) used by the command set."""

from __future__ import annotations

GOOD = 0x00
CHECK_CONDITION = 0x02
CONDITION_MET = 0x04
RESERVATION_CONFLICT = 0x18
TASK_SET_FULL = 0x28

NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
MISCOMPARE = 0xE

# (asc, ascq) pairs
INVALID_OPCODE = (0x20, 0x00)
INVALID_FIELD_IN_CDB = (0x24, 0x00)
INVALID_FIELD_IN_PARAM = (0x26, 0x00)
PARAM_LIST_LENGTH_ERROR = (0x1A, 0x00)
INVALID_FIELD_IN_IU = (0x0E, 0x03)
LBA_OUT_OF_RANGE = (0x21, 0x00)
LU_NOT_SUPPORTED = (0x25, 0x00)
SAVING_PARAMS_UNSUPPORTED = (0x39, 0x00)
LU_NOT_READY_BECOMING = (0x04, 0x01)
WRITE_ERROR = (0x0C, 0x00)
WRITE_PROTECTED = (0x27, 0x00)
UNRECOVERED_READ_ERROR = (0x11, 0x00)
MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
POWER_ON_RESET = (0x29, 0x00)
BUS_DEVICE_RESET = (0x29, 0x03)
RESERVATIONS_PREEMPTED = (0x2A, 0x03)
RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
CAPACITY_DATA_CHANGED = (0x2A, 0x09)
INVALID_RELEASE_OF_PR = (0x26, 0x04)
MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)


class SenseError(Exception):
    """A command ends in CHECK CONDITION with this sense key and additional sense code."""

    def __init__(
        self,
        key: int,
        asc_ascq: tuple[int, int],
        info: int | None = None,
        msg: str = "",
        out_len: int = 0,
    ) -> None:
        """Record sense key, (ASC, ASCQ), the optional INFORMATION field and, for residual
        accounting, how many data-out bytes the command wanted (`out_len`)."""
        super().__init__(msg or f"sense key {key:#x} asc {asc_ascq[0]:#04x}/{asc_ascq[1]:#04x}")
        self.key = key
        self.asc, self.ascq = asc_ascq
        self.info = info
        self.out_len = out_len


class Conflict(Exception):
    """The command ends in RESERVATION CONFLICT status."""


def fixed_sense(key: int, asc: int, ascq: int, info: int | None = None) -> bytes:
    """Return 18 bytes of fixed-format sense data (response code 0x70, current error)."""
    b = bytearray(18)
    b[0] = 0x70
    b[2] = key & 0x0F
    if info is not None:
        b[0] |= 0x80  # VALID: the INFORMATION field is meaningful
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = 10
    b[12] = asc
    b[13] = ascq
    return bytes(b)


def descriptor_sense(key: int, asc: int, ascq: int, info: int | None = None) -> bytes:
    """Return descriptor-format sense data (response code 0x72), with an information descriptor."""
    desc = b""
    if info is not None:
        desc = bytes([0x00, 0x0A, 0x80, 0]) + (info & (2**64 - 1)).to_bytes(8, "big")
    return bytes([0x72, key & 0x0F, asc, ascq, 0, 0, 0, len(desc)]) + desc
