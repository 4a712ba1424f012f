"""A FIFO byte-range lock: overlapping holders run in arrival order, disjoint ones in parallel.

Used by the controller so overlapping writes reach every replica in the same order, and so a
rebuild can copy a region without racing the writes to it.

A holder that waits for something that itself needs its range can *park* (`parked()`): a
holder that asked for `past_parked` (the start-up resynchronisation after every member was lost)
then proceeds past it, and the parked holder, when it resumes, waits until those are done. An
ordinary holder never passes a parked one, so overlapping writes keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Entry:
    __slots__ = ("start", "end", "done", "granted", "parked", "parking", "passed")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.done: asyncio.Future[None] | None = None
        self.granted = False  # it has waited out the earlier holders
        self.parked = False
        self.parking: asyncio.Future[None] | None = None  # set when it parks
        self.passed: list[_Entry] = []  # holders that went past it while it was parked

    def signal(self, attr: str) -> asyncio.Future[None]:
        fut = getattr(self, attr)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            setattr(self, attr, fut)
        return fut


Lease = _Entry  # what `hold()` yields: the holder's handle, for `parked()`


class RangeLock:
    """Exclusive locks over half-open byte ranges, granted in arrival order per overlap."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _register(self, start: int, end: int) -> tuple[_Entry, list[_Entry]]:
        """Append an entry synchronously; return the earlier overlapping holders."""
        earlier = [e for e in self._entries if e.start < end and start < e.end]
        entry = _Entry(start, end)
        self._entries.append(entry)
        return entry, earlier

    def _release(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        for fut in (entry.done, entry.parking):
            if fut is not None and not fut.done():
                fut.set_result(None)

    @asynccontextmanager
    async def hold(
        self, offset: int, length: int, past_parked: bool = False
    ) -> AsyncIterator[Lease]:
        """Hold [offset, offset+length) exclusively; waits for earlier overlapping holders
        (with `past_parked`, not for those that are parked: see the module's doc)."""
        entry, earlier = self._register(offset, offset + max(length, 1))
        try:
            for e in earlier:
                while e in self._entries:
                    if past_parked and (e.parked or not e.granted):
                        e.passed.append(entry)  # it waits for us before it goes on
                        break
                    waits = [e.signal("done")] + ([e.signal("parking")] if past_parked else [])
                    await asyncio.wait(
                        [asyncio.shield(w) for w in waits], return_when=asyncio.FIRST_COMPLETED
                    )
            await self._after_passers(entry)
            entry.granted = True
            yield entry
        finally:
            self._release(entry)

    async def _after_passers(self, entry: _Entry) -> None:
        """Wait until the holders that went past `entry` are done."""
        while entry.passed:
            e = entry.passed.pop()
            if e in self._entries:
                await asyncio.shield(e.signal("done"))

    @asynccontextmanager
    async def parked(self, lease: Lease) -> AsyncIterator[None]:
        """Let `past_parked` holders run over this holder's range meanwhile; on the way out,
        wait until they are done (the holder may then rely on its range again)."""
        lease.parked = True
        if lease.parking is not None and not lease.parking.done():
            lease.parking.set_result(None)
        try:
            yield
        finally:
            lease.parked, lease.parking = False, None
            await self._after_passers(lease)

    def busy(self, offset: int, length: int) -> bool:
        """True if some holder (or waiter) overlaps [offset, offset+length)."""
        end = offset + max(length, 1)
        return any(e.start < end and offset < e.end for e in self._entries)
