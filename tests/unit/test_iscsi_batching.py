"""The target queues responses and sends them in batches: fewer transport writes than PDUs, order kept.

Real in-process target on a real loopback socket, driven by the raw test initiator; a gated
volume makes many commands complete in the same loop iteration (as one replica reply batch does).
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import pytest

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.target import TargetConfig, start_target
from tests.integration.iscsi_client import Initiator
from tests.unit.memvolume import MemVolume

IQN = "iqn.2026-11.org.jiva-py:batch"
BS = 512
N = 48


class GatedVolume(MemVolume):
    """A MemVolume whose reads and writes wait until the test opens the gate."""

    def __init__(self, size: int) -> None:
        super().__init__(size, block_size=BS, name="batch")
        self.gate: asyncio.Event | None = None
        self.waiting = 0

    async def _wait(self) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting += 1
            await self.gate.wait()

    async def read(self, offset: int, length: int) -> bytes:
        await self._wait()
        return await super().read(offset, length)

    async def write(self, offset: int, data, fua: bool = False) -> None:
        await self._wait()
        await super().write(offset, data, fua)


@pytest.fixture
def target():
    """An in-process target on a background loop; yields (port, server, volume, loop)."""
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    vol = GatedVolume(1 << 20)

    async def boot():
        return await start_target(vol, "127.0.0.1", 0, TargetConfig(iqn=IQN, nop_interval=0))

    srv = asyncio.run_coroutine_threadsafe(boot(), loop).result(10)
    try:
        yield srv.address[1], srv, vol, loop
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        loop.close()


def _read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def _write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def _digests(c: Initiator, with_digest: bool) -> None:
    keys = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"} if with_digest else {}
    keys["ImmediateData"] = "Yes"
    keys["InitialR2T"] = "No"
    got = c.login(IQN, keys)
    assert (got.get("HeaderDigest") == "CRC32C") == with_digest


def _conn(srv):
    (conn,) = list(srv.conns)
    return conn


def _wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.mark.parametrize("digests", [False, True])
def test_async_completions_share_one_write(target, digests):
    """Commands that complete in the same loop iteration go out in one write, in StatSN order."""
    port, srv, vol, loop = target
    c = Initiator("127.0.0.1", port)
    _digests(c, digests)
    # fill the volume with a pattern first (ungated) so reads have something to check
    pattern = bytes((i * 7) & 0xFF for i in range(N * BS))
    vol.data[: len(pattern)] = pattern
    loop.call_soon_threadsafe(lambda: setattr(vol, "gate", asyncio.Event()))
    _wait_for(lambda: vol.gate is not None)
    conn = _conn(srv)

    order = []
    burst = []
    for i in range(N):
        if i % 2:
            itt, b = c.command_pdu(_read10(i, 1), read_len=BS)
        else:
            itt, b = c.command_pdu(_write10(i, 1), data=bytes([i]) * BS)
        order.append(itt)
        burst.append(b)
    c.send_raw(b"".join(burst))
    _wait_for(lambda: vol.waiting == N)  # every command is parked on the gate
    writes0, pdus0 = conn.tx_writes, conn.tx_pdus
    loop.call_soon_threadsafe(vol.gate.set)

    seen = []
    stat = None
    for _ in range(N):
        p, data = c.recv()  # checks digests when they are on
        assert isinstance(p, (P.ScsiResponse, P.DataIn)), p
        assert isinstance(p, P.ScsiResponse) or p.flags & P.STATUS, "response without status"
        assert p.status == 0, f"status {p.status:#x}"
        if stat is not None:
            assert p.statsn == (stat + 1) & 0xFFFFFFFF, "StatSN not consecutive in stream order"
        stat = p.statsn
        i = order.index(p.itt)
        if i % 2:
            assert data == pattern[i * BS : (i + 1) * BS], f"Data-In of command {i} wrong"
        seen.append(p.itt)
    assert seen == order, "responses left in a different order than the commands completed"
    _wait_for(lambda: conn.tx_pdus - pdus0 == N)
    writes = conn.tx_writes - writes0
    assert writes <= 2, f"{N} responses took {writes} transport writes"
    assert bytes(vol.data[0:BS]) == bytes([0]) * BS and bytes(vol.data[2 * BS : 3 * BS]) == (
        bytes([2]) * BS
    )
    c.close()


def test_receive_burst_answered_in_few_writes(target):
    """Pipelined commands that complete at once (no waiting) are answered per burst, in order."""
    port, srv, _vol, _loop = target
    c = Initiator("127.0.0.1", port)
    _digests(c, True)
    conn = _conn(srv)
    writes0, pdus0 = conn.tx_writes, conn.tx_pdus
    order = []
    burst = []
    for i in range(N):
        itt, b = c.command_pdu(_read10(i, 2), read_len=2 * BS)
        order.append(itt)
        burst.append(b)
    c.send_raw(b"".join(burst))
    got = [c.recv() for _ in range(N)]
    assert [p.header.itt for p in got] == order
    assert all(isinstance(p.header, P.DataIn) and p.header.flags & P.STATUS for p in got)
    assert all(len(p.data) == 2 * BS for p in got)
    stats = [p.header.statsn for p in got]
    assert stats == list(range(stats[0], stats[0] + N))
    _wait_for(lambda: conn.tx_pdus - pdus0 == N)
    assert conn.tx_writes - writes0 < N // 4, f"{conn.tx_writes - writes0} writes for {N} PDUs"
    c.close()


def test_logout_flushes_queued_responses_first(target):
    """Responses completing while a logout waits leave before the Logout Response, then EOF."""
    port, srv, vol, loop = target
    c = Initiator("127.0.0.1", port)
    _digests(c, False)
    loop.call_soon_threadsafe(lambda: setattr(vol, "gate", asyncio.Event()))
    _wait_for(lambda: vol.gate is not None)
    order = []
    burst = []
    for i in range(8):
        itt, b = c.command_pdu(_write10(i, 1), data=bytes([0xA0 + i]) * BS)
        order.append(itt)
        burst.append(b)
    logout_itt, logout = c.logout_pdu(immediate=False)
    burst.append(logout)
    c.send_raw(b"".join(burst))
    _wait_for(lambda: vol.waiting == 8)
    loop.call_soon_threadsafe(vol.gate.set)
    got = [c.recv().header for _ in range(9)]
    assert [p.itt for p in got] == [*order, logout_itt]
    assert [type(p) for p in got] == [P.ScsiResponse] * 8 + [P.LogoutResponse]
    assert got[-1].response == P.LogoutResponseCode.SUCCESS, "logout refused"
    c.sock.settimeout(5)
    assert c.sock.recv(1) == b"", "target kept the connection open (or sent more) after logout"
    assert bytes(vol.data[7 * BS : 8 * BS]) == bytes([0xA7]) * BS
    c.close()
