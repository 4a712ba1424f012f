"""Unit tests of the opcode table and what it drives: lookup, REPORT SUPPORTED OPERATION CODES,
the reservation classes against every reservation type, and LUNs that are not present."""

from __future__ import annotations

import asyncio
import struct

import pytest

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Command, Nexus, PrAccess
from jiva_engine.scsi.device import TargetDevice, lun_number
from jiva_engine.scsi.lu import LogicalUnit
from jiva_engine.scsi.opcodes import Op, PrType
from jiva_engine.scsi.pr import EXCLUSIVE_ACCESS, REGISTRANTS_ONLY
from jiva_engine.scsi.sense import SenseError
from jiva_engine.scsi.table import COMMANDS, ROWS
from tests.unit.memvolume import MemVolume

A = Nexus("iqn.test:a", b"\x80\0\0\0\0\1")  # holds the reservation
B = Nexus("iqn.test:b", b"\x80\0\0\0\0\2")  # registered
C = Nexus("iqn.test:c", b"\x80\0\0\0\0\3")  # neither


def cdb_for(row: Command) -> bytes:
    """A 16-byte CDB addressed to `row` (the transport always hands 16 bytes in)."""
    cdb = bytearray(16)
    cdb[0] = row.opcode
    if row.service_action is not None:
        cdb[1] = row.service_action
    return bytes(cdb)


def prout(sa: int, key: int, skey: int = 0, ptype: int = 0) -> tuple[bytes, bytes]:
    """A PERSISTENT RESERVE OUT CDB and its parameter list."""
    return (bytes([0x5F, sa, ptype, 0, 0, 0, 0, 0, 24, 0]) + bytes(6),
            struct.pack(">QQ", key, skey) + bytes(8))  # fmt: skip


def lu_with(reservation: PrType | None, reserve: bool = False) -> LogicalUnit:
    """A LU whose reservation A holds (persistent of type `reservation`, or SPC-2 RESERVE)."""
    lu = LogicalUnit(MemVolume(1 << 20), target_name="iqn.2026-11.org.jiva-py:t")
    for n in (A, B, C):
        lu.nexus_added(n)

    async def setup() -> None:
        if reserve:
            assert (await lu.execute(A, bytes([Op.RESERVE_6]) + bytes(15), b"")).status == 0
        if reservation is not None:
            assert (await lu.execute(A, *prout(0, 0, 0xA))).status == 0
            assert (await lu.execute(B, *prout(0, 0, 0xB))).status == 0
            assert (await lu.execute(A, *prout(1, 0xA, 0, reservation))).status == 0

    asyncio.run(setup())
    return lu


def conflicted(lu: LogicalUnit, nexus: Nexus, row: Command) -> bool:
    """True if `row`'s command from `nexus` ends in RESERVATION CONFLICT."""
    res = asyncio.run(lu.execute(nexus, cdb_for(row), bytes(1024)))
    return res.status == S.RESERVATION_CONFLICT


def test_lookup_by_opcode_and_service_action():
    """Rows are found by opcode, by service action under it, and an unlisted service action
    falls back on the opcode's row; an unknown opcode is INVALID COMMAND OPERATION CODE."""
    assert COMMANDS.lookup(bytes([Op.READ_10]) + bytes(9)).name == "READ_10"
    assert COMMANDS.lookup(bytes([0x9E, 0x10]) + bytes(14)).name == "READ_CAPACITY_16"
    assert COMMANDS.lookup(bytes([0x9E, 0x12]) + bytes(14)).name == "GET_LBA_STATUS"
    assert COMMANDS.lookup(bytes([0x9E, 0x05]) + bytes(14)).name == "SERVICE_ACTION_IN_16"
    with pytest.raises(SenseError) as e:
        COMMANDS.lookup(bytes([0xC7]) + bytes(15))
    assert (e.value.asc, e.value.ascq) == S.INVALID_OPCODE


