"""Peer-relative lag detection: a member far behind its peers leaves before the replica timeout.

Every replicated write, unmap and flush goes to every member, so the members' answer times are
directly comparable: a member that answers far later than its peers holds the whole volume back.
This module only decides (a pure state machine with an injectable clock, no I/O); the
coordinator feeds it and ejects through its usual failure path (a view change without the
member, which rejoins and catches up later like any failed member).

Two rules, both peer-relative (when every member is slow alike, nobody is ejected):

* **stall**: a member's oldest unanswered replicated request or PING is older than
  `max(floor, factor x the peers' recent p99)` while another current member answers promptly
  (its own oldest unanswered request is at most a quarter of that age), at least as many members
  answer promptly as lag (it included), and this holds for `CONFIRM` seconds (a member resumed
  a moment after its peers is not ejected);
* **slow**: for `window` seconds in a row, each second's p99 answer time of the member is above
  `max(SLOW_MIN, factor x its peers' typical p99)` (per peer the median of its per-second p99s
  over those seconds, the highest peer counts), with enough answers from both sides. Not judged
  while a replica is being rebuilt (the rebuild source answers rebuild reads too).

Never the last current member, never with no other member to compare with, one at a time.
A member ejected for a stall may rejoin at once the first time (a host back from a hang); one
ejected for sustained slowness (a dying disk), or again within `BACKOFF_RESET` seconds, waits
`BACKOFF_BASE` seconds before rejoining, doubling up to `BACKOFF_MAX`.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DEFAULT_FLOOR = 1.0  # s: no stall shorter than this ejects (host loss pauses I/O ~1.2 s)
DEFAULT_FACTOR = 4.0  # K: how far behind its peers' p99 a member must be
DEFAULT_WINDOW = 5.0  # s: how long a member must be slow (every second) to be ejected
SLOW_MIN = 0.02  # s: a second's p99 below this is never "slow"
MIN_SAMPLES = 20  # answers per second, on both sides, for a second to count as slow
PROMPT_RATIO = 4.0  # a peer answers promptly: its oldest unanswered <= the laggard's / this
CONFIRM = 0.2  # s the stall rule must hold before the member is ejected
BUCKET = 1.0  # s per latency bucket
KEEP = 8  # buckets kept per member (the p50/p99 of the status span these)
BACKOFF_BASE = 10.0  # s a member re-ejected for lag waits before rejoining (doubling)
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0  # s after which a lag ejection is forgotten for the backoff


def parse_seconds(text: str) -> float:
    """A CLI value: seconds, or `0` / `off` to disable (0.0)."""
    if text.strip().lower() in ("off", "no", "none", "false"):
        return 0.0
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"expected seconds >= 0 or 'off', got {text!r}")
    return v


@dataclass(frozen=True)
class LagPolicy:
    """The thresholds (controller options --slow-replica-floor/-factor/-window)."""

    floor: float = DEFAULT_FLOOR
    factor: float = DEFAULT_FACTOR
    window: float = DEFAULT_WINDOW

    @property
    def enabled(self) -> bool:
        return self.floor > 0 and self.factor > 0

    @property
    def slow_enabled(self) -> bool:
        return self.enabled and self.window > 0


_LOW = 1e-5  # s: the histograms' first bin holds everything up to this
_STEP = 1.2  # ratio between bin edges (quantiles are upper edges: within 20 %)
_NBINS = 92  # up to ~100 s


# bin k > 0 holds [_LOW * _STEP**(k-1), _LOW * _STEP**k): found by bisection (one C call per
# answer on the write path, where a logarithm per answer cost a measurable share of the CPU)
_EDGES = [_LOW * _STEP**k for k in range(_NBINS - 1)]


def _bin(x: float) -> int:
    if x <= _LOW:
        return 0
    return min(_NBINS - 1, bisect.bisect_right(_EDGES, x))


class Histogram:
    """Answer times on a log scale: constant cost per answer and per quantile."""

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts = [0] * _NBINS
        self.n = 0

    def add(self, xs: Iterable[float]) -> None:
        c = self.counts
        for x in xs:
            c[_bin(x)] += 1
            self.n += 1

    def merge(self, other: Histogram) -> None:
        if not other.n:
            return
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.n += other.n

    def quantile(self, q: float) -> float:
        """The q-quantile's bin upper edge in seconds (0.0 when empty)."""
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i, k in enumerate(self.counts):
            seen += k
            if seen >= rank:
                return _LOW * _STEP**i
        return _LOW * _STEP ** (_NBINS - 1)


