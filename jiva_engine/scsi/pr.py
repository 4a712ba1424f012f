"""Reservations: SPC-2 RESERVE/RELEASE(6/10) and SPC-4 persistent reservations (§5.13, §6.15,
§6.16), with the rule that decides which commands are in RESERVATION CONFLICT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import (
    Command,
    Nexus,
    NexusKey,
    PrAccess,
    Request,
    Result,
    be,
    invalid,
    truncate,
)
from jiva_engine.scsi.opcodes import Op, PrIn, PrOut, PrType
from jiva_engine.scsi.sense import Conflict, SenseError
from jiva_engine.scsi.ua import UnitAttentions

if TYPE_CHECKING:
    from jiva_engine.scsi.lu import LogicalUnit

ALL_REGISTRANTS = {PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS}
REGISTRANTS_ONLY = ALL_REGISTRANTS | {
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
}
PR_TYPES = frozenset(PrType)
EXCLUSIVE_ACCESS = {
    PrType.EXCLUSIVE_ACCESS,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
}
PARAM_LIST_LEN = 24  # PERSISTENT RESERVE OUT basic parameter list (no SPEC_I_PT, no APTPL)
SPEC_I_PT, APTPL = 0x08, 0x01  # byte 20 of that list
THIRD_PARTY = 0x02  # RESERVE(10)/RELEASE(10) byte 1


@dataclass
class Reservation:
    """The persistent reservation in force."""

    holder: NexusKey | None  # None for the all-registrants types: every registrant holds it
    type: PrType
    scope: int = 0  # LU_SCOPE


class Reservations:
    """The reservation state of one logical unit."""

    def __init__(self, ua: UnitAttentions) -> None:
        """Nothing reserved or registered; reservation events queue unit attentions on `ua`."""
        self.ua = ua
        self.reserve_holder: NexusKey | None = None  # the nexus holding an SPC-2 RESERVE
        self.generation = 0  # PRgeneration
        self.registrations: dict[NexusKey, tuple[int, Nexus]] = {}  # -> (reservation key, nexus)
        self.reservation: Reservation | None = None

    # ------------------------------------------------------------------ conflict rule
    def check(self, nexus: Nexus, cmd: Command) -> None:
        """Raise Conflict if a reservation held through another I_T nexus forbids `cmd`."""
        holder = self.reserve_holder
        if holder is not None and holder != nexus.key:
            if cmd.under_reserve:
                return
            raise Conflict()
        res = self.reservation
        if res is None or cmd.pr is PrAccess.ALLOWED or self.holds(nexus.key):
            return
        if res.type in REGISTRANTS_ONLY and nexus.key in self.registrations:
            return
        if cmd.pr is PrAccess.READ and res.type not in EXCLUSIVE_ACCESS:
            return
        raise Conflict()

    def holds(self, key: NexusKey) -> bool:
        """True if the nexus `key` is a holder of the persistent reservation."""
        res = self.reservation
        if res is None:
            return False
        if res.type in ALL_REGISTRANTS:
            return key in self.registrations
        return res.holder == key

    # ------------------------------------------------------------------ nexus and LU events
    def nexus_lost(self, key: NexusKey) -> None:
        """An I_T nexus went away: its SPC-2 reservation is released (registrations persist)."""
        if self.reserve_holder == key:
            self.reserve_holder = None

    def reset(self) -> None:
        """A logical unit reset releases the SPC-2 reservation (persistent ones survive it)."""
        self.reserve_holder = None

    # ------------------------------------------------------------------ PERSISTENT RESERVE OUT
    def register(self, nexus: Nexus, sa: int, rkey: int, skey: int) -> None:
        """REGISTER / REGISTER AND IGNORE EXISTING KEY: add, change or (key 0) remove."""
        mine = self.registrations.get(nexus.key)
        ignore = sa == PrOut.REGISTER_AND_IGNORE_EXISTING_KEY
        if mine is None:
            if not ignore and rkey != 0:
                raise Conflict()
            if skey == 0:
                return
            self.registrations[nexus.key] = (skey, nexus)
        else:
            if not ignore and rkey != mine[0]:
                raise Conflict()
            if skey == 0:
                self._unregister(nexus.key)
            else:
                self.registrations[nexus.key] = (skey, nexus)
        self.generation += 1

    def reserve(self, nexus: Nexus, scope: int, ptype: int) -> None:
        """RESERVE: take the reservation (again with the same type is a no-op)."""
        if scope != 0 or ptype not in PR_TYPES:
            raise invalid()
        if self.reserve_holder is not None:
            raise Conflict()
        if self.reservation is not None:
            if self.holds(nexus.key) and self.reservation.type == ptype:
                return
            raise Conflict()
        self.reservation = self._new(nexus, PrType(ptype), scope)

    def release(self, nexus: Nexus, scope: int, ptype: int) -> None:
        """RELEASE: the holder gives the reservation up; registrants learn it under the
        registrants-only types."""
        res = self.reservation
        if res is None or not self.holds(nexus.key):
            return
        if res.type != ptype or scope != 0:
            raise invalid(S.INVALID_RELEASE_OF_PR)
        self.reservation = None
        if res.type in REGISTRANTS_ONLY:
            for k in self.registrations:
                if k != nexus.key:
                    self.ua.add(k, S.RESERVATIONS_RELEASED)

    def clear(self, nexus: Nexus) -> None:
        """CLEAR: drop every registration and the reservation."""
        for k in list(self.registrations):
            if k != nexus.key:
                self.ua.add(k, S.RESERVATIONS_PREEMPTED)
        self.registrations.clear()
        self.reservation = None
        self.generation += 1

    def preempt(self, nexus: Nexus, scope: int, ptype: int, skey: int) -> None:
        """PREEMPT (AND ABORT): remove the registrations holding `skey`; if that preempts the
        reservation, take it with type `ptype`."""
        res = self.reservation
        if res is not None and (scope != 0 or ptype not in PR_TYPES):
            raise invalid()
        regs = self.registrations
        if res is None or (res.type not in ALL_REGISTRANTS and self._holder_key() != skey):
            # only registrations are preempted
            if skey == 0:
                raise invalid(S.INVALID_FIELD_IN_PARAM)
            victims = [k for k, (key, _) in regs.items() if key == skey and k != nexus.key]
            if not victims and not any(key == skey for key, _ in regs.values()):
                raise Conflict()
            for k in victims:
                del regs[k]
                self.ua.add(k, S.REGISTRATIONS_PREEMPTED)
            self.generation += 1
            return
        # the reservation holder is preempted (or, all-registrants, everyone / the key's owners)
        if res.type in ALL_REGISTRANTS and skey == 0:
            victims = [k for k in regs if k != nexus.key]
        else:
            victims = [k for k, (key, _) in regs.items() if key == skey and k != nexus.key]
        for k in victims:
            del regs[k]
            self.ua.add(k, S.REGISTRATIONS_PREEMPTED)
        self.reservation = self._new(nexus, PrType(ptype), scope)
        for k in regs:
            if k != nexus.key and k not in victims:
                self.ua.add(k, S.RESERVATIONS_RELEASED)
        self.generation += 1

    def _holder_key(self) -> int | None:
        """The reservation key of the holder of a single-holder reservation, else None."""
        res = self.reservation
        if res is None or res.holder is None:
            return None
        reg = self.registrations.get(res.holder)
        return reg[0] if reg else None

    @staticmethod
    def _new(nexus: Nexus, ptype: PrType, scope: int) -> Reservation:
        return Reservation(None if ptype in ALL_REGISTRANTS else nexus.key, ptype, scope)

    def _unregister(self, key: NexusKey) -> None:
        del self.registrations[key]
        res = self.reservation
        if res is None:
            return
        if res.type in ALL_REGISTRANTS:
            if not self.registrations:
                self.reservation = None
        elif res.holder == key:
            self.reservation = None
            if res.type in REGISTRANTS_ONLY:
                for k in self.registrations:
                    self.ua.add(k, S.RESERVATIONS_RELEASED)

    # ------------------------------------------------------------------ PERSISTENT RESERVE IN
    def read_keys(self) -> bytes:
        """READ KEYS parameter data."""
        keys = b"".join(k.to_bytes(8, "big") for k, _ in self.registrations.values())
        return self._gen() + len(keys).to_bytes(4, "big") + keys

    def read_reservation(self) -> bytes:
        """READ RESERVATION parameter data."""
        res = self.reservation
        if res is None:
            return self._gen() + bytes(4)
        key = self._holder_key() or 0
        body = key.to_bytes(8, "big") + bytes(5) + bytes([res.scope << 4 | res.type]) + bytes(2)
        return self._gen() + len(body).to_bytes(4, "big") + body

    def read_full_status(self) -> bytes:
        """READ FULL STATUS parameter data: one descriptor per registration."""
        res = self.reservation
        descs = b""
        for key, nx in self.registrations.values():
            holder = self.holds(nx.key)
            tid = nx.transport_id()
            d = key.to_bytes(8, "big") + bytes(4)
            d += bytes([0x01 if holder else 0])  # R_HOLDER
            d += bytes([(res.scope << 4 | res.type) if holder and res else 0])
            d += bytes(4) + (1).to_bytes(2, "big") + len(tid).to_bytes(4, "big") + tid
            descs += d
        return self._gen() + len(descs).to_bytes(4, "big") + descs

    def _gen(self) -> bytes:
        return self.generation.to_bytes(4, "big")


# REPORT CAPABILITIES parameter data: CRH, ATP_C; TMV, ALLOW COMMANDS=1; all six types valid.
CAPABILITIES = bytes([0, 8, 0x10 | 0x04, 0x80 | 0x10, 0xA2 | 0x08 | 0x40, 0x01, 0, 0])


# ---------------------------------------------------------------------- command handlers
async def reserve(lu: LogicalUnit, req: Request) -> Result:
    """RESERVE(6)/(10): the SPC-2 reservation of the whole logical unit."""
    nexus, cdb = req.nexus, req.cdb
    if cdb[0] == Op.RESERVE_10 and cdb[1] & THIRD_PARTY:
        raise invalid()
    rs = lu.reservations
    if rs.registrations or rs.reservation:
        raise Conflict()
    if rs.reserve_holder is not None and rs.reserve_holder != nexus.key:
        raise Conflict()
    rs.reserve_holder = nexus.key
    return Result()


async def release(lu: LogicalUnit, req: Request) -> Result:
    """RELEASE(6)/(10): give an SPC-2 reservation up (a no-op for a nexus not holding one)."""
    nexus, cdb = req.nexus, req.cdb
    if cdb[0] == Op.RELEASE_10 and cdb[1] & THIRD_PARTY:
        raise invalid()
    rs = lu.reservations
    if rs.reservation is not None and not rs.holds(nexus.key):
        raise Conflict()
    if rs.reserve_holder == nexus.key:
        rs.reserve_holder = None
    return Result()


async def persistent_reserve_in(lu: LogicalUnit, req: Request) -> Result:
    """PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS."""
    cdb = req.cdb
    sa = cdb[1] & 0x1F
    alloc = be(cdb, 7, 2)
    rs = lu.reservations
    if sa == PrIn.READ_KEYS:
        out = rs.read_keys()
    elif sa == PrIn.READ_RESERVATION:
        out = rs.read_reservation()
    elif sa == PrIn.REPORT_CAPABILITIES:
        out = CAPABILITIES
    elif sa == PrIn.READ_FULL_STATUS:
        out = rs.read_full_status()
    else:
        raise invalid()
    return Result(data=truncate(out, alloc))


async def persistent_reserve_out(lu: LogicalUnit, req: Request) -> Result:
    """PERSISTENT RESERVE OUT: every service action but REGISTER AND MOVE, without APTPL."""
    nexus, cdb, data = req
    sa = cdb[1] & 0x1F
    scope, ptype = cdb[2] >> 4, cdb[2] & 0x0F
    plen = be(cdb, 5, 4)
    if sa > PrOut.REGISTER_AND_MOVE:
        raise invalid()
    if plen != PARAM_LIST_LEN:
        raise invalid(S.PARAM_LIST_LENGTH_ERROR) if sa != PrOut.REGISTER_AND_MOVE else invalid()
    if len(data) < PARAM_LIST_LEN:
        raise SenseError(S.ILLEGAL_REQUEST, S.PARAM_LIST_LENGTH_ERROR, out_len=plen)
    rkey, skey = be(data, 0, 8), be(data, 8, 8)
    flags = data[20]
    if sa == PrOut.REGISTER_AND_MOVE:
        raise invalid()
    if flags & (SPEC_I_PT | APTPL):
        raise invalid(S.INVALID_FIELD_IN_PARAM)
    rs = lu.reservations
    if sa in (PrOut.REGISTER, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY):
        rs.register(nexus, sa, rkey, skey)
        return Result()
    mine = rs.registrations.get(nexus.key)
    if mine is None or mine[0] != rkey:
        raise Conflict()
    if sa == PrOut.RESERVE:
        rs.reserve(nexus, scope, ptype)
    elif sa == PrOut.RELEASE:
        rs.release(nexus, scope, ptype)
    elif sa == PrOut.CLEAR:
        rs.clear(nexus)
    else:  # PREEMPT, PREEMPT AND ABORT
        rs.preempt(nexus, scope, ptype, skey)
    return Result()
