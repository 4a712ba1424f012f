"""A slow replica is not a slow volume: lag ejection (controller/lag.py) with real replica
processes, real TCP and a checking writer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from jiva_engine.controller.volume import ERR, RW
from tests.integration.test_engine import Writer, all_current, identical, open_volume, replicas
from tests.waiting import eventually, holds

MiB = 1 << 20


async def test_sigstopped_replica_is_ejected_for_lag_before_the_timeout(procs, tmp_path):
    """One of three replicas hangs (SIGSTOP, as a lost host): it leaves for lag well before the
    3 s replica timeout, writes go on, and it rejoins and catches up after SIGCONT."""
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)  # the default 3 s replica timeout, default lag thresholds
    try:
        w = Writer(vol, 0, 8 * MiB).start()
        await eventually(lambda: w.count > 300, 20, "writes before the fault")
        victim = vol.members[reps[1].addr]
        reps[1].kill(signal.SIGSTOP)
        t0 = time.monotonic()
        await eventually(lambda: victim.mode == ERR, 10, "the stopped replica's ejection")
        ejected_after = time.monotonic() - t0
        before = w.count
        await eventually(lambda: w.count > before + 100, 10, "writes going on without it")
        gap = w.max_latency
        print(f"lag ejection after {ejected_after:.2f}s; longest write {gap:.2f}s")
        # the lag detector did it, not the timeout (whose reason says "timeout")
        assert "lagged: oldest request" in (victim.last_error or ""), victim.last_error
        assert victim.lag_ejections == 1
        assert vol.stats["lag_ejections"] == 1
        assert ejected_after < 2.5, ejected_after
        assert gap < 3.0, gap  # the pause stayed below the replica timeout
        st = {r["address"]: r for r in vol.status()["replicas"]}
        assert st[reps[1].addr]["lag_ejections"] == 1
        assert st[reps[0].addr]["latency"]["p99_ms"] is not None
        reps[1].kill(signal.SIGCONT)
        await all_current(vol, 3)  # rejoins at once (first lag ejection) and catches up
        assert victim.last_rebuild["kind"] == "incremental", victim.last_rebuild
        before = w.count
        await eventually(lambda: w.count > before + 100, 10, "writes to all three again")
        await w.stop()
        assert not w.errors, w.errors
        await w.verify()
        await vol.flush()
    finally:
        for r in reps:  # never leave one stopped
            if r.proc is not None and r.proc.poll() is None:
                os.kill(r.proc.pid, signal.SIGCONT)
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_sigstopped_replica_of_an_idle_volume_is_ejected_by_its_unanswered_ping(
    procs, tmp_path
):
    """No I/O at all (the lag watch looks at half its usual pace then): a hung replica's PING
    stays unanswered and it still leaves for lag, well before the 3 s replica timeout."""
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        victim = vol.members[reps[2].addr]
        reps[2].kill(signal.SIGSTOP)
        t0 = time.monotonic()
        await eventually(lambda: victim.mode == ERR, 10, "the stopped replica's ejection")
        ejected_after = time.monotonic() - t0
        print(f"idle lag ejection after {ejected_after:.2f}s")
        assert "lagged: oldest request" in (victim.last_error or ""), victim.last_error
        assert ejected_after < 2.5, ejected_after  # next PING within 0.5 s, floor 1 s, 0.2 s
    finally:
        for r in reps:
            if r.proc is not None and r.proc.poll() is None:
                os.kill(r.proc.pid, signal.SIGCONT)
        await vol.close()


async def test_all_replicas_slow_alike_nobody_ejected(procs, tmp_path):
    """Every replica hangs 1.5 s at once (past the 1 s floor, below the timeout), three times:
    nobody lags behind its peers, so nobody leaves."""
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        w = Writer(vol, 0, 8 * MiB).start()
        for n in range(3):
            before = w.count
            await eventually(lambda b=before: w.count > b + 200, 20, "writes between stalls")
            order = reps[n:] + reps[:n]  # another one resumes first each time
            for r in order:
                r.kill(signal.SIGSTOP)
            await asyncio.sleep(1.5)  # the fault's duration
            for r in order:
                r.kill(signal.SIGCONT)
        before = w.count
        await eventually(lambda: w.count > before + 200, 20, "writes after the stalls")
        await holds(lambda: all(m.mode == RW for m in vol.members.values()), 1.0, "every member RW")
        await w.stop()
        assert not w.errors, w.errors
        assert vol.stats["lag_ejections"] == 0
        assert vol.stats["ejections"] == 0
        assert w.max_latency > 1.0  # the stalls did hold the writes
        await w.verify()
    finally:
        for r in reps:
            if r.proc is not None and r.proc.poll() is None:
                os.kill(r.proc.pid, signal.SIGCONT)
        await vol.close()


SOAK_SECONDS = float(os.environ.get("JIVA_SOAK_SECONDS", "600"))


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_no_false_lag_ejection_on_a_saturated_machine(procs, tmp_path):
    """Soak (opt-in, -m slow): 3 replicas under a checking writer while CPU hogs saturate every
    core (JIVA_SOAK_SECONDS, default 600): no replica is ejected for lag."""
    seconds = SOAK_SECONDS
    hogs: list[subprocess.Popen] = []
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        for _ in range(2 * (os.cpu_count() or 2)):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while 1: pass"]))
        w = Writer(vol, 0, 8 * MiB).start()
        end = time.monotonic() + seconds
        loads = []
        while time.monotonic() < end:
            await holds(
                lambda: vol.stats["lag_ejections"] == 0, min(10.0, seconds), "no lag ejection"
            )
            loads.append(os.getloadavg()[0])
            print(
                f"{time.monotonic() - end + seconds:.0f}s: {w.count} writes, load {loads[-1]:.1f},"
                f" ejections {vol.stats['ejections']:g}",
                flush=True,
            )
        await w.stop()
        print(
            f"soak {seconds:g}s: {w.count} writes, longest {w.max_latency:.2f}s, load"
            f" {min(loads):.1f}-{max(loads):.1f}, ejections {vol.stats['ejections']:g},"
            f" lag ejections {vol.stats['lag_ejections']:g}"
        )
        assert not w.errors, w.errors
        assert vol.stats["lag_ejections"] == 0
        await w.verify()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        await vol.close()
