"""Block checksums, end to end (issue 14, "Proof"): bytes of a replica's data file (or of its
checksum store) are flipped on disk under running `jiva replica` processes, and a real iSCSI
initiator (qemu-io / libiscsi, and the project's own for the sense data) must only ever see the
data it wrote. The controller repairs the bad copy from another replica (read repair) and counts
it; when no replica has a good copy, the read fails with MEDIUM ERROR at the block's LBA.

Reads rotate over the members: a 1 MiB read is split into three parts served by the three
replicas, and the next read rotates the parts (a part read again after a repair takes a turn
too), so a few reads of a range read every byte of it from every replica: the tests read until
the controller has met every damaged block, and no longer than that.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from jiva_engine.initiator import Initiator, ScsiError
from jiva_engine.protocol.client import ReplicaClient
from jiva_engine.replica.checksums import BLOCK, block_sums
from jiva_engine.replica.store import bytes_to_bits
from tests.procs import free_port, wait_port
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils not installed")

MiB = 1 << 20
SIZE = 16 * MiB
VOL = "ivol"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
# written regions: (offset, length, pattern byte)
REGIONS = [(0, MiB, 0x11), (4 * MiB, MiB, 0x22), (9 * MiB, MiB, 0x33)]
# corrupted blocks (byte offsets; two adjacent ones make one run)
BAD = [3 * BLOCK, 4 * MiB + 2 * BLOCK, 4 * MiB + 3 * BLOCK, 9 * MiB + 200 * BLOCK]


class Cluster:
    """Three `jiva replica` processes and a `jiva controller` (API + iSCSI portal) on 127.0.0.1."""

    def __init__(self, procs, root: Path, replica_args: dict[int, list[str]] | None = None) -> None:
        self.procs, self.root = procs, root
        self.replica_args = replica_args or {}
        self.ports = [free_port() for _ in range(3)]
        self.dirs = [root / f"r{i}" for i in range(3)]
        self.rproc: list = [None] * 3
        self.starts = [0] * 3
        for i in range(3):
            self.start_replica(i)
        self.api, self.portal = free_port(), free_port()
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}", "--portal",
                f"127.0.0.1:{self.portal}", "--size", str(SIZE), "--replica-timeout", "2"]  # fmt: skip
        for p in self.ports:
            args += ["--replica", f"127.0.0.1:{p}"]
        self.ctl = procs.jiva(*args, name="controller")
        wait_port("127.0.0.1", self.portal)

    def start_replica(self, i: int) -> None:
        self.starts[i] += 1
        self.rproc[i] = self.procs.jiva(
            "replica", "--volume", VOL, "--listen", f"127.0.0.1:{self.ports[i]}", "--dir",
            str(self.dirs[i]), "--size", str(SIZE), *self.replica_args.get(i, []),
            name=f"r{i}-{self.starts[i]}",
        )  # fmt: skip
        wait_port("127.0.0.1", self.ports[i])

    def stop_replica(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.procs.kill(self.rproc[i], sig)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.portal}/{IQN}/0"

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/v1/volume", timeout=5) as r:
            return json.load(r)

    def integrity(self) -> dict:
        return self.status()["integrity"]

    async def healthy(self, timeout: float = 30.0) -> dict:
        def ok():
            try:
                st = self.status()
            except OSError:
                return None
            good = st["state"] == "serving" and all(r["mode"] == "RW" for r in st["replicas"])
            return st if good and len(st["replicas"]) == 3 else None

        return await eventually(ok, timeout, "the volume serving with 3 RW replicas")

    async def replica_stats(self, i: int) -> dict:
        c = ReplicaClient("127.0.0.1", self.ports[i], VOL)
        await c.connect()
        try:
            return (await c.info())["stats"]
        finally:
            await c.close()

    async def bad_blocks_on_disk(self, i: int) -> list[int]:
        """Every block of replica i failing its checksum (CHECKSUMS over the whole volume)."""
        epoch = self.status()["epoch"]
        c = ReplicaClient("127.0.0.1", self.ports[i], VOL)
        await c.connect()
        try:
            bad: list[int] = []
            for off in range(0, SIZE, 4 * MiB):
                bad += (await c.checksums(off, 4 * MiB, epoch))["bad"]
            return bad
        finally:
            await c.close()

    def images(self) -> list[bytes]:
        """The replicas' data files (holes read as zeroes)."""
        return [(d / "volume.img").read_bytes() for d in self.dirs]


def qemu_io(url: str, *cmds: str, ok: bool = True) -> str:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    if ok:
        assert p.returncode == 0 and "failed" not in out, out
    return out


