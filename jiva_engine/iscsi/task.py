"""One SCSI command in flight on a connection (RFC 7143 §10): where its write data stands
(unsolicited data, R2T sequences), its execution, and the residual its response reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jiva_engine.iscsi import pdu as P
from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import DataIn, Result

if TYPE_CHECKING:
    import asyncio


class ScsiTask:
    """One SCSI command in flight on a connection: its write data, R2T sequences and execution."""

    __slots__ = (
        "itt",
        "lun",
        "cdb",
        "edtl",
        "read",
        "write",
        "buf",
        "received",
        "unsol_left",
        "unsol_datasn",
        "next_r2t",
        "r2ts",
        "r2tsn",
        "datasn_in",
        "aborted",
        "started",
        "running",
    )

    def __init__(self, cmd: P.ScsiCommand) -> None:
        """A task for `cmd`, no data received yet."""
        self.itt = cmd.itt
        self.lun = cmd.lun
        self.cdb = cmd.cdb
        self.edtl = cmd.edtl
        self.read = bool(cmd.flags & P.READ)
        self.write = bool(cmd.flags & P.WRITE)
        self.buf: bytearray | bytes | None = None
        self.received = 0
        self.unsol_left = 0  # unsolicited Data-Out bytes still to come
        self.unsol_datasn = 0  # next DataSN of the unsolicited sequence
        self.next_r2t = 0  # buffer offset the next R2T asks for
        self.r2ts: dict[int, list[int]] = {}  # TTT -> [offset, length, next DataSN] outstanding
        self.r2tsn = 0
        self.datasn_in = 0  # Data-In PDUs sent (ExpDataSN of the response)
        self.aborted = False
        self.started = False
        self.running: asyncio.Task[None] | None = None  # while its execution waits on the volume

    def residual(self, res: Result) -> tuple[int, int, DataIn | None]:
        """(OVERFLOW/UNDERFLOW flag, residual count, data-in to send) for the response to
        `res` (RFC 7143 §11.4.5): writes compare the data-out length the CDB wanted with EDTL,
        reads the data-in the command produced (cut to EDTL); None when nothing is sent."""
        edtl = self.edtl
        data = res.data if res.data is not None and len(res.data) else None
        flags = residual = 0
        if self.write:
            want = res.out_len
            if want > edtl:
                flags, residual = P.OVERFLOW, want - edtl
            elif want < edtl and (want or res.status == S.GOOD):
                flags, residual = P.UNDERFLOW, edtl - want
        if data is not None:
            n = len(data)
            if not self.read:
                data = None
                if not self.write:
                    flags, residual = P.OVERFLOW, n
            elif n > edtl:
                flags, residual = P.OVERFLOW, n - edtl
                data = memoryview(data)[:edtl] if edtl else None
            elif n < edtl:
                flags, residual = P.UNDERFLOW, edtl - n
        elif self.read and edtl and not self.write:
            flags, residual = P.UNDERFLOW, edtl
        return flags, residual, data
