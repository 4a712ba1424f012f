"""Unit tests of the controller's pure parts: the range lock and the rebuild planner."""

from __future__ import annotations

import asyncio

import pytest

from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.controller.rebuild import clip, copy_range, holes, merge, plan_copy, split
from jiva_engine.controller.volume import Volume

MB = 1 << 20


async def test_overlapping_holders_run_in_arrival_order():
    lock = RangeLock()
    order: list[str] = []
    gate = asyncio.Event()

    async def holder(name: str, off: int, n: int, wait: bool = False) -> None:
        async with lock.hold(off, n):
            order.append(f"{name}+")
            if wait:
                await gate.wait()
            await asyncio.sleep(0)
            order.append(f"{name}-")

    a = asyncio.create_task(holder("a", 0, 4096, wait=True))
    await asyncio.sleep(0)
    b = asyncio.create_task(holder("b", 2048, 4096))  # overlaps a: must wait
    c = asyncio.create_task(holder("c", 8192, 4096))  # disjoint: runs now
    await asyncio.sleep(0.01)
    assert order == ["a+", "c+", "c-"]
    assert lock.busy(0, 512) and not lock.busy(6144, 1024)
    gate.set()
    await asyncio.gather(a, b, c)
    assert order == ["a+", "c+", "c-", "a-", "b+", "b-"]
    assert len(lock) == 0


async def test_parked_holder_is_passed_only_by_past_parked_holders_and_waits_for_them():
    """The start-up resync after every member was lost (past_parked) copies a range whose write
    is parked waiting for that very claim; an ordinary later holder (a newer overlapping write)
    never passes it, and the parked write resumes only after the copy is done."""
    lock = RangeLock()
    order: list[str] = []
    parked, admitted, copying = asyncio.Event(), asyncio.Event(), asyncio.Event()
    copy_may_end = asyncio.Event()

    async def write(name: str) -> None:
        async with lock.hold(0, 4096) as lease:
            order.append(f"{name}+")
            if name == "w1":
                async with lock.parked(lease):
                    parked.set()
                    await admitted.wait()
                order.append("w1 resumed")
            order.append(f"{name}-")

    async def resync() -> None:
        async with lock.hold(0, 8192, past_parked=True):
            order.append("copy+")
            copying.set()
            await copy_may_end.wait()
            order.append("copy-")

    w1 = asyncio.create_task(write("w1"))
    await parked.wait()
    w2 = asyncio.create_task(write("w2"))  # overlaps w1: waits, parked or not
    r = asyncio.create_task(resync())  # passes the parked w1 and the not yet granted w2
    await copying.wait()
    assert order == ["w1+", "copy+"]
    admitted.set()  # w1's admission returns while the copy still runs: it waits for the copy
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["w1+", "copy+"]
    copy_may_end.set()
    await asyncio.gather(w1, w2, r)
    assert order == ["w1+", "copy+", "copy-", "w1 resumed", "w1-", "w2+", "w2-"]
    assert len(lock) == 0


async def test_ordinary_holders_do_not_pass_a_parked_one():
    lock = RangeLock()
    order: list[str] = []
    parked, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with lock.hold(0, 100) as lease:
            async with lock.parked(lease):
                parked.set()
                await release.wait()
            order.append("first")

    async def later() -> None:
        async with lock.hold(50, 100):
            order.append("later")

    t1 = asyncio.create_task(first())
    await parked.wait()
    t2 = asyncio.create_task(later())
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == []
    release.set()
    await asyncio.gather(t1, t2)
    assert order == ["first", "later"] and len(lock) == 0


async def test_waiter_cancelled_does_not_block_later_ones():
    lock = RangeLock()
    gate = asyncio.Event()
    done = []

    async def first():
        async with lock.hold(0, 100):
            await gate.wait()

    async def later(name):
        async with lock.hold(0, 100):
            done.append(name)

    t1 = asyncio.create_task(first())
    await asyncio.sleep(0)
    t2 = asyncio.create_task(later("cancelled"))
    t3 = asyncio.create_task(later("third"))
    await asyncio.sleep(0.01)
    t2.cancel()
    gate.set()
    await asyncio.gather(t1, t3)
    with pytest.raises(asyncio.CancelledError):
        await t2
    assert done == ["third"] and len(lock) == 0


