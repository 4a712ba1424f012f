"""FileVolume: a BlockVolume (docs/DESIGN.md §1) over one local file, for `jiva target --file`."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from pathlib import Path

from jiva_engine.volume import ResizeCallback, VolumeIOError, check_range

# Requests up to this size are served inline (page-cache hits cost less than a thread hop).
_INLINE_MAX = 256 * 1024
_ZERO_CHUNK = 1 << 20


class FileVolume:
    """Serves a sparse local file as a block volume; unmap punches holes where the FS allows."""

    def __init__(self, path: str | os.PathLike, size: int | None = None, block_size: int = 512):
        """Open (creating sparse at `size` if missing) the file at `path`.

        If the file exists and `size` is larger it is grown sparsely; a file whose size is not a
        multiple of `block_size` is served rounded down.
        """
        self.path = Path(path)
        self.name = self.path.stem
        self.block_size = block_size
        flags = os.O_RDWR | os.O_CREAT
        self._fd = os.open(self.path, flags, 0o600)
        cur = os.fstat(self._fd).st_size
        if size is not None and size > cur:
            os.ftruncate(self._fd, size)
            cur = size
        if cur < block_size:
            os.close(self._fd)
            raise ValueError(f"{self.path}: size {cur} is smaller than one block; give --size")
        self.size = cur - cur % block_size
        self._closed = False

    def ready(self) -> bool:
        """A local file is always ready while open."""
        return not self._closed

    def on_resize(self, _callback: ResizeCallback) -> Callable[[], None]:
        """The file's size is fixed while it is served: the callback is never called."""
        return lambda: None

    async def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` (holes read as zeroes)."""
        check_range(self.size, offset, length)
        try:
            if length <= _INLINE_MAX:
                data = os.pread(self._fd, length, offset)
            else:
                data = await asyncio.to_thread(os.pread, self._fd, length, offset)
        except OSError as e:
            raise VolumeIOError(f"read {offset}+{length}: {e}") from e
        if len(data) < length:  # cannot happen inside the file size, but never return short
            data += bytes(length - len(data))
        return data

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write `data` at `offset`; with `fua` the data is on stable storage before returning."""
        check_range(self.size, offset, len(data))
        try:
            if len(data) <= _INLINE_MAX:
                n = os.pwrite(self._fd, data, offset)
            else:
                n = await asyncio.to_thread(os.pwrite, self._fd, data, offset)
            while n < len(data):
                n += os.pwrite(self._fd, memoryview(data)[n:], offset + n)
            if fua:
                await asyncio.to_thread(os.fdatasync, self._fd)
        except OSError as e:
            raise VolumeIOError(f"write {offset}+{len(data)}: {e}") from e

    async def flush(self) -> None:
        """fdatasync the file."""
        try:
            await asyncio.to_thread(os.fdatasync, self._fd)
        except OSError as e:
            raise VolumeIOError(f"flush: {e}") from e

    async def unmap(self, offset: int, length: int) -> None:
        """Deallocate the range (punch a hole); falls back to writing zeroes."""
        check_range(self.size, offset, length)
        if length == 0:
            return
        try:
            await asyncio.to_thread(_punch_hole, self._fd, offset, length)
        except OSError as e:
            raise VolumeIOError(f"unmap {offset}+{length}: {e}") from e

    async def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """Return (offset, length, mapped) runs covering the range, from SEEK_DATA/SEEK_HOLE."""
        check_range(self.size, offset, length)
        return await asyncio.to_thread(_extents, self._fd, offset, length, self.block_size)

    async def close(self) -> None:
        """Close the file."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    """libc fallocate(2), looked up once (find_library runs ldconfig: far too slow per call)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE|KEEP_SIZE); zero-fill if the filesystem refuses."""
    punch, keep = 0x02, 0x01
    if _fallocate()(fd, punch | keep, offset, length) == 0:
        return
    end = offset + length
    zero = bytes(min(_ZERO_CHUNK, length))
    while offset < end:
        n = min(len(zero), end - offset)
        os.pwrite(fd, zero[:n], offset)
        offset += n


def _extents(fd: int, offset: int, length: int, block: int) -> list[tuple[int, int, bool]]:
    """Walk SEEK_DATA/SEEK_HOLE over [offset, offset+length), block-aligned runs."""
    end = offset + length
    runs: list[tuple[int, int, bool]] = []
    pos = offset
    try:
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole up to EOF
                data = end
            data = min(data, end)
            if data > pos:
                runs.append((pos, data - pos, False))
                pos = data
                continue
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
            if hole <= pos:
                hole = end
            runs.append((pos, hole - pos, True))
            pos = hole
    except OSError:
        return [(offset, length, True)]
    # Filesystem holes are aligned to FS blocks (a multiple of 512); a partly mapped logical
    # block would count as mapped, so widen mapped runs to block boundaries.
    out: list[tuple[int, int, bool]] = []
    for off, ln, mapped in runs:
        s, e = off, off + ln
        if mapped:
            s -= s % block
            e = min(end, e + (-e) % block)
        if out:
            po, pl, pm = out[-1]
            s = max(s, po + pl)
            if s >= e:
                continue
            if pm == mapped and s == po + pl:
                out[-1] = (po, e - po, pm)
                continue
        out.append((s, e - s, mapped))
    return out or [(offset, length, True)]
