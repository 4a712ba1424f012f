"""The peer-relative lag detector (controller/lag.py), on a fake clock; the coordinator's
watch that feeds it (its pace while idle)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from jiva_engine.controller import coordinator, lag
from jiva_engine.controller.coordinator import Coordinator
from jiva_engine.controller.lag import LagDetector, LagPolicy, Verdict
from jiva_engine.controller.peers import RW
from jiva_engine.controller.rangelock import RangeLock

MEMBERS = ["a", "b", "c"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(**kw: float) -> tuple[LagDetector, Clock]:
    clock = Clock()
    return LagDetector(LagPolicy(**kw), clock), clock


def tick(
    d: LagDetector,
    clock: Clock,
    ages: dict[str, float | None],
    lat: dict[str, float] | None = None,
    members: list[str] = MEMBERS,
    n: int = 50,
    dt: float = 0.1,
    rebuilding: bool = False,
) -> Verdict | None:
    """One 0.1 s look: each member answered `n` requests in `lat[m]` s and has its oldest
    unanswered request `ages[m]` old."""
    clock.now += dt
    for m in members:
        if lat and m in lat:
            d.answered(m, [lat[m]] * n)
        d.outstanding(m, ages.get(m))
    return d.check(members, rebuilding)


def stall(d: LagDetector, clock: Clock, who: str, seconds: float, **kw: object) -> list[Verdict]:
    """`who` answers nothing for `seconds` while the others answer in 2 ms."""
    out = []
    t = 0.0
    while t < seconds:
        t += 0.1
        ages = {m: (t if m == who else 0.002) for m in MEMBERS}
        lat = {m: 0.002 for m in MEMBERS if m != who}
        v = tick(d, clock, ages, lat, **kw)  # type: ignore[arg-type]
        if v:
            out.append(v)
    return out


def test_laggard_ejected_after_the_floor_not_before() -> None:
    d, clock = detector()
    for _ in range(20):  # everybody answers in 2 ms
        assert tick(d, clock, {}, {m: 0.002 for m in MEMBERS}) is None
    assert stall(d, clock, "b", 1.0) == []  # not past the floor: kept
    d, clock = detector()
    verdicts = stall(d, clock, "b", 1.5)
    assert [v.member for v in verdicts] == ["b"]  # past the floor, confirmed 0.2 s later
    assert verdicts[0].reason.startswith("lagged: oldest request 1.3s unanswered")
    assert d.ejections("b") == 1


def test_limit_follows_the_peers_p99() -> None:
    """Peers answering in 300 ms (a loaded machine): about K x 300 ms, not the 1 s floor."""
    d, clock = detector()
    first = None
    for i in range(1, 25):  # b silent for 2.4 s, peers answer within 0.3 s
        v = tick(d, clock, {"a": 0.05, "b": 0.1 * i, "c": 0.05}, {"a": 0.3, "c": 0.3})
        if v is not None and first is None:
            first = i
    assert first is not None and 15 <= first <= 17  # 4 x p99 (0.3-0.36 s) + 0.2 s


def test_all_members_slow_alike_nobody_ejected() -> None:
    d, clock = detector()
    for i in range(1, 40):  # everybody stalled 3.9 s (SIGSTOP of all, a paused VM)
        assert tick(d, clock, {m: 0.1 * i for m in MEMBERS}) is None
    # they resume one after the other, a moment apart: nobody ejected
    clock.now += 0.1
    d.outstanding("a", None)
    d.answered("a", [4.0] * 20)
    d.outstanding("b", 4.0)
    d.outstanding("c", 4.0)
    assert d.check(MEMBERS) is None
    assert tick(d, clock, {}, {m: 0.002 for m in MEMBERS}) is None


def test_single_member_never_ejected() -> None:
    d, clock = detector()
    for i in range(1, 60):
        assert tick(d, clock, {"a": 0.1 * i}, members=["a"]) is None


def test_last_member_answering_promptly_needed() -> None:
    """Two members, both stalled: neither leaves (nobody answers promptly)."""
    d, clock = detector()
    for i in range(1, 40):
        ages = {"a": 0.1 * i, "b": 0.1 * i - 0.05}
        assert tick(d, clock, ages, members=["a", "b"]) is None


def test_two_members_one_stalls() -> None:
    d, clock = detector()
    for i in range(1, 20):
        v = tick(d, clock, {"a": 0.1 * i, "b": None}, {"b": 0.002}, members=["a", "b"])
        if v:
            assert (v.member, i) == ("a", 13)
            break
    else:
        raise AssertionError("not ejected")


def tick_second(
    d: LagDetector, clock: Clock, lat: dict[str, float], rebuilding: bool = False
) -> list[Verdict]:
    """One second (one bucket exactly) of ten looks, every member answering 100 requests."""
    out = []
    base = int(clock.now) + 1
    for j in range(10):
        clock.now = base + 0.05 + 0.1 * j - 0.1  # tick() adds the 0.1
        v = tick(d, clock, {m: 0.001 for m in MEMBERS}, lat, n=10, rebuilding=rebuilding)
        if v:
            out.append(v)
    return out


def test_sustained_slowness_ejects_after_the_window() -> None:
    d, clock = detector()
    slow = {"a": 0.002, "b": 0.05, "c": 0.002}  # b's answers 25x its peers'
    seen: list[Verdict] = []
    for s in range(1, 8):
        got = tick_second(d, clock, slow)
        seen += got
        if s <= 5:  # judged one second late: five full slow seconds needed
            assert got == [], s
    assert [v.member for v in seen] == ["b"]
    assert "p99 answer time" in seen[0].reason


def test_short_spike_is_not_ejection() -> None:
    d, clock = detector()
    calm = {m: 0.002 for m in MEMBERS}
    slow = {"a": 0.002, "b": 0.05, "c": 0.002}
    for _ in range(3):
        for lat in (slow, slow, slow, calm):  # 3 slow seconds, then a normal one
            assert tick_second(d, clock, lat) == []


def test_slow_all_alike_or_rebuilding_not_ejected() -> None:
    d, clock = detector()
    for _ in range(10):
        assert tick_second(d, clock, {"a": 0.08, "b": 0.05, "c": 0.1}) == []
    for _ in range(10):
        got = tick_second(d, clock, {"a": 0.002, "b": 0.05, "c": 0.002}, rebuilding=True)
        assert got == []


def test_small_absolute_differences_not_ejected() -> None:
    d, clock = detector()
    for _ in range(10):  # 15 ms vs 1 ms: a ratio of 15 but below SLOW_MIN
        assert tick_second(d, clock, {"a": 0.001, "b": 0.015, "c": 0.001}) == []


def test_disabled() -> None:
    for kw in ({"floor": 0.0}, {"factor": 0.0}):
        d, clock = detector(**kw)
        assert stall(d, clock, "b", 3.0) == []
    d, clock = detector(window=0.0)  # stalls only
    for _ in range(10):
        assert tick_second(d, clock, {"a": 0.002, "b": 0.05, "c": 0.002}) == []
    assert len(stall(d, clock, "b", 1.5)) == 1


def test_rearmed_after_rejoin_with_backoff() -> None:
    d, clock = detector()
    assert len(stall(d, clock, "b", 1.5)) == 1
    assert d.may_rejoin("b")  # first time: rejoins at once (caught up as today)
    d.rejoined("b")
    assert d.latency("b")["answers"] == 0
    for _ in range(10):  # healthy again
        assert tick(d, clock, {}, {m: 0.002 for m in MEMBERS}) is None
    assert len(stall(d, clock, "b", 1.5)) == 1  # judged again: ejected again
    assert d.ejections("b") == 2
    assert not d.may_rejoin("b")  # again soon: waits out a backoff
    clock.now += lag.BACKOFF_BASE
    assert d.may_rejoin("b")
    d.rejoined("b")
    assert len(stall(d, clock, "b", 1.5)) == 1
    clock.now += lag.BACKOFF_BASE
    assert not d.may_rejoin("b")  # doubled
    clock.now += lag.BACKOFF_BASE
    assert d.may_rejoin("b")
    clock.now += lag.BACKOFF_RESET
    d.rejoined("b")
    assert len(stall(d, clock, "b", 1.5)) == 1
    assert d.may_rejoin("b")  # a long time later: at once again


def test_latency_status() -> None:
    d, clock = detector()
    for _ in range(10):
        tick(d, clock, {}, {"a": 0.002, "b": 0.004, "c": 0.002})
    st = d.latency("b")
    assert st["answers"] == 500
    assert st["p50_ms"] == pytest.approx(4, rel=0.25)
    assert st["p99_ms"] == pytest.approx(4, rel=0.25)
    assert d.latency("zz") == {"p50_ms": None, "p99_ms": None, "answers": 0}


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1.0), ("0.5", 0.5), ("off", 0.0), ("0", 0.0), ("OFF", 0.0)]
)
def test_parse_seconds(text: str, value: float) -> None:
    assert lag.parse_seconds(text) == value


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon"])
def test_parse_seconds_refused(text: str) -> None:
    with pytest.raises(ValueError):
        lag.parse_seconds(text)


def test_sustained_slowness_despite_a_peer_spike_then_backoff() -> None:
    """A peer's one slow second does not hide the laggard (its typical p99 counts); a member
    ejected for slowness (a dying disk) waits before rejoining, unlike a stalled one."""
    d, clock = detector()
    slow = {"a": 0.002, "b": 0.05, "c": 0.002}
    spike = {"a": 0.03, "b": 0.05, "c": 0.002}
    seen: list[Verdict] = []
    for lat in (slow, slow, spike, slow, slow, slow, slow):
        seen += tick_second(d, clock, lat)
    assert [v.member for v in seen] == ["b"]
    assert not d.may_rejoin("b")
    clock.now += lag.BACKOFF_BASE
    assert d.may_rejoin("b")


def test_two_of_three_stalled_alike_nobody_ejected_early() -> None:
    """Two members hang together (a partition leaving the controller with one): they are not
    behind most of their peers; the replica timeout decides, as without lag ejection."""
    d, clock = detector()
    for i in range(1, 30):
        ages = {"a": 0.002, "b": 0.1 * i, "c": 0.1 * i}
        assert tick(d, clock, ages, {"a": 0.002}) is None


class _Link:
    """What the lag watch reads of a member's connection."""

    def __init__(self) -> None:
        self.answer_times: collections.deque[float] = collections.deque()
        self.age: float | None = None  # its oldest unanswered replicated request or PING

    def oldest_age(self, now: float) -> float | None:
        return self.age


