"""Scrub (docs/ENGINE.md "Scrub") on real replica processes: corrupt block copies on disk, a
replica holding a consistent but different block, `jiva scrub` and POST /v1/scrub, metrics, the
periodic scrub, and a scrub under a checking workload."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess

import aiohttp

from jiva_engine.replica.store import ReplicaStore
from tests.integration.test_engine import (
    VOL,
    Writer,
    all_current,
    block,
    identical,
    jiva,
    open_volume,
    replicas,
    settled,
)
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

MiB = 1 << 20
SIZE = 16 * MiB
BS = 4096
TOKEN = "scrub-token-for-tests"


def corrupt(rep, blockno: int) -> None:
    """Flip bytes of one block in the replica's data file (its checksum stays the old one)."""
    fd = os.open(rep.dir / "volume.img", os.O_RDWR)
    try:
        off = blockno * BS + 100
        old = os.pread(fd, 16, off)
        os.pwrite(fd, bytes(b ^ 0xFF for b in old), off)
    finally:
        os.close(fd)


def rewrite_consistently(rep, blockno: int, data: bytes) -> None:
    """Stop the replica, write a block through its store (data and checksum agree), restart."""
    rep.stop()
    eventually_exited(rep)
    store = ReplicaStore(rep.dir, VOL, rep.size)
    try:
        store.write(blockno * BS, data)
    finally:
        store.close()
    rep.start()


def eventually_exited(rep) -> None:
    rep.proc.wait(timeout=20)


class Controller:
    """A `jiva controller` process with a token and scrub options."""

    def __init__(self, procs, tmp_path, reps, *extra: str) -> None:
        self.api = free_port()
        self.base = f"http://127.0.0.1:{self.api}"
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        self.token_file = str(token_file)
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}"]
        args += ["--token-file", self.token_file, "--replica-timeout", "3", *extra]
        args += [a for r in reps for a in ("--replica", r.addr)]
        self.proc = jiva(procs, *args, name="ctl")
        wait_port("127.0.0.1", self.api)

    async def status(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/v1/volume") as r:
            return await r.json()

    async def serving(self, n: int) -> dict:
        async def ok() -> dict | None:
            try:
                st = await self.status()
            except aiohttp.ClientError:
                return None
            rw = [r for r in st["replicas"] if r["mode"] == "RW"]
            return st if st["state"] == "serving" and len(rw) == n else None

        return await eventually(ok, 30, f"the controller serving with {n} current replicas")

    async def post(self, path: str, body=None, token: str | None = TOKEN) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.base + path, data=data, headers=headers) as r,
        ):
            return r.status, await r.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/metrics") as r:
            return await r.text()

    def scrub_cli(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [*JIVA, "scrub", "--api", f"127.0.0.1:{self.api}", "--token-file", self.token_file]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def metric(text: str, name: str, labels: str = f'volume="{VOL}"') -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name}{{{labels}}} missing")


async def test_scrub_repairs_bad_and_outvoted_copies(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, SIZE)
    vol = await open_volume(reps)
    try:
        for off in range(0, SIZE, MiB):
            await vol.write(off, block(off, MiB))
    finally:
        await vol.close()
    await settled(reps)
    corrupt(reps[0], 10)
    corrupt(reps[1], 20)
    rewrite_consistently(reps[2], 30, block(999, BS))
    ctl = Controller(procs, tmp_path, reps, "--scrub-rate", "256")
    await ctl.serving(3)

    # without (or with a wrong) token: refused, nothing starts
    assert (await ctl.post("/v1/scrub", token=None))[0] == 401
    assert (await ctl.post("/v1/scrub", token="wrong"))[0] == 401
    assert (await ctl.post("/v1/scrub", {"rate": -1}))[0] == 400
    assert (await ctl.status())["scrub"]["pass"] == 0
    for api in (f"127.0.0.1:{ctl.api}", f"127.0.0.1:{free_port()}"):  # no token; nobody there
        res = subprocess.run([*JIVA, "scrub", "--api", api], capture_output=True, text=True)
        assert res.returncode == 1 and res.stderr.startswith("jiva scrub: "), res.stderr
        assert "HTTP 401" in res.stderr or "cannot reach the API" in res.stderr
    assert (await ctl.status())["scrub"]["pass"] == 0

    res = ctl.scrub_cli("--json")
    assert res.returncode == 0, res.stderr + res.stdout
    st = json.loads(res.stdout)
    nblocks = SIZE // BS
    assert st["result"] == "repaired", st
    assert st["blocks_checked"] == 3 * nblocks
    assert (st["mismatched"], st["repaired"], st["unrepaired"]) == (1, 3, 0), st
    assert st["progress"] == 1.0 and st["done_bytes"] == SIZE
    identical(reps)
    status = await ctl.status()
    assert status["integrity"]["checksum_errors"] == 3
    assert status["integrity"]["blocks_repaired"] == 3
    assert not status["degraded"]

    # a second pass is clean (the table form)
    res = ctl.scrub_cli()
    assert res.returncode == 0, res.stderr
    assert "clean" in res.stdout and "block copies checked" in res.stdout
    m = await ctl.metrics()
    assert metric(m, "jiva_volume_checksum_errors_total") == 3
    assert metric(m, "jiva_volume_blocks_repaired_total") == 3
    assert metric(m, "jiva_volume_unrepaired_blocks") == 0
    assert metric(m, "jiva_scrub_running") == 0
    assert metric(m, "jiva_scrub_progress") == 1
    assert metric(m, "jiva_scrub_last_clean") == 1
    assert metric(m, "jiva_scrub_last_result", f'volume="{VOL}",result="clean"') == 1
    assert metric(m, "jiva_scrub_last_completion_timestamp_seconds") > 0
    assert metric(m, "jiva_scrub_blocks_checked_total") == 6 * nblocks
    assert metric(m, "jiva_scrub_blocks_mismatched_total") == 1

    # the same block bad on every replica: unrepaired, exit 2, the volume is degraded
    for r in reps:
        corrupt(r, 40)
    res = ctl.scrub_cli("--json")
    assert res.returncode == 2, res.stderr + res.stdout
    st = json.loads(res.stdout)
    assert st["result"] == "unrepaired" and st["unrepaired"] == 1, st
    status = await ctl.status()
    assert status["degraded"] and status["integrity"]["unrepaired_offsets"] == [40 * BS]
    m = await ctl.metrics()
    assert metric(m, "jiva_volume_unrepaired_blocks") == 1
    assert metric(m, "jiva_scrub_last_clean") == 0
    out = subprocess.run(
        [*JIVA, "status", "--api", f"127.0.0.1:{ctl.api}"], capture_output=True, text=True
    ).stdout
    assert "1 unrepaired" in out and "last scrub" in out and "unrepaired (" in out

    # a slow pass: a second POST is refused with 409 and `jiva scrub` joins the running one
    code, body = await ctl.post("/v1/scrub", {"rate": 8})
    assert code == 202 and body["scrub"]["running"], body
    code, body = await ctl.post("/v1/scrub")
    assert code == 409 and "already running" in body["error"], body
    res = ctl.scrub_cli("--json")
    assert res.returncode == 2 and "joining" in res.stderr, res.stderr
    assert json.loads(res.stdout)["pass"] == body["scrub"]["pass"]


