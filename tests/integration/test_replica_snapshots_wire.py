"""Snapshot operations on a real `jiva replica` process over TCP (the controller's view of them)."""

from __future__ import annotations

import asyncio
import random

import pytest

from jiva_engine.protocol import wire
from jiva_engine.protocol.client import BadBlocks, ReplicaError
from tests.integration.test_replica_process import Replica

MiB = 1 << 20
SIZE = 64 * MiB
B = 4096


@pytest.fixture
def replica(procs, tmp_path):
    return Replica(procs, tmp_path / "r1").start()


async def test_snapshot_ops_end_to_end(replica):
    c = await replica.connect()
    await c.set_meta(epoch=1, membership=[f"127.0.0.1:{replica.port}"])
    rng = random.Random(3)
    model = bytearray(SIZE)

    async def write(off: int, data: bytes) -> None:
        await c.write(off, data, 1)
        model[off : off + len(data)] = data

    for _ in range(200):
        await write(rng.randrange(SIZE // B - 4) * B, rng.randbytes(rng.choice((B, 2 * B, 512))))
    await c.flush(1)
    listed = (await c.snapshot({"id": "s1", "name": "first", "created": 1.5}, 1))["snapshots"]
    assert [s["name"] for s in listed] == ["first"] and listed[0]["size"] == SIZE
    at1 = bytes(model)
    # the same id or name again is refused, and nothing changes
    for rec in (
        {"id": "s1", "name": "x", "created": 1},
        {"id": "s9", "name": "first", "created": 1},
    ):
        with pytest.raises(ReplicaError) as e:
            await c.snapshot(rec, 1)
        assert e.value.status == wire.EINVAL and "exists already" in str(e.value)
    for _ in range(200):
        await write(rng.randrange(SIZE // B - 4) * B, rng.randbytes(rng.choice((B, 512, 1536))))
    await c.unmap(8 * MiB, MiB, 1)
    model[8 * MiB : 9 * MiB] = bytes(MiB)
    assert bytes(await c.read(0, 16 * MiB, 1)) == bytes(model[: 16 * MiB])
    assert bytes(await c.snap_read("s1", 0, 16 * MiB, 1)) == at1[: 16 * MiB]
    assert bytes(await c.snap_read("s1", 48 * MiB, 16 * MiB, 1)) == at1[48 * MiB :]
    info = await c.info()
    assert info["snapshots"] == ["s1"]
    # what changed since s1 covers every byte that differs
    runs = await c.snap_extents(0, SIZE, None, "s1", 1)
    covered = bytearray(SIZE)
    for o, n in runs:
        covered[o : o + n] = b"\1" * n
    assert all(covered[i] for i in range(0, SIZE, 512) if at1[i : i + 512] != model[i : i + 512])
    # DROP: the head gives a range back to the snapshot
    await c.drop(8 * MiB, MiB, 1)
    model[8 * MiB : 9 * MiB] = at1[8 * MiB : 9 * MiB]
    assert bytes(await c.read(8 * MiB, MiB, 1)) == at1[8 * MiB : 9 * MiB]
    # delete: bounded steps until done; the volume reads the same
    steps = 0
    while not (await c.snap_delete("s1", 1))["done"]:
        steps += 1
    assert await c.snap_list() == []
    for off in range(0, SIZE, 16 * MiB):
        assert bytes(await c.read(off, 16 * MiB, 1)) == bytes(model[off : off + 16 * MiB])
    with pytest.raises(ReplicaError) as e:
        await c.snap_read("s1", 0, B, 1)
    assert e.value.status == wire.EINVAL and "no snapshot" in str(e.value)
    await c.close()


async def test_snapshots_survive_a_restart_and_bit_rot_in_a_layer_is_named(replica):
    c = await replica.connect()
    await c.set_meta(epoch=1, membership=[f"127.0.0.1:{replica.port}"])
    await c.write(0, b"a" * (4 * B), 1)
    await c.flush(1)
    await c.snapshot({"id": "s1", "name": "one", "created": 1}, 1)
    await c.write(0, b"b" * B, 1)
    await c.close()
    replica.proc.kill()
    replica.proc.wait()
    with open(replica.dir / "snapshots" / "s1.img", "r+b") as f:
        f.seek(2 * B + 5)
        f.write(b"!")
    replica.start()
    c = await replica.connect()
    assert (await c.info())["snapshots"] == ["s1"]
    assert bytes(await c.read(0, B, 1)) == b"b" * B
    assert bytes(await c.read(B, B, 1)) == b"a" * B
    with pytest.raises(BadBlocks) as e:
        await c.read(0, 4 * B, 1)
    assert e.value.runs == [(2 * B, B)]
    with pytest.raises(BadBlocks):
        await c.snap_read("s1", 2 * B, B, 1)
    # SNAP_RESET: no snapshot, no data, marked as being rebuilt
    await c.snap_reset(1)
    info = await c.info()
    assert info["snapshots"] == [] and info["mode"] == "WO"
    assert bytes(await c.read(0, 4 * B, 1)) == bytes(4 * B)
    await asyncio.sleep(0)
    await c.close()


async def test_extents_answer_the_views_allocation(replica):
    c = await replica.connect()
    await c.set_meta(epoch=1, membership=[f"127.0.0.1:{replica.port}"])
    await c.write(MiB, b"a" * B, 1)
    await c.snapshot({"id": "s1", "name": "one", "created": 1}, 1)
    await c.write(3 * MiB, b"b" * B, 1)
    await c.unmap(5 * MiB, B, 1)  # explicit zeroes over a hole: the head's own
    assert await c.extents(0, 8 * MiB) == [[MiB, B], [3 * MiB, B], [5 * MiB, B]]
    assert await c.snap_extents(0, 8 * MiB, None, "s1", 1) == [[3 * MiB, B], [5 * MiB, B]]
    assert await c.snap_extents(0, 8 * MiB, "s1", None, 1) == [[MiB, B]]
    await c.close()


def du(path) -> int:
    """Bytes the files under `path` take on disk."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


async def test_delete_reclaims_the_space_the_child_overwrote(replica):
    c = await replica.connect()
    await c.set_meta(epoch=1, membership=[f"127.0.0.1:{replica.port}"])
    for off in range(0, 16 * MiB, 4 * MiB):
        await c.write(off, random.randbytes(4 * MiB), 1)
    await c.snapshot({"id": "s1", "name": "one", "created": 1}, 1)
    final = random.randbytes(16 * MiB)
    for off in range(0, 16 * MiB, 4 * MiB):  # every block of the snapshot overwritten
        await c.write(off, final[off : off + 4 * MiB], 1)
    await c.flush(1)
    listed = await c.snap_list()
    assert listed[0]["unique"] == 16 * MiB and listed[0]["bytes"] >= 16 * MiB
    before = du(replica.dir)
    while not (await c.snap_delete("s1", 1))["done"]:
        pass
    after = du(replica.dir)
    assert before - after >= 15 * MiB, (before, after)
    got = b"".join([bytes(await c.read(o, 4 * MiB, 1)) for o in range(0, 16 * MiB, 4 * MiB)])
    assert got == final
    await c.close()
