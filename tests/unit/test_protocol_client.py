"""ReplicaClient's receive path and bookkeeping, driven without a socket (exact chunk boundaries)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jiva_engine.protocol import wire
from jiva_engine.protocol.client import (
    ReplicaClient,
    ReplicaError,
    ReplicaUnavailable,
    _ClientProtocol,
    write_all,
)


class FakeTransport:
    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def connected_client(timeout: float = 3.0) -> tuple[ReplicaClient, _ClientProtocol, FakeTransport]:
    c = ReplicaClient("127.0.0.1", 1, "v", timeout=timeout)
    c._loop = asyncio.get_running_loop()
    t = FakeTransport()
    c._transport = t
    c._closed_reason = None
    c._ready = True
    return c, _ClientProtocol(c), t


def feed(p: _ClientProtocol, stream: bytes, cuts: list[int]) -> None:
    """Deliver `stream` the way recv_into would: into get_buffer(), at most up to each cut."""
    pos = 0
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    for b in bounds:
        while pos < b:
            buf = p.get_buffer(-1)
            n = min(len(buf), b - pos)
            assert n > 0
            buf[:n] = stream[pos : pos + n]
            p.buffer_updated(n)
            pos += n


@given(
    sizes=st.lists(st.sampled_from([0, 512, 4096, 65536, 70000, 300000, 1 << 20]), max_size=10),
    cuts=st.lists(st.integers(0, 3_000_000), max_size=12),
    seed=st.integers(0, 1000),
)
@settings(max_examples=60, deadline=None)
def test_answers_of_any_size_survive_any_split(sizes, cuts, seed):
    async def run() -> None:
        c, p, _t = connected_client()
        rnd = random.Random(seed)
        futs, payloads, frames = [], [], []
        for size in sizes:
            rid = c._next_id
            futs.append(c.read(0, max(size, 512), 0))
            payloads.append(rnd.randbytes(size))
            frames.append(wire.encode(wire.READ, rid, payloads[-1]))
        feed(p, b"".join(frames), cuts)
        got = await asyncio.gather(*futs)
        assert [bytes(g) for g in got] == payloads
        assert not c._pending and p.big is None and p.start == p.end == 0

    asyncio.run(run())


async def test_error_answer_raises_replica_error_with_message():
    c, p, _t = connected_client()
    fut = c.write(0, b"x" * 512, 0)
    feed(p, wire.encode(wire.WRITE, 1, b"past the end", status=wire.EINVAL), [])
    with pytest.raises(ReplicaError) as ei:
        await fut
    assert ei.value.status == wire.EINVAL and ei.value.message == "past the end"


async def test_malformed_answer_fails_everything_pending():
    c, p, t = connected_client()
    futs = [c.read(0, 512, 0) for _ in range(3)]
    feed(p, b"\x00" * 64, [])
    for f in futs:
        with pytest.raises(ReplicaUnavailable, match="malformed"):
            await f
    assert t.closed and not c.connected
    with pytest.raises(ReplicaUnavailable):
        await c.read(0, 512, 0)  # a dead client fails at once


async def test_frames_are_sent_in_call_order_in_one_write_per_loop_turn():
    c, _p, t = connected_client()
    c.write(4096, b"a" * 512, 3)
    c.read(0, 512, 3)
    c.flush(3)
    assert t.sent == b""  # queued, not yet sent
    await asyncio.sleep(0)
    frames = wire.FrameReader().feed(bytes(t.sent))
    assert [(f[0], f[2]) for f in frames] == [(wire.WRITE, 1), (wire.READ, 2), (wire.FLUSH, 3)]
    assert frames[0][3] == 4096 and frames[0][5] == 3 and frames[0][6] == b"a" * 512
    assert c.epoch == 3


async def test_unanswered_request_times_out_and_closes():
    c, _p, t = connected_client(timeout=0.2)
    c._arm_watchdog()
    fut = c.ping()
    with pytest.raises(ReplicaUnavailable, match="timeout"):
        await asyncio.wait_for(fut, 3)
    assert t.closed


async def test_write_all_collects_per_client_results():
    (c1, p1, _), (c2, p2, _) = connected_client(), connected_client()
    fut = write_all([c1, c2], 0, b"z" * 512, 1)
    feed(p1, wire.encode(wire.WRITE, 1), [])
    assert not fut.done()
    feed(p2, wire.encode(wire.WRITE, 1, b"old epoch", status=wire.STALE_EPOCH), [])
    res = await fut
    assert res[0] is None and isinstance(res[1], ReplicaError)


async def test_answer_times_and_oldest_comparable_request():
    """What the lag detector reads: answer times of replicated requests, and the age of the
    oldest unanswered replicated request or PING (reads and control requests are left out)."""
    c, p, _t = connected_client()
    assert c.oldest_age(0.0) is None
    c.read(0, 512, 1)  # 1: a read: not comparable between members
    fut = write_all([c], 0, b"z" * 512, 1)  # 2
    sent = asyncio.get_running_loop().time()
    ping = asyncio.ensure_future(c.ping())  # 3
    await asyncio.sleep(0)
    age = c.oldest_age(sent + 1.0)
    assert age is not None and 0.9 < age < 1.1
    feed(p, wire.encode(wire.WRITE, 2), [])
    assert (await fut) == [None]
    assert len(c.answer_times) == 1 and 0 <= c.answer_times[0] < 1
    age = c.oldest_age(sent + 2.0)  # the PING is still out
    assert age is not None and 1.9 < age < 2.1
    feed(p, wire.encode(wire.PING, 3), [])
    await ping
    assert c.oldest_age(sent + 3.0) is None  # only the read is out
