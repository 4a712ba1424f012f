"""Rebuild pacing with real replica processes: a full rebuild under a foreground writer slows
down (the pacer cuts its rate), reports its rate and ETA while it runs, and completes with the
same data on every replica."""

from __future__ import annotations

from jiva_engine.controller.pacing import Pacer
from jiva_engine.controller.volume import RW
from tests.integration.test_engine import (
    Rep,
    Writer,
    fill,
    identical,
    open_volume,
    replicas,
)
from tests.waiting import eventually

MiB = 1 << 20
SIZE = 160 * MiB


async def test_full_rebuild_under_foreground_writes_is_paced(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2, SIZE)
    # no slow start (a rebuild starting under foreground I/O begins at 16 MiB/s, which may not
    # hurt it at all here): full speed first, so the feedback has something to cut
    vol = await open_volume(reps, rebuild_pacing=Pacer(start=float(1 << 40)))
    new = None
    try:
        await fill(vol, 0, SIZE - 16 * MiB, seed=21)
        w = Writer(vol, SIZE - 16 * MiB, 2 * MiB, workers=8).start()
        # idle foreground latency first: the pacer's baseline
        await eventually(lambda: vol.pacer.windows >= 6, 20, "a baseline (3 s of windows)")
        new = Rep(procs, tmp_path, "new", SIZE).start()
        m = await vol.add_replica(new.addr)
        seen: list[dict] = []
        allowed: list[int | None] = []

        def watch() -> bool:
            st = vol.status()
            rb = next(r for r in st["replicas"] if r["address"] == new.addr)["rebuild"]
            if rb and rb.get("rate") and rb.get("eta_seconds") is not None:
                seen.append(rb)
            allowed.append(st["rebuild_pacing"]["allowed_rate"])
            return m.mode == RW

        await eventually(watch, 50, "the rebuild done")
        await w.stop()
        assert not w.errors
        await w.verify()
        assert m.last_rebuild["kind"] == "full", m.last_rebuild
        assert seen, "rate and eta_seconds were reported while the rebuild ran"
        assert all(s["eta_seconds"] >= 0 and s["rate"] > 0 for s in seen)
        pacing = vol.status()["rebuild_pacing"]
        # the writer's latency rose above the baseline: the pacer cut the rebuild's rate
        assert pacing["enabled"] and pacing["cuts"] > 0, pacing
        assert any(a is not None and a < 1 << 40 for a in allowed), "a lower rate was visible"
        assert pacing["allowed_rate"] is None, "no rebuild runs: no limit left"
        await vol.flush()
    finally:
        await vol.close()
    for r in [*reps, *([new] if new else [])]:
        r.stop()
    identical([*reps, new])
