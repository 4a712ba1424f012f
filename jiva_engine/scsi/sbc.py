"""SBC-3 block commands: capacity, READ/WRITE/VERIFY in every CDB size, SYNCHRONIZE CACHE,
WRITE SAME, UNMAP, COMPARE AND WRITE, ORWRITE, GET LBA STATUS, medium handling, and the block
VPD pages (0xB0-0xB2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import CDB_LENGTHS, Request, Result, be, invalid, truncate
from jiva_engine.scsi.opcodes import Op
from jiva_engine.scsi.sense import SenseError

if TYPE_CHECKING:
    from jiva_engine.scsi.lu import LogicalUnit

MAX_XFER_BLOCKS = 32768  # 16 MiB at 512-byte blocks
MAX_CAW_BLOCKS = 255
MAX_WS_BLOCKS = 65535  # per WRITE SAME (32 MiB at 512-byte blocks)
MAX_UNMAP_BLOCKS = 1 << 20
MAX_UNMAP_DESCS = 256
CHUNK = 1 << 20  # WRITE SAME writes at most this many bytes per volume call

WRITE_AND_VERIFY = frozenset(
    {Op.WRITE_AND_VERIFY_10, Op.WRITE_AND_VERIFY_12, Op.WRITE_AND_VERIFY_16}
)
PROTECT = 0xE0  # RDPROTECT / WRPROTECT / VRPROTECT: no protection information here
FUA = 0x08
BYTCHK = 0x06
UNMAP_BIT, ANCHOR, NDOB = 0x08, 0x10, 0x01  # WRITE SAME byte 1


def write_protected(out_len: int) -> SenseError:
    """DATA PROTECT / WRITE PROTECTED (software write protect is on), to raise."""
    return SenseError(S.DATA_PROTECT, S.WRITE_PROTECTED, out_len=out_len)


def rw_fields(cdb: bytes) -> tuple[int, int]:
    """(lba, nblocks) of a 6/10/12/16-byte READ/WRITE/VERIFY-style CDB."""
    grp = cdb[0] >> 5
    if grp == 0:  # 6-byte: 21-bit LBA; a transfer length of 0 means 256 blocks
        return int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256
    if grp in (1, 2):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
    if grp == 5:
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")


def check_lba(lu: LogicalUnit, lba: int, n: int) -> None:
    """ILLEGAL REQUEST / LBA OUT OF RANGE unless [lba, lba + n) lies on the medium."""
    if lba + n > lu.nblocks:
        raise invalid(S.LBA_OUT_OF_RANGE)


# ---------------------------------------------------------------------- capacity
async def read_capacity_10(lu: LogicalUnit, req: Request) -> Result:
    """READ CAPACITY(10): last LBA (capped at 2^32 - 1) and block length."""
    cdb = req.cdb
    if be(cdb, 2, 4) and not cdb[8] & 0x01:  # an LBA without PMI
        raise invalid()
    last = min(lu.nblocks - 1, 0xFFFFFFFF)
    return Result(data=last.to_bytes(4, "big") + lu.block_size.to_bytes(4, "big"))


async def read_capacity_16(lu: LogicalUnit, req: Request) -> Result:
    """SERVICE ACTION IN(16) / READ CAPACITY(16): with thin provisioning (LBPME, LBPRZ)."""
    b = bytearray(32)
    b[0:8] = (lu.nblocks - 1).to_bytes(8, "big")
    b[8:12] = lu.block_size.to_bytes(4, "big")
    b[13] = 0  # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: one
    b[14] = 0x80 | 0x40  # LBPME, LBPRZ
    return Result(data=truncate(bytes(b), be(req.cdb, 10, 4)))


async def get_lba_status(lu: LogicalUnit, req: Request) -> Result:
    """SERVICE ACTION IN(16) / GET LBA STATUS: mapped and deallocated runs from `lba` on."""
    cdb = req.cdb
    alloc = be(cdb, 10, 4)
    lba = be(cdb, 2, 8)
    if lba >= lu.nblocks:
        raise invalid(S.LBA_OUT_OF_RANGE)
    if alloc < 24:
        return Result(data=truncate(bytes(8), alloc))
    bs = lu.block_size
    span = min(lu.nblocks - lba, max(1, (alloc - 8) // 16) << 21)
    runs = await lu.volume.allocated(lba * bs, span * bs)
    descs = b""
    for off, ln, mapped in runs:
        if ln <= 0:
            continue
        descs += (off // bs).to_bytes(8, "big") + (ln // bs).to_bytes(4, "big")
        descs += bytes([0 if mapped else 1, 0, 0, 0])  # PROVISIONING STATUS
        if 8 + len(descs) >= alloc:
            break
    out = (len(descs) + 4).to_bytes(4, "big") + bytes(4) + descs
    return Result(data=truncate(out, alloc))


# ---------------------------------------------------------------------- read, write, verify
async def read(lu: LogicalUnit, req: Request) -> Result:
    """READ(6/10/12/16)."""
    cdb = req.cdb
    if len(cdb) < CDB_LENGTHS[cdb[0] >> 5]:
        raise invalid()
    lba, n = rw_fields(cdb)
    if cdb[0] >> 5 and cdb[1] & PROTECT:  # (READ(6) has no RDPROTECT)
        raise invalid()
    check_lba(lu, lba, n)
    if n > MAX_XFER_BLOCKS:
        raise invalid()
    if n == 0:
        return Result()
    bs = lu.block_size
    return Result(data=await lu.volume.read(lba * bs, n * bs))


async def write(lu: LogicalUnit, req: Request) -> Result:
    """WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16)."""
    cdb, data = req.cdb, req.data
    op = cdb[0]
    if len(cdb) < CDB_LENGTHS[op >> 5]:
        raise invalid()
    lba, n = rw_fields(cdb)
    bs = lu.block_size
    need = n * bs
    six = op >> 5 == 0  # WRITE(6) has neither WRPROTECT nor FUA
    if not six and cdb[1] & PROTECT:
        raise invalid()
    check_lba(lu, lba, n)
    if n > MAX_XFER_BLOCKS:
        raise invalid()
    if lu.mode.swp:
        raise write_protected(need)
    if n == 0:
        return Result()
    fua = not six and bool(cdb[1] & FUA)
    if len(data) > need:
        data = memoryview(data)[:need]
    elif len(data) < need:
        # iSCSI EDTL below the CDB's length: transfer (and write) only what EDTL allows,
        # the transport reports the overflow residual (FCP-4 / SAM-5 behaviour)
        if data:
            await lu.volume.write(lba * bs, data, fua=fua)
        return Result(out_len=need)
    if op in WRITE_AND_VERIFY:  # stable, then compared when BYTCHK asks for it
        await lu.volume.write(lba * bs, data, fua=True)
        if (cdb[1] & BYTCHK) == 0x02:
            back = await lu.volume.read(lba * bs, need)
            if bytes(back) != bytes(data):
                raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, out_len=need)
    else:
        await lu.volume.write(lba * bs, data, fua=fua)
    return Result(out_len=need)


async def verify(lu: LogicalUnit, req: Request) -> Result:
    """VERIFY(10/12/16): a medium check (BYTCHK 0) or a compare with the data-out buffer."""
    cdb, data = req.cdb, req.data
    lba, n = rw_fields(cdb)
    if cdb[1] & PROTECT:
        raise invalid()
    bytchk = (cdb[1] & BYTCHK) >> 1
    if bytchk == 2:
        raise invalid()
    check_lba(lu, lba, n)
    if n == 0:
        return Result()
    bs = lu.block_size
    if bytchk == 0:
        await lu.volume.read(lba * bs, n * bs)
        return Result()
    need = bs if bytchk == 3 else n * bs  # 3: one block, compared with every block
    if len(data) < need:
        raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_IU, out_len=need)
    cur = bytes(await lu.volume.read(lba * bs, n * bs))
    want = bytes(data[:need]) * (n if bytchk == 3 else 1)
    if cur != want:
        idx = next(i for i in range(len(cur)) if cur[i] != want[i])
        raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=idx, out_len=need)
    return Result(out_len=need)


def _range_10_16(cdb: bytes, ten: bool) -> tuple[int, int]:
    """(lba, nblocks) of PRE-FETCH / SYNCHRONIZE CACHE / WRITE SAME in their 10 or 16 form."""
    return (be(cdb, 2, 4), be(cdb, 7, 2)) if ten else (be(cdb, 2, 8), be(cdb, 10, 4))


async def pre_fetch(lu: LogicalUnit, req: Request) -> Result:
    """PRE-FETCH(10/16): nothing to do; CONDITION MET for a range on the medium."""
    cdb = req.cdb
    check_lba(lu, *_range_10_16(cdb, cdb[0] == Op.PRE_FETCH_10))
    return Result(S.CONDITION_MET)


async def synchronize_cache(lu: LogicalUnit, req: Request) -> Result:
    """SYNCHRONIZE CACHE(10/16): flush the whole volume to stable storage."""
    cdb = req.cdb
    check_lba(lu, *_range_10_16(cdb, cdb[0] == Op.SYNCHRONIZE_CACHE_10))
    await lu.volume.flush()
    return Result()


async def write_same(lu: LogicalUnit, req: Request) -> Result:
    """WRITE SAME(10/16): one block repeated, zeroes (NDOB), or deallocation (UNMAP)."""
    cdb, data = req.cdb, req.data
    ten = cdb[0] == Op.WRITE_SAME_10
    lba, n = _range_10_16(cdb, ten)
    flags = cdb[1]
    ndob = (not ten) and bool(flags & NDOB)
    if flags & PROTECT or (flags & ANCHOR and not flags & UNMAP_BIT):
        raise invalid()
    if flags & ANCHOR:
        raise invalid()  # anchored state not supported (ANC_SUP=0)
    bs = lu.block_size
    need = 0 if ndob else bs
    if n == 0:  # to the end of the medium
        if lba > lu.nblocks:
            raise invalid(S.LBA_OUT_OF_RANGE)
        n = lu.nblocks - lba
    check_lba(lu, lba, n)
    if n > MAX_WS_BLOCKS:
        raise invalid()
    if len(data) != need:
        raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB, out_len=need)
    if lu.mode.swp:
        raise write_protected(need)
    if n == 0:
        return Result(out_len=need)
    if flags & UNMAP_BIT:  # deallocate (reads return zeroes, LBPRZ=1)
        await lu.volume.unmap(lba * bs, n * bs)
        return Result(out_len=need)
    block = bytes(bs) if ndob else bytes(data[:bs])
    per = max(1, CHUNK // bs)
    chunk = block * min(per, n)
    done = 0
    while done < n:
        k = min(per, n - done)
        await lu.volume.write((lba + done) * bs, chunk[: k * bs])
        done += k
    return Result(out_len=need)


async def unmap(lu: LogicalUnit, req: Request) -> Result:
    """UNMAP: deallocate every range of the block descriptor list (all checked first)."""
    cdb, data = req.cdb, req.data
    plen = be(cdb, 7, 2)
    if cdb[1] & 0x01:  # ANCHOR
        raise invalid()
    if plen == 0:
        return Result()
    if plen < 8:
        raise invalid(S.PARAM_LIST_LENGTH_ERROR)
    if len(data) < plen:
        raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
    if lu.mode.swp:
        raise write_protected(plen)
    bdl = be(data, 2, 2)
    descs = bytes(data[8 : 8 + min(bdl, plen - 8)])
    if len(descs) // 16 > MAX_UNMAP_DESCS:
        raise invalid(S.INVALID_FIELD_IN_PARAM)
    ranges = []
    for i in range(0, len(descs) - 15, 16):
        lba, n = be(descs, i, 8), be(descs, i + 8, 4)
        if n > MAX_UNMAP_BLOCKS:
            raise invalid(S.INVALID_FIELD_IN_PARAM)
        check_lba(lu, lba, n)
        ranges.append((lba, n))
    bs = lu.block_size
    for lba, n in ranges:
        if n:
            await lu.volume.unmap(lba * bs, n * bs)
    return Result(out_len=plen)


async def compare_and_write(lu: LogicalUnit, req: Request) -> Result:
    """COMPARE AND WRITE: atomically (against other CAW/ORWRITE) verify, then write."""
    cdb, data = req.cdb, req.data
    lba, n = be(cdb, 2, 8), cdb[13]
    if cdb[1] & PROTECT:
        raise invalid()
    bs = lu.block_size
    need = 2 * n * bs
    if n > MAX_CAW_BLOCKS:
        raise invalid()
    check_lba(lu, lba, n)
    if len(data) != need:
        raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB, out_len=need)
    if n == 0:
        return Result()
    half = n * bs
    verify_data = bytes(data[:half])
    async with lu.caw_lock:
        cur = bytes(await lu.volume.read(lba * bs, half))
        if cur != verify_data:
            idx = next(i for i in range(half) if cur[i] != verify_data[i])
            raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=idx, out_len=need)
        await lu.volume.write(lba * bs, memoryview(data)[half:need], fua=bool(cdb[1] & FUA))
    return Result(out_len=need)


async def orwrite(lu: LogicalUnit, req: Request) -> Result:
    """ORWRITE(16): OR the data-out buffer into the blocks."""
    cdb, data = req.cdb, req.data
    lba, n = be(cdb, 2, 8), be(cdb, 10, 4)
    if cdb[1] & PROTECT:
        raise invalid()
    bs = lu.block_size
    need = n * bs
    check_lba(lu, lba, n)
    if n == 0:
        return Result()
    if len(data) < need:
        raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_IU, out_len=need)
    async with lu.caw_lock:
        cur = await lu.volume.read(lba * bs, need)
        merged = int.from_bytes(cur, "big") | int.from_bytes(data[:need], "big")
        await lu.volume.write(lba * bs, merged.to_bytes(need, "big"), fua=bool(cdb[1] & FUA))
    return Result(out_len=need)


# ---------------------------------------------------------------------- medium handling
LOEJ, START = 0x02, 0x01  # START STOP UNIT byte 4


async def start_stop_unit(lu: LogicalUnit, req: Request) -> Result:
    """START STOP UNIT: nothing to spin; ejecting is refused while removal is prevented."""
    nexus, cdb = req.nexus, req.cdb
    if cdb[4] & LOEJ and not cdb[4] & START and nexus.key in lu.prevent:
        raise invalid(S.MEDIUM_REMOVAL_PREVENTED)
    return Result()


async def prevent_allow_medium_removal(lu: LogicalUnit, req: Request) -> Result:
    """PREVENT ALLOW MEDIUM REMOVAL: remembered per I_T nexus (START STOP UNIT checks it)."""
    nexus, cdb = req.nexus, req.cdb
    if cdb[4] & 0x03:
        lu.prevent.add(nexus.key)
    else:
        lu.prevent.discard(nexus.key)
    return Result()


async def read_defect_data(_lu: LogicalUnit, req: Request) -> Result:
    """READ DEFECT DATA(10/12): an empty defect list in the format asked for."""
    cdb = req.cdb
    if cdb[0] == Op.READ_DEFECT_DATA_10:
        alloc = be(cdb, 7, 2)
        out = bytes([0, cdb[2] & 0x1F, 0, 0])
    else:
        alloc = be(cdb, 6, 4)
        out = bytes([0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0])
    return Result(data=truncate(out, alloc))


# ---------------------------------------------------------------------- VPD pages
def vpd_block_limits(lu: LogicalUnit) -> bytes:
    """VPD page 0xB0: transfer, COMPARE AND WRITE, UNMAP and WRITE SAME limits."""
    bs = lu.block_size
    b = bytearray(0x3C)
    b[1] = MAX_CAW_BLOCKS  # byte 5 of the page
    b[2:4] = (4096 // bs).to_bytes(2, "big")  # optimal transfer length granularity
    b[4:8] = MAX_XFER_BLOCKS.to_bytes(4, "big")
    b[8:12] = (CHUNK // bs).to_bytes(4, "big")  # optimal transfer length
    b[12:16] = MAX_XFER_BLOCKS.to_bytes(4, "big")  # maximum prefetch length
    b[16:20] = MAX_UNMAP_BLOCKS.to_bytes(4, "big")
    b[20:24] = MAX_UNMAP_DESCS.to_bytes(4, "big")
    b[24:28] = (4096 // bs).to_bytes(4, "big")  # optimal unmap granularity
    b[28:32] = (0x80000000).to_bytes(4, "big")  # UGAVALID, alignment 0
    b[32:40] = MAX_WS_BLOCKS.to_bytes(8, "big")
    return bytes(b)


def vpd_block_device_characteristics(_lu: LogicalUnit) -> bytes:
    """VPD page 0xB1: a non-rotating medium, form factor < 1.8 inch."""
    b = bytearray(0x3C)
    b[0:2] = (1).to_bytes(2, "big")  # MEDIUM ROTATION RATE: non-rotating
    b[3] = 0x05  # NOMINAL FORM FACTOR
    return bytes(b)


def vpd_logical_block_provisioning(_lu: LogicalUnit) -> bytes:
    """VPD page 0xB2: thin provisioning; UNMAP and WRITE SAME(10/16) deallocate, reads of
    deallocated blocks return zeroes."""
    return bytes([0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0])  # LBPU LBPWS LBPWS10 LBPRZ; thin