def write_regions(cl: Cluster) -> None:
    qemu_io(cl.url, *(f"write -P {p:#x} {o} {n}" for o, n, p in REGIONS), "flush")


def read_regions(cl: Cluster, times: int = 3, regions=REGIONS) -> None:
    """Read (and pattern-check) every written region `times` times in a row."""
    cmds = [f"read -P {p:#x} {o} {n}" for o, n, p in regions for _ in range(times)]
    out = qemu_io(cl.url, *cmds)
    assert out.count(f"read {MiB}/{MiB} bytes") == len(cmds), out


def read_until_found(cl: Cluster, errors: int, regions=REGIONS) -> dict:
    """Read the regions (every read pattern-checked) until the controller has counted
    `errors` checksum errors (at most 10 rounds of 3 reads each); returns its counters."""
    for _ in range(10):
        read_regions(cl, 3, regions)
        got = cl.integrity()
        if got["checksum_errors"] >= errors:
            return got
    return cl.integrity()


def drop_cache(path: Path) -> None:
    """Write back and evict a file's pages, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def flip(path: Path, offsets: list[int], at: int = 1000, n: int = 3) -> None:
    """Invert `n` bytes `at` bytes into each given block of the file, then drop its cache."""
    fd = os.open(path, os.O_RDWR)
    try:
        for off in offsets:
            old = os.pread(fd, n, off + at)
            assert len(old) == n
            os.pwrite(fd, bytes(b ^ 0xFF for b in old), off + at)
    finally:
        os.close(fd)
    drop_cache(path)


def pattern_at(off: int) -> int:
    return next(p for o, n, p in REGIONS if o <= off < o + n)


async def assert_all_equal_and_clean(cl: Cluster) -> None:
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2], "the replicas' data differ after the repair"
    for o, n, p in REGIONS:
        assert imgs[0][o : o + n] == bytes([p]) * n
    for i in range(3):
        assert await cl.bad_blocks_on_disk(i) == [], f"replica r{i} still has bad blocks"


@pytest.fixture
def cluster(procs, tmp_path):
    return Cluster(procs, tmp_path)


async def test_bit_rot_on_a_running_replica_is_repaired_by_reads(cluster):
    """Flipped bytes in 4 blocks of r1's volume.img (page cache dropped): every qemu-io read
    returns the written data, the bad copies are counted and rewritten from a good one."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    flip(cl.dirs[1] / "volume.img", BAD)
    assert await cl.bad_blocks_on_disk(1) == [o // BLOCK for o in BAD]  # the damage is real
    before = (await cl.replica_stats(1))["checksum_errors"]  # that look counted them once
    got = read_until_found(cl, len(BAD))
    assert got == {"checksum_errors": len(BAD), "blocks_repaired": len(BAD),
                   "unrepaired_blocks": 0, "unrepaired_offsets": []}  # fmt: skip
    stats = [(await cl.replica_stats(i))["checksum_errors"] for i in range(3)]
    assert stats == [0, before + len(BAD), 0]
    assert not cl.status()["degraded"]
    await assert_all_equal_and_clean(cl)
    read_regions(cl)  # nothing new is found
    assert cl.integrity()["checksum_errors"] == len(BAD)
    assert (await cl.replica_stats(1))["checksum_errors"] == before + len(BAD)


async def test_bit_rot_while_the_replica_is_stopped_is_repaired_after_it_rejoins(cluster):
    """r2 stopped, its data file damaged, a write made elsewhere meanwhile, r2 restarted: it
    rejoins, every read is right and its bad blocks are repaired."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    cl.stop_replica(2)
    flip(cl.dirs[2] / "volume.img", BAD)
    await eventually(lambda: cl.status()["replicas"][2]["mode"] != "RW", 20, "r2 ejected")
    qemu_io(cl.url, f"write -P 0x44 {12 * MiB} 64k", "flush")  # r2 misses this one
    cl.start_replica(2)
    await cl.healthy()
    qemu_io(cl.url, *[f"read -P 0x44 {12 * MiB} 64k"] * 3)
    got = read_until_found(cl, len(BAD))
    assert got["checksum_errors"] == len(BAD) and got["blocks_repaired"] == len(BAD), got
    assert got["unrepaired_blocks"] == 0 and not cl.status()["degraded"]
    assert (await cl.replica_stats(2))["checksum_errors"] == len(BAD)
    await assert_all_equal_and_clean(cl)
    assert cl.images()[2][12 * MiB : 12 * MiB + 65536] == b"\x44" * 65536


def _info_lba(sense: bytes) -> int:
    """The INFORMATION field of fixed or descriptor sense data (VALID bit required)."""
    if sense[0] & 0x7F in (0x70, 0x71):
        assert sense[0] & 0x80, f"INFORMATION not valid: {sense.hex()}"
        return int.from_bytes(sense[3:7], "big")
    desc = sense[8:]
    while desc:
        if desc[0] == 0x00:
            assert desc[2] & 0x80, f"INFORMATION not valid: {sense.hex()}"
            return int.from_bytes(desc[4:12], "big")
        desc = desc[2 + desc[1] :]
    raise AssertionError(f"no INFORMATION in sense {sense.hex()}")


async def test_same_block_bad_on_every_replica_is_a_medium_error_at_its_lba(cluster):
    """No good copy anywhere: the read fails with MEDIUM ERROR / UNRECOVERED READ ERROR naming
    the block's first LBA; other reads work; the volume is degraded with the block named until a
    whole-block write replaces it."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    bad = 4 * MiB + 5 * BLOCK
    lba = bad // 512
    for d in cl.dirs:
        flip(d / "volume.img", [bad], at=17, n=1)
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        # the block, a read inside it, one over it: INFORMATION is the first LBA the read
        # asked for that cannot be read (never one before the read's start)
        for first, count, info in ((lba, 8, lba), (lba + 3, 2, lba + 3), (lba - 16, 64, lba)):
            with pytest.raises(ScsiError) as e:
                await init.read(first, count)
            assert (e.value.status, e.value.key, e.value.asc, e.value.ascq) == (2, 3, 0x11, 0)
            assert _info_lba(e.value.sense) == info, (first, count)
        # the blocks around it read fine (the ones in the same 1 MiB too)
        assert await init.read(lba - 8, 8) == b"\x22" * BLOCK
        assert await init.read(lba + 8, 8) == b"\x22" * BLOCK
        qemu_io(cl.url, f"read -P 0x22 {4 * MiB} {4 * BLOCK}",
                f"read -P 0x22 {bad + BLOCK} {MiB - 6 * BLOCK}")  # fmt: skip
        bad_read = qemu_io(cl.url, f"read {bad} 4k", ok=False)
        assert "read failed" in bad_read and "Input/output error" in bad_read, bad_read
        st = cl.status()
        assert st["degraded"] and st["state"] == "serving"
        assert st["integrity"]["unrepaired_blocks"] == 1
        assert st["integrity"]["unrepaired_offsets"] == [bad]
        assert st["integrity"]["blocks_repaired"] == 0
        assert all(r["mode"] == "RW" for r in st["replicas"])  # nobody was ejected for it
        # a write of part of the block does not clear it (the block stays bad)...
        await init.write(lba, b"\x55" * 512)
        assert cl.integrity()["unrepaired_offsets"] == [bad]
        # ...a whole-block write replaces it everywhere
        await init.write(lba, b"\x66" * BLOCK)
        assert await init.read(lba, 8) == b"\x66" * BLOCK
    finally:
        await init.close()
    st = cl.status()
    assert st["integrity"]["unrepaired_blocks"] == 0 and not st["degraded"], st["integrity"]
    errors = st["integrity"]["checksum_errors"]
    qemu_io(
        cl.url, *[f"read -P 0x66 {bad} 4k"] * 3, *[f"read -P 0x22 {4 * MiB} {bad - 4 * MiB}"] * 3
    )
    assert cl.integrity()["checksum_errors"] == errors
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2]
    for i in range(3):
        assert await cl.bad_blocks_on_disk(i) == []


