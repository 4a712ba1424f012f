"""Rebuild (docs/ENGINE.md rule 6): what a returning replica must copy, and copying it.

Planning is pure (`plan_copy`); the copy runs a few range-locked spans at once, batches small
change-map runs into READV/WRITEV, paces itself from foreground latency (pacing.Pacer: smaller
copies at a lower rate while foreground I/O suffers, full speed when none runs) under
`--rebuild-rate` when one is set, and hands the finished replica to the coordinator, which adds
it to the membership under a new view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from jiva_engine.controller.grow import fit
from jiva_engine.controller.pacing import (
    PacedThrottle,
    Pacer,
    RateMeter,
    Throttle,
    eta_seconds,
)
from jiva_engine.controller.peers import ERR, RW, WO, Peer
from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.controller.snapshots import snapshot_ids
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import BadBlocks, ReplicaError, ReplicaUnavailable
from jiva_engine.protocol.voting import epoch_text
from jiva_engine.volume import VolumeFenced, VolumeMediumError

if TYPE_CHECKING:
    from jiva_engine.controller.coordinator import Coordinator
    from jiva_engine.controller.repair import Repairer

log = logging.getLogger(__name__)

LOST_BLOCK = 4096  # the unit read repair records lost blocks in
REBUILD_PARALLEL = 4  # spans copied at once by one rebuild
REBUILD_SPAN = 8  # adjacent regions copied as one span (one write-intent update on the target)
SMALL_COPY = 256 << 10  # spans below this are batched into one READV/WRITEV (no EXTENTS)
VEC_BYTES = 4 << 20  # data of one READV/WRITEV batch
VEC_RANGES = 1024  # ranges in one batch
REBUILD_SYNC_EVERY = 64 << 20  # copied bytes between background flushes of the target
SNAP_WINDOW = 1 << 30  # bytes of volume per SNAP_EXTENTS question when copying a snapshot


def region_extent(r: int, region_size: int, size: int) -> tuple[int, int]:
    """Byte extent of region `r` (the last one may be short)."""
    off = r * region_size
    return off, max(0, min(region_size, size - off))


def plan_copy(
    replica_id: str | None,
    rmeta: dict[str, Any],
    rdirty: dict[str, Any],
    sdm: dict[str, Any],
    region_size: int,
    size: int,
) -> tuple[str, list[tuple[int, int]] | None]:
    """What a returning replica needs: (kind, sorted merged byte extents, or None for full).

    Incremental when the replica has data (not new, not interrupted mid-rebuild) and the source
    has a change map started when this replica was removed: a map that lists its id among the
    `excluded` and began after the last view that named the replica a member (`member_epoch`;
    maps of the older format, with no list, are usable when they began no later than the
    replica's epoch + 1). The newest such map, plus the replica's own dirty regions. Change maps
    come as byte runs; a replica of the older format answers region numbers, which are widened to
    regions.
    """
    r_view = int(rmeta.get("member_epoch", rmeta.get("view_epoch", rmeta.get("epoch"))) or 0)
    r_epoch = int(rmeta.get("epoch") or 0)
    if (
        r_view <= 0
        or rmeta.get("rebuilding")
        or int(sdm.get("region_size") or 0) != region_size
        or int(rdirty.get("region_size") or region_size) != region_size
    ):
        return "full", None
    missed = {int(e): runs for e, runs in (sdm.get("missed") or {}).items()}
    excluded = {int(e): ids for e, ids in (sdm.get("excluded") or {}).items()}
    usable = []
    for e in missed:
        ids = excluded.get(e)
        if ids is None:
            if e <= r_epoch + 1:
                usable.append(e)
        elif replica_id in ids and e > r_view:
            usable.append(e)
    if not usable:
        return "full", None
    since = max(usable)
    ext: list[tuple[int, int]] = []
    for x in missed[since]:
        if isinstance(x, int):  # region number (older replica)
            ext.append(region_extent(x, region_size, size))
        else:
            ext.append((int(x[0]), int(x[1])))
    ext.extend(region_extent(r, region_size, size) for r in rdirty.get("dirty") or [])
    return f"incremental since epoch {epoch_text(since)}", merge(ext, size)


async def read_source(
    src: Peer,
    dsts: list[Peer],
    off: int,
    ln: int,
    vec: list[tuple[int, int]] | None,
    epoch: int,
    repair: Repairer | None,
) -> tuple[Any, list[tuple[int, int]]]:
    """Read what a copy sends (`vec` ranges, or [off, off+ln)) from `src`, which checks every
    block, and the block runs among them that have no good copy on any member.

    Blocks failing their checksum are never copied: with `repair` they are first rewritten on
    the source from another current member (not a target; the caller holds the range lock) and
    read again; blocks no member has good read as zeroes here and are returned as lost, for the
    caller to write to the targets as poisoned (failing their checksum there too, so every
    replica answers them alike and the rebuild completes). Without `repair`, BadBlocks."""
    ranges = vec if vec is not None else [(off, ln)]

    def read(rs: list[tuple[int, int]]) -> Any:
        return src.link.read(rs[0][0], rs[0][1], epoch) if len(rs) == 1 else src.link.readv(
            rs, epoch)  # fmt: skip

    try:
        return await read(ranges), []
    except BadBlocks as e:
        if repair is None:
            raise
        others = [p for p in repair.coord.rw_peers() if p is not src and p not in dsts]
        try:
            await repair.repair(src, e.runs, locked=True, sources=others)
            return await read(ranges), []
        except VolumeMediumError:
            pass
    lost = sorted(o for o in repair.unrepaired if any(a <= o < a + n for a, n in ranges))
    log.error("volume %s: %d block(s) have no good copy on any replica; copied to %s as bad",
              repair.coord.name, len(lost), ", ".join(d.address for d in dsts))  # fmt: skip
    good = subtract(ranges, [(o, LOST_BLOCK) for o in lost])
    data = bytearray(sum(n for _, n in ranges))
    if good:
        got = await read(good)
        pos = {}  # where each good piece goes in the concatenated layout of `ranges`
        at = 0
        for a, n in ranges:
            pos[a] = at
            at += n
        view = memoryview(got)
        used = 0
        for a, n in good:
            base = max(r for r in pos if r <= a)
            data[pos[base] + a - base : pos[base] + a - base + n] = view[used : used + n]
            used += n
    runs = [(o, min(LOST_BLOCK, max(a + n for a, n in ranges) - o)) for o in lost]
    return data, runs


def subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint `ranges` outside `holes`."""
    out = []
    for a, n in ranges:
        pos, end = a, a + n
        for h, hn in sorted(holes):
            if h + hn <= pos or h >= end:
                continue
            if h > pos:
                out.append((pos, h - pos))
            pos = max(pos, h + hn)
        if pos < end:
            out.append((pos, end - pos))
    return out


def poison(
    dsts: list[Peer], lost: list[tuple[int, int]], epoch: int, rebuild: bool
) -> list[Awaitable[Any]]:
    """Writes recording `lost` blocks as failing their checksum on every target (queued after
    the copy's data on each connection)."""
    return [
        d.link.write(o, bytes(n), epoch, rebuild=rebuild, poison=True) for o, n in lost
        for d in dsts
    ]  # fmt: skip


async def copy_range(
    ranges: RangeLock,
    src: Peer,
    dsts: list[Peer],
    off: int,
    ln: int,
    epoch: int,
    rebuild: bool,
    past_parked: bool = False,
    repair: Repairer | None = None,
    hole: str = "unmap",
    newest: str | None = None,
) -> int:
    """Copy [off, off+ln) from src to dsts under the range lock; holes become holes.

    One EXTENTS, then every request at once: the data in READV/WRITEV batches and an UNMAP per
    hole, so the copy costs a few round trips whatever the layout (random 4K writes leave
    thousands of extents in a span; one round trip each made a 9 MiB resync take 14 s).

    `hole` says what a hole of the source's head becomes on the targets (snapshots.hole_copy):
    "unmap" (no snapshots anywhere), "drop" (the same snapshots on both sides: the target's
    head keeps nothing there and reads through to its layers, as the source does; an UNMAP
    would store zeroes over them), or "data" (no EXTENTS: the whole range is copied as data,
    read through the source's layers). With "drop" and `newest` (the newest snapshot's id, the
    same on both sides), only the blocks the source's head holds are copied (SNAP_EXTENTS since
    that snapshot): EXTENTS answers the whole view's allocation, layers included, and copying
    that would duplicate every snapshot's data into the target's head.

    Source blocks failing their checksum are repaired first or fail the copy (read_source)."""
    end = off + ln
    async with ranges.hold(off, ln, past_parked=past_parked):
        if hole == "data":
            data = [(off, ln)] if ln > 0 else []
        elif hole == "drop" and newest is not None:
            data = clip(await src.link.snap_extents(off, ln, None, newest, epoch), off, end)
        else:
            data = clip(await src.link.extents(off, ln), off, end)
        gaps = holes(data, off, end)
        work: list[Awaitable[Any]] = [
            d.link.drop(h, n, epoch) if hole == "drop" else d.link.unmap(h, n, epoch)
            for h, n in gaps for d in dsts
        ]  # fmt: skip

        async def copy(o: int, n: int, vec: list[tuple[int, int]] | None) -> int:
            buf, lost = await read_source(src, dsts, o, n, vec, epoch, repair)
            if vec is None:
                sent = [d.link.write(o, buf, epoch, rebuild=rebuild) for d in dsts]
            else:
                sent = [d.link.writev(vec, buf, epoch, rebuild=rebuild) for d in dsts]
            await wait_all(sent + poison(dsts, lost, epoch, rebuild))
            return len(buf)

        copies = [copy(o, n, vec) for o, n, vec in batches(split(data, VEC_BYTES), VEC_BYTES)]
        results = await asyncio.gather(*work, *copies, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return sum(results[len(work) :])  # type: ignore[arg-type]  # (the copies' byte counts)


class Rebuilder:
    """Brings non-members up to date as WO, then asks the coordinator to add them (rule 6)."""

    def __init__(
        self,
        coord: Coordinator,
        ranges: RangeLock,
        inflight: Callable[[], list[Any]],
        stats: dict[str, float],
        rate: float | None,
        pacer: Pacer | None = None,
    ) -> None:
        self.coord = coord
        self.ranges = ranges
        self.inflight = inflight  # writes in flight: each has `done`, a future
        self.stats = stats
        self.throttle = Throttle(rate)
        self.pacer = pacer if pacer is not None else Pacer(enabled=False)
        self.paced = PacedThrottle(self.pacer)

    async def take(self, nbytes: int) -> None:
        """Wait for the budget of a copy of `nbytes`: the pacer's rate, then --rebuild-rate."""
        await self.paced.take(nbytes)
        await self.throttle.take(nbytes)

    def progressed(self, progress: dict[str, Any], meter: RateMeter, nbytes: int) -> None:
        """Count `nbytes` of a rebuild's scan done; refresh its recent rate and ETA."""
        progress["done"] += nbytes
        meter.add(progress["done"])
        rate = meter.rate()
        progress["rate"] = int(rate)
        progress["eta_seconds"] = eta_seconds(progress["done"], progress["total"], rate)

    async def run(self, m: Peer, rmeta: dict[str, Any]) -> None:
        """Rebuild replica `m` (connected, not a member) and promote it; failures drop it."""
        snaps = getattr(self.coord, "snapshots", None)
        gate = snaps.rebuilding(m) if snaps is not None else contextlib.nullcontext()
        try:
            async with gate:  # no snapshot is created or deleted until it ends (snapshots.py)
                self.pacer.started()
                try:
                    await self._rebuild(m, rmeta)
                finally:
                    self.pacer.finished()
        except asyncio.CancelledError:
            raise
        except VolumeFenced:
            return
        except Exception as e:
            if m.mode in (WO, ERR):  # not yet (or no longer) a member: retried next round
                log.warning("rebuild of %s failed: %s", m.address, e)
                m.mode = ERR
                m.rebuild = None
                m.last_error = f"rebuild failed: {e}"
                await self.coord.drop_client(m)

    async def _rebuild(self, m: Peer, rmeta: dict[str, Any]) -> None:
        coord = self.coord
        t0 = time.monotonic()
        c = m.link
        epoch = coord.mem.epoch
        if m.epoch > epoch:
            # only a newer controller could have raised it: leave this replica alone
            raise ReplicaError(
                wire.STALE_EPOCH,
                f"replica has epoch {m.epoch}, newer than ours ({epoch}); another "
                "controller may own the volume",
            )
        c.epoch = max(c.epoch, m.epoch)  # control ops carry the client's epoch
        rdirty = await c.dirty_map() if int(rmeta.get("view_epoch") or 0) > 0 else {}
        await c.set_mode("WO")  # persisted first: a crash from here on means a full rebuild
        # then raise its epoch so frames still queued from an old connection are refused
        await c.set_meta(**coord.view_fields(coord.mem.view))
        # its snapshots must be the source's before it takes any write: a different list is
        # reset and re-created from the source's layers (a full rebuild follows)
        hole, reset, newest = await self._carry_snapshots(m)
        async with coord.sizing:  # not during a grow: it is grown to the size served first
            await fit(m, coord.size)
            m.mode = WO  # every write issued from now on also goes to this replica
        m.rebuild = {"done": 0, "total": 0}
        m.last_error = None
        for op in self.inflight():  # writes issued before the switch land on the source
            await op.done
        rw = coord.rw_peers()
        if not rw:
            raise ReplicaUnavailable("no current member to rebuild from")
        src = coord.pick(rw)
        sdm = await src.link.dirty_map()
        region, size = coord.region_size, coord.size
        if reset:
            kind, extents = "full (its snapshots differed from the source's)", None
        else:
            kind, extents = plan_copy(m.id, rmeta, rdirty, sdm, region, size)
        if extents is None:
            used: set[int] = set()
            for eo, el in [*await src.link.extents(0, size), *await c.extents(0, size)]:
                used.update(range(eo // region, (eo + el - 1) // region + 1))
            extents = merge([region_extent(r, region, size) for r in used], size)
        total = sum(ln for _, ln in extents)
        progress = m.rebuild = {"done": 0, "total": total, "rate": 0, "eta_seconds": None}
        log.info(
            "rebuilding %s from %s: %s, %d extents, %d bytes",
            m.address, src.address, kind, len(extents), total,
        )  # fmt: skip
        copied = await self._copy_all(src, m, extents, progress, hole, newest)
        await c.flush(coord.mem.epoch)  # everything copied is durable before it is a member
        m.last_rebuild = {
            "kind": kind.split()[0],
            "detail": kind,
            "source": src.address,
            "regions": len(extents),
            "copied": copied,
            "scanned": total,
            "seconds": round(time.monotonic() - t0, 3),
        }
        if reset is not None:
            m.last_rebuild["snapshots"] = reset
        await coord.promote(m)
        self.stats["rebuilds_done"] += 1

    async def _carry_snapshots(self, m: Peer) -> tuple[str, int | None, str | None]:
        """Give the returning replica `m` (WO on its side, not yet taking writes) the current
        members' snapshots: when its snapshot ids differ from theirs, SNAP_RESET it and
        re-create every layer, oldest first (snapshot views are frozen: no live write is
        involved). Returns how its head's holes are copied (hole_copy), the number of snapshots
        re-created when it was reset (None otherwise), and the newest snapshot's id."""
        coord = self.coord
        mine = snapshot_ids(m.info)
        rw = coord.rw_peers()
        if not rw:
            raise ReplicaUnavailable("no current member to rebuild from")
        src = coord.pick(rw)
        theirs = snapshot_ids(src.info)
        snaps: list[dict[str, Any]] = []
        if mine is not None or theirs is not None:
            try:
                snaps = await src.link.snap_list()
            except ReplicaError as e:
                if e.status != wire.UNKNOWN_OP:
                    raise
            theirs = [str(s["id"]) for s in snaps]
        if mine is None:
            if snaps:
                raise ReplicaUnavailable(
                    f"replica {m.address} does not support snapshots, and the volume has "
                    f"{len(snaps)}: upgrade it"
                )
            return "unmap", None, None
        newest = theirs[-1] if theirs else None
        if mine == theirs:
            return "drop", None, newest
        epoch = coord.mem.epoch
        log.info("replica %s holds snapshots %s, the members %s: resetting it and copying "
                 "%d snapshot(s) from %s", m.address, mine, theirs, len(snaps),
                 src.address)  # fmt: skip
        await m.link.snap_reset(epoch)
        total = 0
        plans = []
        prev: str | None = None
        for snap in snaps:
            ssize = int(snap.get("size") or coord.size)
            runs: list[tuple[int, int]] = []
            for w in range(0, ssize, SNAP_WINDOW):  # bounded answers (and replica work)
                n = min(SNAP_WINDOW, ssize - w)
                runs += clip(await src.link.snap_extents(w, n, snap["id"], prev, epoch), w, w + n)
            plans.append((snap, ssize, runs))
            total += sum(n for _, n in runs)
            prev = snap["id"]
        progress = m.rebuild = {"done": 0, "total": total, "rate": 0, "eta_seconds": None}
        meter = RateMeter()
        m.last_error = f"rebuilding: copying {len(snaps)} snapshot(s) before it takes writes"
        gate = asyncio.Semaphore(REBUILD_PARALLEL)

        async def one(sid: str, o: int, n: int) -> None:
            async with gate:
                await self.take(n)
                data = await self._snap_read(src, sid, o, n)
                await m.link.write(o, data, coord.mem.epoch, rebuild=True)
                self.progressed(progress, meter, n)
                self.pacer.copied(n)
                self.stats["rebuild_bytes_copied"] += n

        for snap, ssize, runs in plans:
            if m.size < ssize:
                await fit(m, ssize)  # as large as the volume was when it was taken
            sid = str(snap["id"])
            await wait_all(
                [asyncio.ensure_future(one(sid, o, n)) for o, n in split(runs, VEC_BYTES)]
            )
            rec = {k: snap[k] for k in ("id", "name", "created")}
            got = await m.link.snapshot(rec, coord.mem.epoch)
            if snap["id"] not in [str(s.get("id")) for s in got.get("snapshots") or []]:
                raise ReplicaError(wire.EIO, f"snapshot {snap['name']} not taken on {m.address}")
        m.info = {**m.info, "snapshots": [s["id"] for s in snaps]}
        return "drop", len(snaps), newest

    async def _snap_read(self, src: Peer, sid: str, off: int, ln: int) -> Any:
        """A snapshot's data from `src`; blocks failing their checksum there are read from
        another member (a layer is never repaired in place). ReplicaError naming the blocks
        when no member has them good: the rebuild fails (and is retried)."""
        epoch = self.coord.mem.epoch
        try:
            return await src.link.snap_read(sid, off, ln, epoch)
        except BadBlocks as e:
            bad = clip(e.runs, off, off + ln)
            if not bad:
                raise
        log.error("snapshot %s: blocks %s fail their checksum on %s; reading them elsewhere",
                  sid, bad, src.address)  # fmt: skip
        buf = bytearray(ln)
        for a, n in subtract([(off, ln)], bad):
            buf[a - off : a - off + n] = await src.link.snap_read(sid, a, n, epoch)
        others = [p for p in self.coord.rw_peers() if p is not src]
        for a, n in bad:
            for p in others:
                try:
                    buf[a - off : a - off + n] = await p.link.snap_read(sid, a, n, epoch)
                    break
                except BadBlocks:
                    continue
            else:
                raise ReplicaError(
                    wire.EIO,
                    f"snapshot {sid}: bytes {a}+{n} fail their checksum on every member; "
                    "the rebuild cannot copy them",
                )
        return buf

    async def _copy_all(
        self,
        src: Peer,
        m: Peer,
        extents: list[tuple[int, int]],
        progress: dict[str, Any],
        hole: str = "unmap",
        newest: str | None = None,
    ) -> int:
        """Copy the extents, REBUILD_PARALLEL spans at once; flush the target every
        REBUILD_SYNC_EVERY bytes in the background. Returns the bytes copied."""
        coord = self.coord
        c = m.link
        region = coord.region_size
        span = REBUILD_SPAN * region
        if self.throttle.rate:  # keep the pacing smooth: at most ~1/4 s of budget per span
            span = max(region, min(span, int(self.throttle.rate / 4)))
        todo = self._chunks(batches(split(extents, span), min(span, VEC_BYTES)))
        meter = RateMeter()
        failure: list[BaseException] = []
        copied = 0
        unsynced = 0
        syncing: asyncio.Future | None = None
        syncs: list[asyncio.Future] = []

        async def copier() -> None:  # a few spans in flight at once, each range-locked
            nonlocal copied, unsynced, syncing
            for off, ln, ranges in todo:
                if failure:
                    return
                if m.mode != WO or src.mode != RW or not coord.serving():
                    failure.append(ReplicaUnavailable("rebuild interrupted"))
                    return
                size = ln if ranges is None else sum(n for _, n in ranges)
                await self.take(size)  # paced, under --rebuild-rate (shared by every rebuild)
                try:
                    n = await self._copy_checked(src, m, off, ln, ranges, hole, newest)
                except Exception as e:
                    failure.append(e)
                    return
                copied += n
                self.stats["rebuild_bytes_copied"] += n
                self.pacer.copied(n)
                self.progressed(progress, meter, size)
                # start the write-back of what is copied so far while copying goes on, so the
                # final flush (before it becomes a member) only has the tail left
                unsynced += n
                if unsynced >= REBUILD_SYNC_EVERY and (syncing is None or syncing.done()):
                    unsynced = 0
                    syncing = c.flush(coord.mem.epoch)
                    syncs.append(syncing)

        await asyncio.gather(*(copier() for _ in range(REBUILD_PARALLEL)))
        sync_res = await asyncio.gather(*syncs, return_exceptions=True)
        if failure:
            raise failure[0]
        for r in sync_res:
            if isinstance(r, BaseException):
                raise r
        return copied

    def _chunks(
        self, items: list[tuple[int, int, list | None]]
    ) -> Iterator[tuple[int, int, list | None]]:
        """The copy work items, a large span cut into the pacer's chunk size as each is taken
        (while foreground I/O suffers, short copies: a write waits behind one for less)."""
        for off, ln, ranges in items:
            if ranges is not None:
                yield off, ln, ranges
                continue
            pos, end = off, off + ln
            while pos < end:
                n = min(end - pos, self.pacer.chunk(ln))
                yield pos, n, None
                pos += n

    async def _copy_checked(
        self,
        src: Peer,
        dst: Peer,
        off: int,
        ln: int,
        ranges: list | None = None,
        hole: str = "unmap",
        newest: str | None = None,
    ) -> int:
        """One rebuild copy (a span, or a batch of small `ranges` inside [off, off+ln)); a
        failing source is ejected (rule 3), a failing target drops out."""
        epoch = self.coord.mem.epoch
        try:
            if ranges is not None:
                async with self.ranges.hold(off, ln):
                    data, lost = await read_source(
                        src, [dst], off, ln, ranges, epoch, self.coord.repairer
                    )
                    sent = dst.link.writev(ranges, data, epoch, rebuild=True)
                    await wait_all([sent, *poison([dst], lost, epoch, True)])
                return len(data)
            return await copy_range(
                self.ranges, src, [dst], off, ln, epoch, rebuild=True,
                repair=self.coord.repairer, hole=hole, newest=newest,
            )  # fmt: skip
        except (ReplicaError, ReplicaUnavailable) as e:
            # find out which side failed: the source's failure is a membership change
            if src.client is None or not src.client.connected:
                await self.coord.failures([(src, e)])
            raise

    async def clear_settled(self, m: Peer) -> None:
        """Clear a rebuilt member's dirty bits (e.g. kept after its old connection dropped).

        Only regions with no write in flight are cleared: every write to them was acknowledged by
        every member, and a write issued later reaches the replica after this CLEAR_DIRTY.
        """
        region, size = self.coord.region_size, self.coord.size
        try:
            dm = await m.link.dirty_map()
            regions = [
                r
                for r in dm.get("dirty") or []
                if not self.ranges.busy(*region_extent(r, region, size))
            ]
            if regions:
                await m.link.clear_dirty(regions)  # queued before any later write
        except (ReplicaError, ReplicaUnavailable, AttributeError) as e:
            log.info("clearing dirty bits of %s: %s", m.address, e)


def merge(ext: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Sort byte extents, clip them to the volume and merge overlapping or adjacent ones."""
    out: list[list[int]] = []
    for off, ln in sorted(ext):
        end = min(off + ln, size)
        if end <= off:
            continue
        if out and off <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([off, end])
    return [(a, b - a) for a, b in out]


def batches(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int, list | None]]:
    """Copy work items (off, len, ranges): big spans alone (ranges None), runs of small ones
    grouped into one READV/WRITEV batch of <= `limit` bytes (off, len = the range they cover)."""
    out: list[tuple[int, int, list | None]] = []
    batch: list[tuple[int, int]] = []
    size = 0

    def close() -> None:
        nonlocal batch, size
        if batch:
            a = batch[0][0]
            out.append((a, batch[-1][0] + batch[-1][1] - a, batch))
            batch, size = [], 0

    for off, ln in spans:
        if ln >= SMALL_COPY:
            close()
            out.append((off, ln, None))
            continue
        if size + ln > limit or len(batch) >= VEC_RANGES:
            close()
        batch.append((off, ln))
        size += ln
    close()
    return out


def split(ext: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Cut extents into copy spans of at most `limit` bytes."""
    return [(off + i, min(limit, ln - i)) for off, ln in ext for i in range(0, ln, limit)]


async def wait_all(futs: list[Awaitable[Any]]) -> None:
    """Wait for every future; raise the first failure (after all are done, none left unread)."""
    for r in await asyncio.gather(*futs, return_exceptions=True):
        if isinstance(r, BaseException):
            raise r


def holes(ext: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The gaps of [start, end) that sorted, clipped extents `ext` leave."""
    out, pos = [], start
    for eo, el in [*ext, (end, 0)]:
        if eo > pos:
            out.append((pos, eo - pos))
        pos = max(pos, eo + el)
    return out


def clip(ext: list, start: int, end: int) -> list[tuple[int, int]]:
    """Sorted extents clipped to [start, end)."""
    out = []
    for eo, el in sorted((int(a), int(b)) for a, b in ext or []):
        a, b = max(eo, start), min(eo + el, end)
        if b > a:
            out.append((a, b - a))
    return out
