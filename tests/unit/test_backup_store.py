"""The backup store (jiva_engine/backup/store.py): content-addressed blocks, deduplication,
incremental size, damaged and missing blocks named, delete/prune keep shared blocks, an
interrupted backup leaves no manifest and does no harm, one writer at a time."""

from __future__ import annotations

import json
import os
import random

import pytest

from jiva_engine.backup.store import BackupError, BackupStore, BadBlock, StoreBusy

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB  # small chunks keep the tests fast; the logic is the same as with 1 MiB


def volume(size: int, seed: int = 1) -> bytearray:
    """A volume image: random data with some all-zero chunks and a repeated chunk."""
    rnd = random.Random(seed)
    img = bytearray(rnd.randbytes(size))
    img[2 * BS : 4 * BS] = bytes(2 * BS)  # a hole: never stored
    img[5 * BS : 6 * BS] = img[0:BS]  # the same data twice: stored once
    return img


def backup(store: BackupStore, name: str, img: bytes | bytearray, vol: str = "v1") -> dict:
    with store.lock(True, "test"):
        w = store.writer(name, vol, len(img), block_size=BS, snapshot=f"snap-{name}")
        for i in range(w.chunks):
            off, n = w.extent(i)
            w.add(i, bytes(img[off : off + n]))
        return w.commit()