@dataclass
class _Member:
    buckets: deque[tuple[int, Histogram]] = field(default_factory=lambda: deque(maxlen=KEEP))
    age: float | None = None  # oldest unanswered request's age at the last report
    stalled_since: float | None = None
    p99s: deque[tuple[int, float | None]] = field(default_factory=deque)  # per second judged
    ejections: int = 0
    last_ejection: float = -math.inf
    backoff: float = 0.0

    def since(self, first: int) -> Histogram:
        """The answer times of the buckets from `first` on."""
        h = Histogram()
        for b, hb in self.buckets:
            if b >= first:
                h.merge(hb)
        return h


@dataclass(frozen=True)
class Verdict:
    """Eject `member` for lag, because of `reason`."""

    member: str
    reason: str


class LagDetector:
    """Tracks the members' answer times and says when one lags far behind its peers."""

    def __init__(
        self, policy: LagPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or LagPolicy()
        self.clock = clock
        self._m: dict[str, _Member] = {}
        self._judged = -1  # last bucket the slow rule judged

    def _get(self, member: str) -> _Member:
        m = self._m.get(member)
        if m is None:
            m = self._m[member] = _Member()
        return m

    def _bucket(self) -> int:
        return int(self.clock() // BUCKET)

    # ------------------------------------------------------------------ inputs
    def answered(self, member: str, latencies: Iterable[float]) -> None:
        """Answer times (seconds) of replicated requests `member` answered since the last call."""
        m = self._get(member)
        b = self._bucket()
        if not m.buckets or m.buckets[-1][0] != b:
            m.buckets.append((b, Histogram()))
        m.buckets[-1][1].add(latencies)

    def outstanding(self, member: str, age: float | None) -> None:
        """The age (seconds) of `member`'s oldest unanswered request now (None: none)."""
        self._get(member).age = age

    def rejoined(self, member: str) -> None:
        """`member` is current again (or left): judge it afresh from now on."""
        m = self._get(member)
        m.buckets.clear()
        m.p99s.clear()
        m.age = m.stalled_since = None

    # ------------------------------------------------------------------ decisions
    def check(self, current: list[str], rebuilding: bool = False) -> Verdict | None:
        """Which of the `current` members (RW, connected) to eject for lag now, if any."""
        pol = self.policy
        if not pol.enabled or len(current) < 2:
            for k in current:
                self._get(k).stalled_since = None
            return None
        now = self.clock()
        stalled = self._stall(current, now)
        slow = self._slow(current, rebuilding) if pol.slow_enabled else None
        if stalled is not None:
            self._ejected(stalled.member, now, False)
        elif slow is not None:
            self._ejected(slow.member, now, True)
        return stalled or slow

    def _stall(self, current: list[str], now: float) -> Verdict | None:
        pol = self.policy
        recent = self._bucket() - 2
        found = None
        for k in current:
            m = self._get(k)
            age = m.age
            if age is None or age <= pol.floor:  # never above its limit (idle: nothing to judge)
                m.stalled_since = None
                continue
            peers = [self._get(p) for p in current if p != k]
            p99 = max(p.since(recent).quantile(0.99) for p in peers)
            limit = max(pol.floor, pol.factor * p99)
            prompt = [
                p
                for p in peers
                if age is not None and (p.age is None or p.age <= age / PROMPT_RATIO)
            ]
            # behind most of its peers, not one of several stalled alike (two of three replicas
            # lost: no view without both commits; the timeout path decides, as before)
            lagging = [p for p in peers if p.age is not None and p.age > limit]
            if age is None or age <= limit or not prompt or len(prompt) <= len(lagging):
                m.stalled_since = None
                continue
            if m.stalled_since is None:
                m.stalled_since = now
            if found is None and now - m.stalled_since >= CONFIRM - 1e-9:
                best = min((p.age or 0.0) for p in prompt)
                found = Verdict(
                    k,
                    f"lagged: oldest request {age:.1f}s unanswered while peers answer within "
                    f"{best * 1000:.0f}ms (limit {limit:.2f}s, peers' p99 {p99 * 1000:.0f}ms)",
                )
        return found

    def _slow(self, current: list[str], rebuilding: bool) -> Verdict | None:
        """Judge each completed second once: a member whose p99 was above factor x its peers'
        typical p99 (each peer's median per-second p99) in every one of the last `window`
        seconds is ejected."""
        pol = self.policy
        last = self._bucket() - 1  # the newest complete second
        if last <= self._judged:
            return None
        self._judged = last
        need = max(1, math.ceil(pol.window / BUCKET))
        for k in current:
            m = self._get(k)
            h = next((h for b, h in m.buckets if b == last), None)
            m.p99s.append(
                (last, h.quantile(0.99) if h is not None and h.n >= MIN_SAMPLES else None)
            )
            while len(m.p99s) > need:
                m.p99s.popleft()
            if rebuilding:
                m.p99s.clear()  # judged afresh once the rebuild is over
        seconds = range(last - need + 1, last + 1)
        series = {k: dict(self._get(k).p99s) for k in current}
        for k in current:
            mine = [series[k].get(b) for b in seconds]
            if any(v is None for v in mine):
                continue
            typical = []
            for p in current:
                theirs = sorted(v for b in seconds if (v := series[p].get(b)) is not None)
                if p != k and len(theirs) > need // 2:
                    typical.append(theirs[len(theirs) // 2])
            if len(typical) < len(current) - 1:
                continue  # a peer without enough answers: nothing to compare with
            low = min(v for v in mine if v is not None)
            top = max(typical)
            if low > max(SLOW_MIN, pol.factor * top):
                return Verdict(
                    k,
                    f"lagged: p99 answer time above {low * 1000:.0f}ms every second for"
                    f" {need * BUCKET:g}s while peers answer within {top * 1000:.0f}ms (p99)",
                )
        return None

    def _ejected(self, member: str, now: float, slow: bool) -> None:
        m = self._get(member)
        if now - m.last_ejection < BACKOFF_RESET:
            m.backoff = min(BACKOFF_MAX, max(BACKOFF_BASE, 2 * m.backoff))
        else:  # a stalled member (a lost host) returns at once; a slow one (a dying disk) waits
            m.backoff = BACKOFF_BASE if slow else 0.0
        m.ejections += 1
        m.last_ejection = now
        self.rejoined(member)

    def may_rejoin(self, member: str) -> bool:
        """False while a member ejected for lag again soon waits out its backoff."""
        m = self._m.get(member)
        return m is None or self.clock() >= m.last_ejection + m.backoff

    # ------------------------------------------------------------------ status
    def ejections(self, member: str) -> int:
        m = self._m.get(member)
        return m.ejections if m else 0

    def latency(self, member: str) -> dict[str, float | int | None]:
        """Recent answer times of `member` (last KEEP seconds): p50/p99 in ms, and the count."""
        m = self._m.get(member)
        h = m.since(self._bucket() - KEEP + 1) if m else Histogram()
        if not h.n:
            return {"p50_ms": None, "p99_ms": None, "answers": 0}
        return {
            "p50_ms": round(h.quantile(0.5) * 1000, 3),
            "p99_ms": round(h.quantile(0.99) * 1000, 3),
            "answers": h.n,
        }
