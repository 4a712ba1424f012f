"""Per-block checksums of a replica store (real files): writes record them, reads check them,
partial writes never bless damage, crashes never leave a false mismatch, old folders migrate."""

from __future__ import annotations

import json
import os

import pytest

from jiva_engine.iscsi.crc import crc32c
from jiva_engine.replica import checksums
from jiva_engine.replica.checksums import BLOCK, ZERO_SUM, BlockSums, block_sums, encode
from jiva_engine.replica.store import ReplicaStore

MiB = 1 << 20


def flip(path, offset: int) -> None:
    """Flip one byte of a file behind the store's back (bit rot)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def bad(s: ReplicaStore, offset: int, length: int) -> list[int]:
    return s.read_verified([(offset, length)])[1]


def test_encoding_reserves_zero_for_zeroes_and_pads_a_short_last_block():
    assert encode(0) == ZERO_SUM and encode(5) == 5
    assert block_sums(bytes(BLOCK)) == [ZERO_SUM]
    assert block_sums(b"a" * 512) == [encode(crc32c(b"a" * 512 + bytes(BLOCK - 512)))]
    assert len(block_sums(b"x" * (3 * BLOCK))) == 3


def test_every_write_path_records_checksums_and_reads_find_a_flipped_byte(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    try:
        s.write(0, b"a" * 8192)  # aligned
        s.write(MiB + 512, b"b" * 1024)  # inside one block
        s.write(2 * MiB + 3584, b"c" * 5120)  # across two blocks, both partial
        s.write(3 * MiB, None, 3 * BLOCK)  # unmap
        for off, n in [(0, 8192), (MiB, BLOCK), (2 * MiB, 3 * BLOCK), (3 * MiB, 4 * BLOCK)]:
            assert bad(s, off, n) == []
        assert s.pread(MiB + 512, 1024) == b"b" * 1024
        flip(d / "volume.img", 4096 + 17)  # block 1
        data, found = s.read_verified([(0, 8192)])
        assert found == [1]
        assert bad(s, 0, 4096) == [] and bad(s, 4096 + 512, 512) == [1]  # widened to the block
        flip(d / "volume.img", 3 * MiB + 100)  # a hole now holds a non-zero byte
        assert bad(s, 3 * MiB, BLOCK) == [(3 * MiB) // BLOCK]
        s.write(4096, b"z" * 4096)  # a whole-block write replaces the bad copy
        assert bad(s, 0, 8192) == []
    finally:
        s.close(clean=False)


def test_a_partial_write_over_a_corrupt_block_keeps_it_corrupt(tmp_path):
    """Merging new bytes into a block that failed its check must not give the damage a valid
    checksum: it stays bad until a whole-block write (the controller's repair) replaces it."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", MiB)
    try:
        s.write(0, b"q" * BLOCK)
        flip(d / "volume.img", 3000)
        s.write(0, b"n" * 512)
        assert bad(s, 0, BLOCK) == [0]
        s.write(0, b"r" * BLOCK)
        assert bad(s, 0, BLOCK) == [] and s.pread(0, BLOCK) == b"r" * BLOCK
    finally:
        s.close(clean=False)


def test_a_corrupt_checksum_file_entry_is_reported_like_bad_data(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", MiB)
    s.write(8 * BLOCK, b"k" * BLOCK)
    s.close()
    flip(d / checksums.NAME, 8 * 4 + 1)
    s = ReplicaStore(d, "v", MiB)
    try:
        assert bad(s, 8 * BLOCK, BLOCK) == [8]
    finally:
        s.close(clean=False)


def test_a_crash_between_data_and_checksum_never_reads_as_a_mismatch(tmp_path):
    """Power loss after the data reached the disk but not its checksum (or the reverse): the
    region is dirty at open (write intent first), so its checksums are computed again from the
    data; the controller resynchronises dirty regions from its peers."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(2 * MiB, b"1" * (2 * BLOCK))
    s.datasync()
    old = (d / checksums.NAME).read_bytes()
    s.write(2 * MiB, b"2" * (2 * BLOCK))
    s.persist_bitmaps()
    os.close(s.fd)  # "crash": no clean close, dirty bits stay
    s.sums.close()
    (d / checksums.NAME).write_bytes(old)  # the new checksums never reached the disk
    s = ReplicaStore(d, "v", 4 * MiB)
    try:
        assert 2 in s.dirty and s.rehashed == 2 * BLOCK  # only the allocated part is read
        assert bad(s, 2 * MiB, 2 * BLOCK) == [] and s.pread(2 * MiB, 3) == b"222"
    finally:
        s.close(clean=False)


def test_a_format_2_folder_gets_checksums_for_its_data_at_open(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(MiB, b"m" * (3 * BLOCK))
    s.close()
    (d / checksums.NAME).unlink()
    meta = json.loads((d / "meta.json").read_text())
    meta["format"] = 2
    del meta["checksums"]
    (d / "meta.json").write_text(json.dumps(meta))
    s = ReplicaStore(d, "v", 4 * MiB)
    try:
        assert s.meta["format"] == 3 and s.rehashed >= 3 * BLOCK
        assert bad(s, MiB, 3 * BLOCK) == []
        flip(d / "volume.img", MiB + BLOCK + 5)
        assert bad(s, MiB, 3 * BLOCK) == [MiB // BLOCK + 1]
    finally:
        s.close(clean=False)


def test_growing_keeps_old_entries_and_new_blocks_read_as_zeroes(tmp_path):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", MiB + 512)  # a short last block
    try:
        s.write(MiB, b"t" * 512)
        assert bad(s, MiB, 512) == []
        s.grow(2 * MiB)
        assert bad(s, MiB, BLOCK) == [] and bad(s, 2 * MiB - BLOCK, BLOCK) == []
        assert s.sums.get(0, 1) == (0,) and os.path.getsize(d / checksums.NAME) == 2 * MiB // 1024
    finally:
        s.close(clean=False)


def test_blocksums_file_is_sparse_and_sync_is_safe(tmp_path):
    b = BlockSums(tmp_path, 64 * MiB)
    try:
        assert b.created and b.get(100, 2) == (0, 0)
        b.put(100, [7, 8])
        b.sync()
        assert b.get(100, 2) == (7, 8)
        assert os.stat(b.path).st_blocks * 512 < 64 * MiB // 1024  # sparse
    finally:
        b.close()


@pytest.mark.parametrize("size", [MiB, MiB + 512])
def test_unmap_of_partial_blocks_zeroes_them_and_stays_verifiable(tmp_path, size):
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", size)
    try:
        s.write(0, b"u" * (size - size % BLOCK))
        s.write(512, None, size - 1024)
        data, found = s.read_verified([(0, size)])
        assert found == [] and data[:512] == b"u" * 512 and data[512:-512] == bytes(size - 1024)
    finally:
        s.close(clean=False)


def test_an_unmap_whose_cleared_entries_were_lost_reads_as_zeroes_after_a_crash(tmp_path):
    """The data was punched but the crash lost the zeroed entries: the region is dirty at open,
    so its holes get entry 0 again (no false mismatch)."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", 4 * MiB)
    s.write(MiB, b"w" * (4 * BLOCK))
    s.datasync()
    old = (d / checksums.NAME).read_bytes()
    s.write(MiB, None, 4 * BLOCK)
    s.persist_bitmaps()
    s.datasync()
    os.close(s.fd)
    s.sums.close()
    (d / checksums.NAME).write_bytes(old)  # the entries still name the old data
    s = ReplicaStore(d, "v", 4 * MiB)
    try:
        assert bad(s, MiB, 4 * BLOCK) == [] and s.pread(MiB, 8) == bytes(8)
    finally:
        s.close(clean=False)


def test_a_poisoned_block_fails_until_a_whole_block_write(tmp_path):
    """A rebuild copies a block no member has good as poisoned: zeroes that fail their check."""
    d = tmp_path / "r"
    s = ReplicaStore(d, "v", MiB)
    try:
        s.write(2 * BLOCK, bytes(BLOCK))
        s.poison([(2 * BLOCK, BLOCK)])
        assert bad(s, 0, 4 * BLOCK) == [2]
        s.write(2 * BLOCK + 512, b"p" * 512)  # a partial write keeps it bad
        assert bad(s, 2 * BLOCK, BLOCK) == [2]
        s.write(2 * BLOCK, b"g" * BLOCK)
        assert bad(s, 0, 4 * BLOCK) == []
    finally:
        s.close(clean=False)
