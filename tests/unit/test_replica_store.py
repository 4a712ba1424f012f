"""Unit tests of the replica's on-disk store: meta, refusal, bitmaps, holes and extents."""

from __future__ import annotations

import json
import os

import pytest

from jiva_engine.replica import store as store_mod
from jiva_engine.replica.store import ReplicaStore, StoreError, bytes_to_bits

MiB = 1 << 20


def _map_on_disk(path, name="dirty.map", nregions=64):
    p = path / name
    return bytes_to_bits(p.read_bytes(), nregions) if p.exists() else set()


def test_new_dir_is_epoch_0_sparse_and_meta_complete(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "vol1", 64 * MiB)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["volume"] == "vol1" and meta["size"] == 64 * MiB and meta["epoch"] == 0
    assert meta["format"] == 3 and meta["sector_size"] == 512 and meta["region_size"] == MiB
    assert meta["checksums"] == "crc32c/4096"
    assert meta["kind"] == "replica" and len(meta["id"]) == 36 and "uuid" not in meta
    assert meta["view_epoch"] == 0 and meta["membership"] == [] and meta["voters"] == {}
    assert meta["clean"] is False  # open = running = not clean
    assert s.mode == "WO"
    st = os.stat(d / "volume.img")
    assert st.st_size == 64 * MiB and st.st_blocks == 0  # sparse
    s.close()
    assert json.loads((d / "meta.json").read_text())["clean"] is True
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_text('{"old": 1}')
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    store_mod.atomic_write(target, b'{"new": 2}')
    assert json.loads(target.read_text()) == {"new": 2}
    assert len(calls) == 2  # the temp file, then the directory
    assert os.listdir(tmp_path) == ["meta.json"]


