"""A FIFO byte-range lock: overlapping holders run in arrival order, disjoint ones in parallel.

Used by the controller so overlapping writes reach every replica in the same order, and so a
rebuild can copy a region without racing the writes to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Entry:
    __slots__ = ("start", "end", "done")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.done: asyncio.Future[None] | None = None


class RangeLock:
    """Exclusive locks over half-open byte ranges, granted in arrival order per overlap."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _register(self, start: int, end: int) -> tuple[_Entry, list[asyncio.Future[None]]]:
        """Append an entry synchronously; return the futures of earlier overlapping holders."""
        waits: list[asyncio.Future[None]] = []
        for e in self._entries:
            if e.start < end and start < e.end:
                if e.done is None:
                    e.done = asyncio.get_running_loop().create_future()
                waits.append(e.done)
        entry = _Entry(start, end)
        self._entries.append(entry)
        return entry, waits

    def _release(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        if entry.done is not None and not entry.done.done():
            entry.done.set_result(None)

    @asynccontextmanager
    async def hold(self, offset: int, length: int) -> AsyncIterator[None]:
        """Hold [offset, offset+length) exclusively; waits for earlier overlapping holders."""
        entry, waits = self._register(offset, offset + max(length, 1))
        try:
            for w in waits:
                await asyncio.shield(w)
            yield
        finally:
            self._release(entry)

    def busy(self, offset: int, length: int) -> bool:
        """True if some holder (or waiter) overlaps [offset, offset+length)."""
        end = offset + max(length, 1)
        return any(e.start < end and offset < e.end for e in self._entries)
