"""The replicated volume against real `jiva replica` processes over real TCP and real files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from jiva_engine.controller.volume import ERR, RW, SERVING, WAITING, Volume
from jiva_engine.protocol.client import ReplicaClient
from jiva_engine.volume import OutOfRange
from tests.procs import free_port, wait_port

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

    def __init__(self, procs, root: Path, name: str, size: int = SIZE, volume: str = VOL) -> None:
        self.procs = procs
        self.name = name
        self.dir = root / name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.size = size
        self.volume = volume
        self.proc = None
        self.starts = 0

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

    def digest(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()

    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

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


async def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll cond() until true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def all_current(vol: Volume, n: int, timeout: float = 30.0) -> None:
    """Wait until n replicas are RW."""
    await wait_for(
        lambda: len(vol.rw_members()) == n and all(m.mode == RW for m in vol.members.values()),
        timeout,
        f"{n} current replicas: {vol.status()}",
    )


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
