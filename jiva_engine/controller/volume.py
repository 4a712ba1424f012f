"""The replicated volume: the block-volume interface over replicas (docs/ENGINE.md).

This file is the I/O path: writes go to every member (and every replica being rebuilt) in one
step and are acknowledged once every member of a committed view has them; reads come from the
current members. Who the members are, and when I/O may proceed, is the coordinator's business
(coordinator.py, deciding with membership.py); rebuilding returning replicas is rebuild.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jiva_engine.buffers import POOL
from jiva_engine.controller import transfer
from jiva_engine.controller.backend import Connector, tcp_connector
from jiva_engine.controller.coordinator import Coordinator
from jiva_engine.controller.grow import Grower
from jiva_engine.controller.lag import LagPolicy
from jiva_engine.controller.membership import Phase, Policy
from jiva_engine.controller.pacing import Pacer
from jiva_engine.controller.peers import ERR, RW, WO, Peer
from jiva_engine.controller.qos import Limiter
from jiva_engine.controller.rangelock import Lease, RangeLock
from jiva_engine.controller.rebuild import Rebuilder, clip
from jiva_engine.controller.repair import Repairer
from jiva_engine.controller.scrub import Scrubber
from jiva_engine.controller.snapshots import DEFAULT_LIMIT, Snapshots
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import (
    BadBlocks,
    ReplicaError,
    ReplicaUnavailable,
    flush_all,
    unmap_all,
    write_all,
)
from jiva_engine.protocol.voting import term_of, version_of
from jiva_engine.util import parse_hostport
from jiva_engine.volume import (
    OutOfRange,
    ResizeCallback,
    VolumeFenced,
    VolumeIOError,
    VolumeMediumError,
    VolumeNotReady,
    check_range,
)

SERVING, WAITING = Phase.SERVING.value, Phase.WAITING.value
FENCED, NO_QUORUM = Phase.FENCED.value, Phase.NO_QUORUM.value
MAX_IO = wire.MAX_IO  # largest READ/WRITE in one frame; bigger requests are split
MAX_REPAIRS = 2  # read repairs of one member per read before the read goes elsewhere
SECTOR = wire.SECTOR
SPLIT_READ = 128 << 10  # reads from this size on are served by several members in parallel
SPLIT_PART = 64 << 10  # smallest part of a split read
DEFAULT_HOLD = 15.0  # seconds I/O waits for a quorum before it fails with NOT READY


class _Op:
    """One replicated write/unmap in flight (kept so it can be re-sent after a view change)."""

    __slots__ = ("kind", "offset", "data", "length", "fua", "on", "done", "lease")

    def __init__(
        self, kind: str, offset: int, data: Any, length: int, fua: bool, lease: Lease | None = None
    ) -> None:
        self.kind = kind
        self.lease = lease  # its range lock (None for a flush)
        self.offset = offset
        self.data = data
        self.length = length
        self.fua = fua
        self.on: set[str] = set()  # voter ids that hold it
        self.done: asyncio.Future[None] | None = None


class Volume:
    """A replicated block volume (jiva_engine.volume.BlockVolume) over `jiva replica` processes.

    Call `await start()`; the volume then connects to its voters in the background and serves
    once the quorum rules allow it (see `state` / `reason` while it waits).
    """

    block_size = 512

    def __init__(
        self,
        name: str,
        replicas: list[str],
        *,
        witnesses: list[str] | tuple[str, ...] = (),
        size: int | None = None,
        replica_timeout: float = 3.0,
        slow_replica: LagPolicy | None = None,  # lag ejection thresholds (lag.py)
        secret: str | bytes | tuple[str | bytes, ...] | None = None,
        rebuild_rate: float | None = None,
        rebuild_pacing: bool | Pacer = True,
        scrub_rate: float | None = None,
        scrub_interval: float | None = None,
        retry_interval: float = 1.0,
        quorum: str | Policy = Policy.MAJORITY,
        hold: float = DEFAULT_HOLD,
        max_snapshots: int = DEFAULT_LIMIT,
        max_iops: int | None = None,
        max_mbps: float | None = None,
        connector: Connector = tcp_connector,
    ) -> None:
        self.name = name
        self.qos = Limiter(max_iops, max_mbps)  # initiators' I/O only (qos.py)
        self.hold = hold
        self.ranges = RangeLock()
        self._inflight: dict[int, _Op] = {}
        self._op_ids = itertools.count()
        self._rr = itertools.count()
        self.coord = Coordinator(
            name,
            replicas,
            witnesses,
            ranges=self.ranges,
            resend=self._resend,
            size=size,
            policy=Policy(quorum),
            replica_timeout=replica_timeout,
            lag=slow_replica,
            secret=secret,
            retry_interval=retry_interval,
            connector=connector,
        )
        self.io_stats: dict[str, float] = {
            "reads": 0,
            "writes": 0,
            "flushes": 0,
            "unmaps": 0,
            "read_bytes": 0,
            "write_bytes": 0,
            "read_errors": 0,
            "write_errors": 0,
            "read_retries": 0,
            "read_seconds": 0.0,
            "write_seconds": 0.0,
            "rebuilds_done": 0,
            "rebuild_bytes_copied": 0,
            "held_seconds": 0.0,
        }
        self.repairer = Repairer(self.coord, self.ranges, self.io_stats)
        # rebuilds paced from foreground latency (a Pacer given: tests tune it)
        self.pacer = rebuild_pacing if isinstance(rebuild_pacing, Pacer) else Pacer(rebuild_pacing)
        self.coord.repairer = self.repairer
        self.coord.rebuilder = Rebuilder(
            self.coord, self.ranges, lambda: list(self._inflight.values()), self.io_stats,
            rebuild_rate, self.pacer,
        )  # fmt: skip
        self.grower = Grower(self.coord, self._admit)
        self.scrubber = Scrubber(self, scrub_rate, scrub_interval)
        self.snapshots = Snapshots(self.coord, self.ranges, self._admit, max_snapshots)
        self.coord.snapshots = self.snapshots
        self._task: asyncio.Task | None = None
        self.started_at = time.time()
        self.transfers = transfer.Transfers(self)  # snapshot export, revert, import
        self.snapshots.in_use = self._snapshot_in_use

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the background manager (connects, claims, serves, reconnects, rebuilds)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.coord.manage())
            self.scrubber.begin()

    async def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until the volume serves I/O (TimeoutError with the reason otherwise)."""
        deadline = time.monotonic() + timeout
        while self.state != SERVING:
            if self.state == FENCED:
                raise VolumeFenced(self.reason)
            if time.monotonic() > deadline:
                raise TimeoutError(f"volume {self.name} not serving: {self.reason}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop background work and close every voter connection (data stays on the replicas)."""
        await self.scrubber.close()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.coord.close()

    def ready(self) -> bool:
        """True while the volume takes I/O: serving, or holding it while it starts or has no
        quorum (held commands wait up to `hold` seconds, they are not refused at the door);
        False once fenced, and while the size is not known yet."""
        return self.coord.mem.phase is not Phase.FENCED and self.size > 0

    def _snapshot_in_use(self, name: str) -> str | None:
        """Why snapshot `name` may not be deleted now: a revert to it runs (None otherwise)."""
        t = self.transfers.current
        if t is not None and t.running and t.kind == "revert" and t.source == name:
            return "a revert to it runs"
        return None

    # ------------------------------------------------------------------ views
    @property
    def state(self) -> str:
        return self.coord.mem.phase.value

    @property
    def reason(self) -> str:
        return self.coord.mem.reason

    @property
    def epoch(self) -> int:
        return self.coord.mem.epoch

    @property
    def size(self) -> int:
        """Bytes served: requests past it are refused (OutOfRange) until a grow raises it."""
        return self.coord.size

    def on_resize(self, callback: ResizeCallback) -> Callable[[], None]:
        """Call `callback(old, new)` after each grow (BlockVolume; the SCSI unit attention)."""
        return self.coord.resized.add(callback)

    @property
    def members(self) -> dict[str, Peer]:
        """Every replica the controller knows, by address."""
        return {p.address: p for p in self.coord.replicas()}

    @property
    def stats(self) -> dict[str, float]:
        return {**self.io_stats, **self.coord.stats}

    def rw_members(self) -> list[Peer]:
        """Current members (RW, in the membership)."""
        return self.coord.rw_peers()

    def membership(self) -> list[str]:
        """Addresses of the current membership."""
        return [p.address for p in self.rw_members()]

    def degraded(self) -> bool:
        """True unless every known replica is a current member and every witness answers."""
        return (
            self.state != SERVING
            or any(p.mode != RW for p in self.coord.replicas())
            or any(not p.connected for p in self.coord.witnesses())
            or bool(self.repairer.unrepaired)
        )

    def status(self) -> dict[str, Any]:
        """Status JSON (DESIGN.md §5) without the portal/iqn, which the API adds."""
        return {
            "name": self.name,
            "size": self.size,
            "state": self.state,
            "reason": self.reason,
            "epoch": self.epoch,
            "term": term_of(self.epoch),
            "view": version_of(self.epoch),
            "replicas": [p.view() for p in self.coord.replicas()],
            "witnesses": [p.view() for p in self.coord.witnesses()],
            "quorum": self.coord.quorum(),
            "degraded": self.degraded(),
            "integrity": self.integrity(),
            "transfer": self.transfers.status(),
            "scrub": self.scrubber.status(),
            "snapshots": self.snapshots.status(),
            "qos": self.qos.status(),
            "rebuild_pacing": self.pacer.status(),
        }

    def integrity(self) -> dict[str, Any]:
        """Checksum findings: bad block copies found and repaired, blocks with no good copy."""
        st = self.io_stats
        bad = sorted(self.repairer.unrepaired)
        return {
            "checksum_errors": int(st["checksum_errors"]),
            "blocks_repaired": int(st["blocks_repaired"]),
            "unrepaired_blocks": len(bad),
            "unrepaired_offsets": bad[:32],
        }

    # ------------------------------------------------------------------ admission (Q3, Q8)
    async def _admit(self, reading: bool) -> None:
        """Return when I/O may proceed: the volume serves with a committed view (and, for a
        read, a valid read lease). While the controller starts (claims the volume, resyncs,
        waits out the previous lease), a view change runs or the quorum is lost, wait up to
        `hold` seconds, then fail with NOT READY; a fenced volume fails at once."""
        coord = self.coord
        if coord.open and (not reading or coord.lease_until > time.monotonic()):
            return
        t0 = time.monotonic()
        deadline = t0 + self.hold
        try:
            while True:
                phase = coord.mem.phase
                if phase is Phase.FENCED:
                    raise VolumeFenced(coord.mem.reason)
                if coord.open and (not reading or coord.lease_until > time.monotonic()):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    why = coord.mem.reason or "waiting for the voters to renew the read lease"
                    raise VolumeNotReady(f"I/O held for {self.hold:g}s: {why}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(coord.changed.wait(), min(left, 0.25))
        finally:
            self.io_stats["held_seconds"] += time.monotonic() - t0

    # ------------------------------------------------------------------ I/O entry points
    def _check(self, offset: int, length: int) -> None:
        check_range(self.size, offset, length)
        if offset % SECTOR or length % SECTOR:
            raise ValueError(f"offset {offset} and length {length} must be multiples of {SECTOR}")

    async def read(
        self, offset: int, length: int, *, qos: bool = True
    ) -> bytes | bytearray | memoryview:
        """Read from one current member, rotating; retry on another if one fails. `qos`
        False: internal traffic, not subject to the volume's QoS limits."""
        await self._admit(True)
        self._check(offset, length)
        if length == 0:
            return b""
        if qos:
            await self.qos.admit(length)
        t0 = time.perf_counter()
        data: bytes | bytearray
        try:
            if length >= SPLIT_READ or length > MAX_IO:
                data = await self._read_split(offset, length)
            else:
                data = await self._read_one(offset, length)
        except VolumeMediumError as e:
            if e.offset >= offset:
                raise
            # the lost 4 KiB block begins before the read (a read of part of it): name the
            # read's first byte, not one outside the command (the sense INFORMATION LBA)
            raise VolumeMediumError(offset, str(e)) from None
        st = self.io_stats
        st["reads"] += 1
        st["read_bytes"] += length
        st["read_seconds"] += time.perf_counter() - t0
        self.pacer.observe(time.perf_counter() - t0)
        return data

    async def _read_one(self, offset: int, length: int) -> bytes | bytearray:
        tried: set[str] = set()
        repairs = 0
        while True:
            await self._admit(True)
            rw = [m for m in self.rw_members() if m.address not in tried]
            if not rw:
                self.io_stats["read_errors"] += 1
                raise VolumeIOError(f"read {offset}+{length}: no replica could serve it")
            m = rw[next(self._rr) % len(rw)]
            tried.add(m.address)
            try:
                data = await m.link.read(offset, length, self.epoch)
            except BadBlocks as e:
                # blocks failed their checksum there: rewrite them from a good copy (or raise
                # VolumeMediumError when there is none), then read again from the next member in
                # turn, the repaired one included (after MAX_REPAIRS it is left out)
                await self.repairer.repair(m, e.runs)
                repairs += 1
                if repairs <= MAX_REPAIRS:
                    tried.discard(m.address)
                continue
            except (ReplicaError, ReplicaUnavailable) as e:
                self.io_stats["read_retries"] += 1
                await self.coord.failures([(m, e)])
                continue
            if len(data) != length:
                await self.coord.failures([(m, ReplicaError(wire.EIO, "short read"))])
                continue
            m.reads += 1
            return data

    async def _read_split(self, offset: int, length: int) -> bytearray:
        """A large read cut into ranges served by the RW members in parallel, each received
        straight into its slice of one buffer; a failing member is ejected and its ranges are
        read again from the others."""
        buf = POOL.take(length)  # every range is filled, or the read fails
        POOL.lend(buf)  # reused once the answer to the initiator is sent
        mv = memoryview(buf)
        rw = self.rw_members()
        k = max(1, min(len(rw), length // SPLIT_PART), -(-length // MAX_IO))
        step = -(-length // k)
        step += -step % 4096  # 4 KiB-aligned cuts
        todo = [(i, min(step, length - i)) for i in range(0, length, step)]
        tried: set[str] = set()
        repairs = 0
        while todo:
            await self._admit(True)
            rw = [m for m in self.rw_members() if m.address not in tried]
            if not rw:
                self.io_stats["read_errors"] += 1
                raise VolumeIOError(f"read {offset}+{length}: no replica could serve it")
            start = next(self._rr)
            plan = [(rw[(start + j) % len(rw)], i, n) for j, (i, n) in enumerate(todo)]
            res = await asyncio.gather(
                *(m.link.read_into(offset + i, mv[i : i + n], self.epoch) for m, i, n in plan),
                return_exceptions=True,
            )
            failed: dict[str, tuple[Peer, BaseException]] = {}
            todo = []
            for (m, i, n), r in zip(plan, res, strict=True):
                if isinstance(r, BadBlocks):  # repaired from a good copy, then read again
                    await self.repairer.repair(m, r.runs)
                    repairs += 1
                    if repairs > MAX_REPAIRS * len(plan):
                        tried.add(m.address)
                    todo.append((i, n))
                elif isinstance(r, BaseException):
                    if not isinstance(r, (ReplicaError, ReplicaUnavailable)):
                        raise r
                    failed.setdefault(m.address, (m, r))
                    todo.append((i, n))
                else:
                    m.reads += 1
            if failed:
                self.io_stats["read_retries"] += 1
                tried.update(failed)
                await self.coord.failures(list(failed.values()))
        return buf

    async def write(
        self, offset: int, data: bytes | memoryview, fua: bool = False, *, qos: bool = True
    ) -> None:
        """Write to every member (ordered with overlapping writes); returns once all have it.
        `qos` False: internal traffic (revert, import), not subject to the QoS limits."""
        n = len(data)
        self._check(offset, n)
        if n == 0:
            return
        if qos:  # before the range lock: a throttled write must not hold its range
            await self.qos.admit(n)
        t0 = time.perf_counter()
        # admitted before the range lock: a write held while the controller starts must not
        # hold the range its start-up resynchronisation copies (that waited out the hold)
        await self._admit(False)
        async with self.ranges.hold(offset, n) as lease:
            await self._replicate(_Op("write", offset, data, n, fua, lease))
            self.repairer.forget(offset, n)
        st = self.io_stats
        st["writes"] += 1
        st["write_bytes"] += n
        st["write_seconds"] += time.perf_counter() - t0
        self.pacer.observe(time.perf_counter() - t0)

    async def unmap(self, offset: int, length: int, *, qos: bool = True) -> None:
        """Deallocate a range on every member; it reads back as zeroes. For QoS an unmap is one
        I/O of no bytes (it moves no data); `qos` False: internal traffic, not limited."""
        self._check(offset, length)
        if length == 0:
            return
        if qos:  # before the range lock (see write)
            await self.qos.admit(0)
        await self._admit(False)  # before the range lock (see write)
        async with self.ranges.hold(offset, length) as lease:
            await self._replicate(_Op("unmap", offset, None, length, False, lease))
            self.repairer.forget(offset, length)
        self.io_stats["unmaps"] += 1

    async def flush(self) -> None:
        """Make every acknowledged write stable on every member (SYNCHRONIZE CACHE)."""
        await self._replicate(_Op("flush", 0, None, 0, False))
        self.io_stats["flushes"] += 1

    async def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, mapped) runs covering the range, from one current member."""
        await self._admit(True)
        check_range(self.size, offset, length)
        rw = self.rw_members()
        if not rw or length == 0:
            return [(offset, length, True)] if length else []
        m = rw[next(self._rr) % len(rw)]
        try:
            ext = await m.link.extents(offset, length)
        except (ReplicaError, ReplicaUnavailable):
            return [(offset, length, True)]
        runs: list[tuple[int, int, bool]] = []
        pos, end = offset, offset + length
        for eo, el in clip(ext, offset, end):
            if eo > pos:
                runs.append((pos, eo - pos, False))
            runs.append((eo, el, True))
            pos = eo + el
        if pos < end:
            runs.append((pos, end - pos, False))
        return runs

    # ------------------------------------------------------------------ replication core
    @staticmethod
    def _issue(targets: list[Peer], op: _Op, epoch: int) -> Awaitable[list[BaseException | None]]:
        """Queue `op` on every target's connection now (call order = wire order); the result
        lists, per target, None (done) or the exception. One future for all targets."""
        clients = [m.client for m in targets]
        if op.kind == "unmap":
            return unmap_all(clients, op.offset, op.length, epoch)
        if op.kind == "flush":
            return flush_all(clients, epoch)
        if op.length <= MAX_IO:
            return write_all(clients, op.offset, op.data, epoch, fua=op.fua)
        view = memoryview(op.data)  # bigger than one frame: split, every part queued now
        parts = [
            write_all(clients, op.offset + i, view[i : i + MAX_IO], epoch, fua=op.fua)
            for i in range(0, op.length, MAX_IO)
        ]

        async def merged() -> list[BaseException | None]:
            out: list[BaseException | None] = [None] * len(targets)
            for res in await asyncio.gather(*parts):
                out = [a or b for a, b in zip(out, res, strict=True)]
            return out

        return merged()

    async def _replicate(self, op: _Op) -> None:
        """Send `op` to every RW and WO replica in one synchronous step; acknowledge it once
        every member of the committed view holds it (rules 1 and Q3)."""
        await self._readmit(op)
        coord = self.coord
        targets = [m for m in coord.replicas() if m.mode in (RW, WO) and m.client]
        failed: list[tuple[Peer, BaseException]] = []
        if not any(m.mode == RW for m in targets):
            # members whose connection is gone but whose failure is not decided yet (every
            # replica restarting at once): they fail now, and the op waits for the view change
            # (held, not failed) like one that found them gone in flight
            away = [m for m in coord.replicas() if m.mode == RW]
            if not away:
                raise VolumeIOError(f"{op.kind}: no current replica")
            failed = [
                (m, ReplicaUnavailable(f"replica {m.address} is not connected")) for m in away
            ]
            targets = []
        issued = self._issue(targets, op, coord.mem.epoch) if targets else None  # queued here
        op.done = asyncio.get_running_loop().create_future()
        oid = next(self._op_ids)
        # stays "in flight" until acknowledged, so a view change re-sends it
        self._inflight[oid] = op
        try:
            for m, r in zip(targets, await issued if issued else [], strict=True):
                if r is not None:
                    failed.append((m, r))
                else:
                    m.writes += 1
                    op.on.add(m.key)
            while failed or not coord.open:  # else every target, so every member, has it
                if failed:
                    await coord.failures(failed)
                await self._readmit(op)
                missing = [p for p in coord.rw_peers() if p.key not in op.on]
                if coord.mem.covers(op.on) and not missing:
                    break
                if not missing:
                    self.io_stats["write_errors"] += 1
                    raise VolumeIOError(f"{op.kind} {op.offset}+{op.length}: no member holds it")
                # a member without it (it returned, or its answer was lost in a view change): it
                # gets it now; the op still holds its range, so nothing overlapping went between
                res = await self._issue(missing, op, coord.mem.epoch)
                failed = [(m, r) for m, r in zip(missing, res, strict=True) if r is not None]
                op.on.update(m.key for m, r in zip(missing, res, strict=True) if r is None)
        except VolumeNotReady:
            self.io_stats["write_errors"] += 1
            raise
        finally:
            del self._inflight[oid]
            op.done.set_result(None)

    async def _readmit(self, op: _Op) -> None:
        """Wait for admission again (a view change or a lost quorum) while holding `op`'s range.

        Parked meanwhile: when every member was lost, the controller claims the volume again
        and resynchronises the dirty regions before it serves, and this range is one of them;
        that copy goes past the parked op, which then re-sends itself to every member (the copy
        may have replaced what it wrote on one of them)."""
        coord = self.coord
        if coord.open or op.lease is None:
            await self._admit(False)
            return
        term = coord.mem.epoch >> 32
        async with self.ranges.parked(op.lease):
            await self._admit(False)
        if coord.mem.epoch >> 32 != term:  # claimed again: the resync may have copied over it
            op.on.clear()

    async def _resend(self) -> list[tuple[Peer, BaseException]]:
        """After a view change: re-send every write/unmap in flight to the current targets
        (so the new change maps record them); returns the replicas that failed."""
        coord = self.coord
        ops = [op for op in self._inflight.values() if op.kind != "flush"]
        targets = [m for m in coord.replicas() if m.mode in (RW, WO) and m.client]
        if not ops or not targets:
            return []
        epoch = coord.mem.epoch
        issued = [self._issue(targets, op, epoch) for op in ops]
        bad: dict[str, tuple[Peer, BaseException]] = {}
        for op, res in zip(ops, await asyncio.gather(*issued), strict=True):
            for m, r in zip(targets, res, strict=True):
                if r is not None:
                    bad.setdefault(m.address, (m, ReplicaUnavailable(f"re-send failed: {r}")))
                else:
                    op.on.add(m.key)
        return list(bad.values())

    # ------------------------------------------------------------------ management
    async def add_replica(self, address: str) -> Peer:
        """Add a replica address; it joins as WO, is rebuilt, then becomes RW (and a voter)."""
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        if addr in self.coord.peers:
            raise ValueError(f"replica {addr} is already part of volume {self.name}")
        m = self.coord.known(addr, configured=True)  # wanted: it stays a voter once it joins
        self.coord.wake.set()
        return m

    async def grow(self, size: int) -> int:
        """Grow the volume online to `size` bytes: every RW and WO replica first, then the size
        served (grow.py). Returns the size before; ValueError / GrowRefused when refused."""
        return await self.grower.grow(size)

    async def remove_replica(self, address: str) -> None:
        """Forget a replica; a member or voter leaves under a new view (not the last copy)."""
        await self.coord.remove(address)


__all__ = [
    "Volume",
    "Peer",
    "OutOfRange",
    "RW",
    "WO",
    "ERR",
    "SERVING",
    "WAITING",
    "FENCED",
    "NO_QUORUM",
]