def test_report_supported_operation_codes_lists_the_table():
    """REPORT SUPPORTED OPERATION CODES (all) returns one descriptor per listed row, in order;
    asking for one command returns its usage data."""
    lu = lu_with(None)
    cdb = bytes([0xA3, 0x0C, 0, 0, 0, 0]) + (65536).to_bytes(4, "big") + bytes(6)
    res = asyncio.run(lu.execute(A, cdb, None))
    assert res.status == S.GOOD
    body = bytes(res.data)[4:]
    listed = COMMANDS.listed()
    assert len(body) == 8 * len(listed)
    for i, row in enumerate(listed):
        d = body[8 * i : 8 * i + 8]
        assert d[0] == row.opcode and int.from_bytes(d[2:4], "big") == (row.service_action or 0)
        assert bool(d[5] & 0x01) == (row.service_action is not None)
    one = bytes([0xA3, 0x0C, 0x01, Op.READ_16, 0, 0]) + (64).to_bytes(4, "big") + bytes(6)
    res = asyncio.run(lu.execute(A, one, None))
    usage = COMMANDS.row(Op.READ_16)
    assert usage is not None and bytes(res.data) == bytes([0, 3, 0, 16]) + usage.usage


@pytest.mark.parametrize("ptype", list(PrType))
def test_persistent_reservation_classes(ptype):
    """Under every reservation type: the holder and (registrants-only types) registrants never
    conflict; others conflict on WRITE rows, on READ rows under exclusive access, never on
    ALLOWED rows."""
    lu = lu_with(ptype)
    spc2 = (Op.RESERVE_6, Op.RESERVE_10, Op.RELEASE_6, Op.RELEASE_10)
    for row in ROWS:
        if row.opcode == Op.PERSISTENT_RESERVE_OUT or row.opcode in spc2:
            continue  # these change the reservations under test, or conflict by their own rule
        assert not conflicted(lu, A, row), row.name
        for nexus, registered in ((B, True), (C, False)):
            if row.pr is PrAccess.ALLOWED or (registered and ptype in REGISTRANTS_ONLY):
                want = False
            elif row.pr is PrAccess.READ:
                want = ptype in EXCLUSIVE_ACCESS
            else:
                want = True
            assert conflicted(lu, nexus, row) == want, (ptype.name, row.name, nexus.initiator)


def test_spc2_commands_under_a_persistent_reservation():
    """RESERVE and RELEASE conflict with a persistent reservation unless from its holder."""
    lu = lu_with(PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    for op in (Op.RESERVE_6, Op.RESERVE_10, Op.RELEASE_6, Op.RELEASE_10):
        for nexus in (B, C):
            res = asyncio.run(lu.execute(nexus, bytes([op]) + bytes(15), b""))
            assert res.status == S.RESERVATION_CONFLICT, (op.name, nexus.initiator)


def test_spc2_reserve_classes():
    """Under another nexus's RESERVE(6) only INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE and
    the PERSISTENT RESERVE commands go through."""
    lu = lu_with(None, reserve=True)
    for row in ROWS:
        if row.opcode in (Op.RELEASE_6, Op.RELEASE_10, Op.PERSISTENT_RESERVE_OUT):
            continue
        assert not conflicted(lu, A, row), row.name
        assert conflicted(lu, C, row) == (not row.under_reserve), row.name


def test_absent_lun_answers():
    """A LUN without a logical unit: INQUIRY says 'not connected', REPORT LUNS still lists
    LUN 0, REQUEST SENSE and other commands report LOGICAL UNIT NOT SUPPORTED."""
    dev = TargetDevice(MemVolume(1 << 20), "iqn.2026-11.org.jiva-py:t")
    lun1 = bytes([0, 1]) + bytes(6)
    assert lun_number(lun1) == 1 and dev.unit(bytes(8)) is dev.lu
    assert dev.has_unit(bytes(8)) and not dev.has_unit(lun1)
    unit = dev.unit(lun1)

    def run(cdb: bytes):
        return asyncio.run(unit.execute(A, cdb.ljust(16, b"\0"), None))

    inq = run(bytes([Op.INQUIRY, 0, 0, 0, 36]))
    assert inq.status == S.GOOD and inq.data[0] == 0x7F and len(inq.data) == 36
    luns = run(bytes([Op.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16]))
    assert bytes(luns.data) == (8).to_bytes(4, "big") + bytes(12)
    rs = run(bytes([Op.REQUEST_SENSE, 0, 0, 0, 18]))
    assert rs.status == S.GOOD and (rs.data[2], rs.data[12]) == (S.ILLEGAL_REQUEST, 0x25)
    tur = run(bytes([Op.TEST_UNIT_READY]))
    assert tur.status == S.CHECK_CONDITION and tur.sense is not None and tur.sense[12] == 0x25
