"""Rebuild pacing from foreground latency (issue 17): a rebuild must not starve I/O.

`Pacer` is a pure state machine with an injectable clock. The volume feeds it the latency of
every foreground read and write (`observe`); every `window` seconds it compares the window's
p50 and p99 (smoothed over the last windows: one burst of noise from a neighbour is not a
verdict) with a baseline of idle latency and sets the rate rebuilds may copy at, AIMD-style.
The p99 guards the tail; the p50 guards throughput (a closed-loop initiator at a fixed queue
depth loses IOPS as its median latency grows):

- no foreground I/O in a window: unlimited (an idle rebuild runs at full speed);
- a rebuild that starts while foreground I/O runs starts at `start` bytes/s and grows from
  there (a slow start: a full-speed first window would cost the foreground its worst second);
- p99 above `threshold` x its baseline or p50 above `threshold_p50` x its baseline (plus a
  small absolute `slack`, so sub-millisecond noise is no reason): the allowed rate is cut,
  starting from the rebuild's measured copy rate when it was unlimited, by `cut` or by
  target/latency when that is smaller
  (a p99 ten times too high is not fixed by halving the rate once per window), but not below
  `max_cut`, and never below `floor`;
- otherwise it grows by `step` bytes/s per window, and becomes unlimited again once it is well
  above what the rebuild achieved at full speed.

The baseline follows the windows' p99 while no rebuild runs (a moving average) and stays put
while one runs: latency measured under a rebuild never moves it (a lucky quiet window does not
ratchet it down either, which would pin the rate to the floor on a noisy machine). With no idle
history yet, it is the lowest window p99 seen under the rebuild. `--rebuild-rate` (`Throttle` below) stays an upper bound set by the operator; the pacer
works under it. `RateMeter` measures a rebuild's recent copy rate for its ETA.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

MiB = 1 << 20
WINDOW = 0.5  # seconds of foreground latency judged at once
THRESHOLD = 1.5  # p99 above this many times the baseline: cut the rebuild's rate
THRESHOLD_P50 = 1.3  # the same for the median (IOPS >= 70 % of idle at a fixed queue depth)
SLACK = 0.0005  # seconds added to the threshold (sub-millisecond jitter is no reason to cut)
CUT = 0.5  # multiplicative decrease (at least)
MAX_CUT = 0.125  # the deepest cut in one window
STEP = 8 * MiB  # additive increase per good window, bytes/s
SMOOTH = 0.5  # weight of the newest window in the smoothed p99 judged under a rebuild
FULL_GUESS = 64 * MiB  # the rate a first cut starts from when none was measured yet
SLOW_START = 16 * MiB  # where a rebuild starting under foreground I/O begins, bytes/s
CEILING_GUESS = 256 * MiB  # the full-speed rate assumed while none was measured
FLOOR = 2 * MiB  # the allowed rate never goes below this (a rebuild always progresses)
MIN_SAMPLES = 8  # fewer completions in a window: no verdict on latency, keep growing
BASELINE_ALPHA = 0.2  # weight of a new idle window in the baseline's moving average...
BASELINE_DOWN = 0.5  # ...and of one below it (a noisy first window is soon forgotten)
UNLIMIT_FACTOR = 2.0  # allowed rate above this x the full-speed copy rate: unlimited again


def quantiles(samples: list[float], qs: tuple[float, ...]) -> tuple[float, ...]:
    """The `qs` quantiles (nearest rank) of non-empty `samples`."""
    s = sorted(samples)
    return tuple(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] for q in qs)


def p99(samples: list[float]) -> float:
    """The 99th percentile (nearest rank) of non-empty `samples`."""
    return quantiles(samples, (0.99,))[0]


def eta_seconds(done: int, total: int, rate: float) -> int | None:
    """Seconds left at `rate` bytes/s (rounded up); None while the rate is not known."""
    if rate <= 0:
        return None
    return max(0, math.ceil((total - done) / rate))


class RateMeter:
    """Recent rate of a growing byte count, over the last `span` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, span: float = 3.0) -> None:
        self.clock = clock
        self.span = span
        self._points: deque[tuple[float, int]] = deque()

    def add(self, done: int) -> None:
        """Record the count now."""
        now = self.clock()
        pts = self._points
        pts.append((now, done))
        while len(pts) > 2 and now - pts[1][0] >= self.span:
            pts.popleft()

    def seconds(self) -> float:
        """The time the points kept cover."""
        pts = self._points
        return pts[-1][0] - pts[0][0] if len(pts) >= 2 else 0.0

    def rate(self) -> float:
        """Bytes per second between the oldest and newest point kept (0 before two points)."""
        pts = self._points
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


