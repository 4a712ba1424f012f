"""Fine (4 KiB) catch-up of a returning replica and large reads split across replicas, against
real `jiva replica` processes over real TCP and real files."""

from __future__ import annotations

import asyncio
import random

import pytest

from jiva_engine.controller.volume import ERR
from tests.integration.test_engine import (
    MiB,
    all_current,
    block,
    fill,
    identical,
    open_volume,
    replicas,
    settled,
)
from tests.waiting import eventually


async def test_returning_replica_copies_only_the_4k_chunks_it_missed(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        await fill(vol, 0, 48 * MiB, seed=7)
        await vol.flush()
        await settled(reps)  # idle: the replicas lazily clear their dirty bits
        reps[2].kill()
        await vol.write(0, block(1))  # the write that finds it gone
        await eventually(lambda: vol.members[reps[2].addr].mode == ERR, 10, "ejection")
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


async def test_large_reads_are_split_across_replicas_and_survive_one_dying(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        data = await fill(vol, 0, 32 * MiB, seed=11)
        before = {a: m.reads for a, m in vol.members.items()}
        got = await vol.read(3 * MiB + 4096, MiB)
        assert isinstance(got, bytearray) and got == data[3 * MiB + 4096 : 4 * MiB + 4096]
        # one 1 MiB read was served by all three members, one part each
        assert all(m.reads == before[a] + 1 for a, m in vol.members.items()), vol.status()
        assert await vol.read(0, 17 * MiB) == data[: 17 * MiB]  # > one frame, split too
        assert await vol.read(5 * MiB, 128 << 10) == data[5 * MiB : 5 * MiB + (128 << 10)]
        stop = False
        count = 0

        async def reader(seed: int) -> None:
            nonlocal count
            rnd = random.Random(seed)
            while not stop:
                off = rnd.randrange(31 * 16) * (64 << 10)
                n = rnd.choice([128 << 10, 512 << 10, MiB])
                assert await vol.read(off, n) == data[off : off + n]
                count += 1

        tasks = [asyncio.create_task(reader(s)) for s in range(4)]
        await asyncio.sleep(0.3)
        reps[1].kill()  # dies while split reads are in flight on it
        await eventually(lambda: vol.members[reps[1].addr].mode == ERR, 10, "ejection")
        await asyncio.sleep(0.3)
        stop = True
        await asyncio.gather(*tasks)  # raises if a read failed or returned wrong bytes
        assert count > 20
        assert vol.stats["read_errors"] == 0
        assert vol.stats["read_retries"] >= 1, "some split reads hit the dying replica"
        assert await vol.read(0, 32 * MiB) == data  # the two survivors serve it
    finally:
        await vol.close()


async def test_split_reads_through_iscsi_are_byte_identical(procs, tmp_path):
    """qemu-io over iSCSI to the real `jiva controller`: 1 MiB and 256 KiB patterned reads."""
    import shutil
    import subprocess

    from tests.integration.test_engine import _api_serving, _controller_args, _iscsi_url, jiva
    from tests.procs import free_port

    if not shutil.which("qemu-io"):
        pytest.fail("qemu-io (Debian qemu-utils + qemu-block-extra) is required")
    reps = replicas(procs, tmp_path, 3)
    api, portal = free_port(), free_port()
    jiva(procs, *_controller_args(reps, api, portal), name="ctl")
    await _api_serving(api)
    url = _iscsi_url(portal)
    w = []
    for i in range(16):
        w += ["-c", f"write -P {i + 1} {i * MiB} 1M"]
    w += ["-c", f"write -P 200 {3 * MiB + 4096} 8k"]  # a different block inside a split part
    out = subprocess.run(["qemu-io", "-f", "raw", *w, url], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count("wrote ") == 17, out.stdout + out.stderr
    r = []
    for i in range(16):
        if i != 3:
            r += ["-c", f"read -P {i + 1} {i * MiB} 1M"]
    r += ["-c", f"read -P 4 {3 * MiB} 4k", "-c", f"read -P 200 {3 * MiB + 4096} 8k"]
    r += ["-c", f"read -P 4 {3 * MiB + 12288} {MiB - 12288}"]
    r += ["-c", f"read -P 6 {5 * MiB + (256 << 10)} 256k", "-c", "read -P 0 16M 1M"]
    out = subprocess.run(["qemu-io", "-f", "raw", *r, url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Pattern verification failed" not in out.stdout, out.stdout[-2000:]
    assert out.stdout.count("read ") == 20, out.stdout
    for rep in reps:
        rep.stop()
