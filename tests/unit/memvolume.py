"""An in-memory BlockVolume for unit tests of the SCSI and iSCSI layers."""

from __future__ import annotations

from collections.abc import Callable

from jiva_engine.volume import (
    ResizeCallback,
    ResizeListeners,
    VolumeIOError,
    VolumeNotReady,
    check_range,
)


class MemVolume:
    """Bytes in a bytearray; `fail` / `not_ready` switches inject volume errors."""

    def __init__(self, size: int = 1 << 20, block_size: int = 512, name: str = "mem") -> None:
        self.name = name
        self.size = size
        self.block_size = block_size
        self.data = bytearray(size)
        self.mapped = bytearray(size // block_size)
        self.flushes = 0
        self.fua_writes = 0
        self.fail = False
        self.not_ready = False
        self.resized = ResizeListeners()

    def ready(self) -> bool:
        return not self.not_ready

    def on_resize(self, callback: ResizeCallback) -> Callable[[], None]:
        return self.resized.add(callback)

    def grow(self, size: int) -> None:
        """Grow to `size` bytes (zeroes, unmapped) and tell the listeners, as an online grow."""
        old = self.size
        self.data += bytes(size - old)
        self.mapped += bytes(size // self.block_size - len(self.mapped))
        self.size = size
        self.resized.notify(old, size)

    def _check(self, offset: int, length: int) -> None:
        check_range(self.size, offset, length)
        if self.not_ready:
            raise VolumeNotReady("not ready")
        if self.fail:
            raise VolumeIOError("injected failure")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data, fua: bool = False) -> None:
        self._check(offset, len(data))
        self.data[offset : offset + len(data)] = data
        bs = self.block_size
        for b in range(offset // bs, (offset + len(data) + bs - 1) // bs):
            self.mapped[b] = 1
        self.fua_writes += bool(fua)

    async def flush(self) -> None:
        self._check(0, 0)
        self.flushes += 1

    async def unmap(self, offset: int, length: int) -> None:
        self._check(offset, length)
        self.data[offset : offset + length] = bytes(length)
        bs = self.block_size
        for b in range(offset // bs, (offset + length) // bs):
            self.mapped[b] = 0

    async def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        self._check(offset, length)
        bs = self.block_size
        runs: list[tuple[int, int, bool]] = []
        for b in range(offset // bs, (offset + length) // bs):
            m = bool(self.mapped[b])
            if runs and runs[-1][2] == m:
                o, n, _ = runs[-1]
                runs[-1] = (o, n + bs, m)
            else:
                runs.append((b * bs, bs, m))
        return runs
