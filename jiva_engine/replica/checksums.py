"""Per-block checksums of a replica's data file (docs/ENGINE.md "Checksums").

One CRC32C per 4 KiB block of `volume.img`, kept in `volume.crc`: a sparse file of little-endian
u32 entries, mapped into memory. CRC32C because the `crc32c` package computes it with the CPU's
CRC instruction (SSE4.2 / ARMv8), ~10 GB/s, so a 4 KiB block costs well under a microsecond, and
the iSCSI digests already use it; it detects every burst error up to 32 bits and any odd number
of flipped bits, which is what bit rot and torn sectors look like. It is not a defence against
an adversary (the data is not secret from the host's root anyway).

Entry 0 means "this block reads as zeroes" (a hole: never written, or unmapped), so the file
needs no initialisation and grows sparse. A block whose CRC32C happens to be 0 is stored as the
CRC of a zero block instead (`encode`); comparing encoded values keeps both cases exact except
for that one 2^-32 collision. The volume's last block may be shorter than 4 KiB: it is checked
as if padded with zeroes.

Only the event-loop thread reads or changes the entries; `sync` (the data sync's companion) may
run in a worker thread.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from jiva_engine.iscsi.crc import crc32c

BLOCK = 4096
BSHIFT = 12
MASK = BLOCK - 1
NAME = "volume.crc"
ZERO_SUM = crc32c(bytes(BLOCK))
NONZERO = re.compile(rb"[^\x00]+")  # runs of bytes that are not zero (entries, index bytes)
_U32 = struct.Struct("<I")
# the entry of a block known to have no good copy anywhere (its data reads as zeroes, whose
# checksum this never is): it fails every check until a whole-block write replaces it
POISON = ZERO_SUM ^ 1


def encode(crc: int) -> int:
    """The stored form of a block's CRC32C (0 is reserved for "reads as zeroes")."""
    return crc or ZERO_SUM


def block_sums(data: bytes | bytearray | memoryview) -> list[int]:
    """Encoded checksums of consecutive blocks of `data` (a short last block padded)."""
    n = len(data)
    if n == BLOCK:  # the common case, without the loop
        return [crc32c(data) or ZERO_SUM]
    mv = data if isinstance(data, memoryview) else memoryview(data)
    out = [encode(crc32c(mv[i : i + BLOCK])) for i in range(0, n - n % BLOCK, BLOCK)]
    if n % BLOCK:
        out.append(encode(crc32c(bytes(mv[n - n % BLOCK :]) + bytes(BLOCK - n % BLOCK))))
    return out


class BlockSums:
    """The checksum entries of one data file of `size` bytes, in DIR/volume.crc."""

    def __init__(self, directory: Path, size: int, name: str = NAME) -> None:
        self.path = directory / name
        self.created = not self.path.exists()  # the caller computes entries from the data
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.size = 0
        self.mm: mmap.mmap | None = None
        self.resize(size)

    @staticmethod
    def blocks(size: int) -> int:
        return (size + MASK) >> BSHIFT

    def resize(self, size: int) -> None:
        """Cover a data file of `size` bytes (new entries read 0: zeroes, as the new data)."""
        length = max(4, self.blocks(size) * 4)
        if os.fstat(self.fd).st_size != length:
            os.ftruncate(self.fd, length)
        # a new map; the old one is dropped, not closed: a worker thread may be syncing it
        self.mm = mmap.mmap(self.fd, length)
        self.size = size

    def reset(self) -> None:
        """Every entry 0 (the file emptied, then sparse again at its length)."""
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        os.ftruncate(self.fd, 0)
        self.resize(self.size)

    # ------------------------------------------------------------------ entries
    def get(self, first: int, count: int) -> tuple[int, ...]:
        assert self.mm is not None
        return struct.unpack_from(f"<{count}I", self.mm, first * 4)

    def put(self, first: int, sums: Sequence[int]) -> None:
        assert self.mm is not None
        if len(sums) == 1:
            _U32.pack_into(self.mm, first * 4, sums[0])
            return
        struct.pack_into(f"<{len(sums)}I", self.mm, first * 4, *sums)

    def present_runs(self, first: int, count: int) -> list[tuple[int, int]]:
        """(first block, count) runs of the blocks in [first, first + count) whose entry is not
        0 (written: data of their own, or explicit zeroes); found by a regular expression over
        the entries' bytes, so a mostly empty GiB (a MiB of entries) costs about a millisecond."""
        assert self.mm is not None
        end = min(first + count, self.blocks(self.size))
        runs: list[list[int]] = []
        if end <= first:
            return []
        raw = self.mm[first * 4 : end * 4]
        for m in NONZERO.finditer(raw):
            a = first + (m.start() >> 2)
            b = first + ((m.end() - 1) >> 2) + 1
            if runs and runs[-1][1] >= a:  # the same entry, or the next one
                runs[-1][1] = max(runs[-1][1], b)
            else:
                runs.append([a, b])
        return [(a, b - a) for a, b in runs]

    def present(self, first: int, count: int) -> list[int]:
        """Block numbers in [first, first + count) whose entry is not 0, in order."""
        out: list[int] = []
        for a, n in self.present_runs(first, count):
            out.extend(range(a, a + n))
        return out

    def clear(self, first: int, count: int) -> None:
        """Blocks that now read as zeroes (unmapped)."""
        assert self.mm is not None
        self.mm[first * 4 : (first + count) * 4] = bytes(count * 4)

    def bad(self, offset: int, data: bytes | bytearray | memoryview) -> list[int]:
        """Block numbers of `data` (read at block-aligned `offset`) that fail their check."""
        first = offset >> BSHIFT
        if len(data) == BLOCK:  # the common case, without lists
            assert self.mm is not None
            stored = _U32.unpack_from(self.mm, first * 4)[0] or ZERO_SUM
            return [] if (crc32c(data) or ZERO_SUM) == stored else [first]
        sums = block_sums(data)
        stored = self.get(first, len(sums))
        if sums == [s or ZERO_SUM for s in stored]:
            return []
        return [
            first + i
            for i, (a, s) in enumerate(zip(sums, stored, strict=True))
            if a != (s or ZERO_SUM)
        ]

    def sync(self) -> None:
        """Make the entries durable (msync; safe in a worker thread)."""
        mm = self.mm
        if mm is not None:
            mm.flush()

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        os.close(self.fd)
