"""A session (RFC 7143 §3.4): its I_T nexus and the command numbering window (CmdSN)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jiva_engine.iscsi import pdu as P
from jiva_engine.scsi.command import Nexus

if TYPE_CHECKING:
    from jiva_engine.iscsi.connection import Connection

log = logging.getLogger(__name__)

CMD_WINDOW = 128  # commands an initiator may have queued: MaxCmdSN - ExpCmdSN + 1
SN_MASK = 0xFFFFFFFF

# the PDUs numbered by CmdSN
Numbered = P.ScsiCommand | P.NopOut | P.TaskManagementRequest | P.TextRequest | P.LogoutRequest


def sn_lt(a: int, b: int) -> bool:
    """Serial-number a < b (RFC 1982, 32-bit)."""
    return a != b and ((b - a) & SN_MASK) < 0x80000000


class Session:
    """A logged-in session over one connection (MaxConnections=1)."""

    def __init__(
        self,
        conn: Connection,
        tsih: int,
        initiator: str,
        nexus: Nexus,
        discovery: bool,
        exp_cmdsn: int,
    ) -> None:
        """A session numbered `tsih`, whose first command has CmdSN `exp_cmdsn`."""
        self.conn = conn
        self.tsih = tsih
        self.initiator = initiator
        self.nexus = nexus
        self.discovery = discovery
        self.exp_cmdsn = exp_cmdsn
        self.pending: dict[int, tuple[Numbered, bytes]] = {}  # CmdSN -> PDU held for a gap

    def max_cmdsn(self) -> int:
        """ExpCmdSN + window - 1, shrunk by commands already queued (bounded buffering)."""
        busy = len(self.conn.tasks)
        return (self.exp_cmdsn + max(1, CMD_WINDOW - busy) - 1) & SN_MASK

    def admit(self, pdu: Numbered, data: bytes) -> bool:
        """True if `pdu` runs now: immediate, or the next in CmdSN order (ExpCmdSN advances).
        Otherwise it is held until the gap before it fills, or ignored outside the window."""
        if pdu.immediate:
            return True
        sn = pdu.cmdsn
        if sn == self.exp_cmdsn:
            self.exp_cmdsn = (sn + 1) & SN_MASK
            return True
        if sn_lt(sn, self.exp_cmdsn) or sn_lt(self.max_cmdsn(), sn):
            log.info("%s: CmdSN %d outside [%d, %d], ignored", self.conn.peer, sn,
                     self.exp_cmdsn, self.max_cmdsn())  # fmt: skip
            return False
        self.pending[sn] = (pdu, data)
        return False

    def next_in_order(self) -> tuple[Numbered, bytes] | None:
        """The held PDU (and its data) whose turn has come, ExpCmdSN advanced past it."""
        item = self.pending.pop(self.exp_cmdsn, None)
        if item is not None:
            self.exp_cmdsn = (self.exp_cmdsn + 1) & SN_MASK
        return item
