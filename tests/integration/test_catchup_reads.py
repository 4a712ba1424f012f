"""Fine (4 KiB) catch-up of a returning replica and large reads split across replicas, against
real `jiva replica` processes over real TCP and real files."""

from __future__ import annotations

import asyncio
import random

from jiva_engine.controller.volume import ERR
from tests.integration.test_engine import (
    MiB,
    all_current,
    block,
    fill,
    identical,
    open_volume,
    replicas,
    wait_for,
)


async def test_returning_replica_copies_only_the_4k_chunks_it_missed(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        await fill(vol, 0, 48 * MiB, seed=7)
        await vol.flush()
        await asyncio.sleep(1.5)  # idle: the replicas lazily clear their dirty bits
        reps[2].kill()
        await vol.write(0, block(1))  # the write that finds it gone
        await wait_for(lambda: vol.members[reps[2].addr].mode == ERR, 10, "ejection")
        # one 4 KiB write in each of 48 regions: region-granular tracking would copy 48 MiB
        rnd = random.Random(5)
        written = {}
        for r in range(48):
            off = r * MiB + rnd.randrange(256) * 4096
            written[off] = block(1000 + r)
            await vol.write(off, written[off])
        reps[2].start()
        await all_current(vol, 3)
        lr = vol.members[reps[2].addr].last_rebuild
        assert lr["kind"] == "incremental", lr
        # 49 writes of 4 KiB (plus at most a few regions left dirty on the killed replica)
        assert lr["copied"] <= 4 * MiB, lr
        assert lr["copied"] >= 48 * 4096, lr
        info = await reps[2].info()
        assert info["stats"]["rebuild_bytes_written"] == lr["copied"]
        for off, data in written.items():
            assert await vol.read(off, 4096) == data
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)