def test_failed_atomic_write_keeps_old_meta(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_text('{"old": 1}')

    def boom(_fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        store_mod.atomic_write(target, b'{"new": 2}')
    assert json.loads(target.read_text()) == {"old": 1}


@pytest.mark.parametrize("volume,size", [("other", 64 * MiB), ("vol1", 32 * MiB)])
def test_refuses_dir_of_another_volume_or_size(tmp_path, volume, size):
    d = tmp_path / "r"
    ReplicaStore(d, "vol1", 64 * MiB).close()
    before = (d / "meta.json").read_bytes()
    with pytest.raises(StoreError, match="belongs to volume 'vol1' of size 67108864"):
        ReplicaStore(d, volume, size)
    assert (d / "meta.json").read_bytes() == before
    assert os.stat(d / "volume.img").st_size == 64 * MiB


def test_refuses_corrupt_meta_and_foreign_image(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "meta.json").write_text("{garbage")
    with pytest.raises(StoreError, match="unreadable"):
        ReplicaStore(d, "v", MiB)
    d2 = tmp_path / "r2"
    d2.mkdir()
    (d2 / "volume.img").write_bytes(b"x" * 4096)
    with pytest.raises(StoreError, match="exists with size 4096"):
        ReplicaStore(d2, "v", MiB)
    assert (d2 / "volume.img").read_bytes() == b"x" * 4096


def test_dirty_bit_is_on_disk_before_the_data_write(tmp_path, monkeypatch):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 64 * MiB)
    seen = []
    real = s.pwrite

    def spy(offset, data):
        seen.append(_map_on_disk(d))  # what a crash at this instant would leave
        real(offset, data)

    monkeypatch.setattr(s, "pwrite", spy)
    s.write(5 * MiB + 4096, b"a" * 4096)
    s.write(5 * MiB + 8192, b"b" * 4096)  # same region: no new metadata write
    s.write(9 * MiB - 512, b"c" * 1024)  # straddles regions 8 and 9
    assert seen == [{5}, {5}, {5, 8, 9}]
    assert s.dirty == {5, 8, 9}
    s.close(clean=False)


def test_no_bitmap_write_when_region_already_dirty(tmp_path, monkeypatch):
    s = ReplicaStore(tmp_path / "r", "v", 8 * MiB)
    s.write(0, b"x" * 512)
    writes = []
    monkeypatch.setattr(s, "write_bitmaps", writes.append)
    for i in range(100):
        s.write(i * 4096, b"y" * 4096)
    assert writes == []
    s.close(clean=False)


def test_dirty_bits_cleared_lazily_after_sync(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 16 * MiB)
    s.write(1 * MiB, b"x" * 4096)
    s.write(3 * MiB, b"x" * 4096)
    # first pass: both were written since the previous pass -> kept (activity-log style)
    cand, seq = s.begin_clear()
    assert cand == set()
    s.write(3 * MiB, b"y" * 4096)  # region 3 stays hot
    cand, seq = s.begin_clear()
    assert cand == {1}
    s.datasync()
    s.write(1 * MiB + 512, b"z" * 512)  # written during the sync: must not be cleared
    assert s.finish_clear(cand, seq) is False
    cand, seq = s.begin_clear()
    cand, seq = s.begin_clear()
    assert cand == {1, 3}
    s.datasync()
    assert s.finish_clear(cand, seq) is True
    s.persist_bitmaps()
    assert s.dirty == set() and _map_on_disk(d, nregions=16) == set()
    s.close()


def test_crash_leaves_sticky_dirty_bits(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 16 * MiB)
    s.write(2 * MiB, b"x" * 4096)
    os.close(s.fd)  # "crash": no clean close
    s2 = ReplicaStore(d, "v", 16 * MiB)
    assert s2.dirty == {2} and s2.sticky == {2}
    for _ in range(3):
        cand, seq = s2.begin_clear()
        s2.finish_clear(cand, seq)
    assert s2.dirty == {2}  # only CLEAR_DIRTY may drop what a crash left
    s2.close()
    assert _map_on_disk(d, nregions=16) == {2}
    assert json.loads((d / "meta.json").read_text())["clean"] is False
    s3 = ReplicaStore(d, "v", 16 * MiB)
    s3.clear_regions([2], s3.wseq)
    s3.close()
    assert _map_on_disk(d, nregions=16) == set()
    assert json.loads((d / "meta.json").read_text())["clean"] is True


def test_punch_hole_reads_zeroes_and_frees_blocks(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 8 * MiB)
    s.write(0, b"\xab" * (2 * MiB))
    blocks_before = os.stat(d / "volume.img").st_blocks
    s.write(MiB, None, 512 * 1024)
    assert s.pread(MiB, 512 * 1024) == bytes(512 * 1024)
    assert s.pread(MiB - 512, 512) == b"\xab" * 512
    assert s.pread(MiB + 512 * 1024, 512) == b"\xab" * 512
    assert os.stat(d / "volume.img").st_blocks < blocks_before
    assert os.stat(d / "volume.img").st_size == 8 * MiB
    s.close()


def test_punch_fallback_writes_zeroes(tmp_path, monkeypatch):
    s = ReplicaStore(tmp_path / "r", "v", 4 * MiB)
    s.write(0, b"\x11" * 8192)
    monkeypatch.setattr(store_mod, "_fallocate", None)
    s.write(4096, None, 2048)
    assert s.pread(0, 8192) == b"\x11" * 4096 + bytes(2048) + b"\x11" * 2048
    s.close()


def test_extents_follow_written_data(tmp_path):
    s = ReplicaStore(tmp_path / "r", "v", 64 * MiB)
    assert s.extents(0, 64 * MiB) == []
    s.write(4 * MiB, b"x" * MiB)
    s.write(10 * MiB, b"y" * (2 * MiB))
    runs = s.extents(0, 64 * MiB)
    assert runs == [[4 * MiB, MiB], [10 * MiB, 2 * MiB]]
    assert s.extents(10 * MiB + 4096, 8192) == [[10 * MiB + 4096, 8192]]
    assert s.extents(20 * MiB, MiB) == []
    s.write(10 * MiB, None, MiB)
    assert s.extents(0, 64 * MiB) == [[4 * MiB, MiB], [11 * MiB, MiB]]
    s.close()


def _chunks(s: ReplicaStore, since: int) -> set[int]:
    return bytes_to_bits(bytes(s.missed[since]), s.nchunks)


def test_change_tracking_is_4k_fine_seeded_persisted_and_dropped(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 16 * MiB)
    assert (
        s.mgran == 4096 and json.loads((d / "meta.json").read_text())["missed_granularity"] == 4096
    )
    s.meta["epoch"] = 4
    s.write(0, b"x" * 512)  # dirty region 0 when tracking starts: the seed
    s.start_tracking(4)
    s.write(7 * MiB + 8192, b"x" * 8192)  # chunks 2-3 of region 7
    s.write(0, b"x" * 512)
    s.write_meta(s.meta_snapshot())
    assert _chunks(s, 4) == {0, 7 * 256 + 2, 7 * 256 + 3}
    # the seed (region 0, dirty at the start) is reported as a whole region until dropped
    assert s.missed_runs(4) == [[0, MiB], [7 * MiB + 8192, 8192]]
    s.drop_seed([4])
    assert s.missed_runs(4) == [[0, 4096], [7 * MiB + 8192, 8192]]
    s.write_meta(s.meta_snapshot())
    s.persist_bitmaps()
    os.close(s.fd)  # crash: regions 0 and 7 are still dirty on disk
    s2 = ReplicaStore(d, "v", 16 * MiB)
    # chunk bits may not have reached the disk for dirty regions: they count as wholly changed
    assert s2.missed_runs(4) == [[0, MiB], [7 * MiB, MiB]]
    s2.stop_tracking([4])
    s2.write_meta(s2.meta_snapshot())
    s2.persist_bitmaps()
    assert not (d / "missed-4.map").exists()
    assert json.loads((d / "meta.json").read_text())["tracking"] == []
    s2.close()


def test_cleared_region_keeps_its_fine_change_bits_across_a_crash(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 16 * MiB)
    s.meta["epoch"] = 2
    s.start_tracking(2)
    s.drop_seed([2])
    s.write_meta(s.meta_snapshot())
    s.write(3 * MiB + 4096, b"y" * 4096)
    cand, seq = s.begin_clear()
    cand, seq = s.begin_clear()  # second pass: region 3 idle since the previous one
    os.fdatasync(s.fd)
    assert s.finish_clear(cand, seq) and 3 not in s.dirty
    s.persist_bitmaps()  # change maps are written before dirty.map
    os.close(s.fd)  # crash
    s2 = ReplicaStore(d, "v", 16 * MiB)
    assert s2.dirty == set()
    assert s2.missed_runs(2) == [[3 * MiB + 4096, 4096]]
    s2.close()


def _as_format_1(meta: dict) -> dict:
    """The meta.json the format-1 engine wrote for the same folder."""
    v1 = {k: v for k, v in meta.items()
          if k not in ("kind", "id", "view_epoch", "member_epoch", "voters")}  # fmt: skip
    v1.update(format=1, uuid=meta["id"])
    return v1


def test_old_region_granular_change_map_is_widened(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.close()
    meta = _as_format_1(json.loads((d / "meta.json").read_text()))
    del meta["missed_granularity"]  # written by the first format-1 engine
    meta["tracking"] = [{"since": 3}]
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "missed-3.map").write_bytes(bytes([0b0100]))  # region 2 of 4
    s2 = ReplicaStore(d, "v", 4 * MiB)
    assert s2.missed_runs(3) == [[2 * MiB, MiB]]
    s2.close()
    s3 = ReplicaStore(d, "v", 4 * MiB)  # converted on disk, granularity recorded: format 3
    assert s3.mgran == 4096 and s3.missed_runs(3) == [[2 * MiB, MiB]]
    assert json.loads((d / "meta.json").read_text())["format"] == 3
    s3.close()


def test_truncated_fine_change_map_means_everything_changed(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.start_tracking(0)
    s.persist_bitmaps()
    s.write_meta(s.meta_snapshot())
    s.close()
    (d / "missed-0.map").write_bytes(b"\0" * 7)  # torn
    s2 = ReplicaStore(d, "v", 4 * MiB)
    assert s2.missed_runs(0) == [[0, 4 * MiB]]
    s2.close()


def test_lost_change_map_means_everything_changed(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.start_tracking(0)
    s.drop_seed([0])
    s.write(4096, b"z" * 4096)
    s.persist_bitmaps()
    s.write_meta(s.meta_snapshot())
    s.close()
    assert (d / "missed-0.map").exists()
    (d / "missed-0.map").unlink()  # lost
    s2 = ReplicaStore(d, "v", 4 * MiB)
    assert s2.missed_runs(0) == [[0, 4 * MiB]]
    s2.close()


def test_missed_granularity_keeps_big_maps_under_4_mib():
    from jiva_engine.replica.store import missed_granularity

    assert missed_granularity(1 << 30) == 4096
    assert missed_granularity(128 << 30) == 4096
    assert missed_granularity(1 << 40) == 32768
    assert (1 << 40) // missed_granularity(1 << 40) // 8 <= 4 * MiB


@pytest.mark.parametrize(
    "off,n,ok",
    [
        (0, 512, True),
        (0, 0, False),
        (1, 512, False),
        (0, 100, False),
        (4 * MiB - 512, 512, True),
        (4 * MiB, 512, False),
        (4 * MiB - 512, 1024, False),
        (-512, 512, False),
    ],
)
def test_range_validation(tmp_path, off, n, ok):
    s = ReplicaStore(tmp_path / "r", "v", 4 * MiB)
    assert (s.check_range(off, n) is None) == ok
    s.close()


def test_fragmented_extents_are_coarsened_not_truncated(tmp_path):
    s = ReplicaStore(tmp_path / "r", "v", 8 * MiB)
    for i in range(0, 8 * MiB, 64 * 1024):  # 128 separate 4K runs
        s.write(i, b"x" * 4096)
    fine = s.extents(0, 8 * MiB)
    assert len(fine) == 128
    coarse = s.extents(0, 8 * MiB, max_runs=5)
    assert len(coarse) <= 5
    covered = set()
    for off, ln in coarse:
        covered.update(range(off, off + ln, 4096))
    assert all(off in covered for off, _ in fine)  # never under-reports
    assert s.extents(MiB + 4096, MiB, max_runs=1) == [[MiB + 4096, MiB]]  # clipped to the range
    s.close()


def test_dirty_map_is_fdatasynced_before_the_data_write(tmp_path, monkeypatch):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 16 * MiB)
    events = []
    real_sync, real_pwrite = os.fdatasync, s.pwrite

    def sync_spy(fd):
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]))
        real_sync(fd)

    def pwrite_spy(offset, data):
        events.append(("data", offset))
        real_pwrite(offset, data)

    monkeypatch.setattr(os, "fdatasync", sync_spy)
    monkeypatch.setattr(s, "pwrite", pwrite_spy)
    s.write(3 * MiB, b"x" * 512)
    s.write(3 * MiB + 512, b"y" * 512)
    assert events == [("sync", "dirty.map"), ("data", 3 * MiB), ("data", 3 * MiB + 512)]
    s.close(clean=False)


