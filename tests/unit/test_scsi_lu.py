"""Unit tests of the SCSI logical unit: CDB decoding, sense data, reservations, fuzzed CDBs."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Nexus
from jiva_engine.scsi.lu import LogicalUnit
from tests.unit.memvolume import MemVolume

A = Nexus("iqn.test:a", b"\x80\0\0\0\0\1")
B = Nexus("iqn.test:b", b"\x80\0\0\0\0\2")


def lu_pair(size: int = 1 << 20) -> tuple[LogicalUnit, MemVolume]:
    """A LU over a fresh in-memory volume, with nexuses A and B logged in."""
    v = MemVolume(size)
    lu = LogicalUnit(v, target_name="iqn.2026-11.org.jiva-py:mem")
    lu.nexus_added(A)
    lu.nexus_added(B)
    return lu, v


def run(coro):
    """Run a coroutine to completion."""
    return asyncio.run(coro)


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    """A 10-byte READ/WRITE/VERIFY CDB."""
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


def sense_of(res) -> tuple[int, int, int]:
    """(key, asc, ascq) of fixed-format sense data."""
    return res.sense[2] & 0x0F, res.sense[12], res.sense[13]


def test_write_read_roundtrip_and_fua():
    """WRITE(10) lands in the volume; READ(10) returns it; FUA reaches volume.write."""
    lu, v = lu_pair()

    async def go():
        data = bytes(range(256)) * 4
        r = await lu.execute(A, rw10(0x2A, 3, 2, 0x08), data)
        assert r.status == S.GOOD and v.fua_writes == 1
        assert bytes(v.data[3 * 512 : 5 * 512]) == data
        r = await lu.execute(A, rw10(0x28, 3, 2), None)
        assert r.status == S.GOOD and bytes(r.data) == data

    run(go())


def test_out_of_range_and_invalid_opcode():
    """LBA past the end: ILLEGAL REQUEST / LBA OUT OF RANGE; unknown opcode: INVALID COMMAND."""
    lu, v = lu_pair()

    async def go():
        last = v.size // 512
        r = await lu.execute(A, rw10(0x28, last, 1), None)
        assert r.status == S.CHECK_CONDITION and sense_of(r) == (5, 0x21, 0)
        r = await lu.execute(A, bytes([0xC7]) + bytes(9), None)
        assert sense_of(r) == (5, 0x20, 0)
        r = await lu.execute(A, rw10(0x28, 0, 1, 0x20), None)  # RDPROTECT without PI
        assert sense_of(r) == (5, 0x24, 0)

    run(go())


def test_volume_errors_map_to_sense():
    """VolumeIOError -> MEDIUM ERROR; VolumeNotReady -> NOT READY."""
    lu, v = lu_pair()

    async def go():
        v.fail = True
        r = await lu.execute(A, rw10(0x28, 0, 1), None)
        assert sense_of(r) == (3, 0x11, 0)
        r = await lu.execute(A, rw10(0x2A, 0, 1), bytes(512))
        assert sense_of(r) == (3, 0x0C, 0)
        v.fail, v.not_ready = False, True
        r = await lu.execute(A, bytes(6), None)  # TEST UNIT READY
        assert sense_of(r) == (2, 0x04, 0x01)

    run(go())


def test_sync_cache_flushes_and_unmap_zeroes():
    """SYNCHRONIZE CACHE calls flush(); UNMAP makes blocks read zero and GET LBA STATUS unmapped."""
    lu, v = lu_pair()

    async def go():
        await lu.execute(A, rw10(0x2A, 0, 8), b"\xaa" * 4096)
        r = await lu.execute(A, rw10(0x35, 0, 0), None)
        assert r.status == S.GOOD and v.flushes == 1
        param = struct.pack(">HHI", 22, 16, 0) + struct.pack(">QII", 2, 4, 0)
        r = await lu.execute(A, bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), param)
        assert r.status == S.GOOD
        assert bytes(v.data[1024:3072]) == bytes(2048)
        cdb = bytes([0x9E, 0x12]) + (2).to_bytes(8, "big") + (64).to_bytes(4, "big") + b"\0\0"
        r = await lu.execute(A, cdb, None)
        assert r.status == S.GOOD
        desc = bytes(r.data[8:24])
        assert int.from_bytes(desc[:8], "big") == 2 and desc[12] == 1  # deallocated

    run(go())


def test_compare_and_write_miscompare():
    """COMPARE AND WRITE: match writes; mismatch gives MISCOMPARE with the byte offset."""
    lu, v = lu_pair()

    async def go():
        cdb = bytes([0x89, 0]) + (0).to_bytes(8, "big") + bytes(3) + bytes([1, 0, 0])
        r = await lu.execute(A, cdb, bytes(512) + b"\x55" * 512)
        assert r.status == S.GOOD and v.data[0] == 0x55
        r = await lu.execute(A, cdb, bytes(512) + b"\x66" * 512)
        assert sense_of(r) == (0x0E, 0x1D, 0) and r.sense[3:7] == bytes(4)
        assert v.data[0] == 0x55

    run(go())


def test_persistent_reservation_write_exclusive():
    """A holds WRITE EXCLUSIVE: B may read but gets RESERVATION CONFLICT on write."""
    lu, v = lu_pair()

    def prout(sa: int, key: int, skey: int = 0, ptype: int = 0) -> tuple[bytes, bytes]:
        return (bytes([0x5F, sa, ptype, 0, 0, 0, 0, 0, 24, 0]),
                struct.pack(">QQ", key, skey) + bytes(8))  # fmt: skip

    async def go():
        assert (await lu.execute(A, *prout(0, 0, 0xA))).status == S.GOOD
        assert (await lu.execute(A, *prout(1, 0xA, 0, 1))).status == S.GOOD
        assert (await lu.execute(B, rw10(0x28, 0, 1), None)).status == S.GOOD
        r = await lu.execute(B, rw10(0x2A, 0, 1), bytes(512))
        assert r.status == S.RESERVATION_CONFLICT
        assert (await lu.execute(A, rw10(0x2A, 0, 1), bytes(512))).status == S.GOOD
        keys = await lu.execute(A, bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0]), None)
        assert int.from_bytes(keys.data[4:8], "big") == 8
        assert int.from_bytes(keys.data[8:16], "big") == 0xA
        # B registers and preempts A: A's registration is gone and A gets a unit attention
        assert (await lu.execute(B, *prout(0, 0, 0xB))).status == S.GOOD
        assert (await lu.execute(B, *prout(4, 0xB, 0xA, 1))).status == S.GOOD
        r = await lu.execute(A, bytes(6), None)
        assert sense_of(r) == (6, 0x2A, 0x05)
        assert (await lu.execute(A, rw10(0x2A, 0, 1), bytes(512))).status == (
            S.RESERVATION_CONFLICT
        )

    run(go())


def test_inquiry_vpd_pages():
    """Standard INQUIRY and every advertised VPD page answer, truncated to the allocation."""
    lu, _ = lu_pair()

    async def go():
        r = await lu.execute(A, bytes([0x12, 0, 0, 0, 36, 0]), None)
        assert len(r.data) == 36 and r.data[8:16] == b"JIVA-PY "
        r = await lu.execute(A, bytes([0x12, 1, 0, 0, 255, 0]), None)
        pages = list(r.data[4:])
        assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        for p in pages:
            r = await lu.execute(A, bytes([0x12, 1, p, 0, 255, 0]), None)
            assert r.status == S.GOOD and r.data[1] == p
        r = await lu.execute(A, bytes([0x12, 1, 0x99, 0, 255, 0]), None)
        assert sense_of(r) == (5, 0x24, 0)

    run(go())


OPS = [0x00, 0x03, 0x12, 0xA0, 0x25, 0x9E, 0x1A, 0x5A, 0x15, 0x55, 0x08, 0x28, 0xA8, 0x88,
       0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x2F, 0xAF, 0x8F, 0x34, 0x90, 0x35, 0x91,
       0x41, 0x93, 0x42, 0x89, 0x8B, 0x1B, 0x1E, 0xA3, 0x5E, 0x5F, 0x16, 0x56, 0x17, 0x57,
       0x37, 0xB7]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(OPS + [0xFF, 0xC0]),
    st.binary(min_size=0, max_size=15),
    st.binary(max_size=1200),
    st.booleans(),
)
def test_dispatcher_fuzz(op, rest, data, other):
    """Random CDBs and data-out: execute() returns a sane Result, never raises or hangs."""
    lu, v = lu_pair(64 * 1024)

    async def go():
        r = await asyncio.wait_for(lu.execute(B if other else A, bytes([op]) + rest, data), 5)
        assert r.status in (S.GOOD, S.CHECK_CONDITION, S.RESERVATION_CONFLICT, S.CONDITION_MET)
        if r.status == S.CHECK_CONDITION:
            assert r.sense and r.sense[0] in (0x70, 0xF0, 0x72)
        assert len(v.data) == 64 * 1024

    run(go())


def test_fenced_volume_reports_not_ready_and_drops_sessions():
    """VolumeFenced: NOT READY sense and the transport's on_fenced hook runs (drop sessions)."""
    from jiva_engine.volume import VolumeFenced

    lu, v = lu_pair()
    dropped = []
    lu.on_fenced = lambda: dropped.append(True)

    async def fenced_read(offset, length):
        raise VolumeFenced("newer epoch")

    v.read = fenced_read  # type: ignore[method-assign]

    async def go():
        r = await lu.execute(A, rw10(0x28, 0, 1), None)
        assert r.status == S.CHECK_CONDITION and sense_of(r)[0] == 2
        assert dropped == [True]

    run(go())


