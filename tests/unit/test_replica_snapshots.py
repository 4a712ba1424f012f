"""A replica store's snapshot layers: views, merges, crash recovery (real files, no processes)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import pytest

from jiva_engine.replica import snapshots
from jiva_engine.replica.store import META, ReplicaStore

MiB = 1 << 20
SIZE = 8 * MiB
B = 4096


def store(d: Path) -> ReplicaStore:
    return ReplicaStore(d, "vol", SIZE)


def view(s: ReplicaStore, off: int = 0, n: int = SIZE) -> bytes:
    data, bad = s.read_verified([(off, n)])
    assert not bad
    return bytes(data)


def snap(s: ReplicaStore, name: str) -> str:
    rec = {"id": name + "id", "name": name, "created": 1.0}
    assert s.check_snapshot(rec) is None

    async def sync() -> None:
        s.datasync()

    async def meta() -> None:
        s.write_meta(s.meta_snapshot())

    asyncio.run(snapshots.take(s, rec, sync, meta))
    return rec["id"]


def delete(s: ReplicaStore, snap_id: str) -> int:
    async def meta() -> None:
        s.write_meta(s.meta_snapshot())

    cursors: dict[str, tuple[int, int]] = {}
    steps = 0
    while True:
        steps += 1
        r = asyncio.run(snapshots.delete_step(s, snap_id, cursors, meta, seconds=0))
        if r["done"]:
            return steps


def sread(s: ReplicaStore, snap_id: str, off: int = 0, n: int = SIZE) -> bytes:
    data, bad = s.snap_read(snap_id, off, n)
    assert not bad
    return bytes(data)


def model_write(model: bytearray, s: ReplicaStore, off: int, data: bytes | None, n: int = 0):
    s.write(off, data, n)
    if data is None:
        model[off : off + n] = bytes(n)
    else:
        model[off : off + len(data)] = data


def test_views_of_head_and_snapshots(tmp_path: Path) -> None:
    s = store(tmp_path)
    rng = random.Random(1)
    model = bytearray(SIZE)
    for _ in range(40):
        off = rng.randrange(0, SIZE // 512 - 16) * 512
        model_write(model, s, off, rng.randbytes(rng.choice((512, 4096, 8192, 3584))))
    s1 = snap(s, "one")
    at1 = bytes(model)
    assert view(s) == at1 and sread(s, s1) == at1
    for _ in range(40):  # unaligned writes merge with the layer's blocks
        off = rng.randrange(0, SIZE // 512 - 16) * 512
        if rng.random() < 0.2:
            model_write(model, s, off, None, rng.choice((512, 4096, 12288)))
        else:
            model_write(model, s, off, rng.randbytes(rng.choice((512, 4096, 8192, 1536))))
    s2 = snap(s, "two")
    at2 = bytes(model)
    model_write(model, s, 0, b"x" * 5000)
    assert view(s) == bytes(model)
    assert sread(s, s1) == at1 and sread(s, s2) == at2
    s.close()
    s = store(tmp_path)  # the index is rebuilt from the layers' entries
    assert s.layers.ids() == [s1, s2]
    assert view(s) == bytes(model) and sread(s, s1) == at1 and sread(s, s2) == at2
    # extents: what changed since s1 (layer two and the head)
    changed = s.snap_extents(0, SIZE, None, s1)
    assert changed and all(o % B == 0 for o, _ in changed)
    mask = bytearray(SIZE)
    for o, n in changed:
        mask[o : o + n] = b"\1" * n
    assert all(mask[i] for i in range(SIZE) if at1[i] != model[i])
    s.close()


def test_unmap_under_snapshot_reads_zeroes_after_crash_recompute(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write(0, b"a" * (64 * B))
    snap(s, "one")
    s.write(0, None, 16 * B)
    assert view(s, 0, 16 * B) == bytes(16 * B)
    s.close(clean=False)  # the regions stay dirty: open recomputes their entries
    s = store(tmp_path)
    assert view(s, 0, 16 * B) == bytes(16 * B)
    assert view(s, 16 * B, B) == b"a" * B
    # DROP reveals the layer again
    s.write(0, b"b" * B)
    s.drop(0, 2 * B)
    assert view(s, 0, 2 * B) == b"a" * (2 * B)
    s.close()


@pytest.mark.parametrize("which", ["newest", "oldest"])
def test_delete_merges_and_frees(tmp_path: Path, which: str) -> None:
    s = store(tmp_path)
    rng = random.Random(2)
    model = bytearray(SIZE)
    for _ in range(60):
        model_write(model, s, rng.randrange(0, SIZE // B - 8) * B, rng.randbytes(2 * B))
    s1 = snap(s, "one")
    at1 = bytes(model)
    for _ in range(60):
        model_write(model, s, rng.randrange(0, SIZE // B - 8) * B, rng.randbytes(B))
    s2 = snap(s, "two")
    at2 = bytes(model)
    for _ in range(30):
        model_write(model, s, rng.randrange(0, SIZE // B - 8) * B, rng.randbytes(B))
    gone, kept, kept_view = (s2, s1, at1) if which == "newest" else (s1, s2, at2)
    listed = {r["id"]: r for r in s.snapshot_list()}
    assert listed[gone]["bytes"] > 0
    steps = delete(s, gone)
    assert steps >= 1
    assert s.layers.ids() == [kept]
    assert view(s) == bytes(model) and sread(s, kept) == kept_view
    assert not (tmp_path / "snapshots" / f"{gone}.img").exists()
    s.close()
    s = store(tmp_path)
    assert s.layers.ids() == [kept]
    assert view(s) == bytes(model) and sread(s, kept) == kept_view
    delete(s, kept)
    assert view(s) == bytes(model) and not s.layers
    assert sorted(os.listdir(tmp_path / "snapshots")) == []
    s.close()


def test_interrupted_create_is_completed_or_undone(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write(0, b"q" * B)
    rec = {"id": "abc", "name": "n", "created": 2.0}
    s.snapshot_intent(rec)
    s.write_meta(s.meta_snapshot())
    s.snapshot_freeze()  # crash here: frozen, not listed
    s.close(clean=False)
    s = store(tmp_path)
    assert s.layers.ids() == ["abc"] and sread(s, "abc", 0, B) == b"q" * B
    assert "snapshot_op" not in json.loads((tmp_path / META).read_text())
    s.write(0, b"r" * B)
    rec2 = {"id": "def", "name": "m", "created": 3.0}
    s.snapshot_intent(rec2)
    s.write_meta(s.meta_snapshot())  # crash here: the intent only
    s.close(clean=False)
    s = store(tmp_path)
    assert s.layers.ids() == ["abc"] and view(s, 0, B) == b"r" * B
    s.close()


def test_layer_bit_rot_is_found(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write(0, b"z" * (4 * B))
    sid = snap(s, "one")
    s.close()
    img = tmp_path / "snapshots" / f"{sid}.img"
    with open(img, "r+b") as f:
        f.seek(B + 7)
        f.write(b"!")
    s = store(tmp_path)
    data, bad = s.read_verified([(0, 4 * B)])
    assert bad == [1]
    data, bad = s.snap_read(sid, 0, 4 * B)
    assert bad == [1]
    s.close()


def test_reset_forgets_everything(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write(0, b"k" * B)
    snap(s, "one")
    s.write(B, b"l" * B)

    async def meta() -> None:
        s.write_meta(s.meta_snapshot())

    asyncio.run(snapshots.reset(s, meta))
    assert not s.layers and view(s, 0, 2 * B) == bytes(2 * B) and s.mode == "WO"
    s.close()
    s = store(tmp_path)
    assert not s.layers and os.listdir(tmp_path / "snapshots") == []
    s.close()


@pytest.mark.parametrize("step", ["data-moved", "both-moved"])
def test_create_interrupted_between_renames_is_completed(tmp_path: Path, step: str) -> None:
    s = store(tmp_path)
    s.write(0, b"p" * (2 * B))
    rec = {"id": "abc", "name": "n", "created": 2.0}
    s.snapshot_intent(rec)
    s.write_meta(s.meta_snapshot())
    s.close()
    layers = tmp_path / "snapshots"
    layers.mkdir()
    os.rename(tmp_path / "volume.img", layers / "abc.img")  # a crash after the first rename
    if step == "both-moved":
        os.rename(tmp_path / "volume.crc", layers / "abc.crc")
    s = store(tmp_path)
    assert s.layers.ids() == ["abc"]
    assert view(s, 0, 3 * B) == b"p" * (2 * B) + bytes(B)
    assert sread(s, "abc", 0, 2 * B) == b"p" * (2 * B)
    s.write(B, b"w" * B)
    assert view(s, 0, 2 * B) == b"p" * B + b"w" * B
    s.close()


@pytest.mark.parametrize("into", ["head", "layer"])
def test_delete_interrupted_mid_merge_reads_the_same_and_resumes(tmp_path: Path, into: str) -> None:
    s = store(tmp_path)
    rng = random.Random(5)
    model = bytearray(SIZE)
    for _ in range(50):
        model_write(model, s, rng.randrange(0, SIZE // B - 4) * B, rng.randbytes(3 * B))
    s1 = snap(s, "one")
    at1 = bytes(model)
    for _ in range(20):
        model_write(model, s, rng.randrange(0, SIZE // B - 4) * B, rng.randbytes(B))
    if into == "layer":
        snap(s, "two")
    pos, todo, _nxt = s.merge_plan(s1, 0, 1 << 30)
    runs = s.merge_copy(pos, todo)
    written = s.merge_write(pos, runs)
    assert written
    half = written[: len(written) // 2]
    s.merge_entries(pos, runs, half)  # a crash with half the entries given, half not
    s.close(clean=False)
    s = store(tmp_path)
    assert s.layers.ids()[0] == s1
    assert view(s) == bytes(model) and sread(s, s1) == at1
    delete(s, s1)
    assert view(s) == bytes(model) and s1 not in s.layers.ids()
    s.close()


def test_a_drop_during_a_delete_is_merged_again(tmp_path: Path) -> None:
    """A rebuild's DROP may punch a block a delete already merged into the head: the delete
    scans again, so the block still holds the snapshot's data once the layer is gone."""
    s = store(tmp_path)
    data = random.Random(9).randbytes(6 * MiB)
    s.write(0, data)
    sid = snap(s, "one")

    async def meta() -> None:
        s.write_meta(s.meta_snapshot())

    cursors: dict[str, tuple[int, int]] = {}
    first = asyncio.run(snapshots.delete_step(s, sid, cursors, meta, seconds=0))
    assert not first["done"] and s.sums.get(5, 1)[0]  # block 5 merged into the head
    s.drop(5 * B, B)  # punched again: reads through to the layer, for now
    while not asyncio.run(snapshots.delete_step(s, sid, cursors, meta, seconds=0))["done"]:
        pass
    assert not s.layers and view(s, 0, 6 * MiB) == data
    s.close()