def test_format_1_folder_is_migrated_keeping_its_identity_data_and_maps(tmp_path):
    """A folder written by the format-1 engine (membership by address, "uuid") opens as format 3:
    the uuid becomes the replica id, the stored membership the accepted view, change maps stay."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "vol1", 64 * MiB)
    s.write(3 * MiB, b"\x5a" * 4096)
    s.start_tracking(7)
    s.write(5 * MiB, b"\x6b" * 4096)
    s.close()
    v1 = _as_format_1(json.loads((d / "meta.json").read_text()))
    v1.update(uuid="0b7c3cde-3f8f-4c43-9d0a-7e4dd3a1a001", epoch=7,
              membership=["10.0.0.1:9700", "10.0.0.2:9700"])  # fmt: skip
    v1["tracking"] = [{"since": 7, "seed": []}]
    (d / "meta.json").write_text(json.dumps(v1))
    s = ReplicaStore(d, "vol1", 64 * MiB)
    try:
        assert s.id == "0b7c3cde-3f8f-4c43-9d0a-7e4dd3a1a001"
        assert s.meta["format"] == 3 and "uuid" not in s.meta
        assert s.meta["view_epoch"] == s.meta["member_epoch"] == 7 and s.epoch == 7
        assert s.mode == "RW"
        assert s.meta["membership"] == ["10.0.0.1:9700", "10.0.0.2:9700"]
        assert s.excluded[7] is None  # older map: no list of excluded members
        assert [5 * MiB, 4096] in s.missed_runs(7)
        assert s.pread(3 * MiB, 4096) == b"\x5a" * 4096
    finally:
        s.close()
    on_disk = json.loads((d / "meta.json").read_text())
    assert on_disk["format"] == 3 and on_disk["id"] == "0b7c3cde-3f8f-4c43-9d0a-7e4dd3a1a001"


def test_unknown_format_and_a_witness_folder_are_refused(tmp_path):
    d = tmp_path / "r"
    ReplicaStore(d, "vol1", 64 * MiB).close()
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "format": 4}))
    with pytest.raises(StoreError, match="unsupported format 4"):
        ReplicaStore(d, "vol1", 64 * MiB)
    (d / "meta.json").write_text(json.dumps({**meta, "kind": "witness"}))
    with pytest.raises(StoreError, match="witness's metadata"):
        ReplicaStore(d, "vol1", 64 * MiB)


# ---------------------------------------------------------------------------------------------
# growing (online grow: GROW, or `jiva replica --size` larger than the recorded size)


def test_grow_extends_sparse_keeps_data_and_records_the_size(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(4 * MiB - 4096, b"e" * 4096)
    s.write(0, b"a" * 4096)
    assert "past the end" in (s.check_range(4 * MiB, 4096) or "")
    assert s.grow(6 * MiB + 512) is True  # need not be region-aligned
    assert os.stat(d / "volume.img").st_size == 6 * MiB + 512
    assert json.loads((d / "meta.json").read_text())["size"] == 6 * MiB + 512
    assert s.nregions == 7 and len((d / "dirty.map").read_bytes()) == 1
    assert s.pread(0, 4096) == b"a" * 4096 and s.pread(4 * MiB - 4096, 4096) == b"e" * 4096
    assert s.pread(4 * MiB, 2 * MiB + 512) == bytes(2 * MiB + 512)  # the new part: zeroes
    assert s.check_range(6 * MiB, 512) is None
    s.write(6 * MiB, b"n" * 512)  # the last (partial) new region takes writes
    assert s.extents(4 * MiB, 2 * MiB + 512) == [[6 * MiB, 512]]  # the rest stays a hole
    assert s.grow(6 * MiB + 512) is False  # idempotent
    s.close()
    s2 = ReplicaStore(d, "v", 6 * MiB + 512)  # reopened at the new size
    assert s2.pread(6 * MiB, 512) == b"n" * 512 and s2.pread(0, 4096) == b"a" * 4096
    s2.close()


@pytest.mark.parametrize(
    "size,why",
    [
        (2 * MiB, "refusing to shrink volume 'v' from 4194304 to 2097152 bytes"),
        (4 * MiB + 100, "must be a positive multiple of 512"),
        (0, "must be a positive multiple of 512"),
        (True, "must be a positive multiple of 512"),
        ("8M", "must be a positive multiple of 512"),
        (store_mod.MAX_SIZE + 512, "above the largest volume"),
    ],
)
def test_grow_refuses_shrinking_and_bad_sizes_changing_nothing(tmp_path, size, why):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    meta = (d / "meta.json").read_bytes()
    assert why in (s.check_grow(size) or "")
    with pytest.raises(StoreError, match=why.split(" (")[0]):
        s.extend(size)
    assert s.size == 4 * MiB and os.stat(d / "volume.img").st_size == 4 * MiB
    assert (d / "meta.json").read_bytes() == meta
    s.close()


def test_grow_extends_change_maps_keeping_their_bits(tmp_path):
    """A replica away during a grow catches up from its peers' change maps: they keep the runs
    written before the grow and record the writes past the old end."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.start_tracking(5, ["away"])
    s.drop_seed([5])
    s.write(8192, b"x" * 4096)
    s.grow(8 * MiB)
    s.write(7 * MiB, b"y" * 8192)
    assert s.missed_runs(5) == [[8192, 4096], [7 * MiB, 8192]]
    s.persist_bitmaps()
    s.write_meta(s.meta_snapshot())
    s.close()
    assert len((d / "missed-5.map").read_bytes()) == 8 * MiB // 4096 // 8
    s2 = ReplicaStore(d, "v", 8 * MiB)  # the map is read at its new length (not "all changed")
    assert s2.missed_runs(5) == [[8192, 4096], [7 * MiB, 8192]]
    assert s2.dirty_report()["excluded"] == {"5": ["away"]}
    s2.close()


