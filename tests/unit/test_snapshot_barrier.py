"""The snapshot barrier's ordering (controller/snapshots.py) over fake members: a create waits
for the writes in flight (their range-lock leases) before it flushes, no write admitted after it
started goes before the SNAPSHOT, a member failing the SNAPSHOT is reported as failed (ejected)
and the others keep it, and a refusal changes nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from jiva_engine.controller.peers import RW, Peer
from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.controller.snapshots import SnapshotRefused, Snapshots
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaError


class FakeLink:
    def __init__(self, name: str, log: list, fail_snapshot: bool = False) -> None:
        self.name, self.log, self.fail_snapshot = name, log, fail_snapshot
        self.snaps: list[dict[str, Any]] = []

    async def flush(self, epoch: int) -> None:
        self.log.append(("flush", self.name))

    async def snapshot(self, rec: dict[str, Any], epoch: int) -> dict[str, Any]:
        self.log.append(("snapshot", self.name))
        if self.fail_snapshot:
            raise ReplicaError(wire.EIO, "disk full")
        self.snaps.append({**rec, "size": 1 << 20, "bytes": 0, "unique": 0})
        return {"snapshots": list(self.snaps)}

    async def snap_list(self) -> list[dict[str, Any]]:
        return list(self.snaps)


class FakeCoord:
    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers
        self.name = "vol"
        self.open = True
        self.closed = False
        self.mem = SimpleNamespace(epoch=5, reason="")
        self.failed: list[str] = []

    def serving(self) -> bool:
        return True

    def replicas(self) -> list[Peer]:
        return self.peers

    def rw_peers(self) -> list[Peer]:
        return [p for p in self.peers if p.mode == RW]

    async def failures(self, failed: list[tuple[Peer, BaseException]]) -> None:
        for p, _ in failed:
            self.failed.append(p.address)
            p.mode = "ERR"


def cluster(fail: set[int] = frozenset()) -> tuple[FakeCoord, list, RangeLock, Snapshots]:
    log: list = []
    peers = []
    for i in range(3):
        p = Peer(f"127.0.0.1:{9700 + i}", mode=RW, info={"snapshots": []})
        p.client = FakeLink(f"r{i}", log, fail_snapshot=i in fail)  # type: ignore[assignment]
        peers.append(p)
    coord = FakeCoord(peers)
    ranges = RangeLock()

    async def admit(reading: bool) -> None:
        return None

    snaps = Snapshots(coord, ranges, admit, limit=2)  # type: ignore[arg-type]
    return coord, log, ranges, snaps


async def test_the_barrier_waits_for_writes_in_flight_and_holds_new_ones():
    coord, log, ranges, snaps = cluster()
    release = asyncio.Event()

    async def write_in_flight() -> None:
        async with ranges.hold(8192, 4096):
            log.append(("write-start", "old"))
            await release.wait()
            log.append(("write-acked", "old"))

    async def write_after() -> None:
        async with ranges.hold(1 << 19, 4096):
            log.append(("write", "new"))

    old = asyncio.ensure_future(write_in_flight())
    await asyncio.sleep(0)
    create = asyncio.ensure_future(snaps.create("s1"))
    for _ in range(5):
        await asyncio.sleep(0)
    new = asyncio.ensure_future(write_after())
    for _ in range(5):
        await asyncio.sleep(0)
    assert ("flush", "r0") not in log  # the write in flight is not done: no flush yet
    assert ("write", "new") not in log  # held at the door
    release.set()
    entry = await create
    await asyncio.gather(old, new)
    kinds = [k for k, _ in log]
    assert kinds.index("write-acked") < kinds.index("flush")
    last_snapshot = max(i for i, (k, _) in enumerate(log) if k == "snapshot")
    assert kinds.index("write") > last_snapshot  # the new write went after every SNAPSHOT
    assert max(i for i, k in enumerate(kinds) if k == "flush") < kinds.index("snapshot")
    assert entry["name"] == "s1"
    ids = {tuple(s["id"] for s in p.client.snaps) for p in coord.peers}  # type: ignore[union-attr]
    assert len(ids) == 1 and len(next(iter(ids))) == 1  # one id, on every member
    assert snaps.count == 1


async def test_a_member_failing_snapshot_is_ejected_the_others_keep_it():
    coord, log, ranges, snaps = cluster(fail={2})
    await snaps.create("s1")
    assert coord.failed == ["127.0.0.1:9702"]
    assert [len(p.client.snaps) for p in coord.peers] == [1, 1, 0]  # type: ignore[union-attr]


async def test_every_member_refusing_changes_nothing_and_ejects_nobody():
    coord, log, ranges, snaps = cluster(fail={0, 1, 2})
    with pytest.raises(SnapshotRefused, match="no member took the snapshot"):
        await snaps.create("s1")
    assert coord.failed == []


async def test_refusals_before_anything_is_sent():
    coord, log, ranges, snaps = cluster()
    await snaps.create("a")
    await snaps.create("b")
    log.clear()
    with pytest.raises(SnapshotRefused) as e:
        await snaps.create("c")  # limit 2
    assert e.value.status == 409 and "limit" in str(e.value)
    with pytest.raises(SnapshotRefused) as e:
        await snaps.create("a")
    assert e.value.status == 409
    with pytest.raises(SnapshotRefused) as e:
        await snaps.create("no good")
    assert e.value.status == 400
    assert log == []  # no FLUSH, no SNAPSHOT
    assert len(ranges) == 0
