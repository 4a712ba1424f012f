"""Power loss on one replica: unflushed writes vanish from its disk, metadata files are torn.

A replica killed between a write and its flush loses what was not yet synced (simulated by
putting back the data file as it was at the last flush, and dropping the page cache). It must
never come back claiming that data: its durable dirty map makes the controller re-copy those
regions. Torn meta.json / dirty.map files must make the replica refuse or rebuild, not serve.
"""

from __future__ import annotations

import contextlib
import shutil
import signal

from jiva_engine.controller.volume import RW, Volume
from jiva_engine.replica.store import bytes_to_bits
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

MiB = 1 << 20
SIZE = 16 * MiB
VOL = "plvol"


class Rep:
    """A replica process with its own sync interval, restartable on the same DIR and port."""

    def __init__(self, procs, root, name: str, sync: float) -> None:
        self.procs, self.name, self.sync = procs, name, sync
        self.dir = root / name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.starts = 0
        self.proc = None

    def start(self, wait: bool = True):
        self.starts += 1
        self.proc = self.procs.start(
            [*JIVA, "replica", "--volume", VOL, "--listen", self.addr, "--dir", str(self.dir),
             "--size", str(SIZE), "--sync-interval", str(self.sync)],
            f"{self.name}-{self.starts}",
        )  # fmt: skip
        if wait:
            wait_port("127.0.0.1", self.port)
        return self

    def kill(self) -> None:
        self.procs.kill(self.proc, signal.SIGKILL)

    def data(self) -> bytes:
        return (self.dir / "volume.img").read_bytes()


def drop_caches() -> None:
    """Drop clean page-cache pages (root only; best effort elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


async def wait_rw(vol: Volume, n: int, timeout: float = 30.0) -> None:
    await eventually(
        lambda: len(vol.members) == n and all(m.mode == RW for m in vol.members.values()),
        timeout,
        f"{n} replicas RW",
    )


def pattern(tag: int, n: int = 64 * 1024) -> bytes:
    return bytes([tag]) * n


async def _power_loss(procs, tmp_path, tear_dirty: bool) -> tuple[list[Rep], set[int]]:
    """Run the scenario; returns the replicas and the dirty regions r0 had when it died."""
    # survivors clear their dirty bits quickly, r0 never on its own: r0's dirty map is what counts
    reps = [Rep(procs, tmp_path, "r0", 60).start()]
    reps += [Rep(procs, tmp_path, f"r{i}", 0.2).start() for i in (1, 2)]
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=2, retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(20)
        for i in range(8):  # A: flushed everywhere
            await vol.write(i * MiB, pattern(0xA0 + i))
        await vol.flush()
        snapshot = tmp_path / "r0-at-flush.img"
        shutil.copyfile(reps[0].dir / "volume.img", snapshot)
        for i in (1, 3, 5):  # B: acknowledged, not flushed
            await vol.write(i * MiB, pattern(0xB0 + i))
        survivors = [m for a, m in vol.members.items() if a != reps[0].addr]

        async def survivors_clean() -> bool:  # they sync and clear their bits for B
            return not any([(await m.link.info())["dirty"] for m in survivors])

        await eventually(survivors_clean, 20, "the survivors' dirty bits cleared")
        reps[0].kill()
        dirty_at_death = bytes_to_bits((reps[0].dir / "dirty.map").read_bytes(), 16)
        # power loss: the unflushed B writes never reached r0's disk
        shutil.copyfile(snapshot, reps[0].dir / "volume.img")
        drop_caches()
        if tear_dirty:  # and the dirty map's tail was torn off
            p = reps[0].dir / "dirty.map"
            p.write_bytes(p.read_bytes()[:0])
        for i in (6, 7):  # C: written while r0 is down
            await vol.write(i * MiB, pattern(0xC0 + i))
        reps[0].start()
        await wait_rw(vol, 3)
        await vol.flush()
        for i, tag in [(1, 0xB1), (3, 0xB3), (5, 0xB5), (6, 0xC6), (7, 0xC7), (0, 0xA0)]:
            for _ in range(3):  # reads rotate over the members, r0 included
                assert await vol.read(i * MiB, 64 * 1024) == pattern(tag), f"region {i}"
    finally:
        await vol.close()
    return reps, dirty_at_death


async def test_unflushed_writes_lost_by_one_replica_are_recopied(procs, tmp_path):
    reps, dirty = await _power_loss(procs, tmp_path, tear_dirty=False)
    # the mechanism under test: r0's durable dirty map named the unflushed regions
    assert {1, 3, 5} <= dirty
    a, b, c = (r.data() for r in reps)
    assert a == b == c, "r0 came back with data it does not have"


async def test_torn_dirty_map_means_everything_is_dirty(procs, tmp_path):
    reps, _ = await _power_loss(procs, tmp_path, tear_dirty=True)
    a, b, c = (r.data() for r in reps)
    assert a == b == c, "a torn dirty map lost the unflushed regions"


def test_torn_meta_json_is_refused_with_a_clear_message(procs, tmp_path):
    r = Rep(procs, tmp_path, "r0", 1).start()
    r.procs.kill(r.proc, signal.SIGTERM)
    meta = r.dir / "meta.json"
    whole = meta.read_bytes()
    for torn in (whole[: len(whole) // 2], b"", whole[:-1] + b"\0"):
        meta.write_bytes(torn)
        r.start(wait=False)
        assert r.proc.wait(timeout=30) == 2
        out = procs.log(f"r0-{r.starts}")
        assert "meta.json is unreadable" in out and "refusing" in out, out
        assert "Traceback" not in out
