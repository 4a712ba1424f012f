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

from jiva_engine.iscsi.crc import crc32c
from jiva_engine.iscsi.target import TargetConfig, start_target
from tests.integration.iscsi_client import Initiator, pack
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

    async def write(self, offset: int, data, fua: bool = False) -> None:  # noqa: ANN001
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


def _cmd(c: Initiator, cdb: bytes, read_len: int = 0, data: bytes = b"") -> tuple[int, bytes]:
    """One SCSI Command PDU (immediate data for writes); returns (itt, bytes to send)."""
    itt = c.next_itt()
    flags = 0x80 | (0x40 if read_len else 0) | (0x20 if data else 0)
    hdr = pack(0x01, flags, len(data), bytes(8), itt, read_len or len(data), c.cmdsn,
               c.exp_statsn, *struct.unpack(">IIII", cdb.ljust(16, b"\0")))  # fmt: skip
    c.cmdsn += 1
    return itt, _frame(c, hdr, data)


def _frame(c: Initiator, hdr: bytes, data: bytes = b"") -> bytes:
    """A PDU's bytes with padding and whatever digests the session negotiated."""
    parts = [hdr]
    if c.hd:
        parts.append(crc32c(hdr).to_bytes(4, "little"))
    if data:
        padded = data + bytes(-len(data) % 4)
        parts.append(padded)
        if c.dd:
            parts.append(crc32c(padded).to_bytes(4, "little"))
    return b"".join(parts)


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


def _conn(srv):  # noqa: ANN001, ANN202
    (conn,) = list(srv.conns)
    return conn


def _wait_for(pred, timeout: float = 10.0) -> None:  # noqa: ANN001
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
            itt, b = _cmd(c, _read10(i, 1), read_len=BS)
        else:
            itt, b = _cmd(c, _write10(i, 1), data=bytes([i]) * BS)
        order.append(itt)
        burst.append(b)
    c.send_raw(b"".join(burst))
    _wait_for(lambda: vol.waiting == N)  # every command is parked on the gate
    writes0, pdus0 = conn.tx_writes, conn.tx_pdus
    loop.call_soon_threadsafe(vol.gate.set)

    seen = []
    stat = None
    for _ in range(N):
        p = c.recv()  # checks digests when they are on
        assert p.op in (0x21, 0x25), hex(p.op)
        assert p.flags & 0x01 or p.op == 0x21, "response without status"
        assert p.b3 == 0, f"status {p.b3:#x}"
        if stat is not None:
            assert p.w24 == (stat + 1) & 0xFFFFFFFF, "StatSN not consecutive in stream order"
        stat = p.w24
        i = order.index(p.itt)
        if i % 2:
            assert p.data == pattern[i * BS : (i + 1) * BS], f"Data-In of command {i} wrong"
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
        itt, b = _cmd(c, _read10(i, 2), read_len=2 * BS)
        order.append(itt)
        burst.append(b)
    c.send_raw(b"".join(burst))
    got = [c.recv() for _ in range(N)]
    assert [p.itt for p in got] == order
    assert all(p.op == 0x25 and p.flags & 0x01 and len(p.data) == 2 * BS for p in got)
    stats = [p.w24 for p in got]
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
        itt, b = _cmd(c, _write10(i, 1), data=bytes([0xA0 + i]) * BS)
        order.append(itt)
        burst.append(b)
    logout_itt = c.next_itt()
    burst.append(_frame(c, pack(0x06, 0x80, 0, bytes(8), logout_itt, 0, c.cmdsn, c.exp_statsn)))
    c.send_raw(b"".join(burst))
    _wait_for(lambda: vol.waiting == 8)
    loop.call_soon_threadsafe(vol.gate.set)
    got = [c.recv() for _ in range(9)]
    assert [p.itt for p in got] == [*order, logout_itt]
    assert [p.op for p in got] == [0x21] * 8 + [0x26]
    assert got[-1].b2 == 0, "logout refused"
    c.sock.settimeout(5)
    assert c.sock.recv(1) == b"", "target kept the connection open (or sent more) after logout"
    assert bytes(vol.data[7 * BS : 8 * BS]) == bytes([0xA7]) * BS
    c.close()
