"""The connection state machine over a fake transport (FREE -> IN_LOGIN -> LOGGED_IN ->
IN_LOGOUT -> FREE, and what each state accepts), and the residuals of SCSI responses."""

from __future__ import annotations

import asyncio

import pytest

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.connection import ConnState
from jiva_engine.iscsi.protocol import TargetProtocol
from jiva_engine.iscsi.target import TargetConfig, TargetServer
from jiva_engine.iscsi.task import ScsiTask
from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Result
from tests.unit.memvolume import MemVolume
from tests.unit.test_iscsi_fuzz import IQN, FakeTransport, login_bytes


def responses(t: FakeTransport) -> list[P.Response]:
    """Parse every PDU the connection wrote (no digests, as negotiated here)."""
    out, pos, raw = [], 0, bytes(t.out)
    while pos + P.BHS_LEN <= len(raw):
        dlen = int.from_bytes(raw[pos + 5 : pos + 8], "big")
        out.append(P.parse_response(raw[pos : pos + P.BHS_LEN]))
        pos += P.BHS_LEN + dlen + (-dlen % 4)
    return out


async def test_states_through_login_and_logout():
    """Login moves the connection to LOGGED_IN; a logout to IN_LOGOUT (a command sent then is
    rejected) and, once answered, to FREE with the transport closed."""
    server = TargetServer(MemVolume(64 * 1024, name="conn"), TargetConfig(iqn=IQN))
    t = FakeTransport()
    c = TargetProtocol(server)
    assert c.state is ConnState.FREE
    c.connection_made(t)
    assert c.state is ConnState.IN_LOGIN
    c.data_received(login_bytes())
    assert c.state is ConnState.LOGGED_IN and server.sessions == 1
    logout = P.LogoutRequest(itt=2, cmdsn=0)
    tur = P.ScsiCommand(itt=3, cdb=bytes(16), cmdsn=1, immediate=True)
    c.data_received(logout.pack() + tur.pack())
    assert c.state is ConnState.IN_LOGOUT
    await asyncio.sleep(0.01)
    assert c.state is ConnState.FREE and t.closed
    rsp = responses(t)
    assert [type(r) for r in rsp] == [P.LoginResponse, P.Reject, P.LogoutResponse]
    assert rsp[1].reason == P.RejectReason.WAITING_FOR_LOGOUT
    c.connection_lost(None)
    assert server.sessions == 0 and not server.conns


async def test_only_login_before_login():
    """Any other PDU before the login completes closes the connection."""
    server = TargetServer(MemVolume(64 * 1024, name="conn"), TargetConfig(iqn=IQN))
    t = FakeTransport()
    c = TargetProtocol(server)
    c.connection_made(t)
    c.data_received(P.NopOut(itt=1, immediate=True).pack())
    assert c.state is ConnState.FREE and t.closed and not t.out
    c.connection_lost(None)


@pytest.mark.parametrize(
    "flags,edtl,res,want",
    [
        # reads: data-in against EDTL
        (P.READ, 4096, Result(data=bytes(4096)), (0, 0, 4096)),
        (P.READ, 4096, Result(data=bytes(1024)), (P.UNDERFLOW, 3072, 1024)),
        (P.READ, 512, Result(data=bytes(1024)), (P.OVERFLOW, 512, 512)),
        (P.READ, 0, Result(data=bytes(36)), (P.OVERFLOW, 36, None)),
        (P.READ, 512, Result(S.CHECK_CONDITION, sense=b"x"), (P.UNDERFLOW, 512, None)),
        # writes: the data-out the CDB wanted against EDTL
        (P.WRITE, 4096, Result(out_len=4096), (0, 0, None)),
        (P.WRITE, 4096, Result(out_len=8192), (P.OVERFLOW, 4096, None)),
        (P.WRITE, 4096, Result(out_len=512), (P.UNDERFLOW, 3584, None)),
        (P.WRITE, 4096, Result(S.CHECK_CONDITION, sense=b"x"), (0, 0, None)),
        # data-in from a command that expected none
        (0, 0, Result(data=bytes(8)), (P.OVERFLOW, 8, None)),
    ],
)
def test_residuals(flags, edtl, res, want):
    """The residual flag and count of a response, and how much data-in goes out."""
    cmd = P.ScsiCommand(itt=1, cdb=bytes(16), edtl=edtl, flags=P.FINAL | flags)
    got_flags, got_residual, data = ScsiTask(cmd).residual(res)
    assert (got_flags, got_residual, None if data is None else len(data)) == want
