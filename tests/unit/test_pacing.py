"""Rebuild pacing (controller/pacing.py): a fake clock drives the state machine."""

from __future__ import annotations

from jiva_engine.controller.pacing import (
    FLOOR,
    MiB,
    Pacer,
    RateMeter,
    eta_seconds,
    p99,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def window(p: Pacer, clock: Clock, latency: float, n: int = 50) -> None:
    """One pacing window of `n` foreground completions taking `latency` seconds each."""
    for _ in range(n):
        clock.t += p.window / (n + 1)
        p.observe(latency)
    clock.t += p.window / (n + 1) + 1e-9
    p.tick()


def rebuilding(p: Pacer, clock: Clock, rate: float = 200 * MiB) -> None:
    """Start a rebuild during a pause of the foreground (so at full speed) that copied at `rate`
    for a second; the foreground then resumes (the callers' windows)."""
    clock.t += 2 * p.window
    p.started()
    assert p.rate() is None
    for _ in range(10):
        clock.t += 0.1
        p.copied(int(rate * 0.1))


def test_p99_and_eta() -> None:
    assert p99([0.001] * 99 + [0.1]) == 0.001
    assert p99([0.001] * 98 + [0.1] * 2) == 0.1
    assert p99([0.5]) == 0.5
    assert eta_seconds(0, 100 * MiB, 10 * MiB) == 10
    assert eta_seconds(95 * MiB, 100 * MiB, 2 * MiB) == 3  # rounded up
    assert eta_seconds(100, 100, 5.0) == 0
    assert eta_seconds(0, 100, 0.0) is None  # no rate yet


def test_rate_meter_is_recent() -> None:
    clock = Clock()
    m = RateMeter(clock, span=2.0)
    assert m.rate() == 0.0
    done = 0
    for _ in range(30):  # 3 s at 10 MiB/s
        clock.t += 0.1
        done += MiB
        m.add(done)
    assert abs(m.rate() - 10 * MiB) < 0.01 * MiB
    for _ in range(30):  # then 3 s at 1 MiB/s: the old pace is forgotten
        clock.t += 0.1
        done += MiB // 10
        m.add(done)
    assert abs(m.rate() - MiB) < 0.05 * MiB


def test_no_foreground_io_means_unlimited() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    rebuilding(p, clock)
    for _ in range(5):
        clock.t += p.window
        assert p.rate() is None
    assert p.chunk(8 * MiB) == 8 * MiB
    assert p.cuts == 0


def test_latency_above_baseline_cuts_then_recovers() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    for _ in range(4):  # idle foreground latency: 1 ms
        window(p, clock, 0.001)
    assert p.baseline is not None and abs(p.baseline - 0.001) < 1e-9
    rebuilding(p, clock, 200 * MiB)
    window(p, clock, 0.004)  # the rebuild hurts: cut from its full-speed rate
    first = p.rate()
    assert first is not None and first <= 100 * MiB + 1
    assert p.cuts == 1
    window(p, clock, 0.004)
    second = p.rate()
    assert second is not None and second < first  # multiplicative decrease, again
    for _ in range(20):
        window(p, clock, 0.004)
    assert p.rate() == FLOOR  # never below the floor: the rebuild always progresses
    assert p.chunk(8 * MiB) == 256 << 10  # short copies while paced
    for _ in range(3):  # latency back to normal (smoothed: a few windows say so)
        window(p, clock, 0.0011)
        if p.rate() != FLOOR:
            break
    grown = p.rate()  # additive increase
    assert grown is not None and grown == FLOOR + p.step
    for _ in range(100):
        window(p, clock, 0.0011)
    assert p.rate() is None  # well above the full-speed rate: unlimited again
    assert p.status()["cuts"] == p.cuts >= 22


def test_baseline_not_poisoned_by_rebuild_latency() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    for _ in range(3):
        window(p, clock, 0.002)
    rebuilding(p, clock)
    for _ in range(30):
        window(p, clock, 0.010)
    assert p.baseline == 0.002  # 5x latency for 15 s did not raise it
    window(p, clock, 0.0005)  # nor does one quiet window lower it (a ratchet to the floor)
    assert p.baseline == 0.002
    p.finished()
    assert p.rate() is None
    window(p, clock, 0.003)  # with no rebuild it follows idle latency
    assert p.baseline is not None and 0.002 < p.baseline < 0.003


def test_baseline_without_idle_history_is_the_best_seen_under_the_rebuild() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    rebuilding(p, clock)
    window(p, clock, 0.010)
    assert p.baseline == 0.010
    window(p, clock, 0.004)
    assert p.baseline == 0.004
    window(p, clock, 0.008)
    assert p.baseline == 0.004
    p.finished()
    window(p, clock, 0.002)  # the first idle window replaces it
    assert p.baseline == 0.002


def test_one_noisy_window_under_a_rebuild_is_smoothed() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.010)
    rebuilding(p, clock)
    window(p, clock, 0.010)
    window(p, clock, 0.0165)  # smoothed 13.25 ms, under the p50 target (13.5 ms): no cut
    assert p.cuts == 0 and p.rate() is None
    window(p, clock, 0.030)  # sustained: cut
    assert p.cuts == 1