def test_clip_extents():
    assert clip([[0, 100], [200, 50]], 50, 220) == [(50, 50), (200, 20)]
    assert clip([[300, 10]], 0, 100) == []
    assert clip(None, 0, 10) == []


def test_holes_between_extents():
    assert holes([(10, 5), (20, 5)], 0, 30) == [(0, 10), (15, 5), (25, 5)]
    assert holes([], 0, 8) == [(0, 8)] and holes([(0, 8)], 0, 8) == []


class _Disk:
    """A replica link in memory (4 KiB blocks; None = hole) whose requests are answered only
    when the test says `tick()`: one tick is one network round trip."""

    def __init__(self, blocks: list[bytes | None]) -> None:
        self.blocks = blocks
        self.pending: list[tuple[asyncio.Future, object]] = []

    def _req(self, fn):
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((fut, fn))
        return fut

    def tick(self) -> None:
        pending, self.pending = self.pending, []
        for fut, fn in pending:
            fut.set_result(fn())

    def _get(self, off: int, n: int) -> bytes:
        return b"".join(
            self.blocks[b] or bytes(4096) for b in range(off // 4096, (off + n) // 4096)
        )

    def _put(self, off: int, data: bytes | None, n: int) -> None:
        for i, b in enumerate(range(off // 4096, (off + n) // 4096)):
            self.blocks[b] = None if data is None else bytes(data[i * 4096 : (i + 1) * 4096])

    def extents(self, off, n):
        def run():
            return [
                [b * 4096, 4096] for b in range(off // 4096, (off + n) // 4096) if self.blocks[b]
            ]

        return self._req(run)

    def read(self, off, n, epoch):
        return self._req(lambda: self._get(off, n))

    def readv(self, vec, epoch):
        return self._req(lambda: b"".join(self._get(o, n) for o, n in vec))

    def write(self, off, data, epoch, rebuild=False):
        return self._req(lambda: self._put(off, data, len(data)))

    def writev(self, vec, data, epoch, rebuild=False):
        def run():
            pos = 0
            for o, n in vec:
                self._put(o, data[pos : pos + n], n)
                pos += n

        return self._req(run)

    def unmap(self, off, n, epoch):
        return self._req(lambda: self._put(off, None, n))


async def test_copy_range_takes_a_few_round_trips_however_fragmented():
    """A span left by random 4K writes (every other block written on the source, the other way
    round on the target) is copied in a few round trips, not three per extent, and the target
    ends identical: the same data and the same holes."""
    from types import SimpleNamespace

    n = 2048  # 8 MiB
    src = _Disk([bytes([i % 251 + 1]) * 4096 if i % 2 else None for i in range(n)])
    dst = _Disk([None if i % 2 else b"\xee" * 4096 for i in range(n)])
    task = asyncio.ensure_future(
        copy_range(
            RangeLock(),
            SimpleNamespace(link=src),
            [SimpleNamespace(link=dst)],
            0,
            n * 4096,
            1,
            rebuild=False,
        )  # fmt: skip
    )
    trips = 0
    while not task.done():
        for _ in range(20):  # let every request that can be sent be sent
            await asyncio.sleep(0)
        if src.pending or dst.pending:
            trips += 1
            src.tick()
            dst.tick()
    assert await task == n // 2 * 4096
    assert dst.blocks == src.blocks
    assert trips <= 4, trips  # EXTENTS, READV, WRITEV (+ the UNMAPs, sent with them)


def _vol() -> Volume:
    return Volume("v", ["127.0.0.1:1"], size=64 << 20)


def _plan(rmeta, rdirty, sdm, rid="r"):
    return plan_copy(rid, rmeta, {"region_size": MB, **rdirty}, sdm, MB, 64 * MB)


def test_plan_older_maps_use_the_smallest_covering_change_map():
    sdm = {"region_size": MB, "missed": {"3": [1, 2, 3, 9], "5": [2, 9], "8": [4]}}
    kind, regions = _plan({"epoch": 4}, {"dirty": [7]}, sdm)
    # maps without an `excluded` list (format 1): epoch 4 missed everything from epoch 5 on, map
    # 5 covers it, map 8 started too late (region numbers = an older replica's answer)
    assert kind.startswith("incremental") and regions == [(2 * MB, MB), (7 * MB, MB), (9 * MB, MB)]


def test_plan_incremental_with_fine_byte_runs_merges_adjacent_extents():
    sdm = {
        "region_size": MB,
        "missed_granularity": 4096,
        "missed": {"5": [[8192, 4096], [12288, 8192], [MB, 4096]]},
    }
    kind, ext = _plan({"epoch": 4}, {"dirty": []}, sdm)
    assert kind.startswith("incremental")
    assert ext == [(8192, 12288), (MB, 4096)]  # 4K chunks, not 1 MiB regions


def test_plan_uses_the_newest_map_that_excluded_this_replica():
    """Maps name the ids they were started for: a returning replica copies from the newest map
    that left it out after the last view it accepted, whatever the epochs' numbers."""

    def e(t: int, v: int) -> int:
        return t << 32 | v

    sdm = {
        "region_size": MB,
        "missed": {
            str(e(1, 3)): [[0, 4096]],  # r left at 1.3, came back later
            str(e(2, 1)): [[MB, 4096]],  # r left out again by the claim of term 2
            str(e(2, 4)): [[2 * MB, 4096]],  # another replica left at 2.4
        },
        "excluded": {str(e(1, 3)): ["r"], str(e(2, 1)): ["r", "s"], str(e(2, 4)): ["s"]},
    }
    # it accepted later views as a non-member (a voter): what counts is its member_epoch
    r = {"epoch": e(2, 6), "view_epoch": e(2, 6), "member_epoch": e(1, 7)}
    kind, ext = _plan(r, {"dirty": [9]}, sdm)
    assert kind == "incremental since epoch 2.1"
    assert ext == [(MB, 4096), (9 * MB, MB)]  # that map, plus its own dirty regions
    # a map started before the last view that named it a member is no use: full
    kind, ext = _plan({"epoch": e(2, 5), "member_epoch": e(2, 5)}, {"dirty": []}, sdm)
    assert kind == "full" and ext is None
    # another replica's map is no use either
    kind, _ = _plan({"epoch": e(1, 7), "member_epoch": e(1, 7)}, {"dirty": []}, sdm, rid="t")
    assert kind == "full"


@pytest.mark.parametrize(
    "rmeta,sdm",
    [
        ({"epoch": 0}, {"region_size": MB, "missed": {"1": [1]}}),  # empty replica
        ({"epoch": 4, "rebuilding": True}, {"region_size": MB, "missed": {"1": [1]}}),
        ({"epoch": 4}, {"region_size": MB, "missed": {"6": [1]}}),  # tracking too late
        ({"epoch": 4}, {"region_size": MB, "missed": {}}),  # no tracking at all
        ({"epoch": 4}, {"region_size": 1 << 16, "missed": {"5": [1]}}),  # other region size
    ],
)
def test_plan_falls_back_to_full(rmeta, sdm):
    kind, regions = _plan(rmeta, {"dirty": []}, sdm)
    assert kind == "full" and regions is None


async def test_io_held_while_waiting_then_not_ready():
    """I/O that reaches a controller that does not serve yet waits (up to the hold), then
    fails NOT READY with the reason: a starting controller's first seconds cost no error."""
    import time

    from jiva_engine.volume import VolumeNotReady

    v = Volume("v", ["127.0.0.1:1"], size=64 << 20, hold=0.3)
    assert v.ready()  # takes I/O (it would hold it): the size is known
    t0 = time.monotonic()
    with pytest.raises(VolumeNotReady, match="I/O held for 0.3s: starting"):
        await v.write(0, bytes(512))
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(VolumeNotReady):
        await v.read(0, 512)
    st = v.status()
    assert st["state"] == "waiting" and st["replicas"][0]["mode"] == "ERR"
    assert not Volume("v", ["127.0.0.1:1"]).ready()  # no --size and no replica yet: NOT READY


def test_status_table_shows_rebuild_progress_and_reason():
    from jiva_engine.api.cli import render

    st = {
        "name": "v",
        "size": 1 << 30,
        "state": "serving",
        "reason": "",
        "epoch": 7,
        "portal": "10.0.0.5:3260",
        "iqn": "iqn.2026-11.org.jiva-py:v",
        "degraded": True,
        "replicas": [
            {"address": "a:1", "mode": "RW", "epoch": 7, "rebuild": None, "last_error": None},
            {
                "address": "b:1",
                "mode": "WO",
                "epoch": 7,
                "rebuild": {"done": 512 << 20, "total": 1 << 30},
                "last_error": None,
            },
            {"address": "c:1", "mode": "ERR", "epoch": 5, "rebuild": None, "last_error": "gone"},
        ],
    }
    out = render(st)
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "healthy" in lines["a:1"]
    assert "rebuilding" in lines["b:1"] and "50%" in lines["b:1"] and "512.0 MiB" in lines["b:1"]
    assert "failed" in lines["c:1"] and "gone" in lines["c:1"]
    assert "yes" in lines["degraded"] and "1.0 GiB" in lines["size"]


def test_merge_and_split_extents_into_copy_spans():
    assert merge([], 100) == []
    assert merge([(50, 10), (0, 10), (10, 5), (58, 10), (95, 20)], 100) == [
        (0, 15),
        (50, 18),
        (95, 5),  # clipped to the volume
    ]
    assert split([(0, 10), (20, 3)], 4) == [(0, 4), (4, 4), (8, 2), (20, 3)]


# ---------------------------------------------------------------------- read repair
class _Member:
    """A replica link in memory whose blocks in `bad` fail their checksum: a read touching one
    answers BAD_BLOCKS naming the bad runs (as a replica does); a write of a whole block makes
    it good again. Records the writes it gets (the repairs)."""

    def __init__(self, size: int, fill: int, bad: set[int] = frozenset()) -> None:
        self.data = bytearray([fill]) * size
        self.bad = set(bad)  # 4 KiB block numbers
        self.writes: list[tuple[int, bytes]] = []
        self.reads = 0
        self.connected = True

    def _now(self, fn):
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(fn())
        except Exception as e:  # handed to the awaiting reader
            fut.set_exception(e)
        return fut

    def _read(self, off: int, n: int) -> bytes:
        from jiva_engine.protocol import wire
        from jiva_engine.protocol.client import BadBlocks

        self.reads += 1
        hit = sorted(b for b in self.bad if off < (b + 1) * 4096 and b * 4096 < off + n)
        if hit:
            runs: list[list[int]] = []
            for b in hit:
                if runs and runs[-1][0] + runs[-1][1] == b * 4096:
                    runs[-1][1] += 4096
                else:
                    runs.append([b * 4096, 4096])
            raise BadBlocks(wire.dumps({"message": f"{len(hit)} bad", "bad": runs}))
        return bytes(self.data[off : off + n])

    def read(self, off, n, epoch):
        return self._now(lambda: self._read(off, n))

    def read_into(self, off, dest, epoch):
        def run():
            dest[:] = self._read(off, len(dest))
            return dest

        return self._now(run)

    def readv(self, vec, epoch):
        return self._now(lambda: b"".join(self._read(o, n) for o, n in vec))

    def write(self, off, data, epoch, fua=False, rebuild=False, poison=False):
        def run():
            self.writes.append((off, bytes(data)))
            self.data[off : off + len(data)] = data
            for b in range(off // 4096, (off + len(data)) // 4096):
                (self.bad.add if poison else self.bad.discard)(b)

        return self._now(run)


def _repair_vol(*members: _Member) -> Volume:
    """A serving Volume over in-memory members (reads start at the first one)."""
    from jiva_engine.controller.membership import Phase
    from jiva_engine.controller.peers import RW

    size = len(members[0].data)
    v = Volume("v", [f"127.0.0.1:{i + 1}" for i in range(len(members))], size=size)
    for p, m in zip(v.coord.replicas(), members, strict=True):
        p.mode, p.client = RW, m
    v.coord.mem.phase = Phase.SERVING
    v.coord.open, v.coord.lease_until = True, float("inf")  # admitted, as when serving
    return v


async def test_read_repair_rewrites_a_bad_block_from_another_member():
    """A block failing its checksum on the member read is read from another member, written
    back to the bad one and counted; the read returns the good data."""
    good = [_Member(64 << 10, 0x5A) for _ in range(2)]
    bad = _Member(64 << 10, 0x5A, bad={3})
    bad.data[3 * 4096 : 3 * 4096 + 10] = b"rotrotrot!"  # what the disk holds there
    v = _repair_vol(bad, *good)
    assert await v.read(2 * 4096, 3 * 4096) == b"\x5a" * 3 * 4096
    assert bad.writes == [(3 * 4096, b"\x5a" * 4096)]  # only the bad block is rewritten
    assert bad.bad == set() and bad.data == good[0].data
    assert v.integrity() == {"checksum_errors": 1, "blocks_repaired": 1,
                             "unrepaired_blocks": 0, "unrepaired_offsets": []}  # fmt: skip
    assert not v.degraded()
    assert all(not m.writes for m in good)


async def test_read_repair_of_a_split_read():
    """A large read served by every member in parallel: the part on the member with bad blocks
    is repaired and read again; the whole buffer is right. The next read rotates the parts, so
    the bad block in another part of that member is found then."""
    size = 1 << 20
    members = [_Member(size, 0x33) for _ in range(3)]
    for m in members:
        m.data[:] = bytes(range(256)) * (size // 256)
    members[1].bad = {100, 101, 200}
    v = _repair_vol(*members)
    assert await v.read(0, size) == members[0].data  # parts: blocks 0-85, 86-171, 172-255
    st = v.integrity()
    assert st["checksum_errors"] == 2 and st["blocks_repaired"] == 2, st
    assert members[1].bad == {200}  # in the part another member served
    assert await v.read(0, size) == members[0].data
    st = v.integrity()
    assert st["checksum_errors"] == 3 and st["blocks_repaired"] == 3, st
    assert members[1].bad == set() and members[1].data == members[0].data


async def test_no_good_copy_anywhere_is_a_medium_error_at_the_first_lost_block():
    """Bad on every member: VolumeMediumError naming the first block nobody has good; blocks
    of the same run that another member has good are still repaired; the volume is degraded
    with the lost block until a write of the whole block replaces it."""
    from jiva_engine.volume import VolumeMediumError

    members = [_Member(64 << 10, 0x11, bad={5}) for _ in range(3)]
    members[0].bad.add(4)  # block 4: bad on the first member only
    v = _repair_vol(*members)
    with pytest.raises(VolumeMediumError) as e:
        await v.read(4 * 4096, 2 * 4096)
    assert e.value.offset == 5 * 4096
    assert members[0].bad == {5}  # block 4 was repaired from another member
    st = v.integrity()
    assert st["unrepaired_blocks"] == 1 and st["unrepaired_offsets"] == [5 * 4096], st
    assert st["blocks_repaired"] == 1 and v.degraded()
    assert all(not m.writes or m.writes == [(4 * 4096, b"\x11" * 4096)] for m in members)
    assert await v.read(0, 4 * 4096) == b"\x11" * 4 * 4096  # other blocks still read
    with pytest.raises(VolumeMediumError) as e:  # a read starting inside the block names
        await v.read(5 * 4096 + 512, 1024)  # its own first byte (a sense LBA in the command)
    assert e.value.offset == 5 * 4096 + 512
    v.repairer.forget(5 * 4096, 512)  # part of the block written: still bad
    assert v.integrity()["unrepaired_offsets"] == [5 * 4096]
    v.repairer.forget(4 * 4096, 3 * 4096)  # a write over the whole block clears it
    assert v.integrity()["unrepaired_blocks"] == 0 and not v.degraded()


@pytest.mark.parametrize("vec", [None, [(0, 8192), (12288, 8192), (32768, 4096)]])
async def test_a_rebuild_copies_a_block_lost_everywhere_as_bad(vec):
    """read_source: a block bad on the source and on every other member reads as zeroes and is
    returned as lost (the copy poisons it on the target); the rest of the data is the source's."""
    from jiva_engine.controller.rebuild import read_source, subtract

    src, other = (_Member(64 << 10, 0x2C, bad={3}) for _ in range(2))
    src.data[:] = bytes(range(256)) * 256
    v = _repair_vol(src, other)
    p_src, p_other = v.coord.replicas()
    ranges = vec or [(0, 8 * 4096)]
    data, lost = await read_source(p_src, [], 0, 8 * 4096, vec, 1, v.repairer)
    assert lost == [(3 * 4096, 4096)]
    want = b"".join(bytes(src.data[o : o + n]) for o, n in ranges)
    at = {o: sum(n for a, n in ranges if a < o) for o, _ in ranges}[12288 if vec else 0]
    off3 = at + (3 * 4096 - (12288 if vec else 0))
    assert data[off3 : off3 + 4096] == bytes(4096)
    assert data[:off3] == want[:off3] and data[off3 + 4096 :] == want[off3 + 4096 :]
    assert v.integrity()["unrepaired_offsets"] == [3 * 4096] and p_other is not p_src
    assert subtract([(0, 10), (20, 10)], [(5, 20)]) == [(0, 5), (25, 5)]
