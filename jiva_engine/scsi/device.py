"""The SCSI target device behind an iSCSI target: logical unit 0 is the volume; commands to any
other LUN get the answers SPC-4 prescribes for a logical unit that is not present."""

from __future__ import annotations

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Nexus, Result, be, truncate
from jiva_engine.scsi.lu import LogicalUnit
from jiva_engine.scsi.opcodes import Op
from jiva_engine.scsi.spc import LUN_LIST
from jiva_engine.volume import BlockVolume

LUN0 = bytes(8)  # how initiators address LUN 0


def lun_number(lun: bytes) -> int:
    """The LUN of an 8-byte LUN field (SAM-5 single level LUN, peripheral or flat addressing)."""
    return int.from_bytes(lun[:2], "big") & 0x3FFF


class AbsentUnit:
    """Answers for every LUN without a logical unit."""

    async def execute(
        self, _nexus: Nexus, cdb: bytes, _data_out: bytes | memoryview | None
    ) -> Result:
        """INQUIRY: peripheral qualifier 3 (no logical unit here); REPORT LUNS: the target's
        list; REQUEST SENSE: LOGICAL UNIT NOT SUPPORTED as data; anything else: CHECK CONDITION
        with that sense."""
        op = cdb[0] if cdb else 0
        if op == Op.INQUIRY:
            b = bytearray(36)
            b[0] = 0x7F  # peripheral qualifier 011b, device type 1Fh
            b[2], b[3], b[4] = 0x06, 0x12, 31
            return Result(data=bytes(b[: be(cdb, 3, 2)]))
        if op == Op.REPORT_LUNS:
            return Result(data=truncate(LUN_LIST, be(cdb, 6, 4)))
        sense = S.fixed_sense(S.ILLEGAL_REQUEST, *S.LU_NOT_SUPPORTED)
        if op == Op.REQUEST_SENSE:
            return Result(data=sense[: cdb[4]])
        return Result(S.CHECK_CONDITION, sense=sense)


class TargetDevice:
    """The logical units of one target: LUN 0 over `volume`, no other."""

    def __init__(self, volume: BlockVolume, target_name: str) -> None:
        """Create LUN 0."""
        self.lu = LogicalUnit(volume, target_name=target_name)
        self._absent = AbsentUnit()

    def unit(self, lun: bytes) -> LogicalUnit | AbsentUnit:
        """What serves commands addressed to the 8-byte LUN field `lun`."""
        return self.lu if lun == LUN0 or lun_number(lun) == 0 else self._absent

    def close(self) -> None:
        """The target is closing: its logical unit lets go of the volume."""
        self.lu.close()

    def has_unit(self, lun: bytes) -> bool:
        """True if a logical unit exists at `lun` (task management refuses the others)."""
        return lun_number(lun) == 0
