"""A SCSI block logical unit (SPC-4/SBC-3) over a BlockVolume: CDB decoding and execution.

The transport hands each command in with its I_T nexus and its data-out buffer; the LU returns
status, data-in and sense data.  Unit attentions, SPC-2 and persistent reservations live here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.sense import Conflict, SenseError
from jiva_engine.volume import BlockVolume, OutOfRange, VolumeFenced, VolumeIOError, VolumeNotReady

log = logging.getLogger(__name__)

VENDOR = b"JIVA-PY "
PRODUCT = b"jiva volume     "
REVISION = b"0001"
MAX_XFER_BLOCKS = 32768  # 16 MiB at 512-byte blocks
MAX_CAW_BLOCKS = 255
MAX_WS_BLOCKS = 65535  # per WRITE SAME (32 MiB at 512-byte blocks)
MAX_UNMAP_BLOCKS = 1 << 20
MAX_UNMAP_DESCS = 256
CHUNK = 1 << 20

# PR types
WE, EA, WERO, EARO, WEAR, EAAR = 1, 3, 5, 6, 7, 8
PR_TYPES = {WE, EA, WERO, EARO, WEAR, EAAR}
ALL_REG_TYPES = {WEAR, EAAR}
REG_ONLY_TYPES = {WERO, EARO, WEAR, EAAR}


class Nexus:
    """An I_T nexus: initiator port (name + ISID) seen through target portal group `tpgt`."""

    __slots__ = ("initiator", "isid", "tpgt", "key", "abort_hook")

    def __init__(self, initiator: str, isid: bytes = b"\0" * 6, tpgt: int = 1) -> None:
        """Identify the nexus; `key` is what reservations and unit attentions are keyed by."""
        self.initiator = initiator
        self.isid = isid
        self.tpgt = tpgt
        self.key = (initiator.lower(), bytes(isid))
        self.abort_hook: Callable[[], None] | None = None

    def transport_id(self) -> bytes:
        """iSCSI TransportID, format 1 (name,i,0xISID), padded to a multiple of 4."""
        name = f"{self.initiator},i,0x{self.isid.hex()}".encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        if len(name) < 20:
            name += b"\0" * (20 - len(name))
        return bytes([0x45, 0]) + len(name).to_bytes(2, "big") + name


@dataclass(slots=True)
class Result:
    """What a command produced: status, data-in, sense data and the data-out length it wanted."""

    status: int = S.GOOD
    data: bytes | bytearray | memoryview | None = None
    sense: bytes | None = None
    out_len: int = 0  # data-out bytes the CDB asked for (for iSCSI residuals)


@dataclass
class _Reservation:
    holder: tuple | None  # nexus key (None for all-registrants types)
    type: int
    scope: int = 0


@dataclass
class _PR:
    generation: int = 0
    keys: dict = field(default_factory=dict)  # nexus key -> (reservation key, Nexus)
    res: _Reservation | None = None


def _be(b: bytes | memoryview, a: int, n: int) -> int:
    return int.from_bytes(b[a : a + n], "big")


def _ill(asc: tuple[int, int] = S.INVALID_FIELD_IN_CDB) -> SenseError:
    return SenseError(S.ILLEGAL_REQUEST, asc)


def _trunc(data: bytes | bytearray, alloc: int) -> bytes | bytearray:
    return data if len(data) <= alloc else data[:alloc]


class LogicalUnit:
    """LUN 0 of the target: executes CDBs against a BlockVolume."""

    def __init__(self, volume: BlockVolume, serial: str | None = None, target_name: str = ""):
        """Wrap `volume`; `serial` feeds VPD 0x80/0x83 (defaults to a hash of the volume name)."""
        self.volume = volume
        self.bs = volume.block_size
        self.target_name = target_name
        digest = hashlib.sha256(f"jiva-py:{volume.name}".encode()).digest()
        self.serial = (serial or digest[:8].hex()).encode()
        self.naa = bytes([0x60 | (digest[8] & 0x0F)]) + digest[9:24]
        self.ua: dict[tuple, list[tuple[int, int]]] = {}
        self.pr = _PR()
        self.spc2: tuple | None = None  # nexus key holding RESERVE(6/10)
        self.prevent: set[tuple] = set()
        self.wce = True
        self.d_sense = False
        self.swp = False
        self.caw_lock = asyncio.Lock()
        self.on_fenced: Callable[[], None] | None = None
        self._handlers: dict[int, Callable] = {
            0x00: self._tur,
            0x03: self._request_sense,
            0x12: self._inquiry,
            0xA0: self._report_luns,
            0x25: self._read_capacity10,
            0x9E: self._service_action_in16,
            0x1A: self._mode_sense,
            0x5A: self._mode_sense,
            0x15: self._mode_select,
            0x55: self._mode_select,
            0x08: self._read,
            0x28: self._read,
            0xA8: self._read,
            0x88: self._read,
            0x0A: self._write,
            0x2A: self._write,
            0xAA: self._write,
            0x8A: self._write,
            0x2E: self._write,
            0xAE: self._write,
            0x8E: self._write,
            0x2F: self._verify,
            0xAF: self._verify,
            0x8F: self._verify,
            0x34: self._prefetch,
            0x90: self._prefetch,
            0x35: self._sync_cache,
            0x91: self._sync_cache,
            0x41: self._write_same,
            0x93: self._write_same,
            0x42: self._unmap,
            0x89: self._compare_and_write,
            0x8B: self._orwrite,
            0x1B: self._start_stop,
            0x1E: self._prevent_allow,
            0xA3: self._maintenance_in,
            0x5E: self._pr_in,
            0x5F: self._pr_out,
            0x16: self._reserve,
            0x56: self._reserve,
            0x17: self._release,
            0x57: self._release,
            0x37: self._read_defect,
            0xB7: self._read_defect,
        }

    # ------------------------------------------------------------------ nexus events
    def add_ua(self, asc_ascq: tuple[int, int], only: tuple | None = None, skip=None) -> None:
        """Queue a unit attention for every known nexus (or just `only`), except `skip`."""
        keys = [only] if only else list(self.ua.keys())
        for k in keys:
            if k == skip:
                continue
            q = self.ua.setdefault(k, [])
            if asc_ascq not in q:
                q.append(asc_ascq)

    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus logged in: it starts without stale unit attentions."""
        self.ua[nexus.key] = []

    def nexus_lost(self, nexus: Nexus) -> None:
        """An I_T nexus went away: SPC-2 reservations and PREVENT state are released."""
        if self.spc2 == nexus.key:
            self.spc2 = None
        self.prevent.discard(nexus.key)
        if nexus.key not in self.pr.keys:
            self.ua.pop(nexus.key, None)

    def reset(self, cold: bool = False, by: Nexus | None = None) -> None:
        """LUN or target reset: clear SPC-2 reservations and prevent state, raise UAs."""
        self.spc2 = None
        self.prevent.clear()
        # SAM-5: every I_T nexus (the one that asked included) gets the reset unit attention
        del by
        self.add_ua(S.POWER_ON_RESET if cold else S.BUS_DEVICE_RESET)

    # ------------------------------------------------------------------ dispatch
    async def execute(
        self, nexus: Nexus, cdb: bytes, data_out: bytes | memoryview | None
    ) -> Result:
        """Run one command; never raises (errors become CHECK CONDITION)."""
        try:
            if not cdb:
                raise _ill(S.INVALID_OPCODE)
            op = cdb[0]
            handler = self._handlers.get(op)
            if handler is None:
                raise _ill(S.INVALID_OPCODE)
            if op not in (0x12, 0xA0, 0x03):
                q = self.ua.get(nexus.key)
                if q:
                    asc = q.pop(0)
                    raise SenseError(S.UNIT_ATTENTION, asc)
            self._check_reservation(nexus, cdb)
            if op not in (0x12, 0xA0, 0x03, 0x5E, 0x5F, 0xA3) and not self.volume.ready():
                raise SenseError(S.NOT_READY, S.LU_NOT_READY_BECOMING)
            return await handler(nexus, cdb, data_out or b"")
        except SenseError as e:
            return Result(S.CHECK_CONDITION, sense=self.sense_bytes(e), out_len=e.out_len)
        except Conflict:
            return Result(S.RESERVATION_CONFLICT)
        except OutOfRange:
            return self._check(S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
        except VolumeFenced:
            if self.on_fenced:
                self.on_fenced()
            return self._check(S.NOT_READY, S.LU_NOT_READY_BECOMING)
        except VolumeNotReady:
            return self._check(S.NOT_READY, S.LU_NOT_READY_BECOMING)
        except VolumeIOError as e:
            log.warning("I/O error on %s: %s", self.volume.name, e)
            write = cdb[0] in (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93, 0x89, 0x8B)
            return self._check(S.MEDIUM_ERROR, S.WRITE_ERROR if write else S.UNRECOVERED_READ_ERROR)
        except (IndexError, ValueError, struct.error):
            # a CDB shorter than its opcode needs
            return self._check(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)

    def _check(self, key: int, asc: tuple[int, int]) -> Result:
        return Result(S.CHECK_CONDITION, sense=self.sense_bytes(SenseError(key, asc)))

    def sense_bytes(self, e: SenseError) -> bytes:
        """Encode `e` in the format the control mode page asks for."""
        if self.d_sense:
            return S.descriptor_sense(e.key, e.asc, e.ascq, e.info)
        return S.fixed_sense(e.key, e.asc, e.ascq, e.info)

    # ------------------------------------------------------------------ reservations
    _ALWAYS_OK = {0x12, 0xA0, 0x03, 0x5E, 0x5F, 0xA3, 0x25, 0x9E, 0x00, 0x1B}
    _READS = {0x08, 0x28, 0xA8, 0x88, 0x2F, 0xAF, 0x8F, 0x34, 0x90, 0x1A, 0x5A, 0x37, 0xB7}

    def _check_reservation(self, nexus: Nexus, cdb: bytes) -> None:
        op = cdb[0]
        if self.spc2 is not None and self.spc2 != nexus.key:
            if op in (0x12, 0xA0, 0x03, 0x17, 0x57, 0x5E):
                return
            if op == 0x5F:
                return
            raise Conflict()
        res = self.pr.res
        if res is None or op in (0x12, 0xA0, 0x03, 0x5E, 0x5F, 0xA3, 0x25, 0x00):
            return
        if op == 0x9E and (cdb[1] & 0x1F) == 0x10:
            return  # READ CAPACITY 16
        if self._is_holder(nexus):
            return
        registered = nexus.key in self.pr.keys
        if res.type in REG_ONLY_TYPES and registered:
            return
        if op in (0x16, 0x56, 0x17, 0x57):
            raise Conflict()
        exclusive_access = res.type in (EA, EARO, EAAR)
        if op in self._READS:
            if exclusive_access:
                raise Conflict()
            return
        if op == 0x1B:
            return
        raise Conflict()

    def _is_holder(self, nexus: Nexus) -> bool:
        res = self.pr.res
        if res is None:
            return False
        if res.type in ALL_REG_TYPES:
            return nexus.key in self.pr.keys
        return res.holder == nexus.key

    async def _reserve(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[0] == 0x56 and cdb[1] & 0x02:  # 3RDPTY
            raise _ill()
        if self.pr.keys or self.pr.res:
            raise Conflict()
        if self.spc2 is not None and self.spc2 != nexus.key:
            raise Conflict()
        self.spc2 = nexus.key
        return Result()

    async def _release(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[0] == 0x57 and cdb[1] & 0x02:
            raise _ill()
        if self.pr.res is not None and not self._is_holder(nexus):
            raise Conflict()
        if self.spc2 == nexus.key:
            self.spc2 = None
        return Result()

    async def _pr_in(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        sa = cdb[1] & 0x1F
        alloc = _be(cdb, 7, 2)
        pr = self.pr
        gen = pr.generation.to_bytes(4, "big")
        if sa == 0:  # READ KEYS
            keys = b"".join(k.to_bytes(8, "big") for k, _ in pr.keys.values())
            out = gen + len(keys).to_bytes(4, "big") + keys
        elif sa == 1:  # READ RESERVATION
            if pr.res is None:
                out = gen + bytes(4)
            else:
                key = 0
                if pr.res.type not in ALL_REG_TYPES and pr.res.holder in pr.keys:
                    key = pr.keys[pr.res.holder][0]
                body = key.to_bytes(8, "big") + bytes(5) + bytes([pr.res.scope << 4 | pr.res.type])
                body += bytes(2)
                out = gen + len(body).to_bytes(4, "big") + body
        elif sa == 2:  # REPORT CAPABILITIES
            out = bytes([0, 8, 0x10 | 0x04, 0x80 | 0x10, 0xA2 | 0x08 | 0x40, 0x01, 0, 0])
            # CRH, ATP_C; TMV + ALLOW COMMANDS=1; all six types supported
        elif sa == 3:  # READ FULL STATUS
            descs = b""
            for key, nx in pr.keys.values():
                holder = self._is_holder(nx)
                tid = nx.transport_id()
                d = key.to_bytes(8, "big") + bytes(4)
                d += bytes([0x01 if holder else 0])
                d += bytes([(pr.res.scope << 4 | pr.res.type) if holder and pr.res else 0])
                d += bytes(4) + (1).to_bytes(2, "big") + len(tid).to_bytes(4, "big") + tid
                descs += d
            out = gen + len(descs).to_bytes(4, "big") + descs
        else:
            raise _ill()
        return Result(data=_trunc(out, alloc))

    async def _pr_out(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        sa = cdb[1] & 0x1F
        scope, ptype = cdb[2] >> 4, cdb[2] & 0x0F
        plen = _be(cdb, 5, 4)
        if sa > 7:
            raise _ill()
        if plen != 24:
            raise _ill(S.PARAM_LIST_LENGTH_ERROR) if sa != 7 else _ill()
        if len(data) < 24:
            raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
        rkey, skey = _be(data, 0, 8), _be(data, 8, 8)
        flags = data[20]
        pr = self.pr
        mine = pr.keys.get(nexus.key)
        if sa == 7:
            raise _ill()  # REGISTER AND MOVE is not supported
        if flags & 0x08 or flags & 0x01:  # SPEC_I_PT / APTPL
            raise _ill(S.INVALID_FIELD_IN_PARAM)
        if sa in (0, 6):  # REGISTER / REGISTER AND IGNORE EXISTING KEY
            if mine is None:
                if sa == 0 and rkey != 0:
                    raise Conflict()
                if skey == 0:
                    return Result()
                pr.keys[nexus.key] = (skey, nexus)
            else:
                if sa == 0 and rkey != mine[0]:
                    raise Conflict()
                if skey == 0:
                    self._unregister(nexus.key)
                else:
                    pr.keys[nexus.key] = (skey, nexus)
            pr.generation += 1
            return Result()
        if mine is None or mine[0] != rkey:
            raise Conflict()
        if sa == 1:  # RESERVE
            if scope != 0 or ptype not in PR_TYPES:
                raise _ill()
            if self.spc2 is not None:
                raise Conflict()
            if pr.res is not None:
                if self._is_holder(nexus) and pr.res.type == ptype:
                    return Result()
                raise Conflict()
            pr.res = _Reservation(None if ptype in ALL_REG_TYPES else nexus.key, ptype, scope)
            return Result()
        if sa == 2:  # RELEASE
            if pr.res is None or not self._is_holder(nexus):
                return Result()
            if pr.res.type != ptype or scope != 0:
                raise _ill(S.INVALID_RELEASE_OF_PR)
            rtype = pr.res.type
            pr.res = None
            if rtype in REG_ONLY_TYPES:
                for k in pr.keys:
                    if k != nexus.key:
                        self.add_ua(S.RESERVATIONS_RELEASED, only=k)
            return Result()
        if sa == 3:  # CLEAR
            for k in list(pr.keys):
                if k != nexus.key:
                    self.add_ua(S.RESERVATIONS_PREEMPTED, only=k)
            pr.keys.clear()
            pr.res = None
            pr.generation += 1
            return Result()
        # PREEMPT (4) / PREEMPT AND ABORT (5)
        res = pr.res
        if res is not None and (scope != 0 or ptype not in PR_TYPES):
            raise _ill()
        if res is None or (
            res.type not in ALL_REG_TYPES and pr.keys.get(res.holder, (None,))[0] != skey
        ):
            if skey == 0:
                raise _ill(S.INVALID_FIELD_IN_PARAM)
            victims = [k for k, (key, _) in pr.keys.items() if key == skey and k != nexus.key]
            if not victims and not any(key == skey for key, _ in pr.keys.values()):
                raise Conflict()
            for k in victims:
                del pr.keys[k]
                self.add_ua(S.REGISTRATIONS_PREEMPTED, only=k)
            pr.generation += 1
            return Result()
        # preempting the reservation holder (or all-registrants with key 0 / matching key)
        if res.type in ALL_REG_TYPES and skey == 0:
            victims = [k for k in pr.keys if k != nexus.key]
        else:
            victims = [k for k, (key, _) in pr.keys.items() if key == skey and k != nexus.key]
        for k in victims:
            del pr.keys[k]
            self.add_ua(S.REGISTRATIONS_PREEMPTED, only=k)
        old_type = res.type
        pr.res = _Reservation(None if ptype in ALL_REG_TYPES else nexus.key, ptype, scope)
        if old_type != ptype or True:
            for k in pr.keys:
                if k != nexus.key and k not in victims:
                    self.add_ua(S.RESERVATIONS_RELEASED, only=k)
        pr.generation += 1
        return Result()

    def _unregister(self, key: tuple) -> None:
        pr = self.pr
        del pr.keys[key]
        res = pr.res
        if res is None:
            return
        if res.type in ALL_REG_TYPES:
            if not pr.keys:
                pr.res = None
        elif res.holder == key:
            pr.res = None
            if res.type in REG_ONLY_TYPES:
                for k in pr.keys:
                    self.add_ua(S.RESERVATIONS_RELEASED, only=k)

    # ------------------------------------------------------------------ simple commands
    async def _tur(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        return Result()

    async def _request_sense(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        desc = bool(cdb[1] & 0x01)
        alloc = cdb[4]
        q = self.ua.get(nexus.key)
        key, asc = (S.UNIT_ATTENTION, q.pop(0)) if q else (S.NO_SENSE, (0, 0))
        if not self.volume.ready() and not q:
            key, asc = S.NOT_READY, S.LU_NOT_READY_BECOMING
        if desc:
            out = S.descriptor_sense(key, *asc)
        else:
            out = S.fixed_sense(key, *asc)
        return Result(data=_trunc(out, alloc))

    async def _inquiry(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        evpd, page, alloc = cdb[1] & 0x01, cdb[2], _be(cdb, 3, 2)
        if cdb[1] & 0x02 or (not evpd and page):
            raise _ill()
        if not evpd:
            b = bytearray(96)
            b[0] = 0x00
            b[2] = 0x06  # SPC-4
            b[3] = 0x12  # HiSup, response format 2
            b[4] = len(b) - 5
            b[5] = 0x08 if False else 0x00
            b[6] = 0x00
            b[7] = 0x02  # CmdQue
            b[8:16] = VENDOR
            b[16:32] = PRODUCT
            b[32:36] = REVISION
            for i, vd in enumerate((0x00C0, 0x0960, 0x0460, 0x04C0)):  # SAM-4 iSCSI SPC-4 SBC-3
                b[58 + 2 * i : 60 + 2 * i] = vd.to_bytes(2, "big")
            return Result(data=_trunc(bytes(b), alloc))
        pages = {0x00: self._vpd_supported, 0x80: self._vpd_serial, 0x83: self._vpd_devid}
        pages.update({0xB0: self._vpd_limits, 0xB1: self._vpd_chars, 0xB2: self._vpd_lbp})
        fn = pages.get(page)
        if fn is None:
            raise _ill()
        body = fn()
        out = bytes([0x00, page]) + len(body).to_bytes(2, "big") + body
        return Result(data=_trunc(out, alloc))

    def _vpd_supported(self) -> bytes:
        return bytes([0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])

    def _vpd_serial(self) -> bytes:
        return self.serial

    def _vpd_devid(self) -> bytes:
        out = b""
        # NAA IEEE Registered Extended, binary, associated with the LU
        out += bytes([0x01, 0x03, 0x00, 16]) + self.naa
        # T10 vendor ID, ASCII
        t10 = VENDOR + self.serial
        out += bytes([0x02, 0x01, 0x00, len(t10)]) + t10
        # relative target port (assoc = target port, PIV with iSCSI protocol id)
        out += bytes([0x51, 0x94, 0x00, 4, 0, 0, 0, 1])
        # target port group
        out += bytes([0x51, 0x95, 0x00, 4, 0, 0, 0, 1])
        if self.target_name:
            name = self.target_name.encode() + b"\0"
            name += b"\0" * (-len(name) % 4)
            out += bytes([0x53, 0xA8, 0x00, len(name)]) + name  # SCSI name, target device
        return out

    def _vpd_limits(self) -> bytes:
        b = bytearray(0x3C)
        b[1] = MAX_CAW_BLOCKS  # byte 5 of the page
        b[2:4] = (4096 // self.bs).to_bytes(2, "big")  # optimal transfer granularity
        b[4:8] = MAX_XFER_BLOCKS.to_bytes(4, "big")
        b[8:12] = (CHUNK // self.bs).to_bytes(4, "big")
        b[12:16] = MAX_XFER_BLOCKS.to_bytes(4, "big")  # max prefetch
        b[16:20] = MAX_UNMAP_BLOCKS.to_bytes(4, "big")
        b[20:24] = MAX_UNMAP_DESCS.to_bytes(4, "big")
        b[24:28] = (4096 // self.bs).to_bytes(4, "big")  # optimal unmap granularity
        b[28:32] = (0x80000000).to_bytes(4, "big")  # UGAVALID, alignment 0
        b[32:40] = MAX_WS_BLOCKS.to_bytes(8, "big")
        return bytes(b)

    def _vpd_chars(self) -> bytes:
        b = bytearray(0x3C)
        b[0:2] = (1).to_bytes(2, "big")  # non-rotating medium
        b[3] = 0x05  # nominal form factor: < 1.8 inch
        return bytes(b)

    def _vpd_lbp(self) -> bytes:
        # LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type 2 (thin)
        return bytes([0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0])

    async def _report_luns(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        alloc = _be(cdb, 6, 4)
        if cdb[2] not in (0, 1, 2, 0x10, 0x11, 0x12):
            raise _ill()
        if alloc < 16:
            raise _ill()
        out = (8).to_bytes(4, "big") + bytes(4) + bytes(8)
        return Result(data=_trunc(out, alloc))

    @property
    def nblocks(self) -> int:
        """Capacity in logical blocks."""
        return self.volume.size // self.bs

    async def _read_capacity10(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        lba = _be(cdb, 2, 4)
        if lba and not cdb[8] & 0x01:
            raise _ill()
        last = min(self.nblocks - 1, 0xFFFFFFFF)
        return Result(data=last.to_bytes(4, "big") + self.bs.to_bytes(4, "big"))

    async def _service_action_in16(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        sa = cdb[1] & 0x1F
        alloc = _be(cdb, 10, 4)
        if sa == 0x10:  # READ CAPACITY 16
            b = bytearray(32)
            b[0:8] = (self.nblocks - 1).to_bytes(8, "big")
            b[8:12] = self.bs.to_bytes(4, "big")
            b[13] = 0  # LBPPBE: one logical block per physical block
            b[14] = 0x80 | 0x40  # LBPME, LBPRZ
            return Result(data=_trunc(bytes(b), alloc))
        if sa == 0x12:  # GET LBA STATUS
            lba = _be(cdb, 2, 8)
            if lba >= self.nblocks:
                raise _ill(S.LBA_OUT_OF_RANGE)
            if alloc < 24:
                return Result(data=_trunc(bytes(8), alloc))
            span = min(self.nblocks - lba, max(1, (alloc - 8) // 16) * 1 << 21)
            runs = await self.volume.allocated(lba * self.bs, span * self.bs)
            descs = b""
            for off, ln, mapped in runs:
                if ln <= 0:
                    continue
                descs += (off // self.bs).to_bytes(8, "big") + (ln // self.bs).to_bytes(4, "big")
                descs += bytes([0 if mapped else 1, 0, 0, 0])
                if 8 + len(descs) >= alloc:
                    break
            out = (len(descs) + 4).to_bytes(4, "big") + bytes(4) + descs
            return Result(data=_trunc(out, alloc))
        raise _ill()

    # ------------------------------------------------------------------ mode pages
    def _mode_page(self, page: int, pc: int) -> bytes:
        changeable = pc == 1
        if page == 0x08:  # caching
            b = bytearray(20)
            b[0], b[1] = 0x08, 18
            b[2] = 0x04 if (changeable or self.wce) else 0
            if not changeable:
                b[12] = 0x20  # DRA? keep FSW off; byte 12: FSW/LBCSS/DRA (DRA = disable read-ahead)
                b[12] = 0
            return bytes(b)
        if page == 0x0A:  # control
            b = bytearray(12)
            b[0], b[1] = 0x0A, 10
            if changeable:
                b[2] = 0x04  # D_SENSE changeable
                b[4] = 0x08  # SWP changeable
            else:
                b[2] = 0x04 if self.d_sense else 0
                b[3] = 0x10  # QAM unrestricted reordering
                b[4] = 0x08 if self.swp else 0
                b[8:10] = (0xFFFF).to_bytes(2, "big")  # busy timeout: unlimited
            return bytes(b)
        if page == 0x01:  # read-write error recovery
            b = bytearray(12)
            b[0], b[1] = 0x01, 10
            return bytes(b)
        if page == 0x1C:  # informational exceptions control
            b = bytearray(12)
            b[0], b[1] = 0x1C, 10
            return bytes(b)
        raise KeyError(page)

    async def _mode_sense(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        ten = cdb[0] == 0x5A
        dbd = bool(cdb[1] & 0x08)
        llbaa = ten and bool(cdb[1] & 0x10)
        pc, page, sub = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        alloc = _be(cdb, 7, 2) if ten else cdb[4]
        if pc == 3:
            raise _ill(S.SAVING_PARAMS_UNSUPPORTED)
        if sub not in (0, 0xFF):
            raise _ill()
        if page == 0x3F:
            body = b"".join(self._mode_page(p, pc) for p in (0x01, 0x08, 0x0A, 0x1C))
        else:
            try:
                body = self._mode_page(page, pc)
            except KeyError:
                raise _ill() from None
        dsp = 0x10 | (0x80 if self.swp else 0)  # DPOFUA, WP
        bd = b""
        if not dbd:
            if llbaa:
                bd = self.nblocks.to_bytes(8, "big") + bytes(4) + self.bs.to_bytes(4, "big")
            else:
                bd = min(self.nblocks, 0xFFFFFFFF).to_bytes(4, "big") + bytes(1)
                bd += self.bs.to_bytes(3, "big")
        if ten:
            hdr_len = 8 + len(bd) + len(body) - 2
            hdr = hdr_len.to_bytes(2, "big") + bytes([0, dsp, 0x01 if llbaa else 0, 0])
            hdr += len(bd).to_bytes(2, "big")
        else:
            hdr = bytes([min(255, 4 + len(bd) + len(body) - 1), 0, dsp, len(bd)])
        return Result(data=_trunc(hdr + bd + body, alloc))

    async def _mode_select(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        ten = cdb[0] == 0x55
        plen = _be(cdb, 7, 2) if ten else cdb[4]
        if cdb[1] & 0x01:  # SP
            raise _ill(S.SAVING_PARAMS_UNSUPPORTED)
        if plen == 0:
            return Result()
        if len(data) < plen:
            raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
        data = bytes(data[:plen])
        hl = 8 if ten else 4
        if len(data) < hl:
            raise _ill(S.PARAM_LIST_LENGTH_ERROR)
        bdl = _be(data, 6, 2) if ten else data[3]
        pos = hl + bdl
        changed = False
        while pos < len(data):
            if len(data) < pos + 2:
                raise _ill(S.PARAM_LIST_LENGTH_ERROR)
            page, ln = data[pos] & 0x3F, data[pos + 1]
            if data[pos] & 0x40:
                raise _ill(S.INVALID_FIELD_IN_PARAM)
            body = data[pos : pos + 2 + ln]
            if len(body) < 2 + ln:
                raise _ill(S.PARAM_LIST_LENGTH_ERROR)
            try:
                cur = self._mode_page(page, 0)
            except KeyError:
                raise _ill(S.INVALID_FIELD_IN_PARAM) from None
            if ln != cur[1]:
                raise _ill(S.INVALID_FIELD_IN_PARAM)
            mask = self._mode_page(page, 1)
            for i in range(2, len(cur)):
                if (body[i] ^ cur[i]) & ~mask[i] & 0xFF:
                    raise _ill(S.INVALID_FIELD_IN_PARAM)
            if page == 0x08:
                self.wce = bool(body[2] & 0x04)
            elif page == 0x0A:
                self.d_sense = bool(body[2] & 0x04)
                self.swp = bool(body[4] & 0x08)
            changed = True
            pos += 2 + ln
        del changed
        return Result()

    # ------------------------------------------------------------------ block I/O
    def _rw_fields(self, cdb: bytes) -> tuple[int, int]:
        """(lba, nblocks) of a 6/10/12/16-byte READ/WRITE/VERIFY-style CDB."""
        op = cdb[0]
        grp = op >> 5
        if grp == 0:  # 6-byte
            lba = _be(cdb, 1, 3) & 0x1FFFFF
            n = cdb[4]
            if n == 0 and op in (0x08, 0x0A):
                n = 256
            return lba, n
        if grp in (1, 2):  # 10-byte
            return _be(cdb, 2, 4), _be(cdb, 7, 2)
        if grp == 5:  # 12-byte
            return _be(cdb, 2, 4), _be(cdb, 6, 4)
        return _be(cdb, 2, 8), _be(cdb, 10, 4)  # 16-byte

    def _check_lba(self, lba: int, n: int) -> None:
        if lba + n > self.nblocks:
            raise _ill(S.LBA_OUT_OF_RANGE)

    async def _read(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if len(cdb) < {0: 6, 1: 10, 5: 12, 4: 16}.get(cdb[0] >> 5, 16):
            raise _ill()
        lba, n = self._rw_fields(cdb)
        if cdb[0] != 0x08 and cdb[1] & 0xE0:  # RDPROTECT without protection information
            raise _ill()
        self._check_lba(lba, n)
        if n > MAX_XFER_BLOCKS:
            raise _ill()
        if n == 0:
            return Result()
        buf = await self.volume.read(lba * self.bs, n * self.bs)
        return Result(data=buf)

    async def _write(self, nexus: Nexus, cdb: bytes, data: bytes | memoryview) -> Result:
        op = cdb[0]
        if len(cdb) < {0: 6, 1: 10, 5: 12, 4: 16}.get(op >> 5, 16):
            raise _ill()
        lba, n = self._rw_fields(cdb)
        need = n * self.bs
        if op != 0x0A and cdb[1] & 0xE0:  # WRPROTECT
            raise _ill()
        self._check_lba(lba, n)
        if n > MAX_XFER_BLOCKS:
            raise _ill()
        if self.swp:
            raise SenseError(S.DATA_PROTECT, (0x27, 0x00), out_len=need)
        if n == 0:
            return Result()
        if len(data) > need:
            data = memoryview(data)[:need]
        elif len(data) < need:
            # iSCSI EDTL below the CDB's length: transfer (and write) only what EDTL allows,
            # the transport reports the overflow residual (FCP-4 / SAM-5 behaviour)
            if not data:
                return Result(out_len=need)
            n_written = len(data)
            await self.volume.write(lba * self.bs, data, fua=op != 0x0A and bool(cdb[1] & 0x08))
            del n_written
            return Result(out_len=need)
        fua = op != 0x0A and bool(cdb[1] & 0x08)
        if op in (0x2E, 0xAE, 0x8E):  # WRITE AND VERIFY: stable, then compare
            await self.volume.write(lba * self.bs, data, fua=True)
            if (cdb[1] & 0x06) == 0x02:
                back = await self.volume.read(lba * self.bs, need)
                if bytes(back) != bytes(data):
                    raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, out_len=need)
        else:
            await self.volume.write(lba * self.bs, data, fua=fua)
        return Result(out_len=need)

    async def _verify(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        lba, n = self._rw_fields(cdb)
        if cdb[1] & 0xE0:  # VRPROTECT
            raise _ill()
        bytchk = (cdb[1] >> 1) & 0x03
        if bytchk == 2:
            raise _ill()
        self._check_lba(lba, n)
        if n == 0:
            return Result()
        if bytchk == 0:
            await self.volume.read(lba * self.bs, n * self.bs)  # medium check
            return Result()
        need = self.bs if bytchk == 3 else n * self.bs
        if len(data) < need:
            raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_IU, out_len=need)
        cur = bytes(await self.volume.read(lba * self.bs, n * self.bs))
        want = bytes(data[:need]) * (n if bytchk == 3 else 1)
        if cur != want:
            idx = next(i for i in range(len(cur)) if cur[i] != want[i])
            raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=idx, out_len=need)
        return Result(out_len=need)

    async def _prefetch(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[0] == 0x34:
            lba, n = _be(cdb, 2, 4), _be(cdb, 7, 2)
        else:
            lba, n = _be(cdb, 2, 8), _be(cdb, 10, 4)
        self._check_lba(lba, n)
        return Result(S.CONDITION_MET)

    async def _sync_cache(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[0] == 0x35:
            lba, n = _be(cdb, 2, 4), _be(cdb, 7, 2)
        else:
            lba, n = _be(cdb, 2, 8), _be(cdb, 10, 4)
        self._check_lba(lba, n)
        await self.volume.flush()
        return Result()

    async def _write_same(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        ten = cdb[0] == 0x41
        lba, n = (_be(cdb, 2, 4), _be(cdb, 7, 2)) if ten else (_be(cdb, 2, 8), _be(cdb, 10, 4))
        flags = cdb[1]
        ndob = (not ten) and bool(flags & 0x01)
        if flags & 0xE0 or (flags & 0x10 and not flags & 0x08):  # WRPROTECT; ANCHOR w/o UNMAP
            raise _ill()
        if flags & 0x10:
            raise _ill()  # anchored state not supported (ANC_SUP=0)
        need = 0 if ndob else self.bs
        if n == 0:
            n = self.nblocks - lba if lba <= self.nblocks else 0
            if lba > self.nblocks:
                raise _ill(S.LBA_OUT_OF_RANGE)
        self._check_lba(lba, n)
        if n > MAX_WS_BLOCKS:
            raise _ill()
        if len(data) != need:
            raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB, out_len=need)
        if self.swp:
            raise SenseError(S.DATA_PROTECT, (0x27, 0x00), out_len=need)
        block = bytes(self.bs) if ndob else bytes(data[: self.bs])
        if n == 0:
            return Result(out_len=need)
        if flags & 0x08:  # UNMAP: deallocate (reads return zeroes, LBPRZ=1)
            await self.volume.unmap(lba * self.bs, n * self.bs)
            return Result(out_len=need)
        per = max(1, CHUNK // self.bs)
        chunk = block * min(per, n)
        done = 0
        while done < n:
            k = min(per, n - done)
            await self.volume.write((lba + done) * self.bs, chunk[: k * self.bs])
            done += k
        return Result(out_len=need)

    async def _unmap(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        plen = _be(cdb, 7, 2)
        if cdb[1] & 0x01:  # ANCHOR
            raise _ill()
        if plen == 0:
            return Result()
        if plen < 8:
            raise _ill(S.PARAM_LIST_LENGTH_ERROR)
        if len(data) < plen:
            raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
        if self.swp:
            raise SenseError(S.DATA_PROTECT, (0x27, 0x00), out_len=plen)
        bdl = _be(data, 2, 2)
        descs = bytes(data[8 : 8 + min(bdl, plen - 8)])
        if len(descs) // 16 > MAX_UNMAP_DESCS:
            raise _ill(S.INVALID_FIELD_IN_PARAM)
        ranges = []
        for i in range(0, len(descs) - 15, 16):
            lba, n = _be(descs, i, 8), _be(descs, i + 8, 4)
            if n > MAX_UNMAP_BLOCKS:
                raise _ill(S.INVALID_FIELD_IN_PARAM)
            self._check_lba(lba, n)
            ranges.append((lba, n))
        for lba, n in ranges:
            if n:
                await self.volume.unmap(lba * self.bs, n * self.bs)
        return Result(out_len=plen)

    async def _compare_and_write(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        lba, n = _be(cdb, 2, 8), cdb[13]
        if cdb[1] & 0xE0:
            raise _ill()
        need = 2 * n * self.bs
        if n > MAX_CAW_BLOCKS:
            raise _ill()
        self._check_lba(lba, n)
        if len(data) != need:
            raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB, out_len=need)
        if n == 0:
            return Result()
        half = n * self.bs
        verify = bytes(data[:half])
        async with self.caw_lock:
            cur = bytes(await self.volume.read(lba * self.bs, half))
            if cur != verify:
                idx = next(i for i in range(half) if cur[i] != verify[i])
                raise SenseError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=idx, out_len=need)
            await self.volume.write(
                lba * self.bs, memoryview(data)[half:need], fua=bool(cdb[1] & 0x08)
            )
        return Result(out_len=need)

    async def _orwrite(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        lba, n = _be(cdb, 2, 8), _be(cdb, 10, 4)
        if cdb[1] & 0xE0:
            raise _ill()
        need = n * self.bs
        self._check_lba(lba, n)
        if n == 0:
            return Result()
        if len(data) < need:
            raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_IU, out_len=need)
        async with self.caw_lock:
            cur = await self.volume.read(lba * self.bs, need)
            merged = (int.from_bytes(cur, "big") | int.from_bytes(data[:need], "big")).to_bytes(
                need, "big"
            )
            await self.volume.write(lba * self.bs, merged, fua=bool(cdb[1] & 0x08))
        return Result(out_len=need)

    async def _start_stop(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[4] & 0x02 and not cdb[4] & 0x01 and nexus.key in self.prevent:
            raise _ill(S.MEDIUM_REMOVAL_PREVENTED)
        return Result()

    async def _prevent_allow(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[4] & 0x03:
            self.prevent.add(nexus.key)
        else:
            self.prevent.discard(nexus.key)
        return Result()

    async def _read_defect(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        if cdb[0] == 0x37:
            alloc = _be(cdb, 7, 2)
            out = bytes([0, cdb[2] & 0x1F, 0, 0])
        else:
            alloc = _be(cdb, 6, 4)
            out = bytes([0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0])
        return Result(data=_trunc(out, alloc))

    # ------------------------------------------------------------------ REPORT SUPPORTED OPCODES
    async def _maintenance_in(self, nexus: Nexus, cdb: bytes, data: bytes) -> Result:
        sa = cdb[1] & 0x1F
        if sa != 0x0C:
            raise _ill()
        rctd = bool(cdb[2] & 0x80)
        opts = cdb[2] & 0x07
        rop, rsa = cdb[3], _be(cdb, 4, 2)
        alloc = _be(cdb, 6, 4)
        tmo = bytes([0, 0x0A, 0, 0]) + (0).to_bytes(4, "big") + (30).to_bytes(4, "big")
        if opts == 0:
            out = b""
            for (op, s), usage in sorted(USAGE.items()):
                flags = (0x02 if rctd else 0) | (0x01 if s is not None else 0)
                out += bytes([op, 0]) + (s or 0).to_bytes(2, "big") + bytes([0, flags])
                out += len(usage).to_bytes(2, "big")
                if rctd:
                    out += tmo
            out = len(out).to_bytes(4, "big") + out
            return Result(data=_trunc(out, alloc))
        if opts == 1:
            if any(op == rop and s is not None for op, s in USAGE):
                raise _ill()
            usage = USAGE.get((rop, None))
        elif opts in (2, 3):
            has_sa = any(op == rop and s is not None for op, s in USAGE)
            if opts == 2 and not has_sa and any(op == rop for op, _ in USAGE):
                raise _ill()
            usage = USAGE.get((rop, rsa if has_sa else None))
        else:
            raise _ill()
        if usage is None:
            out = bytes([0, 0x01, 0, 0])
        else:
            out = bytes([0, (0x80 if rctd else 0) | 0x03]) + len(usage).to_bytes(2, "big") + usage
            if rctd:
                out += tmo
        return Result(data=_trunc(out, alloc))


def _u(op: int, *mask: int) -> bytes:
    return bytes([op, *mask])


# CDB usage bitmaps for REPORT SUPPORTED OPERATION CODES: (opcode, service action) -> bitmap
USAGE: dict[tuple[int, int | None], bytes] = {
    (0x00, None): _u(0x00, 0, 0, 0, 0, 0x07),
    (0x03, None): _u(0x03, 0x01, 0, 0, 0xFF, 0x07),
    (0x12, None): _u(0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07),
    (0xA0, None): _u(0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x25, None): _u(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07),
    (0x9E, 0x10): _u(0x9E, 0x10, *[0xFF] * 12, 0, 0x07),
    (0x9E, 0x12): _u(0x9E, 0x12, *[0xFF] * 12, 0, 0x07),
    (0x1A, None): _u(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x07),
    (0x5A, None): _u(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x15, None): _u(0x15, 0x11, 0, 0, 0xFF, 0x07),
    (0x55, None): _u(0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x08, None): _u(0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x07),
    (0x28, None): _u(0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0xA8, None): _u(0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x88, None): _u(0x88, 0x18, *[0xFF] * 12, 0, 0x07),
    (0x0A, None): _u(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x07),
    (0x2A, None): _u(0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0xAA, None): _u(0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x8A, None): _u(0x8A, 0x18, *[0xFF] * 12, 0, 0x07),
    (0x2E, None): _u(0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0xAE, None): _u(0xAE, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x8E, None): _u(0x8E, 0x16, *[0xFF] * 12, 0, 0x07),
    (0x2F, None): _u(0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0xAF, None): _u(0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x8F, None): _u(0x8F, 0x16, *[0xFF] * 12, 0, 0x07),
    (0x34, None): _u(0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0x90, None): _u(0x90, 0x02, *[0xFF] * 12, 0, 0x07),
    (0x35, None): _u(0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0x91, None): _u(0x91, 0x02, *[0xFF] * 12, 0, 0x07),
    (0x41, None): _u(0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07),
    (0x93, None): _u(0x93, 0x09, *[0xFF] * 12, 0, 0x07),
    (0x42, None): _u(0x42, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x89, None): _u(0x89, 0x18, *[0xFF] * 8, 0, 0, 0, 0xFF, 0, 0x07),
    (0x8B, None): _u(0x8B, 0x18, *[0xFF] * 12, 0, 0x07),
    (0x1B, None): _u(0x1B, 0x01, 0, 0, 0xF3, 0x07),
    (0x1E, None): _u(0x1E, 0, 0, 0, 0x03, 0x07),
    (0xA3, 0x0C): _u(0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (0x5E, 0x00): _u(0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x5E, 0x01): _u(0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x5E, 0x02): _u(0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0x5E, 0x03): _u(0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    **{(0x5F, sa): _u(0x5F, sa, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07) for sa in range(0, 7)},
    (0x16, None): _u(0x16, 0, 0, 0, 0, 0x07),
    (0x17, None): _u(0x17, 0, 0, 0, 0, 0x07),
    (0x56, None): _u(0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x07),
    (0x57, None): _u(0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x07),
    (0x37, None): _u(0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    (0xB7, None): _u(0xB7, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
}