async def test_damaged_checksum_entry_is_repaired(cluster):
    """Entries of volume.crc (not the data) damaged on r0: reads still return the data, the
    blocks are rewritten from another replica and their entries are right again."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    crc = cl.dirs[0] / "volume.crc"
    fd = os.open(crc, os.O_RDWR)
    try:
        for off in BAD:
            e = os.pread(fd, 4, (off // BLOCK) * 4)
            os.pwrite(fd, bytes(b ^ 0x5A for b in e), (off // BLOCK) * 4)
    finally:
        os.close(fd)
    drop_cache(crc)
    assert await cl.bad_blocks_on_disk(0) == [o // BLOCK for o in BAD]
    got = read_until_found(cl, len(BAD))
    assert got["checksum_errors"] == len(BAD) and got["blocks_repaired"] == len(BAD), got
    await assert_all_equal_and_clean(cl)
    entries = (cl.dirs[0] / "volume.crc").read_bytes()
    for off in BAD:
        want = block_sums(bytes([pattern_at(off)]) * BLOCK)[0]
        assert (
            int.from_bytes(entries[(off // BLOCK) * 4 : (off // BLOCK) * 4 + 4], "little") == want
        )


async def test_kill9_during_writes_leaves_no_checksum_error(cluster):
    """kill -9 of a replica in the middle of a stream of writes, restart: everything
    acknowledged reads back right from every replica and no checksum error is seen anywhere
    (blocks whose data and entry came from different writes were in dirty regions: rehashed)."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    acked: dict[int, bytes] = {}  # 4 KiB block -> data
    nblocks = SIZE // BLOCK
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        i = 0
        while not stop.is_set():
            b = (k * 7919 + i * 104729) % (nblocks - 4)
            n = 1 + i % 4
            data = b"".join(bytes([(b + j + i) % 251 + 1]) * BLOCK for j in range(n))
            await init.write(b * 8, data)
            for j in range(n):
                acked[b + j] = data[j * BLOCK : (j + 1) * BLOCK]
            i += 1

    try:
        tasks = [asyncio.create_task(writer(0))]
        await eventually(lambda: len(acked) > 200, 30, "writes acknowledged")
        cl.stop_replica(0, signal.SIGKILL)
        n_at_kill = len(acked)
        await eventually(lambda: len(acked) > n_at_kill + 200, 30, "writes after the kill")
        await eventually(lambda: cl.status()["replicas"][0]["mode"] != "RW", 20, "r0 ejected")
        cl.start_replica(0)
        await cl.healthy()
        await eventually(lambda: len(acked) > n_at_kill + 400, 30, "writes after the restart")
        stop.set()
        await asyncio.gather(*tasks)
        await init.sync_cache()
        for _ in range(3):  # every block from every replica (split reads rotate)
            for off in range(0, SIZE, MiB):
                data = await init.read(off // 512, MiB // 512)
                for j in range(MiB // BLOCK):
                    b = off // BLOCK + j
                    if b in acked:
                        assert data[j * BLOCK : (j + 1) * BLOCK] == acked[b], f"block {b}"
    finally:
        stop.set()
        await init.close()
    assert cl.integrity()["checksum_errors"] == 0
    for i in range(3):
        assert (await cl.replica_stats(i))["checksum_errors"] == 0, f"r{i}"
        assert await cl.bad_blocks_on_disk(i) == [], f"r{i}"
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2]


async def test_bit_rot_on_the_rebuild_sources_is_repaired_before_it_is_copied(cluster):
    """r2 misses a write while stopped; the region it must copy back is damaged on both other
    replicas, at different blocks. The rebuild's source reports its bad blocks, they are
    repaired from the other member first, and r2 receives good data (checked on its disk
    before any iSCSI read); reads then repair the other member too."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    cl.stop_replica(2)
    await eventually(lambda: cl.status()["replicas"][2]["mode"] != "RW", 20, "r2 ejected")
    x = 12 * MiB
    qemu_io(cl.url, f"write -P 0x44 {x} 1M", "flush")  # r2 misses it: copied when it is back
    flip(cl.dirs[0] / "volume.img", [x + 4 * BLOCK, x + 100 * BLOCK])
    flip(cl.dirs[1] / "volume.img", [x + 5 * BLOCK, x + 200 * BLOCK])
    cl.start_replica(2)
    st = await cl.healthy()
    assert cl.images()[2][x : x + MiB] == b"\x44" * MiB, "the rebuild copied damaged data"
    rebuilt = st["integrity"]
    assert rebuilt["checksum_errors"] == 2 and rebuilt["blocks_repaired"] == 2, rebuilt
    got = read_until_found(cl, 4, [(x, MiB, 0x44)])
    assert got["checksum_errors"] == 4 and got["blocks_repaired"] == 4, got
    assert got["unrepaired_blocks"] == 0
    read_regions(cl)  # the other regions had no damage
    assert cl.integrity()["checksum_errors"] == 4
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2]
    for i in range(3):
        assert await cl.bad_blocks_on_disk(i) == []


async def test_block_lost_on_every_rebuild_source_is_copied_as_bad_until_rewritten(cluster):
    """A block r2 must copy back is bad on both other replicas: the rebuild cannot get it, so it
    copies it as bad (poisoned: it fails its checksum on r2 too) and completes. The volume
    serves with every replica, reports the block unrepaired (degraded) and fails only reads of
    it, whichever replica serves them. A whole-block write over it clears it everywhere."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    cl.stop_replica(2)
    await eventually(lambda: cl.status()["replicas"][2]["mode"] != "RW", 20, "r2 ejected")
    x = 12 * MiB
    lost = x + 4 * BLOCK
    qemu_io(cl.url, f"write -P 0x44 {x} 1M", "flush")
    for d in cl.dirs[:2]:
        flip(d / "volume.img", [lost])
    cl.start_replica(2)
    await eventually(
        lambda: [r["mode"] for r in cl.status()["replicas"]] == ["RW"] * 3, 30, "r2 rebuilt"
    )
    st = cl.status()
    assert st["state"] == "serving" and st["degraded"]
    assert st["integrity"]["unrepaired_offsets"] == [lost]
    assert await cl.bad_blocks_on_disk(2) == [lost // BLOCK], "the lost block copied as data"
    read_regions(cl, 1)
    qemu_io(cl.url, f"read -P 0x44 {x} {4 * BLOCK}", f"read -P 0x44 {lost + BLOCK} 64k")
    for _ in range(4):  # rotating over the three replicas: every one refuses it
        out = qemu_io(cl.url, f"read {lost} 4k", ok=False)
        assert "read failed" in out and "Input/output error" in out, out
    qemu_io(cl.url, f"write -P 0x55 {lost} 4k", "flush")
    await eventually(lambda: not cl.status()["degraded"], 20, "no unrepaired block left")
    assert cl.status()["integrity"]["unrepaired_blocks"] == 0
    qemu_io(cl.url, *[f"read -P 0x55 {lost} 4k"] * 3, *[f"read -P 0x44 {x} {4 * BLOCK}"] * 3)
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2]
    assert imgs[2][lost : lost + BLOCK] == b"\x55" * BLOCK
    for i in range(3):
        assert await cl.bad_blocks_on_disk(i) == []


async def test_partial_write_over_a_damaged_block_does_not_bless_it(cluster):
    """Sub-block writes land on blocks of r1 whose data is damaged (one beside the flipped
    bytes, one over them): r1 merges them with what it holds but must keep the blocks failing
    their checksum, so reads repair them with the merged data of a good replica."""
    cl = cluster
    await cl.healthy()
    write_regions(cl)
    a, b = 3 * BLOCK, 9 * MiB + 200 * BLOCK  # patterns 0x11 and 0x33
    flip(cl.dirs[1] / "volume.img", [a, b], at=1000, n=3)
    qemu_io(cl.url, f"write -P 0x77 {a + 2048} 512", f"write -P 0x78 {b + 512} 1024", "flush")
    assert await cl.bad_blocks_on_disk(1) == [a // BLOCK, b // BLOCK], "damage blessed"
    reads = [f"read -P 0x11 {a} 2048", f"read -P 0x77 {a + 2048} 512",
             f"read -P 0x11 {a + 2560} 1536", f"read -P 0x33 {b} 512",
             f"read -P 0x78 {b + 512} 1024", f"read -P 0x33 {b + 1536} 2560"]  # fmt: skip
    for _ in range(10):
        qemu_io(cl.url, *reads, *reads, *reads)
        if cl.integrity()["checksum_errors"] >= 2:
            break
    got = cl.integrity()
    assert got["checksum_errors"] == 2 and got["blocks_repaired"] == 2, got
    imgs = cl.images()
    assert imgs[0] == imgs[1] == imgs[2]
    assert imgs[1][a + 2048 : a + 2560] == b"\x77" * 512
    assert imgs[1][b + 512 : b + 1536] == b"\x78" * 1024
    for i in range(3):
        assert await cl.bad_blocks_on_disk(i) == []


async def test_bit_rot_in_dirty_regions_of_a_crashed_replica_is_recopied(procs, tmp_path):
    """r1 crashes (kill -9) with its regions dirty, and bytes of its data file rot before it
    restarts. Opening it recomputes the dirty regions' checksums (they cannot be trusted after
    a crash), which blesses that damage too; the rejoin must then copy those regions back from
    the others, so r1 ends identical without a read ever meeting the damage."""
    cl = Cluster(procs, tmp_path, {1: ["--sync-interval", "60"]})  # r1 keeps its bits dirty
    await cl.healthy()
    write_regions(cl)
    cl.stop_replica(1, signal.SIGKILL)
    await eventually(lambda: cl.status()["replicas"][1]["mode"] != "RW", 20, "r1 ejected")
    dirty = bytes_to_bits((cl.dirs[1] / "dirty.map").read_bytes(), SIZE // MiB)
    assert {o // MiB for o in BAD} <= dirty, dirty
    flip(cl.dirs[1] / "volume.img", BAD)
    cl.start_replica(1)
    await cl.healthy()
    assert "checksums computed from the data" in procs.log("r1-2")
    await assert_all_equal_and_clean(cl)  # before any read
    read_regions(cl)
    assert cl.integrity()["checksum_errors"] == 0
