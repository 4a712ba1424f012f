"""Per-volume QoS: a token-bucket limit on the I/Os per second and bytes per second that
initiators get (`jiva controller --max-iops/--max-mbps`, `PUT /v1/volume/qos`).

One concern: admitting I/Os at the configured rates. Every read, write and unmap the initiators
send costs one I/O and its length in bytes (an unmap costs one I/O and no bytes: it moves no
data); FLUSH costs nothing. Internal traffic (rebuild, resync, scrub, snapshot revert/import)
does not go through the limiter.

Each limit is a bucket that fills at the rate up to a small burst (`BURST` seconds' worth, and at
least one I/O). I/Os are admitted one at a time in arrival order (FIFO): the first waiter waits
until both buckets hold its cost, so small I/Os cannot starve a large one. An I/O larger than
the burst is admitted once the bucket has filled up to its cost while it waited (the bucket may
exceed the burst only for the waiter at the head), so it passes after cost/rate seconds at the
most and the long-run rate is still respected. A limit changed at runtime wakes the waiter,
which recomputes its wait under the new limit (an I/O queued under a low limit does not sit out
the old wait once the limit is raised or removed).

The clock and the wait are injectable, so the arithmetic is testable without real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

BURST = 0.1  # seconds' worth of I/O a bucket holds when full
MiB = 1 << 20
EPSILON = 1e-6  # a wait shorter than this is none (float rounding must not spin the loop)

Clock = Callable[[], float]
# wait(timeout, woken): return after `timeout` seconds or once `woken` is set, whichever first
Waiter = Callable[[float, asyncio.Event], Awaitable[None]]


async def _wait(timeout: float, woken: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(woken.wait(), timeout)


def check_iops(value: Any, what: str = "max_iops") -> int | None:
    """`value` as a max-IOPS limit: a positive integer, or None (unlimited); ValueError naming
    `what` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{what} must be a positive integer (I/Os per second) or null, not {value!r}"
        )
    return value


def check_mbps(value: Any, what: str = "max_mbps") -> float | None:
    """`value` as a max-MiB/s limit: a positive number, or None (unlimited); ValueError naming
    `what` otherwise."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value == float("inf")
    ):
        raise ValueError(f"{what} must be a positive number (MiB/s) or null, not {value!r}")
    return float(value)


class Bucket:
    """One token bucket: `rate` tokens per second (None: unlimited), full at `capacity`."""

    def __init__(self, rate: float | None, now: float, minimum: float = 0.0) -> None:
        self.minimum = minimum  # the least a full bucket holds (one I/O for the IOPS bucket)
        self.rate: float | None = None
        self.capacity = 0.0
        self.level = 0.0
        self.stamp = now
        self.set_rate(rate, now)

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate: a bucket that had none starts full; otherwise it keeps what it held
        (up to the new burst), so changing a limit gives no extra burst."""
        had = self.rate
        self.refill(now)  # what the old rate earned until now
        self.rate = rate
        self.capacity = max(rate * BURST, self.minimum) if rate else 0.0
        self.level = min(self.level, self.capacity) if had else self.capacity
        self.stamp = now

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds until the bucket holds `cost` (0: now). While a waiter waits for a cost above
        the burst, the bucket fills up to that cost (`refill(now, cost)`)."""
        if not self.rate:
            return 0.0
        self.refill(now, cost)
        return max(0.0, (cost - self.level) / self.rate)

    def refill(self, now: float, cost: float = 0.0) -> None:
        """Add what the time since the last refill earned, up to the burst (or `cost`)."""
        if not self.rate:
            return
        top = max(self.capacity, cost)
        self.level = min(top, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, cost: float) -> None:
        """Spend `cost` (call once `wait_time` is 0)."""
        if self.rate:
            self.level -= cost


class Limiter:
    """The volume's QoS: max I/Os per second and max MiB per second (None: unlimited), with the
    throttling counters the status and metrics show."""

    def __init__(
        self,
        max_iops: int | None = None,
        max_mbps: float | None = None,
        *,
        clock: Clock = time.monotonic,
        wait: Waiter = _wait,
    ) -> None:
        self._clock = clock
        self._wait = wait
        now = clock()
        self.max_iops = check_iops(max_iops)
        self.max_mbps = check_mbps(max_mbps)
        self._iops = Bucket(self.max_iops, now, minimum=1.0)
        self._bytes = Bucket(self._byte_rate(), now)
        self._turn = asyncio.Lock()  # FIFO: the I/O at the head of the queue takes tokens
        self._changed = asyncio.Event()
        self.throttled_ios = 0  # I/Os that had to wait
        self.throttled_seconds = 0.0  # summed time they waited

    def _byte_rate(self) -> float | None:
        return self.max_mbps * MiB if self.max_mbps else None

    @property
    def unlimited(self) -> bool:
        return self.max_iops is None and self.max_mbps is None

    def set_limits(self, max_iops: int | None, max_mbps: float | None) -> None:
        """Change both limits now (None: unlimited); ValueError for a bad value, nothing changed
        then. A waiting I/O recomputes its wait under the new limits."""
        iops, mbps = check_iops(max_iops), check_mbps(max_mbps)
        now = self._clock()
        if iops != self.max_iops:
            self._iops.set_rate(iops, now)
        if mbps != self.max_mbps:
            self.max_mbps = mbps
            self._bytes.set_rate(self._byte_rate(), now)
        self.max_iops, self.max_mbps = iops, mbps
        self._changed.set()

    async def admit(self, nbytes: int) -> None:
        """Return once an I/O of `nbytes` bytes (0 for an unmap) may proceed."""
        if self.unlimited and not self._turn.locked():
            return
        async with self._turn:
            t0 = self._clock()
            waited = False
            try:
                while True:
                    now = self._clock()
                    left = max(self._iops.wait_time(1, now), self._bytes.wait_time(nbytes, now))
                    if left <= EPSILON:
                        self._iops.take(1)
                        self._bytes.take(nbytes)
                        return
                    waited = True
                    self._changed.clear()
                    await self._wait(left, self._changed)
            finally:
                if waited:
                    self.throttled_ios += 1
                    self.throttled_seconds += self._clock() - t0

    def status(self) -> dict[str, Any]:
        """The `qos` object of the status JSON."""
        return {
            "max_iops": self.max_iops,
            "max_mbps": self.max_mbps,
            "throttled_ios": self.throttled_ios,
            "throttled_seconds": round(self.throttled_seconds, 6),
        }
