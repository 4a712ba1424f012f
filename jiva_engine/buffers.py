"""Reusable big I/O buffers: a 1 MiB payload in a fresh `bytearray` costs more than its copy.

A fresh large bytearray is new anonymous memory from the kernel (an mmap: 256 page faults,
each page cleared, then zeroed again by bytearray, then unmapped on free), which on the 1 MiB
write path cost each replica about as much CPU as receiving the data. A `BufferPool` hands
buffers back out instead.

Nobody has to give a buffer back at the right moment: a user `lend()`s it as soon as it has it,
and `take()` reuses a lent buffer only once nothing else refers to it (its reference count says
only the pool holds it). A memoryview of it, a queued transport write or a frame still being
handled each hold a reference, so a buffer in use is never handed out twice.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque

MIN_POOLED = 64 * 1024  # smaller buffers come from Python's allocator cheaply
LENT_MAX = 256  # lent buffers watched at once (older ones are left to the garbage collector)

COLLECT_BUSY = 4  # lent buffers found still in use before one collection gives up

# sys.getrefcount(buf) for a buffer taken off the deque into a local and referenced nowhere
# else: the local name and getrefcount's own argument
_ONLY_POOL = 2


class BufferPool:
    """Buffers of the sizes a process keeps asking for, at most `max_bytes` kept idle."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._free_bytes = 0
        self._lent: deque[bytearray] = deque()
        self.reused = 0  # buffers handed out again (a counter for tests and profiles)

    def take(self, n: int, zero: bool = False) -> bytearray:
        """A bytearray of exactly `n` bytes; its content is undefined unless `zero`."""
        if n < MIN_POOLED:
            return bytearray(n)
        self._collect()
        free = self._free.get(n)
        if not free:
            return bytearray(n)
        buf = free.pop()
        self._free_bytes -= n
        self.reused += 1
        if zero:
            ctypes.memset((ctypes.c_char * n).from_buffer(buf), 0, n)
        return buf

    def lend(self, buf: bytearray) -> None:
        """`buf` may be reused once nothing else refers to it (call it any time after `take`)."""
        if len(buf) < MIN_POOLED:
            return
        lent = self._lent
        lent.append(buf)
        if len(lent) > LENT_MAX:
            lent.popleft()

    def _collect(self) -> None:
        """Move the lent buffers nobody refers to any more onto the free lists, oldest first
        (they are mostly released in the order lent); one still in use goes to the back, and
        after `COLLECT_BUSY` of those the rest waits for the next call."""
        lent = self._lent
        busy = 0
        while lent and busy < COLLECT_BUSY:
            buf = lent.popleft()
            if sys.getrefcount(buf) > _ONLY_POOL:
                lent.append(buf)
                busy += 1
                continue
            n = len(buf)
            if self._free_bytes + n <= self.max_bytes:
                self._free.setdefault(n, []).append(buf)
                self._free_bytes += n


POOL = BufferPool()  # the process's pool (the refcount check makes sharing it safe)


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Keep big short-lived allocations on the heap (a daemon calls this once at start).

    glibc serves a malloc above its mmap threshold (128 KiB, raised only when such a block is
    freed) with fresh pages from the kernel and unmaps them on free: every 256 KiB bytes
    object of a large write then costs 64 page faults and page clearings. With the pools above
    keeping the big buffers, nothing raises that threshold on its own. Returns False where
    there is no glibc (the defaults stay)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
