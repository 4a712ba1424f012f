"""The replicated volume against real `jiva replica` processes over real TCP and real files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from jiva_engine.controller.volume import ERR, RW, WAITING, Volume
from jiva_engine.protocol.client import ReplicaClient
from jiva_engine.volume import OutOfRange
from tests.procs import free_port, wait_port
from tests.waiting import eventually, holds

MiB = 1 << 20


def jiva(procs, *args: str, name: str):
    """Start `jiva ARGS` (via the subcommand's module if another part of the CLI is missing)."""
    try:
        from jiva_engine.cli import build_parser

        build_parser()
    except ImportError:
        mod = {"replica": "jiva_engine.replica.cli", "controller": "jiva_engine.controller.cli"}
        launcher = (
            "import argparse, sys, importlib; m = importlib.import_module(sys.argv[1]); "
            "p = argparse.ArgumentParser(); m.add_arguments(p); "
            "sys.exit(m.run(p.parse_args(sys.argv[2:])))"
        )
        return procs.start([sys.executable, "-c", launcher, mod[args[0]], *args[1:]], name)
    return procs.jiva(*args, name=name)


SIZE = 64 * MiB
VOL = "vol1"


class Rep:
    """One replica process the test can kill, stop and restart on the same DIR and port."""

    def __init__(
        self,
        procs,
        root: Path,
        name: str,
        size: int = SIZE,
        volume: str = VOL,
        args: tuple[str, ...] = (),
    ) -> None:
        self.procs = procs
        self.name = name
        self.dir = root / name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.size = size
        self.volume = volume
        self.proc = None
        self.starts = 0
        self.args = args  # more `jiva replica` options (the last of a repeated one wins)

    def start(self) -> Rep:
        self.starts += 1
        self.proc = jiva(
            self.procs,
            "replica",
            "--volume",
            self.volume,
            "--listen",
            self.addr,
            "--dir",
            str(self.dir),
            "--size",
            str(self.size),
            "--sync-interval",
            "0.5",
            *self.args,
            name=f"{self.name}-{self.starts}",
        )
        wait_port("127.0.0.1", self.port)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.procs.kill(self.proc, sig)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def data(self) -> bytes:
        return (self.dir / "volume.img").read_bytes()

    def log(self) -> str:
        """What the current process has logged so far."""
        return self.procs.log(f"{self.name}-{self.starts}")

    def digest(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()

    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    @property
    def id(self) -> str:
        """The replica's voter id (made when its folder was created)."""
        return self.meta()["id"]

    async def info(self) -> dict:
        c = ReplicaClient("127.0.0.1", self.port, self.volume, timeout=3)
        await c.connect()
        try:
            return await c.info()
        finally:
            await c.close()


def replicas(procs, tmp_path, n: int, size: int = SIZE) -> list[Rep]:
    """Start n replica processes."""
    return [Rep(procs, tmp_path, f"r{i}", size).start() for i in range(n)]


async def open_volume(reps: list[Rep], timeout: float = 3.0, **kw) -> Volume:
    """A controller volume in this event loop over the given replicas, serving."""
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=timeout, retry_interval=0.2, **kw)
    await vol.start()
    await vol.wait_serving(20)
    return vol


async def settled(reps: list[Rep], timeout: float = 20.0) -> None:
    """Wait until no replica has a dirty region left (they clear them lazily when idle)."""

    async def clean() -> bool:
        return not any([(await r.info())["dirty"] for r in reps])

    await eventually(clean, timeout, "every replica's dirty bits cleared")


async def all_current(vol: Volume, n: int, timeout: float = 30.0) -> None:
    """Wait until n replicas are RW."""
    await eventually(
        lambda: len(vol.rw_members()) == n and all(m.mode == RW for m in vol.members.values()),
        timeout,
        f"{n} current replicas: {vol.status()}",
    )


async def _no_dirty(rep: Rep) -> bool:
    """The replica reports no dirty region."""
    return (await rep.info())["dirty_regions"] == 0


def block(seed: int, n: int = 4096) -> bytes:
    """Deterministic pseudo-random data."""
    return random.Random(seed).randbytes(n)


def identical(reps: list[Rep]) -> None:
    """Every replica's data file has the same content."""
    digests = {r.name: r.digest() for r in reps}
    assert len(set(digests.values())) == 1, digests


# ---------------------------------------------------------------------------------------------


async def test_write_read_patterns_three_replicas(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        assert vol.ready() and vol.epoch >= 1
        model = bytearray(SIZE)
        rnd = random.Random(7)
        # sequential, random small, large (> one 16 MiB frame), overlapping concurrent writes
        writes = [(0, block(1, 64 * 1024)), (SIZE - 4096, block(2))]
        writes += [(rnd.randrange(0, 8 * MiB // 512 - 16) * 512, block(i, 8192)) for i in range(50)]
        for off, data in writes:
            await vol.write(off, data)
            model[off : off + len(data)] = data
        big = block(99, 20 * MiB)
        await vol.write(8 * MiB, big, fua=True)
        model[8 * MiB : 28 * MiB] = big
        # 20 concurrent writes to the same 4 KiB: each replica must end with the same winner
        same = [block(1000 + i) for i in range(20)]
        await asyncio.gather(*(vol.write(40 * MiB, d) for d in same))
        await vol.flush()
        got = await vol.read(40 * MiB, 4096)
        assert got in same
        model[40 * MiB : 40 * MiB + 4096] = got
        await vol.write(48 * MiB, block(5, 2 * MiB))
        await vol.unmap(48 * MiB, MiB)
        model[48 * MiB : 50 * MiB] = bytes(MiB) + block(5, 2 * MiB)[MiB:]
        for off, data in writes[:10]:
            assert await vol.read(off, len(data)) == model[off : off + len(data)]
        assert await vol.read(8 * MiB, 20 * MiB) == model[8 * MiB : 28 * MiB]
        assert await vol.read(48 * MiB, 2 * MiB) == model[48 * MiB : 50 * MiB]
        runs = await vol.allocated(48 * MiB, 2 * MiB)
        assert runs == [(48 * MiB, MiB, False), (49 * MiB, MiB, True)]
        # reads rotate over every member
        for _ in range(9):
            await vol.read(0, 4096)
        assert all(m.reads >= 3 for m in vol.members.values())
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    for r in reps:
        assert r.data() == bytes(model), f"{r.name} differs from what was written"


async def test_out_of_range_writes_nothing(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, size=4 * MiB)
    vol = await open_volume(reps)
    try:
        with pytest.raises(OutOfRange):
            await vol.write(4 * MiB - 512, bytes(1024))
        with pytest.raises(OutOfRange):
            await vol.read(4 * MiB, 512)
        with pytest.raises(OutOfRange):
            await vol.write(-512, bytes(512))
        with pytest.raises(OutOfRange):
            await vol.unmap(0, 8 * MiB)
        with pytest.raises(ValueError, match="multiples of 512"):
            await vol.write(100, bytes(512))
        assert all(m.mode == RW for m in vol.members.values())
        for r in reps:
            assert (await r.info())["stats"]["writes"] == 0
    finally:
        await vol.close()
    for r in reps:
        assert r.data() == bytes(4 * MiB)


class Writer:
    """Concurrent writers, each on its own slice: a model of every acknowledged write."""

    def __init__(self, vol: Volume, base: int, span: int, workers: int = 8, bs: int = 4096):
        self.vol = vol
        self.base = base
        self.span = span
        self.workers = workers
        self.bs = bs
        self.acked: dict[int, bytes] = {}
        self.errors: list[BaseException] = []
        self.max_latency = 0.0
        self.count = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _worker(self, i: int) -> None:
        slice_len = self.span // self.workers
        rnd = random.Random(i)
        seq = 0
        while not self._stop.is_set():
            off = self.base + i * slice_len + rnd.randrange(slice_len // self.bs) * self.bs
            seq += 1
            data = block(i * 1_000_000 + seq, self.bs)
            t0 = time.monotonic()
            try:
                await self.vol.write(off, data)
            except Exception as e:  # recorded: the tests assert there are none
                self.errors.append(e)
                return
            self.max_latency = max(self.max_latency, time.monotonic() - t0)
            self.acked[off] = data
            self.count += 1

    def start(self) -> Writer:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def verify(self, vol: Volume | None = None) -> None:
        vol = vol or self.vol
        for off, data in self.acked.items():
            assert await vol.read(off, len(data)) == data, f"acknowledged write at {off} lost"


async def fill(vol: Volume, start: int, length: int, seed: int) -> bytes:
    """Write a deterministic pattern over a range in 1 MiB writes; return it."""
    data = block(seed, length)
    for off in range(0, length, MiB):
        await vol.write(start + off, data[off : off + MiB])
    return data


async def test_replica_killed_during_writes_catches_up_incrementally(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        base = await fill(vol, 16 * MiB, 32 * MiB, seed=1)  # data the returning replica keeps
        await vol.flush()
        await settled(reps)  # idle: the replicas lazily clear those dirty bits
        epoch0 = vol.epoch
        w = Writer(vol, 0, 4 * MiB).start()
        reads_ok = 0
        reading = True

        async def reader() -> None:  # reads rotate over members, including the one that dies
            nonlocal reads_ok
            rnd = random.Random(3)
            while reading:
                off = rnd.randrange(32 * MiB // 4096) * 4096
                assert await vol.read(16 * MiB + off, 4096) == base[off : off + 4096]
                reads_ok += 1

        rtask = asyncio.create_task(reader())
        await asyncio.sleep(0.3)
        reps[2].kill()  # kill -9 during writes and reads
        await eventually(lambda: vol.members[reps[2].addr].mode == ERR, 10, "ejection")
        await asyncio.sleep(0.5)
        await w.stop()
        reading = False
        await rtask  # raises if any read failed or returned wrong data
        assert reads_ok > 50
        assert not w.errors, w.errors
        assert w.count > 50
        # rule 3: the removal is recorded under a higher epoch on the remaining members
        assert vol.epoch > epoch0
        for r in reps[:2]:
            meta = r.meta()
            assert meta["epoch"] == vol.epoch
            assert meta["membership"] == sorted([reps[0].id, reps[1].id])
            assert meta["tracking"], "remaining members track what the lost one misses"
        assert vol.degraded()
        # it comes back by itself and copies only what it missed (the 4 MiB hot area)
        reps[2].start()
        await all_current(vol, 3)
        m = vol.members[reps[2].addr]
        assert m.last_rebuild["kind"] == "incremental", m.last_rebuild
        assert m.last_rebuild["copied"] <= 6 * MiB, m.last_rebuild
        info = await reps[2].info()
        assert 0 < info["stats"]["rebuild_bytes_written"] <= 6 * MiB
        # cleared right after it is made RW (the controller's next step after the promotion)
        await eventually(
            lambda: _no_dirty(reps[2]), 10, "its crash-time dirty bits cleared once current"
        )
        assert not vol.degraded()
        await w.verify()
        assert await vol.read(16 * MiB, 32 * MiB) == base
        # every replica serves the same data: read through each one
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)
    assert not reps[0].meta()["tracking"], "tracking stops once every replica is current"


async def test_sigstopped_replica_is_ejected_within_timeout(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps, timeout=1.0)
    try:
        w = Writer(vol, 0, 8 * MiB).start()
        await asyncio.sleep(0.3)
        reps[1].kill(signal.SIGSTOP)
        t0 = time.monotonic()
        await eventually(lambda: vol.members[reps[1].addr].mode == ERR, 5, "ejection")
        ejected_after = time.monotonic() - t0
        before = w.count
        await eventually(lambda: w.count > before + 20, 10, "writes going on without it")
        await w.stop()
        assert not w.errors, w.errors
        assert ejected_after < 1.0 + 1.0, ejected_after
        assert w.max_latency < 1.0 + 1.0, w.max_latency
        reps[1].kill(signal.SIGCONT)
        await all_current(vol, 3)
        await w.verify()
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_full_rebuild_of_an_empty_replica(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2)
    vol = await open_volume(reps)
    try:
        await fill(vol, 0, 6 * MiB, seed=3)
        await fill(vol, 40 * MiB, 2 * MiB, seed=4)
        new = Rep(procs, tmp_path, "new").start()
        await vol.add_replica(new.addr)
        w = Writer(vol, 10 * MiB, 2 * MiB, workers=4).start()  # writes during the rebuild
        await all_current(vol, 3)
        await w.stop()
        assert not w.errors
        m = vol.members[new.addr]
        assert m.last_rebuild["kind"] == "full", m.last_rebuild
        # holes are skipped: only allocated data is copied, not the 64 MiB volume
        assert 8 * MiB <= m.last_rebuild["copied"] <= 12 * MiB, m.last_rebuild
        assert new.meta()["membership"] == sorted([reps[0].id, reps[1].id, new.id])
        # reads now also come from the new member
        for _ in range(6):
            await vol.read(0, 4096)
        assert m.reads > 0
        await vol.flush()
    finally:
        await vol.close()
    for r in [*reps, new]:
        r.stop()
    identical([*reps, new])


async def test_quorum_off_stale_replicas_refuse_until_the_newest_returns(procs, tmp_path):
    """--quorum off (the older policy): serving goes down to the last member, and a restart
    waits for every member of the newest membership (here A alone), never the stale ones."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps, quorum="off")
    try:
        await fill(vol, 0, 2 * MiB, seed=5)
        b.kill()
        await vol.write(0, block(6))  # ejects B
        c.kill()
        await vol.write(4096, block(7))  # ejects C
        assert vol.membership() == [a.addr]
        newest = await fill(vol, 8 * MiB, 2 * MiB, seed=8)  # only A has this
        head = await vol.read(0, 2 * MiB)
        await vol.flush()
    finally:
        await vol.close()
    a.stop()
    b.start()
    c.start()
    vol = Volume(VOL, [a.addr, b.addr, c.addr], retry_interval=0.2, quorum="off")
    await vol.start()
    try:
        await holds(lambda: vol.state == WAITING and not vol.ready(), 1.5, "waiting")
        assert a.addr in vol.reason and "only current copies" in vol.reason, vol.reason
        assert b.meta()["epoch"] < a.meta()["epoch"]
        a.start()
        await vol.wait_serving(20)
        assert await vol.read(8 * MiB, 2 * MiB) == newest
        assert await vol.read(0, 2 * MiB) == head
        await all_current(vol, 3)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_quorum_off_two_replica_policy(procs, tmp_path):
    """--quorum off with 2 replicas and no witness: the survivor goes on alone and is recorded
    as the only current copy; a restart refuses the stale one and waits for the survivor."""
    a, b = reps = replicas(procs, tmp_path, 2)
    vol = await open_volume(reps, quorum="off")
    try:
        w = Writer(vol, 0, 2 * MiB, workers=4).start()
        await asyncio.sleep(0.2)
        b.kill()
        await eventually(lambda: vol.members[b.addr].mode == ERR, 10, "ejection")
        await asyncio.sleep(0.3)
        await w.stop()
        assert not w.errors, "a 2-replica volume keeps serving on one member"
        # the survivor records that it is the only current copy
        assert a.meta()["membership"] == [a.id]
        await vol.flush()
    finally:
        await vol.close()
    a.stop()
    b.start()
    vol = Volume(VOL, [a.addr, b.addr], retry_interval=0.2, quorum="off")
    await vol.start()
    try:  # must not serve from the stale replica alone
        await holds(lambda: vol.state == WAITING, 1.0, "waiting")
        assert a.id in vol.reason or a.addr in vol.reason, vol.reason
        a.start()
        await vol.wait_serving(20)
        await w.verify(vol)
        await all_current(vol, 2)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_single_replica_volume_works_without_ha(procs, tmp_path):
    (a,) = replicas(procs, tmp_path, 1)
    vol = await open_volume([a])
    try:
        data = await fill(vol, MiB, 3 * MiB, seed=9)
        assert await vol.read(MiB, 3 * MiB) == data
        await vol.flush()
        assert vol.membership() == [a.addr]
    finally:
        await vol.close()
    assert a.data()[MiB : 4 * MiB] == data


async def test_newer_controller_fences_the_old_one(procs, tmp_path):
    from jiva_engine.controller.volume import FENCED
    from jiva_engine.volume import VolumeFenced

    reps = replicas(procs, tmp_path, 2)
    old = await open_volume(reps)
    new = None
    try:
        await old.write(0, block(1))
        new = await open_volume(reps)
        assert new.epoch > old.epoch
        with pytest.raises(VolumeFenced):
            await old.write(0, block(2))
        assert old.state == FENCED and not old.ready()
        assert await new.read(0, 4096) == block(1)
    finally:
        await old.close()
        if new:
            await new.close()


# A controller in its own process (so it can be killed -9 with writes in flight): replicas and
# witnesses as comma-separated lists; every acknowledged write is logged ("n offset" per line).
_CRASHING_CONTROLLER = r"""
import asyncio, os, random, sys
from jiva_engine.controller.volume import Volume

async def main(logpath, reps, wits, timeout):
    vol = Volume("vol1", reps.split(","), witnesses=[w for w in wits.split(",") if w],
                 replica_timeout=float(timeout), retry_interval=0.2)
    await vol.start()
    await vol.wait_serving(20)
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    nxt = iter(range(10**9))

    async def worker(i):
        while True:
            n = next(nxt)
            off = n * 4096  # each 4 KiB block is written once
            data = random.Random(n).randbytes(4096)
            await vol.write(off, data)
            os.write(fd, f"{n} {off}\n".encode())  # acknowledged

    await asyncio.gather(*(worker(i) for i in range(32)))

asyncio.run(main(*sys.argv[1:]))
"""


def crashing_controller(procs, tmp_path: Path, reps, witnesses=(), timeout: float = 3.0):
    """Start the controller process above; returns (process, path of its acknowledgement log)."""
    log = tmp_path / "acked.log"
    args = [str(log), ",".join(r.addr for r in reps), ",".join(w.addr for w in witnesses)]
    return procs.start([sys.executable, "-c", _CRASHING_CONTROLLER, *args, str(timeout)],
                       "controller"), log  # fmt: skip


def acked_writes(log: Path) -> list[tuple[int, int]]:
    """(n, offset) of every write the crashing controller acknowledged."""
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


async def test_controller_killed_during_writes_every_ack_survives(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    ctl, acklog = crashing_controller(procs, tmp_path, reps)
    await eventually(
        lambda: acklog.exists() and acklog.stat().st_size > 20_000, 30, "acknowledged writes"
    )
    procs.kill(ctl)  # kill -9 with writes in flight
    acked = acked_writes(acklog)
    assert len(acked) > 1000 and len(acked) < 8192
    vol = Volume(VOL, [r.addr for r in reps], retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(20)
        # before it serves anything, every replica holds identical data (rule 5)
        identical(reps)
        # the controller the voters had promised ran here and is gone: no read lease to wait out
        assert vol.stats["lease_wait_seconds"] == 0
        assert "resynchronised" in vol.reason, vol.reason
        for n, off in acked:
            assert await vol.read(off, 4096) == block(n), f"acknowledged write {n} lost"
    finally:
        await vol.close()


async def test_writes_arriving_while_a_controller_starts_wait_only_for_its_start(procs, tmp_path):
    """An initiator reconnects at once and writes into a region the new controller must
    resynchronise first: the write waits for the start (claim, resync), then completes. (It
    used to take the region's range lock before being admitted, so the resync waited for the
    write and the write for the resync, until the hold ran out: NOT READY.)"""
    reps = replicas(procs, tmp_path, 3)
    ctl, acklog = crashing_controller(procs, tmp_path, reps)
    await eventually(
        lambda: acklog.exists() and acklog.stat().st_size > 20_000, 30, "acknowledged writes"
    )
    procs.kill(ctl)  # kill -9: its replicas keep the regions it was writing dirty
    recent = {off: n for n, off in acked_writes(acklog)[-64:]}  # the regions it was writing
    vol = Volume(VOL, [r.addr for r in reps], size=SIZE, retry_interval=0.2, hold=20)
    await vol.start()
    try:
        early = [vol.write(off, block(90_000 + n)) for off, n in recent.items()]
        await asyncio.wait_for(asyncio.gather(*early), 30)  # no VolumeNotReady
        assert "resynchronised" in vol.reason, vol.reason
        assert vol.io_stats["held_seconds"] > 0  # they did wait for the start
        for off, n in recent.items():
            assert await vol.read(off, 4096) == block(90_000 + n)
    finally:
        await vol.close()
    identical(reps)


async def test_dirty_regions_are_resynchronised_before_serving(procs, tmp_path):
    from jiva_engine.replica.store import ReplicaStore

    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps)
    try:
        await fill(vol, 0, 4 * MiB, seed=11)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    # a write that reached only r1 before everything crashed: its region is dirty there
    store = ReplicaStore(reps[1].dir, VOL, SIZE)
    store.write(2 * MiB + 8192, block(12, 8192))
    store.close(clean=False)
    assert reps[1].digest() != reps[0].digest()
    for r in reps:
        r.start()
    vol = Volume(VOL, [r.addr for r in reps], retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(20)
        assert "resynchronised 1 dirty region" in vol.reason, vol.reason
        identical(reps)
        assert not (await reps[1].info())["dirty"]
    finally:
        await vol.close()


def _iscsi_url(port: int) -> str:
    return f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.jiva-py:{VOL}/0"


async def _api_serving(port: int, timeout: float = 30.0) -> dict:
    """Poll the controller's API until the volume serves; return its status."""
    import urllib.request

    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/volume", timeout=2) as r:
                st = json.loads(r.read())
            if st["state"] == "serving":
                return st
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"controller API {port} not serving: {st}")


def _controller_args(reps: list[Rep], api: int, portal: int) -> list[str]:
    args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{api}"]
    args += ["--portal", f"127.0.0.1:{portal}", "--replica-timeout", "3"]
    for r in reps:
        args += ["--replica", r.addr]
    return args


async def test_jiva_controller_killed_under_iscsi_writes(procs, tmp_path):
    """The real `jiva controller` process, written to by qemu-io over iSCSI, kill -9'd."""
    import shutil
    import subprocess

    if not shutil.which("qemu-io"):
        pytest.fail("qemu-io (Debian qemu-utils + qemu-block-extra) is required")
    reps = replicas(procs, tmp_path, 3)
    api, portal = free_port(), free_port()
    ctl = jiva(procs, *_controller_args(reps, api, portal), name="ctl-1")
    await _api_serving(api)
    # 4 concurrent initiators, each writing 64 KiB blocks to its own area, one after the other
    writers = []
    for w in range(4):
        cmds = []
        for i in range(400):
            cmds += ["-c", f"write -P {(w * 400 + i) % 255 + 1} {(w * 400 + i) * 65536} 64k"]
        writers.append(
            procs.start(
                ["stdbuf", "-oL", "qemu-io", "-f", "raw", *cmds, _iscsi_url(portal)], f"qio{w}"
            )
        )
    await eventually(lambda: sum(procs.log(f"qio{w}").count("wrote ") for w in range(4)) > 200, 60)
    procs.kill(ctl)  # kill -9 with writes in flight
    await asyncio.sleep(0.5)
    for p in writers:
        procs.kill(p)
    acked = []
    for w in range(4):
        for line in procs.log(f"qio{w}").splitlines():
            if line.startswith("wrote 65536/65536 bytes at offset "):
                off = int(line.rsplit(" ", 1)[1])
                acked.append((off, (off // 65536) % 255 + 1))
    assert len(acked) > 200
    jiva(procs, *_controller_args(reps, api, portal), name="ctl-2")
    wait_port("127.0.0.1", portal)
    await _api_serving(api)
    cmds = []
    for off, pat in acked:
        cmds += ["-c", f"read -P {pat} {off} 64k"]
    out = subprocess.run(
        ["qemu-io", "-f", "raw", *cmds, _iscsi_url(portal)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Pattern verification failed" not in out.stdout, out.stdout[-2000:]
    assert out.stdout.count("read 65536/65536 bytes") == len(acked)
    for r in reps:
        r.stop()
    identical(reps)


async def test_restart_skips_the_lease_of_a_dead_controller_that_added_a_replica(procs, tmp_path):
    """Q8's shortcut after a view change: a replica added while serving (never claimed by the
    controller, only connected and told the view) still names that controller as the one that
    spoke to it, so a controller started after a kill -9 on the same host serves at once
    instead of waiting out a lease no live process holds."""
    import urllib.request

    reps = replicas(procs, tmp_path, 2)
    api, portal = free_port(), free_port()
    ctl = jiva(procs, *_controller_args(reps, api, portal), name="ctl-1")
    await _api_serving(api)
    new = Rep(procs, tmp_path, "new").start()
    req = urllib.request.Request(
        f"http://127.0.0.1:{api}/v1/replicas",
        data=json.dumps({"address": new.addr}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 201, 202)

    async def added_and_current() -> bool:
        st = await _api_serving(api)
        return any(m["address"] == new.addr and m["mode"] == "RW" for m in st["replicas"])

    await eventually(added_and_current, 60, "the added replica to be rebuilt and RW")
    assert new.meta().get("owner") is None  # it never promised a term: only a view named it
    procs.kill(ctl)  # kill -9, then at once the next one, as the supervisor does
    jiva(procs, *_controller_args([*reps, new], api, portal), name="ctl-2")
    st = await _api_serving(api)
    assert sorted(m["address"] for m in st["replicas"] if m["mode"] == "RW") == sorted(
        r.addr for r in [*reps, new]
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    waited = [line for line in metrics.splitlines() if line.startswith("jiva_volume_lease_wait")]
    assert waited == [f'jiva_volume_lease_wait_seconds_total{{volume="{VOL}"}} 0'], waited


async def test_rebuild_rate_throttle_and_progress(procs, tmp_path):
    reps = replicas(procs, tmp_path, 1)
    vol = await open_volume(reps, rebuild_rate=4 * MiB)
    try:
        await fill(vol, 0, 4 * MiB, seed=13)
        new = Rep(procs, tmp_path, "new").start()
        await vol.add_replica(new.addr)
        seen = []

        def progressing() -> bool:
            rb = vol.members[new.addr].rebuild
            if rb and rb["total"] and 0 < rb["done"] < rb["total"]:
                seen.append(dict(rb))
            return vol.members[new.addr].mode == RW

        await eventually(progressing, 30, "rebuild")
        lr = vol.members[new.addr].last_rebuild
        assert lr["copied"] == 4 * MiB
        # 4 MiB at 4 MiB/s: the first MiB goes at once, the other three are paced
        assert lr["seconds"] >= 0.7, lr
        assert seen and seen[0]["total"] == 4 * MiB, "progress done/total was visible"
        assert vol.status()["replicas"][1]["rebuild"] is None
    finally:
        await vol.close()


async def test_replica_dying_mid_rebuild_is_rebuilt_again(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2)
    vol = await open_volume(reps, rebuild_rate=4 * MiB)
    try:
        data = await fill(vol, 0, 8 * MiB, seed=21)
        new = Rep(procs, tmp_path, "new").start()
        await vol.add_replica(new.addr)
        m = vol.members[new.addr]
        await eventually(lambda: m.rebuild and m.rebuild["done"] >= 2 * MiB, 20, "rebuild halfway")
        new.kill()
        await eventually(lambda: m.mode == ERR, 10, "rebuild failure noticed")
        assert new.meta()["rebuilding"] is True, "an interrupted rebuild is recorded on disk"
        assert new.id not in reps[0].meta()["membership"]
        new.start()
        await all_current(vol, 3, timeout=40)
        assert m.last_rebuild["kind"] == "full"
        assert await vol.read(0, 8 * MiB) == data
        await vol.flush()
    finally:
        await vol.close()
    for r in [*reps, new]:
        r.stop()
    identical([*reps, new])


@pytest.mark.slow
async def test_soak_random_replica_faults_under_load(procs, tmp_path):
    """60 s of writes and reads while replicas are killed, stopped and restarted at random."""
    reps = replicas(procs, tmp_path, 3)
    vol = await open_volume(reps, timeout=1.0)
    rnd = random.Random(42)
    try:
        w = Writer(vol, 0, 32 * MiB, workers=16).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await all_current(vol, 3, timeout=60)
            victim = rnd.choice(reps)
            if rnd.random() < 0.5:
                victim.kill()
                await asyncio.sleep(rnd.uniform(0.2, 2.0))
                victim.start()
            else:
                victim.kill(signal.SIGSTOP)
                await asyncio.sleep(rnd.uniform(0.2, 2.0))
                victim.kill(signal.SIGCONT)
            assert not w.errors, w.errors
        await all_current(vol, 3, timeout=60)
        await w.stop()
        assert not w.errors, w.errors
        await w.verify()
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)
