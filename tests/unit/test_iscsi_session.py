"""Session behaviour on a real in-process target: keepalive timeouts, login timeout, CmdSN window."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.target import TargetConfig, start_target
from tests.integration.iscsi_client import Initiator
from tests.unit.memvolume import MemVolume

IQN = "iqn.2026-11.org.jiva-py:sess"


@pytest.fixture
def target_factory():
    """Start targets with a given TargetConfig in a background loop; all closed at the end."""
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    servers = []

    def make(**cfg) -> tuple[int, object]:
        async def boot():
            return await start_target(MemVolume(1 << 20, name="sess"), "127.0.0.1", 0,
                                      TargetConfig(iqn=IQN, **cfg))  # fmt: skip

        srv = asyncio.run_coroutine_threadsafe(boot(), loop).result(10)
        servers.append(srv)
        return srv.address[1], srv

    try:
        yield make
    finally:
        for srv in servers:
            asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        loop.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_unanswered_keepalive_drops_session(target_factory):
    """A peer that never answers NOP-In is dropped after nop_timeout; sessions count follows."""
    port, srv = target_factory(nop_interval=0.3, nop_timeout=1.0)
    c = Initiator("127.0.0.1", port)
    c.login(IQN)
    time.sleep(0.2)
    assert srv.sessions == 1
    assert _closed_within(c.sock, 5), "silent initiator was not dropped"
    time.sleep(0.2)
    assert srv.sessions == 0
    c.close()


def test_login_timeout(target_factory):
    """A connection that never logs in is closed after login_timeout."""
    port, _ = target_factory(login_timeout=1.0)
    s = socket.create_connection(("127.0.0.1", port))
    assert _closed_within(s, 5)
    s.close()


def test_cmdsn_window(target_factory):
    """A command beyond MaxCmdSN is ignored; the next in-order command is answered."""
    port, _ = target_factory()
    c = Initiator("127.0.0.1", port)
    c.login(IQN)
    p = c.nop(immediate=True).header
    max_cmdsn = p.max_cmdsn
    assert max_cmdsn - p.exp_cmdsn >= 31, "window too small for QD32"
    beyond = P.ScsiCommand(itt=999, cdb=bytes(16), cmdsn=max_cmdsn + 1, exp_statsn=c.exp_statsn)
    c.send(beyond.pack())
    c.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        c.recv()
    c.sock.settimeout(5)
    st, _, _, rsp = c.scsi(bytes(6))
    assert st == 0 and rsp.itt != 999
    c.close()


def test_abort_unknown_task_and_lun_reset(target_factory):
    """ABORT TASK of a finished task: 'task does not exist'; LUN RESET completes."""
    port, _ = target_factory()
    c = Initiator("127.0.0.1", port)
    c.login(IQN)
    abort = P.TaskManagementRequest(itt=c.next_itt(), function=P.TmfFunction.ABORT_TASK,
                                    rtt=12345, cmdsn=c.cmdsn, exp_statsn=c.exp_statsn,
                                    immediate=True)  # fmt: skip
    c.send(abort.pack())
    r = c.recv().header
    assert isinstance(r, P.TaskManagementResponse)
    assert r.response == P.TmfResponse.NO_SUCH_TASK
    reset = P.TaskManagementRequest(itt=c.next_itt(), function=P.TmfFunction.LOGICAL_UNIT_RESET,
                                    cmdsn=c.cmdsn, exp_statsn=c.exp_statsn, immediate=True)  # fmt: skip
    c.send(reset.pack())
    r = c.recv().header
    assert isinstance(r, P.TaskManagementResponse) and r.response == P.TmfResponse.COMPLETE
    st, _, sense, _ = c.scsi(bytes(6))  # the reset's unit attention
    assert st == 2 and sense[2] & 0x0F == 6 and sense[12] == 0x29
    c.close()


def test_huge_write_refused_without_buffering(target_factory):
    """A WRITE announcing 1 GiB of data is refused at once (no 1 GiB buffer, no R2T)."""
    port, _ = target_factory()
    c = Initiator("127.0.0.1", port)
    c.login(IQN)
    cdb = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0])  # WRITE(10) of 65535 blocks
    itt = c.next_itt()
    huge = P.ScsiCommand(itt=itt, cdb=cdb, edtl=1 << 30, flags=P.FINAL | P.WRITE,
                         cmdsn=c.cmdsn, exp_statsn=c.exp_statsn)  # fmt: skip
    c.send(huge.pack())
    c.cmdsn += 1
    r = c.recv().header
    assert isinstance(r, P.ScsiResponse)  # not an R2T
    assert r.itt == itt and r.status == 2  # CHECK CONDITION
    st, _, _, _ = c.scsi(bytes(6))
    assert st == 0
    c.close()