async def _no_resend() -> list[Any]:
    return []


def _coordinator(floor: float = lag.DEFAULT_FLOOR) -> tuple[Coordinator, list[_Link]]:
    coord = Coordinator(
        "v",
        [f"127.0.0.1:{port}" for port in (1, 2, 3)],
        ranges=RangeLock(),
        resend=_no_resend,
        lag=LagPolicy(floor=floor),
    )
    links = []
    for p in coord.peers.values():
        link = _Link()
        p.mode, p.client = RW, link  # type: ignore[assignment]
        links.append(link)
    return coord, links


async def test_a_look_is_idle_only_with_nothing_answered_and_nothing_outstanding() -> None:
    coord, links = _coordinator()
    coord.open = True
    assert await coord.check_lag() is False  # no I/O, no PING out
    links[0].age = 0.001  # a PING (or a write) out
    assert await coord.check_lag() is True
    links[0].age = None
    links[1].answer_times.extend([0.002, 0.003])  # writes answered since the last look
    assert await coord.check_lag() is True
    assert not links[1].answer_times  # fed to the detector
    assert await coord.check_lag() is False


async def test_lag_watch_looks_slowly_while_idle_and_fast_once_busy(monkeypatch) -> None:
    """Idle looks are half the floor apart at most (an unanswered PING or write is seen long
    before it can count as a stall); the first busy look brings back the 0.1 s pace."""
    coord, _ = _coordinator(floor=0.4)
    looks = iter([False, False, True, True, False])
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    async def check_lag() -> bool:
        busy = next(looks, None)
        if busy is None:
            coord.closed = True
        return bool(busy)

    monkeypatch.setattr(coordinator.asyncio, "sleep", sleep)
    monkeypatch.setattr(coord, "check_lag", check_lag)
    await coord.watch_lag()
    fast, idle = coordinator.LAG_TICK, 0.2
    assert delays == [fast, idle, idle, fast, fast, idle]
