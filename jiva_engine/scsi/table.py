"""The direct-access block device (peripheral device type 0) this target presents: its opcode
table, assembled from the SPC, reservation and SBC command sets, and its VPD pages.

Every row carries what the dispatcher needs before running a command (unit attention, ready,
reservation class) and the CDB usage data REPORT SUPPORTED OPERATION CODES returns.
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum

from jiva_engine.scsi import sbc, spc
from jiva_engine.scsi.command import Command, CommandTable, Handler, PrAccess
from jiva_engine.scsi.opcodes import MaintenanceIn, Op, PrIn, PrOut, ServiceActionIn16
from jiva_engine.scsi.pr import persistent_reserve_in, persistent_reserve_out, release, reserve
from jiva_engine.scsi.spc import VpdPage

ALLOWED, READ, WRITE = PrAccess.ALLOWED, PrAccess.READ, PrAccess.WRITE


def _cmd(
    op: Op,
    handler: Handler,
    *usage: int,
    pr: PrAccess = WRITE,
    writes: bool = False,
    under_reserve: bool = False,
) -> Command:
    """A row for `op`; `usage` is its CDB usage bitmap after the opcode byte."""
    return Command(
        op, op.name, handler, bytes([op, *usage]), pr=pr, writes=writes, under_reserve=under_reserve
    )


def _anytime(op: Op, handler: Handler, *usage: int) -> Command:
    """A row for an SPC-4 command answered whatever the medium, the pending unit attentions and
    the reservations (INQUIRY, REPORT LUNS, REQUEST SENSE)."""
    return Command(
        op,
        op.name,
        handler,
        bytes([op, *usage]),
        pr=ALLOWED,
        under_reserve=True,
        under_ua=True,
        needs_ready=False,
    )


def _group(
    op: Op,
    handler: Handler,
    pr: PrAccess = WRITE,
    needs_ready: bool = True,
    under_reserve: bool = False,
) -> Command:
    """The row of an opcode told apart by service action: it serves unlisted service actions."""
    return Command(
        op, op.name, handler, None, pr=pr, needs_ready=needs_ready, under_reserve=under_reserve
    )


def _action(
    group: Command, sa: IntEnum, handler: Handler, *usage: int, pr: PrAccess | None = None
) -> Command:
    """A service action's row: its group's attributes, the reservation class unless `pr`."""
    return replace(
        group,
        name=sa.name,
        handler=handler,
        usage=bytes([group.opcode, sa, *usage]),
        service_action=int(sa),
        pr=group.pr if pr is None else pr,
    )


_FF12 = [0xFF] * 12  # LBA + transfer length bits of a 16-byte CDB
_RW10 = [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x07]  # LBA, group, length, control
_RW12 = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07]
_RW16 = [*_FF12, 0, 0x07]

_SERVICE_ACTION_IN = _group(Op.SERVICE_ACTION_IN_16, spc.service_action_not_supported)
_MAINTENANCE_IN = _group(
    Op.MAINTENANCE_IN, spc.service_action_not_supported, pr=ALLOWED, needs_ready=False
)
_PR_IN = _group(
    Op.PERSISTENT_RESERVE_IN,
    persistent_reserve_in,
    pr=ALLOWED,
    needs_ready=False,
    under_reserve=True,
)
_PR_OUT = _group(
    Op.PERSISTENT_RESERVE_OUT,
    persistent_reserve_out,
    pr=ALLOWED,
    needs_ready=False,
    under_reserve=True,
)

# fmt: off
ROWS: list[Command] = [
    # ------------------------------------------------------------------ SPC-4
    _cmd(Op.TEST_UNIT_READY, spc.test_unit_ready, 0, 0, 0, 0, 0x07, pr=ALLOWED),
    _anytime(Op.REQUEST_SENSE, spc.request_sense, 0x01, 0, 0, 0xFF, 0x07),
    _anytime(Op.INQUIRY, spc.inquiry, 0x01, 0xFF, 0xFF, 0xFF, 0x07),
    _anytime(Op.REPORT_LUNS, spc.report_luns, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    _cmd(Op.MODE_SENSE_6, spc.mode_sense, 0x08, 0xFF, 0xFF, 0xFF, 0x07, pr=READ),
    _cmd(Op.MODE_SENSE_10, spc.mode_sense, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07, pr=READ),
    _cmd(Op.MODE_SELECT_6, spc.mode_select, 0x11, 0, 0, 0xFF, 0x07),
    _cmd(Op.MODE_SELECT_10, spc.mode_select, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    _MAINTENANCE_IN,
    _action(_MAINTENANCE_IN, MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
            spc.report_supported_operation_codes, 0x87, *[0xFF] * 7, 0, 0x07),
    # ------------------------------------------------------------------ reservations
    _cmd(Op.RESERVE_6, reserve, 0, 0, 0, 0, 0x07),
    _cmd(Op.RESERVE_10, reserve, 0, 0, 0, 0, 0, 0, 0, 0, 0x07),
    _cmd(Op.RELEASE_6, release, 0, 0, 0, 0, 0x07, under_reserve=True),
    _cmd(Op.RELEASE_10, release, 0, 0, 0, 0, 0, 0, 0, 0, 0x07, under_reserve=True),
    _PR_IN,
    *(_action(_PR_IN, sa, persistent_reserve_in, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07)
      for sa in PrIn),
    _PR_OUT,
    *(_action(_PR_OUT, sa, persistent_reserve_out, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07)
      for sa in PrOut if sa != PrOut.REGISTER_AND_MOVE),
    # ------------------------------------------------------------------ SBC-3
    _cmd(Op.READ_CAPACITY_10, sbc.read_capacity_10, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07,
         pr=ALLOWED),
    _SERVICE_ACTION_IN,
    _action(_SERVICE_ACTION_IN, ServiceActionIn16.READ_CAPACITY_16, sbc.read_capacity_16,
            *_RW16, pr=ALLOWED),
    # GET LBA STATUS is a WRITE here: it conflicts with every persistent reservation type held
    # through another nexus (SBC-3 treats it like a read; kept as it has always behaved)
    _action(_SERVICE_ACTION_IN, ServiceActionIn16.GET_LBA_STATUS, sbc.get_lba_status, *_RW16),
    _cmd(Op.READ_6, sbc.read, 0x1F, 0xFF, 0xFF, 0xFF, 0x07, pr=READ),
    _cmd(Op.READ_10, sbc.read, 0x18, *_RW10, pr=READ),
    _cmd(Op.READ_12, sbc.read, 0x18, *_RW12, pr=READ),
    _cmd(Op.READ_16, sbc.read, 0x18, *_RW16, pr=READ),
    _cmd(Op.WRITE_6, sbc.write, 0x1F, 0xFF, 0xFF, 0xFF, 0x07, writes=True),
    _cmd(Op.WRITE_10, sbc.write, 0x18, *_RW10, writes=True),
    _cmd(Op.WRITE_12, sbc.write, 0x18, *_RW12, writes=True),
    _cmd(Op.WRITE_16, sbc.write, 0x18, *_RW16, writes=True),
    _cmd(Op.WRITE_AND_VERIFY_10, sbc.write, 0x16, *_RW10, writes=True),
    _cmd(Op.WRITE_AND_VERIFY_12, sbc.write, 0x16, *_RW12, writes=True),
    _cmd(Op.WRITE_AND_VERIFY_16, sbc.write, 0x16, *_RW16, writes=True),
    _cmd(Op.VERIFY_10, sbc.verify, 0x16, *_RW10, pr=READ),
    _cmd(Op.VERIFY_12, sbc.verify, 0x16, *_RW12, pr=READ),
    _cmd(Op.VERIFY_16, sbc.verify, 0x16, *_RW16, pr=READ),
    _cmd(Op.PRE_FETCH_10, sbc.pre_fetch, 0x02, *_RW10, pr=READ),
    _cmd(Op.PRE_FETCH_16, sbc.pre_fetch, 0x02, *_RW16, pr=READ),
    _cmd(Op.SYNCHRONIZE_CACHE_10, sbc.synchronize_cache, 0x02, *_RW10),
    _cmd(Op.SYNCHRONIZE_CACHE_16, sbc.synchronize_cache, 0x02, *_RW16),
    _cmd(Op.WRITE_SAME_10, sbc.write_same, 0x08, *_RW10, writes=True),
    _cmd(Op.WRITE_SAME_16, sbc.write_same, 0x09, *_RW16, writes=True),
    _cmd(Op.UNMAP, sbc.unmap, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07),
    _cmd(Op.COMPARE_AND_WRITE, sbc.compare_and_write, 0x18, *[0xFF] * 8, 0, 0, 0, 0xFF, 0, 0x07,
         writes=True),
    _cmd(Op.ORWRITE_16, sbc.orwrite, 0x18, *_RW16, writes=True),
    _cmd(Op.START_STOP_UNIT, sbc.start_stop_unit, 0x01, 0, 0, 0xF3, 0x07, pr=ALLOWED),
    _cmd(Op.PREVENT_ALLOW_MEDIUM_REMOVAL, sbc.prevent_allow_medium_removal, 0, 0, 0, 0x03, 0x07),
    _cmd(Op.READ_DEFECT_DATA_10, sbc.read_defect_data, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x07,
         pr=READ),
    _cmd(Op.READ_DEFECT_DATA_12, sbc.read_defect_data, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
         0, 0x07, pr=READ),
]
# fmt: on

COMMANDS = CommandTable(ROWS)

VPD_PAGES: dict[int, VpdPage] = {
    0x00: spc.vpd_supported_pages,
    0x80: spc.vpd_unit_serial_number,
    0x83: spc.vpd_device_identification,
    0xB0: sbc.vpd_block_limits,
    0xB1: sbc.vpd_block_device_characteristics,
    0xB2: sbc.vpd_logical_block_provisioning,
}
