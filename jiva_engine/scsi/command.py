"""What a command is to the SCSI layer: the I_T nexus it arrives on, the request a handler gets,
the result it returns, the opcode-table row that describes it, and the CDB field helpers the
command sets share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.sense import SenseError

if TYPE_CHECKING:
    from jiva_engine.scsi.lu import LogicalUnit

NexusKey = tuple[str, bytes]  # (initiator name in lower case, ISID)


class Nexus:
    """An I_T nexus: initiator port (name + ISID) seen through target portal group `tpgt`."""

    __slots__ = ("initiator", "isid", "tpgt", "key")

    def __init__(self, initiator: str, isid: bytes = b"\0" * 6, tpgt: int = 1) -> None:
        """Identify the nexus; `key` is what reservations and unit attentions are keyed by."""
        self.initiator = initiator
        self.isid = isid
        self.tpgt = tpgt
        self.key: NexusKey = (initiator.lower(), bytes(isid))

    def transport_id(self) -> bytes:
        """iSCSI TransportID, format 1 (name,i,0xISID), padded to a multiple of 4."""
        name = f"{self.initiator},i,0x{self.isid.hex()}".encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        if len(name) < 20:
            name += b"\0" * (20 - len(name))
        return bytes([0x45, 0]) + len(name).to_bytes(2, "big") + name


DataOut = bytes | memoryview
DataIn = bytes | bytearray | memoryview


class Request(NamedTuple):
    """One command as a handler sees it: who sent it, its CDB and its data-out buffer."""

    nexus: Nexus
    cdb: bytes
    data: DataOut  # empty for commands that transfer none


@dataclass(slots=True)
class Result:
    """What a command produced: status, data-in, sense data and the data-out length it wanted."""

    status: int = S.GOOD
    data: DataIn | None = None
    sense: bytes | None = None
    out_len: int = 0  # data-out bytes the CDB asked for (for iSCSI residuals)


Handler = Callable[["LogicalUnit", Request], Awaitable[Result]]


class PrAccess(Enum):
    """What a persistent reservation held through another I_T nexus does to a command
    (SPC-4 §5.13.1, table 66): the reservation holder, and registrants under the
    registrants-only types, are never in conflict."""

    ALLOWED = "allowed"  # no reservation type conflicts with it
    READ = "read"  # conflicts with the exclusive-access types only
    WRITE = "write"  # conflicts with every reservation type


@dataclass(frozen=True, slots=True)
class Command:
    """One row of a device type's opcode table (tgt's device_type_template entry).

    An opcode told apart by service action has a row of its own besides one per service action:
    it serves the service actions the table does not list.
    """

    opcode: int
    name: str
    handler: Handler
    usage: bytes | None  # CDB usage data for REPORT SUPPORTED OPERATION CODES; None: not listed
    service_action: int | None = None
    pr: PrAccess = PrAccess.WRITE
    under_reserve: bool = False  # allowed while another I_T nexus holds a RESERVE(6)/(10)
    under_ua: bool = False  # runs, and leaves unit attentions pending (INQUIRY, REPORT LUNS...)
    needs_ready: bool = True  # NOT READY while the volume is not ready
    writes: bool = False  # a medium error is reported as a WRITE ERROR, not a read error


class CommandTable:
    """The opcode table of one device type: finds the row for a CDB and lists what is supported."""

    def __init__(self, rows: Iterable[Command]) -> None:
        """Index `rows`; a service action's row comes after the row of its opcode."""
        self._rows: list[Command | None] = [None] * 256
        self._actions: list[dict[int, Command] | None] = [None] * 256
        for row in rows:
            op, sa = row.opcode, row.service_action
            if sa is None:
                assert self._rows[op] is None, f"opcode {op:#04x} listed twice"
                self._rows[op] = row
                continue
            assert self._rows[op] is not None, f"service action {sa:#x} before opcode {op:#04x}"
            actions = self._actions[op]
            if actions is None:
                actions = self._actions[op] = {}
            actions[sa] = row

    def lookup(self, cdb: bytes) -> Command:
        """The row serving `cdb`; ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE if none."""
        op = cdb[0]
        row = self._rows[op]
        if row is None:
            raise invalid(S.INVALID_OPCODE)
        actions = self._actions[op]
        if actions is not None and len(cdb) > 1:
            return actions.get(cdb[1] & 0x1F, row)
        return row

    def listed(self) -> list[Command]:
        """Every row with usage data, by opcode and service action (REPORT SUPPORTED OPCODES)."""
        out = []
        for row, actions in zip(self._rows, self._actions, strict=True):
            if row is not None and row.usage is not None:
                out.append(row)
            if actions is not None:
                out += (actions[sa] for sa in sorted(actions))
        return out

    def row(self, opcode: int, service_action: int | None = None) -> Command | None:
        """The listed row for `opcode` (and `service_action`), None if the table lists none."""
        if service_action is None:
            row = self._rows[opcode]
        else:
            row = (self._actions[opcode] or {}).get(service_action)
        return row if row is not None and row.usage is not None else None

    def has_service_actions(self, opcode: int) -> bool:
        """True if the commands of `opcode` are told apart by service action."""
        return self._actions[opcode] is not None


# ---------------------------------------------------------------------- CDB helpers
def be(b: DataIn, start: int, n: int) -> int:
    """The big-endian unsigned integer in bytes [start, start + n) of a CDB or parameter list."""
    return int.from_bytes(b[start : start + n], "big")


def invalid(asc: tuple[int, int] = S.INVALID_FIELD_IN_CDB) -> SenseError:
    """ILLEGAL REQUEST with `asc` (default INVALID FIELD IN CDB), to raise."""
    return SenseError(S.ILLEGAL_REQUEST, asc)


def truncate(data: bytes | bytearray, alloc: int) -> bytes | bytearray:
    """Data-in cut to the CDB's ALLOCATION LENGTH."""
    return data if len(data) <= alloc else data[:alloc]


# CDB length by group code, opcode >> 5 (SPC-4 §4.2.5.1); reserved and vendor groups: 16
CDB_LENGTHS = (6, 10, 10, 16, 16, 12, 16, 16)