def test_lun_reset_unit_attention_for_every_nexus():
    """After a LUN reset every nexus (the issuer too, SAM-5) sees BUS DEVICE RESET once."""
    lu, _ = lu_pair()

    async def go():
        lu.reset(cold=False)
        for nx in (A, B):
            r = await lu.execute(nx, bytes(6), None)
            assert sense_of(r) == (6, 0x29, 0x03)
            assert (await lu.execute(nx, bytes(6), None)).status == S.GOOD
        # INQUIRY does not consume or report a unit attention
        lu.reset(cold=True)
        r = await lu.execute(A, bytes([0x12, 0, 0, 0, 36, 0]), None)
        assert r.status == S.GOOD
        assert sense_of(await lu.execute(A, bytes(6), None)) == (6, 0x29, 0x00)

    run(go())


def test_grown_volume_raises_capacity_data_has_changed_once_per_nexus():
    """After the volume's size changes every I_T nexus (not one that logs in later) gets one
    UNIT ATTENTION, CAPACITY DATA HAS CHANGED, on its next command; READ CAPACITY(10)/(16)
    then report the new size, and LBAs past the old end are allowed."""
    lu, v = lu_pair(1 << 20)
    late = Nexus("iqn.test:late", b"\x80\0\0\0\0\3")
    rc10 = bytes([0x25]) + bytes(9)
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)

    async def go():
        r = await lu.execute(A, rc10, None)
        assert r.data[:4] == (2047).to_bytes(4, "big")  # last LBA of 1 MiB
        r = await lu.execute(A, rw10(0x2A, 2048, 1), b"n" * 512)  # past the end
        assert sense_of(r) == (5, 0x21, 0x00)
        v.grow(3 << 20)
        lu.nexus_added(late)
        # INQUIRY neither reports nor consumes it
        assert (await lu.execute(A, bytes([0x12, 0, 0, 0, 36, 0]), None)).status == S.GOOD
        for nx in (A, B):
            r = await lu.execute(nx, rc10, None)
            assert sense_of(r) == (6, 0x2A, 0x09), nx
            r = await lu.execute(nx, rc10, None)
            assert r.status == S.GOOD and r.data[:4] == (6143).to_bytes(4, "big")
        r = await lu.execute(B, rc16, None)
        assert r.status == S.GOOD and r.data[:8] == (6143).to_bytes(8, "big")
        assert (await lu.execute(late, rc10, None)).status == S.GOOD  # logged in after it
        r = await lu.execute(A, rw10(0x2A, 2048, 1), b"n" * 512)
        assert r.status == S.GOOD and v.data[2048 * 512 : 2049 * 512] == b"n" * 512
        # REQUEST SENSE reports a pending one as its data (and consumes it)
        v.grow(4 << 20)
        r = await lu.execute(A, bytes([0x03, 0, 0, 0, 18, 0]), None)
        assert r.status == S.GOOD and (r.data[2] & 0x0F, r.data[12], r.data[13]) == (6, 0x2A, 9)
        assert (await lu.execute(A, bytes(6), None)).status == S.GOOD
        # a closed unit no longer follows the volume
        lu.close()
        v.grow(5 << 20)
        assert (await lu.execute(A, bytes(6), None)).status == S.GOOD

    run(go())
