"""A replica's snapshot layers (docs/ENGINE.md "Snapshots"): read-only data files under the head.

Redirect-on-write: the head (`volume.img` + `volume.crc`) takes every write, as without
snapshots. A snapshot freezes the head into a layer, `snapshots/<id>.img` + `<id>.crc`, and a new
empty head starts. A layer holds the blocks written between its parent snapshot and itself; a
block is *present* in a layer (or in the head) when its checksum entry is not 0: data of its
own, or explicit zeroes (an unmap under snapshots stores the zero block's checksum over a hole).

Reads never walk the chain: `index` holds, per 4 KiB block, the position (1 = oldest) of the
newest layer holding it, 0 for none. A head read takes its present blocks from the head and the
others from `index`. A snapshot's own view (SNAP_READ) uses the index too and walks down only
for blocks newer layers hold.

Only the event-loop thread changes layers or the index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jiva_engine.replica.checksums import BLOCK, BSHIFT, NONZERO, BlockSums

DIR = "snapshots"
MAX_LAYERS = 250  # index entries are one byte


class Layer:
    """One snapshot's frozen blocks: its data file and checksum entries."""

    def __init__(self, directory: Path, rec: dict[str, Any]) -> None:
        self.rec = rec
        self.id = str(rec["id"])
        self.size = int(rec["size"])
        path = directory / f"{self.id}.img"
        self.fd = os.open(path, os.O_RDWR)
        try:
            self.sums = BlockSums(directory, self.size, name=f"{self.id}.crc")
        except OSError:
            os.close(self.fd)
            raise

    @classmethod
    def adopt(cls, rec: dict[str, Any], fd: int, sums: BlockSums) -> Layer:
        """The layer of a head just frozen (its files open already)."""
        layer = cls.__new__(cls)
        layer.rec = rec
        layer.id = str(rec["id"])
        layer.size = int(rec["size"])
        layer.fd = fd
        layer.sums = sums
        return layer

    @staticmethod
    def paths(directory: Path, snap_id: str) -> tuple[Path, Path]:
        return directory / f"{snap_id}.img", directory / f"{snap_id}.crc"

    @property
    def nblocks(self) -> int:
        return BlockSums.blocks(self.size)

    def present(self, first: int = 0, count: int | None = None) -> list[int]:
        """Blocks of [first, first + count) this layer holds."""
        if count is None:
            count = self.nblocks - first
        return self.sums.present(first, count)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data)) if len(data) < length else data

    def allocated(self) -> int:
        """Bytes its data file takes on disk."""
        return os.fstat(self.fd).st_blocks * 512

    def sync(self) -> None:
        os.fdatasync(self.fd)
        self.sums.sync()

    def close(self) -> None:
        os.close(self.fd)
        self.sums.close()


def runs_of(blocks: list[int]) -> Iterator[tuple[int, int]]:
    """(first, count) runs of sorted block numbers."""
    i = 0
    n = len(blocks)
    while i < n:
        j = i + 1
        while j < n and blocks[j] == blocks[j - 1] + 1:
            j += 1
        yield blocks[i], j - i
        i = j


class Layers:
    """The layers under one head, oldest first, and the block -> newest layer index."""

    def __init__(self, directory: Path, nblocks: int) -> None:
        self.dir = directory
        self.list: list[Layer] = []
        self.nblocks = nblocks
        self.index = bytearray()  # empty while there is no layer (nothing to look up)

    def __bool__(self) -> bool:
        return bool(self.list)

    def __len__(self) -> int:
        return len(self.list)

    def ids(self) -> list[str]:
        return [layer.id for layer in self.list]

    def position(self, snap_id: str) -> int:
        """1-based position of a snapshot's layer; KeyError when unknown."""
        for i, layer in enumerate(self.list, 1):
            if layer.id == snap_id:
                return i
        raise KeyError(snap_id)

    def rebuild_index(self) -> None:
        if not self.list:
            self.index = bytearray()
            return
        index = bytearray(self.nblocks)
        for pos, layer in enumerate(self.list, 1):
            for b in layer.present():
                index[b] = pos
        self.index = index

    def push(self, layer: Layer, held: list[int]) -> None:
        """A new newest layer holding blocks `held` (the head's present blocks, just frozen)."""
        self.list.append(layer)
        if len(self.index) != self.nblocks:
            self.index = bytearray(self.nblocks)
        pos = len(self.list)
        index = self.index
        for b in held:
            index[b] = pos

    def resize(self, nblocks: int) -> None:
        """The volume grew: new blocks are held by no layer."""
        self.nblocks = nblocks
        if self.index:
            self.index.extend(bytes(nblocks - len(self.index)))

    def held_runs(self, first: int, count: int) -> list[tuple[int, int]]:
        """(first block, count) runs of [first, first + count) that some layer holds."""
        index = self.index
        return [(m.start(), m.end() - m.start())
                for m in NONZERO.finditer(index, first, min(len(index), first + count))]  # fmt: skip

    def holder(self, b: int, upto: int) -> int:
        """Position of the newest layer at or below `upto` holding block `b` (0: none)."""
        pos = self.index[b] if b < len(self.index) else 0
        if pos <= upto:
            return pos
        for p in range(upto, 0, -1):
            layer = self.list[p - 1]
            if b < layer.nblocks and layer.sums.get(b, 1)[0]:
                return p
        return 0

    def fill(
        self, a: int, data: bytearray, blocks: list[int], upto: int | None = None
    ) -> list[int]:
        """Put the contents of `blocks` (numbers inside `data`, read at block-aligned `a`) as
        the layers at or below position `upto` (None: all) hold them; zeroes where none does.
        Returns the blocks whose layer copy fails its checksum (their data is left zero)."""
        top = len(self.list) if upto is None else upto
        bad: list[int] = []
        end = a + len(data)
        groups: list[tuple[int, int, int]] = []  # (layer position, first block, count)
        for b in blocks:
            pos = self.holder(b, top)
            if groups and groups[-1][0] == pos and groups[-1][1] + groups[-1][2] == b:
                p, f, c = groups[-1]
                groups[-1] = (p, f, c + 1)
            else:
                groups.append((pos, b, 1))
        for pos, first, count in groups:
            s = first << BSHIFT
            e = min(end, (first + count) << BSHIFT)
            if not pos:
                data[s - a : e - a] = bytes(e - s)
                continue
            layer = self.list[pos - 1]
            chunk = layer.read(s, e - s)
            wrong = layer.sums.bad(s, chunk)
            data[s - a : e - a] = chunk
            for w in wrong:  # withheld: zeroes, and named
                o = (w << BSHIFT) - a
                data[o : o + BLOCK] = bytes(len(data[o : o + BLOCK]))
            bad += wrong
        return bad

    def close(self) -> None:
        for layer in self.list:
            layer.close()
        self.list = []
        self.index = bytearray()
