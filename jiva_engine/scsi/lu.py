"""A SCSI block logical unit over a BlockVolume: its state and the dispatch of each command.

The transport hands each command in with its I_T nexus and its data-out buffer; the LU looks the
opcode up in its table, applies what every command goes through (unit attention, reservation
conflict, NOT READY), runs the handler and returns status, data-in and sense data. The command
sets themselves are in spc.py, sbc.py and pr.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Command, Nexus, NexusKey, Request, Result
from jiva_engine.scsi.pr import Reservations
from jiva_engine.scsi.sense import Conflict, SenseError
from jiva_engine.scsi.spc import ModeParameters
from jiva_engine.scsi.table import COMMANDS, VPD_PAGES
from jiva_engine.scsi.ua import UnitAttentions
from jiva_engine.volume import (
    BlockVolume,
    OutOfRange,
    VolumeFenced,
    VolumeIOError,
    VolumeMediumError,
    VolumeNotReady,
)

log = logging.getLogger(__name__)


class LogicalUnit:
    """LUN 0 of the target: executes CDBs against a BlockVolume."""

    commands = COMMANDS
    vpd_pages = VPD_PAGES

    def __init__(self, volume: BlockVolume, serial: str | None = None, target_name: str = ""):
        """Wrap `volume`; `serial` feeds VPD 0x80/0x83 (defaults to a hash of the volume name)."""
        self.volume = volume
        self.block_size = volume.block_size
        self.target_name = target_name
        digest = hashlib.sha256(f"jiva-py:{volume.name}".encode()).digest()
        self.serial = (serial or digest[:8].hex()).encode()
        self.naa = bytes([0x60 | (digest[8] & 0x0F)]) + digest[9:24]
        self.ua = UnitAttentions()
        self.reservations = Reservations(self.ua)
        self.mode = ModeParameters()
        self.prevent: set[NexusKey] = set()  # nexuses that sent PREVENT MEDIUM REMOVAL
        self.caw_lock = asyncio.Lock()  # COMPARE AND WRITE / ORWRITE read-modify-write
        self.on_fenced: Callable[[], None] | None = None  # the transport drops its sessions
        self._unwatch = volume.on_resize(self.capacity_changed)

    @property
    def nblocks(self) -> int:
        """Capacity in logical blocks."""
        return self.volume.size // self.block_size

    # ------------------------------------------------------------------ nexus events
    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus logged in: it starts without stale unit attentions."""
        self.ua.nexus_added(nexus.key)

    def nexus_lost(self, nexus: Nexus) -> None:
        """An I_T nexus went away: its SPC-2 reservation and PREVENT state are released."""
        self.reservations.nexus_lost(nexus.key)
        self.prevent.discard(nexus.key)
        if nexus.key not in self.reservations.registrations:
            self.ua.forget(nexus.key)

    def capacity_changed(self, old: int, new: int) -> None:
        """The volume's size changed (an online grow): every I_T nexus is told with a unit
        attention, CAPACITY DATA HAS CHANGED, so initiators read the capacity again (SBC-3
        §4.10); READ CAPACITY reports the new size from now on."""
        log.info("%s: capacity changed from %d to %d bytes", self.volume.name, old, new)
        self.ua.add_all(S.CAPACITY_DATA_CHANGED)

    def close(self) -> None:
        """Stop following the volume's size (the target is closing)."""
        self._unwatch()

    def reset(self, cold: bool = False) -> None:
        """Logical unit or target reset: SPC-2 reservations and PREVENT state are cleared, and
        every I_T nexus (the one that asked included, SAM-5) gets the reset unit attention."""
        self.reservations.reset()
        self.prevent.clear()
        self.ua.add_all(S.POWER_ON_RESET if cold else S.BUS_DEVICE_RESET)

    # ------------------------------------------------------------------ dispatch
    async def execute(
        self, nexus: Nexus, cdb: bytes, data_out: bytes | memoryview | None
    ) -> Result:
        """Run one command; never raises (errors become CHECK CONDITION)."""
        cmd: Command | None = None
        try:
            if not cdb:
                raise SenseError(S.ILLEGAL_REQUEST, S.INVALID_OPCODE)
            cmd = self.commands.lookup(cdb)
            if not cmd.under_ua:
                pending = self.ua.get(nexus.key)
                if pending:
                    raise SenseError(S.UNIT_ATTENTION, pending.pop(0))
            rs = self.reservations
            if rs.reserve_holder is not None or rs.reservation is not None:
                rs.check(nexus, cmd)
            if cmd.needs_ready and not self.volume.ready():
                raise SenseError(S.NOT_READY, S.LU_NOT_READY_BECOMING)
            return await cmd.handler(self, Request(nexus, cdb, data_out or b""))
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
        except VolumeMediumError as e:
            # no replica holds a good copy: UNRECOVERED READ ERROR naming the first bad LBA
            log.error("unrecoverable read on %s: %s", self.volume.name, e)
            lba = e.offset // self.block_size
            return Result(S.CHECK_CONDITION, sense=self.sense_bytes(
                SenseError(S.MEDIUM_ERROR, S.UNRECOVERED_READ_ERROR, lba)))  # fmt: skip
        except VolumeIOError as e:
            log.warning("I/O error on %s: %s", self.volume.name, e)
            writes = cmd is not None and cmd.writes
            return self._check(
                S.MEDIUM_ERROR, S.WRITE_ERROR if writes else S.UNRECOVERED_READ_ERROR
            )
        except (IndexError, ValueError):
            # a CDB shorter than its opcode needs
            return self._check(S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)

    def _check(self, key: int, asc: tuple[int, int]) -> Result:
        return Result(S.CHECK_CONDITION, sense=self.sense_bytes(SenseError(key, asc)))

    def sense_bytes(self, e: SenseError) -> bytes:
        """Encode `e` in the format the control mode page asks for."""
        if self.mode.d_sense:
            return S.descriptor_sense(e.key, e.asc, e.ascq, e.info)
        return S.fixed_sense(e.key, e.asc, e.ascq, e.info)
