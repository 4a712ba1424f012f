"""FileVolume (the local-file BlockVolume behind `jiva target --file`) on a real sparse file."""

from __future__ import annotations

import asyncio
import os

import pytest

from jiva_engine.filevolume import FileVolume
from jiva_engine.volume import OutOfRange


def test_filevolume_io_unmap_and_extents(tmp_path):
    """Writes land in the file, unmap punches a hole that reads zero, extents see it."""
    path = tmp_path / "disk.img"

    async def go() -> None:
        v = FileVolume(path, 8 << 20)
        assert v.size == 8 << 20 and v.name == "disk" and v.ready()
        assert os.stat(path).st_blocks == 0  # created sparse
        await v.write(1 << 20, b"\x5a" * (2 << 20), fua=True)
        assert await v.read((1 << 20) + 4096, 16) == b"\x5a" * 16
        runs = await v.allocated(0, 8 << 20)
        assert sum(n for _, n, _ in runs) == 8 << 20
        assert any(m and o <= (1 << 20) < o + n for o, n, m in runs)
        assert not runs[0][2] and runs[0][0] == 0  # leading hole
        await v.unmap(1 << 20, 1 << 20)
        assert await v.read(1 << 20, 4096) == bytes(4096)
        runs = await v.allocated(1 << 20, 1 << 20)
        assert runs == [(1 << 20, 1 << 20, False)]
        await v.flush()
        with pytest.raises(OutOfRange):
            await v.read((8 << 20) - 512, 1024)
        await v.close()
        assert not v.ready()

    asyncio.run(go())


def test_filevolume_refuses_tiny_file(tmp_path):
    """A file smaller than one block without --size is refused with a clear message."""
    p = tmp_path / "tiny.img"
    p.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="smaller than one block"):
        FileVolume(p)