class Pacer:
    """The rate rebuilds may copy at, from foreground latency (see the module's docstring)."""

    def __init__(
        self,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW,
        threshold: float = THRESHOLD,
        threshold_p50: float = THRESHOLD_P50,
        slack: float = SLACK,
        cut: float = CUT,
        step: float = STEP,
        floor: float = FLOOR,
        start: float = SLOW_START,
    ) -> None:
        self.enabled = enabled
        self.clock = clock
        self.window = window
        self.thresholds = (threshold_p50, threshold)  # for (p50, p99)
        self.slack = slack
        self.cut_factor = cut
        self.step = step
        self.floor = floor
        self.start = start
        self.allowed: float | None = None  # bytes/s; None: unlimited
        self.base: tuple[float, ...] | None = None  # seconds: idle (p50, p99)
        self.last: tuple[float, ...] | None = None  # the last window's (p50, p99)
        self.smoothed: tuple[float, ...] | None = None  # averaged over recent windows (rebuild)
        self._idle_baseline = False  # the baseline came from windows with no rebuild
        self.cuts = 0  # multiplicative decreases so far
        self.windows = 0  # windows with foreground I/O judged so far
        self.active = 0  # rebuilds running
        self.full_rate = 0.0  # copy rate measured while unlimited (bytes/s)
        self._samples: list[float] = []
        self._window_end = clock() + window
        self._copied = RateMeter(clock, span=2.0)
        self._copied_total = 0

    # ------------------------------------------------------------------ inputs
    def observe(self, latency: float) -> None:
        """One foreground read or write completed, taking `latency` seconds."""
        if self.clock() >= self._window_end:
            self.tick()
        self._samples.append(latency)

    def started(self) -> None:
        """A rebuild begins."""
        self.tick()
        self.active += 1
        self.smoothed = None
        self._copied = RateMeter(self.clock, span=2.0)  # this rebuild's pace, not an older one's
        if self.enabled and self.last is not None and self.allowed is None:
            self.allowed = self.start  # foreground I/O runs: slow start

    def finished(self) -> None:
        """A rebuild ended (done, failed or cancelled)."""
        self.active = max(0, self.active - 1)
        if not self.active:
            self.allowed = None

    def copied(self, nbytes: int) -> None:
        """A rebuild copied `nbytes` (its measured rate sets where a first cut starts)."""
        self._copied_total += nbytes
        self._copied.add(self._copied_total)
        if self.allowed is None and self._copied.seconds() >= 0.5:
            self.full_rate = self._copied.rate()

    # ------------------------------------------------------------------ the state machine
    def tick(self) -> None:
        """Judge every window that ended since the last call."""
        now = self.clock()
        if now < self._window_end:
            return
        samples, self._samples = self._samples, []
        gone = int((now - self._window_end) // self.window)  # whole windows with no sample
        self._window_end += (gone + 1) * self.window
        self._judge(samples)
        if gone and samples:
            self._judge([])

    def _judge(self, samples: list[float]) -> None:
        if not samples:  # no foreground I/O: nothing to protect
            self.last = None
            self.allowed = None
            return
        if len(samples) < MIN_SAMPLES:
            self._grow()
            return
        q = self.last = quantiles(samples, (0.5, 0.99))
        self.windows += 1
        if not self.active:  # idle latency: follow it
            if self.base is None or not self._idle_baseline:
                self.base, self._idle_baseline = q, True
            else:
                self.base = tuple(
                    b + (BASELINE_DOWN if v < b else BASELINE_ALPHA) * (v - b)
                    for b, v in zip(self.base, q, strict=True)
                )
            return
        if self.base is None or (not self._idle_baseline and q[1] < self.base[1]):
            self.base = q  # no idle history: the best seen under the rebuild
        if not self.enabled:
            return
        old = self.smoothed
        s = self.smoothed = q if old is None else tuple(
            v * SMOOTH + o * (1 - SMOOTH) for v, o in zip(q, old, strict=True)
        )  # fmt: skip
        over = max(
            v / (t * b + self.slack) for v, t, b in zip(s, self.thresholds, self.base, strict=True)
        )  # latency over its target, the worse of p50 and p99
        if over > 1:
            start = self.allowed if self.allowed is not None else self.full_rate or FULL_GUESS
            if self._copied.seconds() >= 0.5:  # from the pace achieved, not a cap above it
                start = min(start, self._copied.rate())
            factor = max(MAX_CUT, min(self.cut_factor, 1 / over))
            self.allowed = max(self.floor, start * factor)
            self.cuts += 1
        else:
            self._grow()

    @property
    def baseline(self) -> float | None:
        """The idle p99 baseline (seconds)."""
        return self.base[1] if self.base else None

    @property
    def last_p99(self) -> float | None:
        return self.last[1] if self.last else None

    def _grow(self) -> None:
        if self.allowed is None:
            return
        self.allowed += self.step
        if self.allowed > UNLIMIT_FACTOR * (self.full_rate or CEILING_GUESS):
            self.allowed = None

    # ------------------------------------------------------------------ outputs
    def rate(self) -> float | None:
        """Bytes/s rebuilds may copy at now (None: unlimited, or pacing off)."""
        self.tick()
        return self.allowed if self.enabled else None

    def chunk(self, largest: int, smallest: int = 256 << 10) -> int:
        """The size of the next copy: `largest` when unlimited, else about 1/32 s of the allowed
        rate (small copies keep a foreground write's wait behind one short), 4 KiB aligned."""
        r = self.rate()
        if r is None:
            return largest
        return max(smallest, min(largest, int(r / 32) & ~4095))

    def status(self) -> dict[str, Any]:
        """The `rebuild_pacing` entry of the status."""
        ms = lambda v: round(v * 1000, 3) if v is not None else None  # noqa: E731
        return {
            "enabled": self.enabled,
            "allowed_rate": int(self.allowed) if self.enabled and self.allowed else None,
            "baseline_p50_ms": ms(self.base[0] if self.base else None),
            "baseline_p99_ms": ms(self.baseline),
            "recent_p50_ms": ms(self.last[0] if self.last else None),
            "recent_p99_ms": ms(self.last_p99),
            "cuts": self.cuts,
        }


class Throttle:
    """Spaces copies at `rate` bytes per second (None: no limit), one schedule for every copy
    that shares it: `--rebuild-rate` across every rebuild at once, a scrub's pace. With no
    limit at the moment of a copy, no backlog is carried into a later limit."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self.clock = clock
        self._next = 0.0

    @property
    def rate(self) -> float | None:
        """The limit now, bytes/s."""
        return self._rate

    async def take(self, nbytes: int) -> None:
        """Wait until a copy of `nbytes` fits the rate."""
        rate = self.rate
        if not rate or nbytes <= 0:
            self._next = self.clock()
            return
        now = self.clock()
        start = max(now, self._next)
        self._next = start + nbytes / rate
        if start > now:
            await asyncio.sleep(start - now)


class PacedThrottle(Throttle):
    """Spaces a rebuild's copies at the pacer's allowed rate (one schedule for every rebuild)."""

    def __init__(self, pacer: Pacer, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(None, clock)
        self.pacer = pacer

    @property
    def rate(self) -> float | None:
        """The pacer's allowed rate now (None: unlimited)."""
        return self.pacer.rate()