async def test_scrub_interval_starts_scrubs_by_itself(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2, SIZE)
    ctl = Controller(procs, tmp_path, reps, "--scrub-interval", "2s")
    await ctl.serving(2)

    async def passes() -> dict | None:
        sc = (await ctl.status())["scrub"]
        return sc if sc["pass"] >= 2 and sc["last_result"] == "clean" else None

    sc = await eventually(passes, 30, "two periodic scrubs")
    assert sc["interval_seconds"] == 2


async def test_scrub_under_a_checking_workload(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, SIZE)
    vol = await open_volume(reps, scrub_rate=32 * MiB)
    try:
        await all_current(vol, 3)
        static = block(5, 4 * MiB)  # read and checked while the scrub runs
        await vol.write(8 * MiB, static)
        corrupt(reps[1], (8 * MiB + 12 * BS) // BS)  # one bad copy in the read region
        corrupt(reps[2], (12 * MiB) // BS)  # and one outside any I/O
        writer = Writer(vol, 0, 8 * MiB, workers=8).start()
        read_errors: list[str] = []
        stop = asyncio.Event()

        async def reader(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                o = rnd.randrange(0, len(static) // BS - 16) * BS
                if await vol.read(8 * MiB + o, 16 * BS) != static[o : o + 16 * BS]:
                    read_errors.append(f"bad data at {8 * MiB + o}")

        readers = [asyncio.create_task(reader(i)) for i in range(3)]
        first = await vol.scrubber.run()
        second = await vol.scrubber.run()
        stop.set()
        await asyncio.gather(*readers)
        await writer.stop()
        assert writer.errors == [] and read_errors == []
        assert writer.count > 0
        await writer.verify()
        # the read path may have repaired the block in the read region before the scrub did
        assert first["result"] in ("repaired", "clean") and first["unrepaired"] == 0, first
        assert second["result"] == "clean", second
        assert vol.io_stats["blocks_repaired"] == 2 and not vol.repairer.unrepaired
        final = await vol.scrubber.run()
        assert final["result"] == "clean" and final["blocks_checked"] == 3 * SIZE // BS
    finally:
        await vol.close()
    identical(reps)


async def test_scrub_that_loses_the_quorum_fails(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3, SIZE)
    vol = await open_volume(reps, hold=1.0, scrub_rate=2 * MiB)  # a pass takes 8 s
    try:
        await all_current(vol, 3)
        st = vol.scrubber.start()
        assert st["running"] and vol.scrubber.status()["pass"] == 1
        await eventually(lambda: vol.scrubber.status()["done_bytes"] > 0, 10, "scrub progress")
        reps[1].kill()
        reps[2].kill()
        await eventually(lambda: not vol.scrubber.running, 30, "the scrub ending")
        sc = vol.scrubber.status()
        assert sc["result"].startswith("failed: "), sc
        assert sc["last_result"] == sc["result"] and 0 < sc["progress"] < 1
    finally:
        await vol.close()


async def test_a_completed_pass_forgets_blocks_found_good_again(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2, SIZE)
    vol = await open_volume(reps)
    try:
        await vol.write(0, block(1, 64 * BS))
        for r in reps:
            corrupt(r, 7)  # bad on both: no good copy
        st = await vol.scrubber.run()
        assert st["result"] == "unrepaired" and st["unrepaired"] == 1
        assert list(vol.repairer.unrepaired) == [7 * BS] and vol.degraded()
        for r in reps:
            corrupt(r, 7)  # (flipped back: the data matches its checksum again)
        st = await vol.scrubber.run()
        assert st["result"] == "clean" and not vol.repairer.unrepaired and not vol.degraded()
        assert await vol.read(7 * BS, BS) == block(1, 64 * BS)[7 * BS : 8 * BS]
    finally:
        await vol.close()