def test_grow_keeps_the_granularity_of_existing_change_maps(tmp_path, monkeypatch):
    """Change-map bits mean `missed_granularity` bytes as meta.json says: a grow never changes
    that while maps exist (a map read at another granularity would name the wrong chunks). With
    no map the granularity follows the new size; maps too big at the old one are refused."""
    monkeypatch.setattr(store_mod, "MISSED_MAX_BITS", 1024)  # 4 KiB chunks up to 4 MiB volumes
    monkeypatch.setattr(store_mod, "MISSED_GROW_MAX_BITS", 4096)
    s = ReplicaStore(tmp_path / "a", "v", 4 * MiB)
    assert s.mgran == 4096
    s.grow(8 * MiB)  # no change map: coarser, the map stays small
    assert s.mgran == 8192 and s.meta["missed_granularity"] == 8192
    s.close()
    t = ReplicaStore(tmp_path / "b", "v", 4 * MiB)
    t.start_tracking(3, ["away"])
    t.grow(8 * MiB)
    assert t.mgran == 4096 and len(t.missed[3]) == 8 * MiB // 4096 // 8
    assert "while change maps exist" in (t.check_grow(32 * MiB) or "")
    t.stop_tracking([3])
    t.persist_bitmaps()  # the dropped map's file is gone
    t.start_tracking(4, ["away"])  # the next first map takes the granularity of the size
    assert t.mgran == 8192 and len(t.missed[4]) == 8 * MiB // 8192 // 8
    t.close()


