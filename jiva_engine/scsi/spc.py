"""SPC-4 commands every device type has: TEST UNIT READY, REQUEST SENSE, INQUIRY and its VPD
pages, REPORT LUNS, MODE SENSE/SELECT with the mode pages, REPORT SUPPORTED OPERATION CODES."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Command, Request, Result, be, invalid, truncate
from jiva_engine.scsi.opcodes import Op
from jiva_engine.scsi.sense import SenseError

if TYPE_CHECKING:
    from jiva_engine.scsi.lu import LogicalUnit

VENDOR = b"JIVA-PY "
PRODUCT = b"jiva volume     "
REVISION = b"0001"
# version descriptors: SAM-4, iSCSI, SPC-4, SBC-3
VERSION_DESCRIPTORS = (0x00C0, 0x0960, 0x0460, 0x04C0)
# REPORT LUNS parameter data: a list of one LUN, LUN 0
LUN_LIST = (8).to_bytes(4, "big") + bytes(4) + bytes(8)
SELECT_REPORTS = (0x00, 0x01, 0x02, 0x10, 0x11, 0x12)


async def test_unit_ready(_lu: LogicalUnit, _req: Request) -> Result:
    """TEST UNIT READY: GOOD once the checks every command goes through have passed."""
    return Result()


async def request_sense(lu: LogicalUnit, req: Request) -> Result:
    """REQUEST SENSE: the oldest pending unit attention, else NOT READY or NO SENSE."""
    nexus, cdb = req.nexus, req.cdb
    desc = bool(cdb[1] & 0x01)
    alloc = cdb[4]
    ua = lu.ua.take(nexus.key)
    key, asc = (S.UNIT_ATTENTION, ua) if ua is not None else (S.NO_SENSE, (0, 0))
    if not lu.volume.ready() and not lu.ua.pending(nexus.key):
        key, asc = S.NOT_READY, S.LU_NOT_READY_BECOMING
    out = S.descriptor_sense(key, *asc) if desc else S.fixed_sense(key, *asc)
    return Result(data=truncate(out, alloc))


# ---------------------------------------------------------------------- INQUIRY
def standard_inquiry() -> bytes:
    """Standard INQUIRY data of a direct-access block device (96 bytes)."""
    b = bytearray(96)
    b[0] = 0x00  # peripheral qualifier 0, device type 0 (direct access block device)
    b[2] = 0x06  # SPC-4
    b[3] = 0x12  # HiSup, response data format 2
    b[4] = len(b) - 5
    b[7] = 0x02  # CmdQue
    b[8:16] = VENDOR
    b[16:32] = PRODUCT
    b[32:36] = REVISION
    for i, vd in enumerate(VERSION_DESCRIPTORS):
        b[58 + 2 * i : 60 + 2 * i] = vd.to_bytes(2, "big")
    return bytes(b)


async def inquiry(lu: LogicalUnit, req: Request) -> Result:
    """INQUIRY: the standard data or one of the VPD pages of `lu.vpd_pages`."""
    cdb = req.cdb
    evpd, page, alloc = cdb[1] & 0x01, cdb[2], be(cdb, 3, 2)
    if cdb[1] & 0x02 or (not evpd and page):  # CMDDT, or a page code without EVPD
        raise invalid()
    if not evpd:
        return Result(data=truncate(standard_inquiry(), alloc))
    fn = lu.vpd_pages.get(page)
    if fn is None:
        raise invalid()
    body = fn(lu)
    out = bytes([0x00, page]) + len(body).to_bytes(2, "big") + body
    return Result(data=truncate(out, alloc))


VpdPage = Callable[["LogicalUnit"], bytes]


def vpd_supported_pages(lu: LogicalUnit) -> bytes:
    """VPD page 0x00: the page codes of every VPD page, ascending."""
    return bytes(sorted(lu.vpd_pages))


def vpd_unit_serial_number(lu: LogicalUnit) -> bytes:
    """VPD page 0x80: the product serial number."""
    return lu.serial


def vpd_device_identification(lu: LogicalUnit) -> bytes:
    """VPD page 0x83: NAA and T10 LU names, relative target port, target port group, and the
    SCSI name of the target device."""
    out = b""
    # NAA IEEE Registered Extended, binary, associated with the LU
    out += bytes([0x01, 0x03, 0x00, 16]) + lu.naa
    # T10 vendor ID, ASCII
    t10 = VENDOR + lu.serial
    out += bytes([0x02, 0x01, 0x00, len(t10)]) + t10
    # relative target port (association: target port, PIV with the iSCSI protocol identifier)
    out += bytes([0x51, 0x94, 0x00, 4, 0, 0, 0, 1])
    # target port group
    out += bytes([0x51, 0x95, 0x00, 4, 0, 0, 0, 1])
    if lu.target_name:
        name = lu.target_name.encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        out += bytes([0x53, 0xA8, 0x00, len(name)]) + name  # SCSI name, target device
    return out


# ---------------------------------------------------------------------- REPORT LUNS
async def report_luns(_lu: LogicalUnit, req: Request) -> Result:
    """REPORT LUNS: LUN 0 is the only logical unit."""
    cdb = req.cdb
    alloc = be(cdb, 6, 4)
    if cdb[2] not in SELECT_REPORTS or alloc < 16:
        raise invalid()
    return Result(data=truncate(LUN_LIST, alloc))


# ---------------------------------------------------------------------- mode parameters
CACHING, CONTROL, RW_ERROR_RECOVERY, INFORMATIONAL_EXCEPTIONS = 0x08, 0x0A, 0x01, 0x1C
ALL_PAGES = 0x3F
PC_CURRENT, PC_CHANGEABLE, PC_SAVED = 0, 1, 3


@dataclass
class ModeParameters:
    """The mode parameters MODE SELECT can change (none are saved across restarts)."""

    wce: bool = True  # caching page: write cache enabled
    d_sense: bool = False  # control page: descriptor-format sense data
    swp: bool = False  # control page: software write protect

    def page(self, code: int, pc: int) -> bytes:
        """Mode page `code`, current values (pc 0) or the changeable mask (pc 1); KeyError if
        there is no such page."""
        changeable = pc == PC_CHANGEABLE
        if code == CACHING:
            b = bytearray(20)
            b[0], b[1] = CACHING, 18
            b[2] = 0x04 if (changeable or self.wce) else 0  # WCE
            return bytes(b)
        if code == CONTROL:
            b = bytearray(12)
            b[0], b[1] = CONTROL, 10
            if changeable:
                b[2] = 0x04  # D_SENSE changeable
                b[4] = 0x08  # SWP changeable
            else:
                b[2] = 0x04 if self.d_sense else 0
                b[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                b[4] = 0x08 if self.swp else 0
                b[8:10] = (0xFFFF).to_bytes(2, "big")  # busy timeout period: unlimited
            return bytes(b)
        if code in (RW_ERROR_RECOVERY, INFORMATIONAL_EXCEPTIONS):
            b = bytearray(12)
            b[0], b[1] = code, 10
            return bytes(b)
        raise KeyError(code)

    def select(self, code: int, page: bytes) -> None:
        """Apply the current values of a page MODE SELECT checked against the changeable mask."""
        if code == CACHING:
            self.wce = bool(page[2] & 0x04)
        elif code == CONTROL:
            self.d_sense = bool(page[2] & 0x04)
            self.swp = bool(page[4] & 0x08)


async def mode_sense(lu: LogicalUnit, req: Request) -> Result:
    """MODE SENSE(6)/(10): one page or all, with a short or long LBA block descriptor."""
    cdb = req.cdb
    ten = cdb[0] == Op.MODE_SENSE_10
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    pc, code, sub = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    alloc = be(cdb, 7, 2) if ten else cdb[4]
    if pc == PC_SAVED:
        raise invalid(S.SAVING_PARAMS_UNSUPPORTED)
    if sub not in (0, 0xFF):
        raise invalid()
    mode = lu.mode
    if code == ALL_PAGES:
        codes = (RW_ERROR_RECOVERY, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS)
        body = b"".join(mode.page(c, pc) for c in codes)
    else:
        try:
            body = mode.page(code, pc)
        except KeyError:
            raise invalid() from None
    dsp = 0x10 | (0x80 if mode.swp else 0)  # device-specific parameter: DPOFUA, WP
    nblocks, bs = lu.nblocks, lu.block_size
    bd = b""
    if not dbd:
        if llbaa:
            bd = nblocks.to_bytes(8, "big") + bytes(4) + bs.to_bytes(4, "big")
        else:
            bd = min(nblocks, 0xFFFFFFFF).to_bytes(4, "big") + bytes(1) + bs.to_bytes(3, "big")
    if ten:
        hdr_len = 8 + len(bd) + len(body) - 2
        hdr = hdr_len.to_bytes(2, "big") + bytes([0, dsp, 0x01 if llbaa else 0, 0])
        hdr += len(bd).to_bytes(2, "big")
    else:
        hdr = bytes([min(255, 4 + len(bd) + len(body) - 1), 0, dsp, len(bd)])
    return Result(data=truncate(hdr + bd + body, alloc))


async def mode_select(lu: LogicalUnit, req: Request) -> Result:
    """MODE SELECT(6)/(10): change what the changeable masks allow, page by page."""
    cdb, data = req.cdb, req.data
    ten = cdb[0] == Op.MODE_SELECT_10
    plen = be(cdb, 7, 2) if ten else cdb[4]
    if cdb[1] & 0x01:  # SP
        raise invalid(S.SAVING_PARAMS_UNSUPPORTED)
    if plen == 0:
        return Result()
    if len(data) < plen:
        raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
    params = bytes(data[:plen])
    hl = 8 if ten else 4
    if len(params) < hl:
        raise invalid(S.PARAM_LIST_LENGTH_ERROR)
    bdl = be(params, 6, 2) if ten else params[3]
    pos = hl + bdl
    mode = lu.mode
    while pos < len(params):
        if len(params) < pos + 2:
            raise invalid(S.PARAM_LIST_LENGTH_ERROR)
        code, ln = params[pos] & 0x3F, params[pos + 1]
        if params[pos] & 0x40:  # SPF: no subpages
            raise invalid(S.INVALID_FIELD_IN_PARAM)
        page = params[pos : pos + 2 + ln]
        if len(page) < 2 + ln:
            raise invalid(S.PARAM_LIST_LENGTH_ERROR)
        try:
            cur = mode.page(code, PC_CURRENT)
        except KeyError:
            raise invalid(S.INVALID_FIELD_IN_PARAM) from None
        if ln != cur[1]:
            raise invalid(S.INVALID_FIELD_IN_PARAM)
        mask = mode.page(code, PC_CHANGEABLE)
        for i in range(2, len(cur)):
            if (page[i] ^ cur[i]) & ~mask[i] & 0xFF:
                raise invalid(S.INVALID_FIELD_IN_PARAM)
        mode.select(code, page)
        pos += 2 + ln
    return Result()


# ---------------------------------------------------------------------- REPORT SUPPORTED OPCODES
# command timeouts descriptor: nominal 0 (not specified), recommended 30 s
_TIMEOUTS = bytes([0, 0x0A, 0, 0]) + (0).to_bytes(4, "big") + (30).to_bytes(4, "big")


async def report_supported_operation_codes(lu: LogicalUnit, req: Request) -> Result:
    """MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES, from the opcode table."""
    cdb = req.cdb
    rctd = bool(cdb[2] & 0x80)
    opts = cdb[2] & 0x07
    rop, rsa = cdb[3], be(cdb, 4, 2)
    alloc = be(cdb, 6, 4)
    table = lu.commands
    if opts == 0:  # all commands
        out = b""
        for cmd in table.listed():
            assert cmd.usage is not None
            sa = cmd.service_action
            flags = (0x02 if rctd else 0) | (0x01 if sa is not None else 0)  # CTDP, SERVACTV
            out += bytes([cmd.opcode, 0]) + (sa or 0).to_bytes(2, "big") + bytes([0, flags])
            out += len(cmd.usage).to_bytes(2, "big")
            if rctd:
                out += _TIMEOUTS
        out = len(out).to_bytes(4, "big") + out
        return Result(data=truncate(out, alloc))
    has_sa = table.has_service_actions(rop)
    row: Command | None
    if opts == 1:  # one opcode without service actions
        if has_sa:
            raise invalid()
        row = table.row(rop)
    elif opts in (2, 3):  # one opcode and service action (3: or one without)
        if opts == 2 and not has_sa and table.row(rop) is not None:
            raise invalid()
        row = table.row(rop, rsa if has_sa else None)
    else:
        raise invalid()
    if row is None or row.usage is None:
        out = bytes([0, 0x01, 0, 0])  # SUPPORT 001b: not supported
    else:
        usage = row.usage
        out = bytes([0, (0x80 if rctd else 0) | 0x03]) + len(usage).to_bytes(2, "big") + usage
        if rctd:
            out += _TIMEOUTS
    return Result(data=truncate(out, alloc))


async def service_action_not_supported(_lu: LogicalUnit, _req: Request) -> Result:
    """A service action the table does not list: ILLEGAL REQUEST, INVALID FIELD IN CDB."""
    raise invalid()
