"""Power loss on one replica: unflushed writes vanish from its disk, metadata files are torn.

A replica killed between a write and its flush loses what was not yet synced (simulated by
putting back the data file as it was at the last flush, and dropping the page cache). It must
never come back claiming that data: its durable dirty map makes the controller re-copy those
regions. Torn meta.json / dirty.map files must make the replica refuse or rebuild, not serve.

The per-block checksums (volume.crc) are not synced with the data either: after a power loss a
block's data and its entry may come from different writes. Only dirty regions can be in that
state, and a replica recomputes their entries when it opens, so after recovery every block of
every replica must verify and no read may report a checksum error.
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


async def assert_no_checksum_errors(vol: Volume) -> None:
    """Read the whole volume three times (split reads rotate: every byte from every member),
    then: no checksum error at the controller or on any replica, and every block of every
    replica verifies (CHECKSUMS)."""
    for _ in range(3):
        for off in range(0, SIZE, MiB):
            await vol.read(off, MiB)
    assert vol.integrity()["checksum_errors"] == 0, vol.integrity()
    assert len(vol.rw_members()) == 3
    for m in vol.rw_members():
        assert (await m.link.info())["stats"]["checksum_errors"] == 0, m.address
        for off in range(0, SIZE, 4 * MiB):
            bad = (await m.link.checksums(off, 4 * MiB, vol.epoch))["bad"]
            assert bad == [], f"{m.address}: blocks {bad[:8]} fail their checksum"


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
        await assert_no_checksum_errors(vol)
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


async def test_power_loss_of_every_replica_leaves_no_checksum_error(procs, tmp_path):
    """The whole volume loses power: on every replica the unflushed writes vanish from the data
    file while volume.crc keeps their entries (the worst order). The start-up resync reads the
    dirty regions from one replica: they must verify (their entries were recomputed when the
    replica opened), so the volume serves, with the flushed data, and not one checksum error."""
    reps = [Rep(procs, tmp_path, f"r{i}", 60).start() for i in range(3)]  # bits stay dirty
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=2, retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(20)
        for i in range(8):
            await vol.write(i * MiB, pattern(0xA0 + i))
        await vol.flush()
        for r in reps:
            shutil.copyfile(r.dir / "volume.img", tmp_path / f"{r.name}-at-flush.img")
        for i in (1, 3, 5):  # acknowledged, never flushed
            await vol.write(i * MiB, pattern(0xB0 + i))
        for r in reps:
            r.kill()
    finally:
        await vol.close()
    for r in reps:
        assert {1, 3, 5} <= bytes_to_bits((r.dir / "dirty.map").read_bytes(), 16)
        crc_before = (r.dir / "volume.crc").read_bytes()
        shutil.copyfile(tmp_path / f"{r.name}-at-flush.img", r.dir / "volume.img")
        assert (r.dir / "volume.crc").read_bytes() == crc_before  # the newer entries stay
    drop_caches()
    for r in reps:
        r.start()
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=2, retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(30)
        await wait_rw(vol, 3)
        for i in range(8):
            assert await vol.read(i * MiB, 64 * 1024) == pattern(0xA0 + i), f"region {i}"
        await assert_no_checksum_errors(vol)
    finally:
        await vol.close()
    a, b, c = (r.data() for r in reps)
    assert a == b == c
    for r in reps:
        assert "checksums computed from the data" in procs.log(f"{r.name}-2")