def test_started_with_a_larger_size_the_folder_grows_a_smaller_one_is_refused(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(0, b"k" * 4096)
    s.close()
    s2 = ReplicaStore(d, "v", 16 * MiB)
    assert s2.size == 16 * MiB and s2.meta["size"] == 16 * MiB
    assert s2.pread(0, 4096) == b"k" * 4096
    s2.close()
    meta = (d / "meta.json").read_bytes()
    with pytest.raises(
        StoreError, match="of size 16777216 bytes; refusing to shrink it to 4194304"
    ):
        ReplicaStore(d, "v", 4 * MiB)
    assert (d / "meta.json").read_bytes() == meta
    assert os.stat(d / "volume.img").st_size == 16 * MiB


def test_grow_interrupted_before_meta_recorded_it_is_cut_back(tmp_path):
    """A grow extends the data file and syncs it before meta.json names the new size: a crash
    in between leaves a longer file, whose tail was never acknowledged; it is cut back."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(0, b"q" * 4096)
    s.extend(8 * MiB)  # crash here: data file extended, meta still 4 MiB
    s.close(clean=False)
    assert json.loads((d / "meta.json").read_text())["size"] == 4 * MiB
    assert os.stat(d / "volume.img").st_size == 8 * MiB
    s2 = ReplicaStore(d, "v", 4 * MiB)
    assert os.stat(d / "volume.img").st_size == 4 * MiB and s2.pread(0, 4096) == b"q" * 4096
    s2.close()
    with open(d / "volume.img", "r+b") as f:  # shorter than meta says: data lost, refused
        f.truncate(2 * MiB)
    with pytest.raises(StoreError, match="is 2097152 bytes but meta says 4194304"):
        ReplicaStore(d, "v", 4 * MiB)
