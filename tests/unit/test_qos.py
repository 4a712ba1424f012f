"""controller/qos.py with a fake clock: the token bucket's rate, burst, large I/Os, unlimited,
limits changed at runtime, and the checks of the limit values."""

from __future__ import annotations

import asyncio

import pytest

from jiva_engine.controller.qos import BURST, Limiter, MiB, check_iops, check_mbps


class FakeTime:
    """A clock that only moves when an I/O waits: `wait` advances it by the whole timeout
    (unless `hold` is set: then it waits for the limiter's wake-up, the clock standing still)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.hold = False

    def clock(self) -> float:
        return self.now

    async def wait(self, timeout: float, woken: asyncio.Event) -> None:
        self.waits.append(timeout)
        if self.hold:
            await woken.wait()
        else:
            self.now += timeout
        await asyncio.sleep(0)


def limiter(t: FakeTime, iops: int | None = None, mbps: float | None = None) -> Limiter:
    return Limiter(iops, mbps, clock=t.clock, wait=t.wait)


async def test_iops_rate_is_respected_over_a_long_window():
    t = FakeTime()
    q = limiter(t, iops=200)
    start = t.now
    for _ in range(2000):
        await q.admit(4096)
    elapsed = t.now - start
    burst = 200 * BURST
    # every I/O past the burst waits 1/200 s for its token
    assert elapsed == pytest.approx((2000 - burst) / 200, rel=1e-6)
    assert q.throttled_ios == 2000 - burst
    assert q.throttled_seconds == pytest.approx(elapsed, rel=1e-6)


async def test_burst_is_bounded():
    t = FakeTime()
    q = limiter(t, iops=1000)
    for _ in range(int(1000 * BURST)):  # a full bucket: 100 I/Os at once, no wait
        await q.admit(512)
    assert t.waits == [] and q.throttled_ios == 0
    await q.admit(512)  # the next one waits for its token
    assert t.waits == [pytest.approx(1 / 1000)]
    # a long idle time does not store more than the burst
    t.now += 3600
    for _ in range(100):
        await q.admit(512)
    assert len(t.waits) == 1
    await q.admit(512)
    assert len(t.waits) == 2


async def test_low_rate_keeps_a_burst_of_one_io():
    t = FakeTime()
    q = limiter(t, iops=2)  # 0.1 s worth is 0.2 I/O: the bucket still holds one
    await q.admit(4096)
    assert t.waits == []
    await q.admit(4096)
    assert sum(t.waits) == pytest.approx(0.5)


async def test_a_large_io_above_the_rate_passes_after_the_right_wait():
    t = FakeTime()
    q = limiter(t, mbps=1)  # 1 MiB/s: burst 0.1 MiB
    await q.admit(4 * MiB)
    # it waits until the bucket filled from its burst up to 4 MiB, and no longer
    assert sum(t.waits) == pytest.approx(3.9)
    assert q.throttled_ios == 1
    # the bucket is empty after it: the next MiB costs a full second
    await q.admit(MiB)
    assert sum(t.waits) == pytest.approx(4.9)


async def test_bytes_rate_is_respected_over_a_long_window():
    t = FakeTime()
    q = limiter(t, mbps=10)
    start = t.now
    for _ in range(100):
        await q.admit(MiB)
    assert t.now - start == pytest.approx((100 - 10 * BURST) / 10, rel=1e-6)


async def test_both_limits_the_stricter_one_wins():
    t = FakeTime()
    q = limiter(t, iops=1000, mbps=1)
    start = t.now
    for _ in range(50):
        await q.admit(64 << 10)  # 50 x 64 KiB = 3.125 MiB: the byte limit decides
    assert t.now - start == pytest.approx(3.125 - 0.1, rel=1e-6)


async def test_unmap_costs_one_io_and_no_bytes():
    t = FakeTime()
    q = limiter(t, mbps=1)
    for _ in range(1000):
        await q.admit(0)
    assert t.waits == []


async def test_unlimited_never_waits():
    t = FakeTime()
    q = limiter(t)
    assert q.unlimited
    for _ in range(10000):
        await q.admit(1 << 20)
    assert t.waits == [] and q.throttled_ios == 0
    assert q.status() == {
        "max_iops": None,
        "max_mbps": None,
        "throttled_ios": 0,
        "throttled_seconds": 0.0,
    }


async def test_a_limit_changed_at_runtime_takes_effect():
    t = FakeTime()
    q = limiter(t, iops=10)
    for _ in range(20):
        await q.admit(4096)
    assert q.throttled_ios == 19
    q.set_limits(1000, None)  # the bucket was empty: no extra burst from the change
    t.waits.clear()
    start = t.now
    for _ in range(1000):
        await q.admit(4096)
    assert t.now - start == pytest.approx(1000 / 1000, rel=1e-6)
    q.set_limits(1000, 5)  # a byte limit where there was none starts with a full bucket
    t.waits.clear()
    for _ in range(5):
        await q.admit(0)  # unmaps: no bytes, and the IOPS bucket kept its (empty) level
    assert sum(t.waits) == pytest.approx(5 / 1000)
    q.set_limits(None, None)
    t.waits.clear()
    for _ in range(1000):
        await q.admit(4096)
    assert t.waits == []
    assert q.status()["max_iops"] is None


async def test_a_waiting_io_is_released_when_the_limit_is_lifted():
    """An I/O queued under a low limit does not sit out the old wait once the limit goes."""
    t = FakeTime()
    q = limiter(t, iops=1)
    await q.admit(4096)  # the burst of one
    t.hold = True
    waiting = asyncio.ensure_future(q.admit(4096))
    behind = asyncio.ensure_future(q.admit(4096))  # queued behind it (FIFO)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiting.done() and t.waits == [pytest.approx(1.0)]
    q.set_limits(None, None)
    await asyncio.wait_for(asyncio.gather(waiting, behind), 5)
    assert t.now == 1000.0  # released without the clock moving
    assert q.throttled_ios == 1  # the one at the head waited; the one behind did not count


async def test_fifo_a_large_io_is_not_starved_by_small_ones():
    t = FakeTime()
    q = limiter(t, mbps=1)
    order: list[str] = []

    async def io(name: str, n: int) -> None:
        await q.admit(n)
        order.append(name)

    await asyncio.gather(io("big", 2 * MiB), *(io(f"small{i}", 4096) for i in range(5)))
    assert order[0] == "big"


def test_limit_values_are_checked():
    assert check_iops(None) is None and check_iops(5) == 5
    assert check_mbps(None) is None and check_mbps(2) == 2.0 and check_mbps(0.5) == 0.5
    for bad in (0, -1, 1.5, True, "100", float("nan")):
        with pytest.raises(ValueError, match="max_iops must be a positive integer"):
            check_iops(bad)
    for bad in (0, -2.5, True, "10", float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_mbps must be a positive number"):
            check_mbps(bad)
    t = FakeTime()
    q = limiter(t, iops=10)
    with pytest.raises(ValueError):
        q.set_limits(0, None)
    assert q.max_iops == 10  # nothing changed


def test_status_table_shows_the_limits():
    from jiva_engine.api.cli import qos_text, render

    assert qos_text({"max_iops": None, "max_mbps": None}) == "unlimited"
    q = {"max_iops": 200, "max_mbps": 2.5, "throttled_ios": 17, "throttled_seconds": 1.25}
    assert qos_text(q) == "at most 200 IOPS and 2.5 MiB/s; 17 I/Os throttled (1.2 s)"
    assert "at most 40 MiB/s; 0 I/Os" in render({"name": "v", "qos": {"max_mbps": 40.0}})