def test_idle_gap_lifts_the_limit_and_disabled_never_limits() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.001)
    rebuilding(p, clock)
    window(p, clock, 0.01)
    assert p.rate() is not None
    clock.t += 3 * p.window  # foreground stopped
    assert p.rate() is None
    off = Pacer(enabled=False, clock=clock)
    window(off, clock, 0.001)
    rebuilding(off, clock)
    window(off, clock, 0.05)
    assert off.rate() is None and off.chunk(4 * MiB) == 4 * MiB
    assert off.status()["enabled"] is False and off.status()["allowed_rate"] is None


def test_deep_cut_when_far_above_target() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.001)
    rebuilding(p, clock, 200 * MiB)
    window(p, clock, 0.05)  # 25x the target: one window cuts 8x, not 2x
    assert abs((p.rate() or 0) - 25 * MiB) < 1024


def test_status_table_shows_rebuild_rate_and_eta() -> None:
    from jiva_engine.api.cli import render

    rb = {"done": 256 << 20, "total": 1 << 30, "rate": 64 << 20, "eta_seconds": 12}
    st = {
        "name": "v",
        "size": 1 << 30,
        "state": "serving",
        "epoch": 7,
        "replicas": [{"address": "b:1", "mode": "WO", "epoch": 7, "rebuild": rb}],
    }
    line = next(ln for ln in render(st).splitlines() if ln.startswith("b:1"))
    assert "25%" in line and "64.0 MiB/s" in line and "ETA 12s" in line


def test_median_rise_cuts_even_with_a_steady_p99() -> None:
    """Throughput: a closed-loop initiator loses IOPS as its median latency grows."""
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.010)
    rebuilding(p, clock)
    for _ in range(2):  # 14 ms: under the p99 target (15.5 ms), over the p50 one (13.5 ms)
        window(p, clock, 0.014)
    assert p.last_p99 is not None and p.last_p99 < 1.5 * 0.010 + 0.0005
    assert p.cuts >= 1


def test_rebuild_starting_under_foreground_io_starts_slow() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.001)  # foreground I/O runs
    p.started()
    assert p.rate() == p.start
    window(p, clock, 0.001)
    assert p.rate() == p.start + p.step  # and grows while latency stays put
    idle = Pacer(clock=clock)
    clock.t += 1
    idle.started()  # no foreground I/O: full speed at once
    assert idle.rate() is None


def test_cut_starts_from_the_pace_achieved() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.001)
    p.started()
    for _ in range(20):  # the allowed rate is 16 MiB/s, but the copy only makes 4 MiB/s
        clock.t += 0.05
        p.copied(200 << 10)
    window(p, clock, 0.004)
    assert (p.rate() or 0) <= 2.1 * MiB


def test_idle_baseline_forgets_a_noisy_first_window_fast() -> None:
    clock = Clock()
    p = Pacer(clock=clock)
    window(p, clock, 0.040)  # a hiccup while the volume starts
    for _ in range(4):
        window(p, clock, 0.002)
    assert p.baseline is not None and p.baseline < 0.005  # down fast...
    window(p, clock, 0.040)
    assert p.baseline < 0.013  # ...up slowly
    assert p.windows == 6