def restore(store: BackupStore, name: str) -> bytes:
    doc = store.manifest(name)
    out = bytearray(doc["size"])
    for i in range(-(-doc["size"] // doc["block_size"])):
        data = store.read_chunk(doc, i)
        if data is not None:
            out[i * doc["block_size"] : i * doc["block_size"] + len(data)] = data
    return bytes(out)


@pytest.fixture
def store(tmp_path):
    return BackupStore(tmp_path / "store", create=True)


def test_backup_restores_byte_identical_and_skips_zeroes_and_duplicates(store):
    img = volume(10 * BS + 12345)  # a short last chunk
    doc = backup(store, "b1", img)
    assert restore(store, "b1") == img
    assert doc["chunks"] == 11 - 2 and "2" not in doc["blocks"] and "3" not in doc["blocks"]
    assert doc["blocks"]["5"] == doc["blocks"]["0"]
    assert doc["blocks_new"] == 8 and store.usage()["blocks"] == 8  # chunk 5 = chunk 0
    assert doc["bytes"] == 8 * BS + 12345  # every non-zero chunk, logically
    assert doc["bytes_new"] == 8 * BS - BS + 12345
    assert store.manifest("b1")["snapshot"] == "snap-b1"
    assert [d["name"] for d in store.backups()] == ["b1"]
    assert store.verify("b1") == []


def test_second_backup_stores_only_what_changed(store):
    img = volume(32 * BS)
    first = backup(store, "b1", img)
    before = store.usage()["bytes"]
    img[7 * BS + 100 : 7 * BS + 200] = os.urandom(100)  # one chunk changes
    img[20 * BS : 21 * BS] = os.urandom(BS)  # another one entirely
    second = backup(store, "b2", img)
    assert second["blocks_new"] == 2 and second["bytes_new"] == 2 * BS
    grew = store.usage()["bytes"] - before
    assert grew == second["bytes_stored_new"] and 2 * BS <= grew < 2 * BS + 100
    assert first["bytes_new"] > 20 * BS
    assert restore(store, "b2") == img and restore(store, "b1") != img


def test_compressible_data_is_stored_compressed_and_checked_uncompressed(store):
    img = bytearray(b"abcd" * (4 * BS // 4))
    doc = backup(store, "b1", img)
    assert doc["bytes"] == 4 * BS and doc["blocks_new"] == 1  # four times the same chunk
    assert doc["bytes_new"] == BS and 0 < doc["bytes_stored_new"] < BS // 10
    assert restore(store, "b1") == img


def flip_byte(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compressible", [False, True])
def test_a_damaged_block_is_named_never_returned(store, compressible):
    img = bytearray(b"x" * (4 * BS)) if compressible else volume(4 * BS)
    doc = backup(store, "b1", img)
    digest = doc["blocks"]["1"]
    path = store.block_path(digest)
    flip_byte(path, path.stat().st_size // 2)
    if compressible:  # the same block backs chunks 0..3: every one of them fails
        assert len(store.verify("b1")) == 4
    with pytest.raises(BadBlock) as e:
        restore(store, "b1")
    msg = str(e.value)
    assert "backup b1" in msg and str(path) in msg and "damaged" in msg
    assert (e.value.index, e.value.offset) == ((0, 0) if compressible else (1, BS))
    bad = store.verify("b1")
    assert [b.index for b in bad] == ([0, 1, 2, 3] if compressible else [1])


def test_a_truncated_block_and_a_missing_block_are_named(store):
    img = volume(6 * BS)
    doc = backup(store, "b1", img)
    p1, p4 = store.block_path(doc["blocks"]["1"]), store.block_path(doc["blocks"]["4"])
    p1.write_bytes(p1.read_bytes()[:-10])
    p4.unlink()
    bad = {b.index: b for b in store.verify("b1")}
    assert sorted(bad) == [1, 4]
    assert "missing" in str(bad[4]) and str(p4) in str(bad[4])
    assert f"offset {4 * BS}" in str(bad[4])
    assert "damaged" in str(bad[1])


def test_a_damaged_manifest_is_refused(store):
    backup(store, "b1", volume(4 * BS))
    path = store.manifest_path("b1")
    doc = json.loads(path.read_text())
    doc["blocks"]["0"], doc["blocks"]["1"] = doc["blocks"]["1"], doc["blocks"]["0"]
    path.write_text(json.dumps(doc))
    with pytest.raises(BackupError, match="manifest .* damaged"):
        store.manifest("b1")
    assert "error" in store.backups()[0]
    with pytest.raises(BackupError, match="not removing any block"):
        store.gc()  # never guesses which blocks a damaged manifest needs


def test_delete_and_prune_keep_shared_blocks(store):
    img = volume(16 * BS)
    backup(store, "b1", img)
    img[4 * BS : 5 * BS] = os.urandom(BS)
    backup(store, "b2", img)
    img[9 * BS : 10 * BS] = os.urandom(BS)
    backup(store, "b3", img)
    backup(store, "w1", volume(4 * BS, seed=7), vol="other")
    n_all = store.usage()["blocks"]
    res = store.prune("v1", keep=1)
    assert res["deleted"] == ["b1", "b2"] and res["kept"] == ["b3"]
    assert res["blocks_removed"] == 2  # the old versions of chunks 4 and 9, nothing else
    assert store.usage()["blocks"] == n_all - 2
    assert restore(store, "b3") == img and store.verify("w1") == []
    res = store.delete("b3")
    assert res["deleted"] == ["b3"] and store.verify("w1") == []
    assert store.usage()["blocks"] == 2  # w1's only (its chunks 2 and 3 are zeroes)
    assert [d["name"] for d in store.backups()] == ["w1"]
    with pytest.raises(BackupError, match="no backup b3"):
        store.delete("b3")


def test_an_interrupted_backup_leaves_no_manifest_and_does_no_harm(store, tmp_path):
    img = volume(8 * BS)
    backup(store, "b1", img)
    before = store.usage()
    img2 = volume(8 * BS, seed=2)
    with store.lock(True, "test"):
        w = store.writer("b2", "v1", len(img2), block_size=BS)
        for i in range(4, 8):  # half of it, then the process "dies"
            w.add(i, bytes(img2[i * BS : (i + 1) * BS]))
    # and a temp file an interrupted atomic_write left
    (store.block_path("ab" * 32).parent).mkdir(exist_ok=True)
    (store.block_path("ab" * 32).parent / f".{'ab' * 32}.tmp").write_bytes(b"partial")
    assert store.names() == ["b1"]
    assert restore(store, "b1") == img
    # the same name can be used again, and a gc removes what the interrupted one left
    res = store.gc()
    assert res["blocks_removed"] == 4 and store.usage() == before
    assert not list(store.root.rglob("*.tmp"))
    backup(store, "b2", img2)
    assert restore(store, "b2") == img2


def test_one_writer_at_a_time(store):
    with store.lock(True, "backup create v1/b1"):
        busy = r"in use \(backup create v1/b1, pid"
        with pytest.raises(StoreBusy, match=busy), store.lock(True, "another"):
            pass
        with pytest.raises(StoreBusy):
            store.delete("whatever")
        with pytest.raises(StoreBusy), store.lock(False):
            pass
    busy = pytest.raises(StoreBusy, match="by a restore or verify")
    with store.lock(False), store.lock(False), busy, store.lock(True):
        pass  # readers share it, a writer waits for them


def test_names_and_stores_are_checked(tmp_path, store):
    with pytest.raises(BackupError, match="not a backup store"):
        BackupStore(tmp_path / "nothing")
    with pytest.raises(BackupError, match="invalid backup name"):
        store.writer("../x", "v1", BS)
    backup(store, "b1", volume(2 * BS))
    with pytest.raises(BackupError, match="exists already"):
        store.writer("b1", "v1", BS)
    with pytest.raises(BackupError, match="block size"):
        store.writer("b2", "v1", BS, block_size=1000)
    with pytest.raises(BackupError, match="keep"):
        store.prune("v1", keep=0)
    assert BackupStore(store.root).names() == ["b1"]  # reopened without create
