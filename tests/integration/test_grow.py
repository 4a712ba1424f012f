"""Growing a volume online (docs/ENGINE.md "Growing a volume") on real replica and controller
processes over real TCP and files: under iSCSI writes, refusals, a replica away during the grow,
restarts of the controller and of replicas, the `jiva grow` command and the HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import subprocess

import aiohttp
import pytest

from jiva_engine.controller.grow import GrowRefused
from jiva_engine.controller.volume import RW
from jiva_engine.initiator import Initiator, ScsiError
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError
from jiva_engine.volume import OutOfRange
from tests.integration.test_engine import (
    VOL,
    Writer,
    all_current,
    identical,
    jiva,
    open_volume,
    replicas,
)
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

MiB = 1 << 20
OLD, NEW = 16 * MiB, 32 * MiB
TOKEN = "grow-token-for-tests"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
BLOCKS = 8  # 4 KiB writes
CAPACITY_CHANGED = (0x6, 0x2A, 0x09)
LBA_OUT_OF_RANGE = (0x5, 0x21, 0x00)


class Controller:
    """A `jiva controller` process with an API (token), an iSCSI portal and a --size."""

    def __init__(self, procs, tmp_path, reps, size: int | None = OLD) -> None:
        self.procs, self.reps = procs, reps
        self.api, self.portal = free_port(), free_port()
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.base = f"http://127.0.0.1:{self.api}"
        self.starts = 0
        self.proc = None
        self.size = size

    def start(self) -> Controller:
        """Start (again) with the current `size` (None: no --size)."""
        self.starts += 1
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}"]
        args += ["--portal", f"127.0.0.1:{self.portal}", "--token-file", str(self.token_file)]
        args += [a for r in self.reps for a in ("--replica", r.addr)]
        if self.size is not None:
            args += ["--size", str(self.size)]
        self.proc = jiva(self.procs, *args, name=f"ctl-{self.starts}")
        wait_port("127.0.0.1", self.api)
        return self

    async def status(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/v1/volume") as r:
            return await r.json()

    async def serving(self, timeout: float = 30.0) -> dict:
        async def ok() -> dict | None:
            try:
                st = await self.status()
            except aiohttp.ClientError:
                return None
            return st if st["state"] == "serving" else None

        return await eventually(ok, timeout, "the controller serving")

    async def grow(self, body, token: str | None = TOKEN) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.base + "/v1/volume/grow", data=data, headers=headers) as r,
        ):
            return r.status, await r.json()


def grow_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*JIVA, "grow", *args], capture_output=True, text=True, timeout=60)


def sense(e: ScsiError) -> tuple[int, int, int]:
    return e.key, e.asc, e.ascq


async def capacity16(init: Initiator) -> int:
    """READ CAPACITY(16): bytes."""
    cdb = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
    d = await init.command(cdb, read_len=32)
    return (struct.unpack(">Q", d[:8])[0] + 1) * struct.unpack(">I", d[8:12])[0]


class Session:
    """One iSCSI session (one I_T nexus) with writers on their own LBAs: a model of every write
    the target acknowledged, and the unit attentions it reported (the write is then repeated)."""

    def __init__(self, portal: int, name: str) -> None:
        self.init = Initiator("127.0.0.1", portal, IQN, name=f"iqn.2026-11.org.jiva-py:{name}")
        self.acked: dict[int, bytes] = {}
        self.uas: list[tuple[int, int, int]] = []
        self.errors: list[BaseException] = []
        self.count = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def write(self, lba: int, data: bytes) -> None:
        """Write until acknowledged; a unit attention is counted, then the write repeated."""
        while True:
            try:
                await self.init.write(lba, data)
            except ScsiError as e:
                if e.key != 0x6:
                    raise
                self.uas.append(sense(e))
                continue
            self.acked[lba] = data
            return

    async def _worker(self, first: int, n: int, seed: int) -> None:
        rnd = random.Random(seed)
        while not self._stop.is_set():
            lba = first + rnd.randrange(n // BLOCKS) * BLOCKS
            try:
                await self.write(lba, rnd.randbytes(BLOCKS * 512))
            except Exception as e:  # recorded: the test asserts there are none
                self.errors.append(e)
                return
            self.count += 1

    def start(self, first: int, n: int, workers: int = 4) -> Session:
        step = n // workers
        self._tasks = [
            asyncio.create_task(self._worker(first + i * step, step, first + i))
            for i in range(workers)
        ]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def verify(self) -> None:
        for lba, data in self.acked.items():
            assert await self.init.read(lba, len(data) // 512) == data, f"write at {lba} lost"


async def test_grow_under_iscsi_writes(procs, tmp_path):
    """3 replicas, two initiator sessions writing: the grow raises exactly one CAPACITY DATA
    HAS CHANGED per nexus, READ CAPACITY follows, writes past the old end are refused before
    and acknowledged after, no acknowledged write is lost and the replicas end identical."""
    reps = replicas(procs, tmp_path, 3, size=OLD)
    ctl = Controller(procs, tmp_path, reps).start()
    await ctl.serving()
    wait_port("127.0.0.1", ctl.portal)
    a, b = Session(ctl.portal, "a"), Session(ctl.portal, "b")
    for s in (a, b):
        await s.init.connect()
        assert await s.init.capacity() == (OLD // 512, 512)
        assert await capacity16(s.init) == OLD
        with pytest.raises(ScsiError) as e:
            await s.init.write(OLD // 512, bytes(4096))
        assert sense(e.value) == LBA_OUT_OF_RANGE
    half = OLD // 512 // 2
    a.start(0, half)
    b.start(half, half)
    await eventually(lambda: a.count > 50 and b.count > 50, 30, "writes flowing")
    status, st = await ctl.grow({"size": "32M"})
    assert status == 200, st
    assert (st["old_size"], st["size"], st["state"]) == (OLD, NEW, "serving")
    # each nexus hears of it once, on its next command
    await eventually(lambda: a.uas and b.uas, 30, "the unit attention on both sessions")
    count = a.count + b.count
    await eventually(lambda: a.count + b.count > count + 50, 30, "writes after the grow")
    for s, first in ((a, OLD // 512), (b, OLD // 512 + 1024)):
        for i in range(4):  # past the old end: acknowledged now
            await s.write(first + i * BLOCKS, random.randbytes(BLOCKS * 512))
        assert await s.init.capacity() == (NEW // 512, 512)
        assert await capacity16(s.init) == NEW
    await a.stop()
    await b.stop()
    assert not a.errors and not b.errors, (a.errors, b.errors)
    assert a.uas == [CAPACITY_CHANGED] and b.uas == [CAPACITY_CHANGED]
    await a.verify()
    await b.verify()
    assert max(a.acked) >= OLD // 512 and max(b.acked) >= OLD // 512
    await a.init.sync_cache()
    for s in (a, b):
        await s.init.logout()
    st = await ctl.status()
    assert st["size"] == NEW and not st["degraded"], st
    procs.kill(ctl.proc, signal.SIGTERM)
    for r in reps:
        r.stop()
    for r in reps:
        assert r.meta()["size"] == NEW and os.stat(r.dir / "volume.img").st_size == NEW
    identical(reps)


async def test_repeated_grows_under_concurrent_writes_lose_nothing(procs, tmp_path):
    """Grows one after the other while 16 writers keep the volume busy, each grow followed at
    once by writes into the space it added: every acknowledged write reads back, the replicas
    end identical."""
    reps = replicas(procs, tmp_path, 3, size=OLD)
    vol = await open_volume(reps)
    try:
        w = Writer(vol, 0, OLD, workers=16).start()
        await eventually(lambda: w.count > 200, 30, "writes flowing")
        tail: dict[int, bytes] = {}
        for i in range(4):
            old = vol.size
            with pytest.raises(OutOfRange):
                await vol.write(old, b"t" * 4096)
            assert await vol.grow(old + 4 * MiB) == old
            for off in range(old, old + 4 * MiB, MiB):
                tail[off] = random.Random(off + i).randbytes(8192)
                await vol.write(off, tail[off])
        count = w.count
        await eventually(lambda: w.count > count + 200, 30, "writes after the grows")
        await w.stop()
        assert not w.errors, w.errors
        await w.verify()
        for off, data in tail.items():
            assert await vol.read(off, len(data)) == data
        assert vol.size == OLD + 16 * MiB and all(m.mode == RW for m in vol.members.values())
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_shrink_is_refused_and_changes_nothing(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, size=OLD)
    vol = await open_volume(reps)
    try:
        await vol.write(0, b"s" * 4096)
        before = [r.meta() for r in reps]
        with pytest.raises(GrowRefused, match=f"is {OLD} bytes: refusing to shrink it to"):
            await vol.grow(OLD // 2)
        with pytest.raises(ValueError, match="multiple of 512"):
            await vol.grow(OLD + 100)
        assert await vol.grow(OLD) == OLD  # the same size: nothing to do
        assert vol.size == OLD and [r.meta() for r in reps] == before
        assert all(os.stat(r.dir / "volume.img").st_size == OLD for r in reps)
        assert all(m.mode == RW for m in vol.members.values())
        assert await vol.read(0, 4096) == b"s" * 4096
    finally:
        await vol.close()


async def test_replica_away_during_the_grow_is_grown_and_caught_up(procs, tmp_path):
    """A replica down while the volume grows comes back with its folder at the old size: it is
    grown, then catches up (incrementally) on what it missed, past the old end included."""
    reps = replicas(procs, tmp_path, 3, size=OLD)
    vol = await open_volume(reps)
    try:
        await vol.write(0, b"1" * 8192)
        reps[2].kill()
        await vol.write(4096, b"2" * 4096)  # the write that finds it gone ejects it
        await eventually(lambda: len(vol.rw_members()) == 2, 20, "replica 2 ejected")
        assert await vol.grow(NEW) == OLD
        assert vol.size == NEW
        await vol.write(NEW - 8192, b"3" * 8192)  # past the old end
        await vol.write(MiB, b"4" * 4096)
        reps[2].start()  # still at the old size
        await all_current(vol, 3)
        back = vol.members[reps[2].addr]
        assert back.last_rebuild["kind"] == "incremental", back.last_rebuild
        assert reps[2].meta()["size"] == NEW
        assert "grown from" in reps[2].log()
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    data = reps[2].data()
    assert len(data) == NEW and data[NEW - 8192 :] == b"3" * 8192
    assert data[:8192] == b"1" * 4096 + b"2" * 4096 and data[MiB : MiB + 4096] == b"4" * 4096
    identical(reps)


async def test_grow_api_and_jiva_grow_cli(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, size=OLD)
    ctl = Controller(procs, tmp_path, reps).start()
    await ctl.serving()
    api = f"127.0.0.1:{ctl.api}"
    tok = ["--token-file", str(ctl.token_file)]
    # HTTP API refusals: nothing changes
    for body, code, msg in [
        ({"size": OLD // 2}, 409, "refusing to shrink"),
        ({"size": OLD + 100}, 400, "not a multiple of 512"),
        ({"size": "12Q"}, 400, "invalid size"),
        ({"bytes": NEW}, 400, '{"size"'),
        (b"{not json", 400, "not valid JSON"),
    ]:
        status, err = await ctl.grow(body)
        assert (status, err["status"]) == (code, code) and msg in err["error"], (body, err)
    status, err = await ctl.grow({"size": NEW}, token=None)
    assert status == 401 and "Bearer" in err["error"]
    status, err = await ctl.grow({"size": NEW}, token="wrong")
    assert status == 401
    assert (await ctl.status())["size"] == OLD and all(r.meta()["size"] == OLD for r in reps)
    # the CLI: refusals are one line, exit 1 (2 for a bad option); then a grow
    out = grow_cli("--api", api, "--size", "8M", *tok)
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 409" in lines[0] and "refusing to shrink" in lines[0]
    out = grow_cli("--api", api, "--size", "32M")
    assert out.returncode == 1 and "HTTP 401" in out.stderr and len(out.stderr.splitlines()) == 1
    out = grow_cli("--api", api, "--size", "12Q", *tok)
    assert out.returncode == 2 and "jiva grow: error: invalid size" in out.stderr
    out = grow_cli("--api", api, "--size", "32M", "--token-file", str(tmp_path / "nope"))
    assert out.returncode == 2 and "cannot read API token file" in out.stderr
    out = grow_cli("--api", f"127.0.0.1:{free_port()}", "--size", "32M", *tok)
    assert out.returncode == 1 and "cannot reach the API" in out.stderr
    assert all(r.meta()["size"] == OLD for r in reps)
    out = grow_cli("--api", api, "--size", "32M", *tok)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"volume {VOL} grown from 16.0 MiB ({OLD} bytes) to 32.0 MiB ({NEW} bytes)"
    )
    assert (await ctl.status())["size"] == NEW and all(r.meta()["size"] == NEW for r in reps)
    out = grow_cli("--api", api, "--size", str(NEW), *tok)
    assert out.returncode == 0 and "is 32.0 MiB (33554432 bytes) already" in out.stdout
    # a controller that does not serve refuses (here: two of its three replicas are gone)
    reps[1].kill()
    reps[2].kill()
    procs.kill(ctl.proc)
    ctl.start()  # waiting for a majority of its voters
    status, err = await ctl.grow({"size": 2 * NEW})
    assert status == 409 and "does not serve" in err["error"], err
    assert reps[0].meta()["size"] == NEW


async def test_restarted_controller_serves_the_grown_size(procs, tmp_path):
    """A controller restarted with its old --size (or none) serves the size its replicas
    recorded: it never shrinks a grown volume; one started with a larger --size grows it."""
    reps = replicas(procs, tmp_path, 3, size=OLD)
    ctl = Controller(procs, tmp_path, reps).start()
    await ctl.serving()
    status, st = await ctl.grow({"size": NEW})
    assert status == 200 and st["size"] == NEW
    init = Initiator("127.0.0.1", ctl.portal, IQN)
    await init.connect()
    await init.write(NEW // 512 - 8, b"e" * 4096)  # the last 4 KiB
    await init.logout()
    for size in (OLD, None):  # the old flag, or none
        procs.kill(ctl.proc)  # kill -9
        ctl.size = size
        ctl.start()
        st = await ctl.serving()
        assert st["size"] == NEW, st
        init = Initiator("127.0.0.1", ctl.portal, IQN)
        await init.connect()
        assert await init.capacity() == (NEW // 512, 512)
        assert await init.read(NEW // 512 - 8, 8) == b"e" * 4096
        await init.logout()
    # a larger --size at start: the replicas are grown before it serves
    procs.kill(ctl.proc)
    ctl.size = 3 * OLD
    ctl.start()
    st = await ctl.serving()
    assert st["size"] == 3 * OLD and all(r.meta()["size"] == 3 * OLD for r in reps)
    procs.kill(ctl.proc, signal.SIGTERM)
    for r in reps:
        r.stop()
    identical(reps)


async def test_replica_restarted_with_a_larger_size_grows_a_smaller_size_refuses(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, size=OLD)
    vol = await open_volume(reps)
    try:
        await vol.write(0, b"f" * 4096)
        r = reps[0]
        r.stop()
        await eventually(lambda: vol.members[r.addr].mode != RW, 20, "the replica ejected")
        r.size = NEW
        r.start()  # the folder grows; the volume uses it as it is (larger than the volume)
        assert f"grown from {OLD} to {NEW} bytes" in r.log()
        assert r.meta()["size"] == NEW and os.stat(r.dir / "volume.img").st_size == NEW
        await eventually(lambda: vol.members[r.addr].mode == RW, 30, "the grown replica back")
        assert vol.size == OLD
        await vol.write(4096, b"g" * 4096)
    finally:
        await vol.close()
    r.stop()
    out = subprocess.run(
        [*JIVA, "replica", "--volume", VOL, "--listen", f"127.0.0.1:{free_port()}",
         "--dir", str(r.dir), "--size", str(OLD)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"refusing to shrink it to {OLD} bytes" in lines[0], out.stderr
    assert r.meta()["size"] == NEW


async def test_replica_grow_op_is_fenced_refuses_shrinking_and_is_idempotent(procs, tmp_path):
    (r,) = replicas(procs, tmp_path, 1, size=OLD)
    c = ReplicaClient("127.0.0.1", r.port, VOL, timeout=5)
    await c.connect()
    try:
        await c.set_meta(epoch=7)
        with pytest.raises(ReplicaError) as e:
            await c._json(wire.GROW, {"size": NEW}, epoch=6)  # an older controller's
        assert e.value.status == wire.STALE_EPOCH
        for body, why in [
            ({"size": OLD // 2}, "refusing to shrink"),
            ({"size": NEW + 1}, "multiple of 512"),
            ({"size": "32M"}, "multiple of 512"),
            ({"bytes": NEW}, 'needs {"size"'),
        ]:
            with pytest.raises(ReplicaError) as e:
                await c._json(wire.GROW, body)
            assert e.value.status == wire.EINVAL and why in e.value.message, e.value
        with pytest.raises(ReplicaError) as e:
            await c.write(OLD, b"x" * 4096, 7)
        assert e.value.status == wire.EINVAL
        info = await c.grow(NEW)
        assert info["size"] == NEW and r.meta()["size"] == NEW
        assert (await c.grow(NEW))["size"] == NEW  # idempotent
        await c.write(OLD, b"x" * 4096, 7)
        assert (await c.read(OLD, 4096, 7)) == b"x" * 4096
    finally:
        await c.close()
