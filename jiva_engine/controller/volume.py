"""The replicated volume: fans writes out to every replica, balances reads, keeps the epoch.

See docs/ENGINE.md for the rules this module enforces (start-up, ejection, rebuild, fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError, ReplicaUnavailable
from jiva_engine.util import parse_hostport
from jiva_engine.volume import (
    OutOfRange,
    VolumeFenced,
    VolumeIOError,
    VolumeNotReady,
    check_range,
)

log = logging.getLogger(__name__)

RW, WO, ERR = "RW", "WO", "ERR"
SERVING, WAITING, FENCED = "serving", "waiting", "fenced"
DEFAULT_REGION = 1 << 20
MAX_IO = wire.MAX_IO  # largest READ/WRITE in one frame; bigger requests are split
SECTOR = 512
REBUILD_PARALLEL = 4  # spans copied at once by one rebuild
REBUILD_SPAN = 8  # adjacent regions copied as one span (one write-intent update on the target)
SPLIT_READ = 128 << 10  # reads from this size on are served by several members in parallel
SPLIT_PART = 64 << 10  # smallest part of a split read
SMALL_COPY = 256 << 10  # spans below this are batched into one READV/WRITEV (no EXTENTS)
VEC_BYTES = 4 << 20  # data of one READV/WRITEV batch
VEC_RANGES = 1024  # ranges in one batch
REBUILD_SYNC_EVERY = 64 << 20  # copied bytes between background flushes of the target


class _Fenced(Exception):
    """Internal: a replica answered STALE_EPOCH."""


@dataclass
class Member:
    """What the controller knows about one replica address."""

    address: str
    mode: str = ERR
    client: ReplicaClient | None = None
    epoch: int = 0
    rebuild: dict[str, int] | None = None
    last_error: str | None = "not connected yet"
    last_rebuild: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    connecting: bool = False
    rebuild_task: asyncio.Task | None = None
    reads: int = 0
    writes: int = 0
    errors: int = 0

    def view(self) -> dict[str, Any]:
        """The replica entry of the status JSON (DESIGN.md §5)."""
        return {
            "address": self.address,
            "mode": self.mode,
            "epoch": self.epoch,
            "rebuild": dict(self.rebuild) if self.rebuild is not None else None,
            "last_error": self.last_error,
            "last_rebuild": dict(self.last_rebuild) if self.last_rebuild else None,
        }


class _Op:
    """One replicated write/unmap in flight (kept so it can be re-sent after an ejection)."""

    __slots__ = ("kind", "offset", "data", "length", "fua", "targets", "done")

    def __init__(self, kind: str, offset: int, data: Any, length: int, fua: bool) -> None:
        self.kind = kind
        self.offset = offset
        self.data = data
        self.length = length
        self.fua = fua
        self.targets: list[Member] = []
        self.done: asyncio.Future[None] | None = None


class _Throttle:
    """Shared rebuild rate limit (bytes per second across every rebuild at once)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = 0.0

    async def take(self, nbytes: int) -> None:
        if not self.rate or nbytes <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + nbytes / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class Volume:
    """A replicated block volume (jiva_engine.volume.BlockVolume) over `jiva replica` processes.

    Call `await start()`; the volume then connects to its replicas in the background and serves
    once rule 4 of ARCHITECTURE.md allows it (see `state` / `reason` while it waits).
    """

    block_size = 512

    def __init__(
        self,
        name: str,
        replicas: list[str],
        *,
        size: int | None = None,
        replica_timeout: float = 3.0,
        secret: str | bytes | None = None,
        rebuild_rate: float | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.size = size or 0
        self._want_size = size
        self.replica_timeout = replica_timeout
        self.secret = secret
        self.retry_interval = retry_interval
        self.state = WAITING
        self.reason = "starting: connecting to the replicas"
        self.epoch = 0
        # highest epoch a replica confirmed for us: an epoch above it that we find later was
        # written by another controller (ours may have been bumped locally without landing)
        self.claimed = 0
        self.region_size = DEFAULT_REGION
        self.members: dict[str, Member] = {}
        for addr in replicas:
            self._known(addr)
        self._ranges = RangeLock()
        self._meta_lock = asyncio.Lock()
        self._stable = asyncio.Event()
        self._stable.set()
        self._ejecting = 0
        self._inflight: dict[int, _Op] = {}
        self._op_ids = itertools.count()
        self._rr = itertools.count()
        self._throttle = _Throttle(rebuild_rate)
        self._task: asyncio.Task | None = None
        self._closed = False
        self._wake = asyncio.Event()
        self.started_at = time.time()
        self.stats: dict[str, float] = {
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
            "ejections": 0,
            "rebuilds_done": 0,
            "rebuild_bytes_copied": 0,
            "epoch_changes": 0,
        }

    # ------------------------------------------------------------------ lifecycle
    def _known(self, address: str) -> Member:
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        m = self.members.get(addr)
        if m is None:
            m = self.members[addr] = Member(addr)
        return m

    async def start(self) -> None:
        """Start the background manager (connects, starts serving, reconnects, rebuilds)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._manage())

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
        """Stop background work and close every replica connection (data stays on the replicas)."""
        self._closed = True
        tasks = [m.rebuild_task for m in self.members.values() if m.rebuild_task]
        if self._task:
            tasks.append(self._task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for m in self.members.values():
            await self._drop_client(m)

    def ready(self) -> bool:
        """True while the volume serves I/O."""
        return self.state == SERVING

    # ------------------------------------------------------------------ views
    def rw_members(self) -> list[Member]:
        """Current members (RW, in the membership)."""
        return [m for m in self.members.values() if m.mode == RW]

    def membership(self) -> list[str]:
        """Addresses of the current membership."""
        return [m.address for m in self.rw_members()]

    def degraded(self) -> bool:
        """True unless every known replica is a current member."""
        return self.state != SERVING or any(m.mode != RW for m in self.members.values())

    def status(self) -> dict[str, Any]:
        """Status JSON (DESIGN.md §5) without the portal/iqn, which the API adds."""
        return {
            "name": self.name,
            "size": self.size,
            "state": self.state,
            "reason": self.reason,
            "epoch": self.epoch,
            "replicas": [m.view() for m in self.members.values()],
            "degraded": self.degraded(),
        }

    # ------------------------------------------------------------------ I/O entry points
    def _check(self, offset: int, length: int) -> None:
        check_range(self.size, offset, length)
        if offset % SECTOR or length % SECTOR:
            raise ValueError(f"offset {offset} and length {length} must be multiples of {SECTOR}")

    def _check_io(self) -> None:
        if self.state == SERVING:
            return
        if self.state == FENCED:
            raise VolumeFenced(self.reason)
        raise VolumeNotReady(self.reason)

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Read from one current member, rotating; retry on another if one fails."""
        self._check_io()
        self._check(offset, length)
        if length == 0:
            return b""
        t0 = time.perf_counter()
        if length >= SPLIT_READ or length > MAX_IO:
            data = await self._read_split(offset, length)
            self.stats["reads"] += 1
            self.stats["read_bytes"] += length
            self.stats["read_seconds"] += time.perf_counter() - t0
            return data
        tried: set[str] = set()
        while True:
            self._check_io()
            rw = [m for m in self.rw_members() if m.address not in tried]
            if not rw:
                self.stats["read_errors"] += 1
                raise VolumeIOError(f"read {offset}+{length}: no replica could serve it")
            m = rw[next(self._rr) % len(rw)]
            tried.add(m.address)
            try:
                data = await m.client.read(offset, length, self.epoch)
            except (ReplicaError, ReplicaUnavailable) as e:
                self.stats["read_retries"] += 1
                await self._failures([(m, e)])
                continue
            if len(data) != length:
                await self._failures([(m, ReplicaError(wire.EIO, "short read"))])
                continue
            m.reads += 1
            self.stats["reads"] += 1
            self.stats["read_bytes"] += length
            self.stats["read_seconds"] += time.perf_counter() - t0
            return data

    async def _read_split(self, offset: int, length: int) -> bytearray:
        """A large read cut into ranges served by the RW members in parallel, each received
        straight into its slice of one buffer; a failing member is ejected and its ranges are
        read again from the others."""
        buf = bytearray(length)
        mv = memoryview(buf)
        rw = self.rw_members()
        k = max(1, min(len(rw), length // SPLIT_PART), -(-length // MAX_IO))
        step = -(-length // k)
        step += -step % 4096  # 4 KiB-aligned cuts
        todo = [(i, min(step, length - i)) for i in range(0, length, step)]
        tried: set[str] = set()
        while todo:
            self._check_io()
            rw = [m for m in self.rw_members() if m.address not in tried]
            if not rw:
                self.stats["read_errors"] += 1
                raise VolumeIOError(f"read {offset}+{length}: no replica could serve it")
            start = next(self._rr)
            plan = [(rw[(start + j) % len(rw)], i, n) for j, (i, n) in enumerate(todo)]
            res = await asyncio.gather(
                *(m.client.read_into(offset + i, mv[i : i + n], self.epoch) for m, i, n in plan),
                return_exceptions=True,
            )
            failed: dict[str, tuple[Member, BaseException]] = {}
            todo = []
            for (m, i, n), r in zip(plan, res, strict=True):
                if isinstance(r, BaseException):
                    if not isinstance(r, (ReplicaError, ReplicaUnavailable)):
                        raise r
                    failed.setdefault(m.address, (m, r))
                    todo.append((i, n))
                else:
                    m.reads += 1
            if failed:
                self.stats["read_retries"] += 1
                tried.update(failed)
                await self._failures(list(failed.values()))
        return buf

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write to every member (ordered with overlapping writes); returns once all have it."""
        self._check_io()
        n = len(data)
        self._check(offset, n)
        if n == 0:
            return
        t0 = time.perf_counter()
        async with self._ranges.hold(offset, n):
            await self._replicate(_Op("write", offset, data, n, fua))
        self.stats["writes"] += 1
        self.stats["write_bytes"] += n
        self.stats["write_seconds"] += time.perf_counter() - t0

    async def unmap(self, offset: int, length: int) -> None:
        """Deallocate a range on every member; it reads back as zeroes."""
        self._check_io()
        self._check(offset, length)
        if length == 0:
            return
        async with self._ranges.hold(offset, length):
            await self._replicate(_Op("unmap", offset, None, length, False))
        self.stats["unmaps"] += 1

    async def flush(self) -> None:
        """Make every acknowledged write stable on every member (SYNCHRONIZE CACHE)."""
        self._check_io()
        await self._replicate(_Op("flush", 0, None, 0, False))
        self.stats["flushes"] += 1

    async def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, mapped) runs covering the range, from one current member."""
        self._check_io()
        check_range(self.size, offset, length)
        rw = self.rw_members()
        if not rw or length == 0:
            return [(offset, length, True)] if length else []
        m = rw[next(self._rr) % len(rw)]
        try:
            ext = await m.client.extents(offset, length)
        except (ReplicaError, ReplicaUnavailable):
            return [(offset, length, True)]
        runs: list[tuple[int, int, bool]] = []
        pos, end = offset, offset + length
        for eo, el in _clip(ext, offset, end):
            if eo > pos:
                runs.append((pos, eo - pos, False))
            runs.append((eo, el, True))
            pos = eo + el
        if pos < end:
            runs.append((pos, end - pos, False))
        return runs

    # ------------------------------------------------------------------ replication core
    def _issue(self, m: Member, op: _Op, epoch: int) -> asyncio.Future:
        c = m.client
        if c is None:
            f = asyncio.get_running_loop().create_future()
            f.set_exception(ReplicaUnavailable(f"replica {m.address} not connected"))
            return f
        if op.kind == "write":
            if op.length <= MAX_IO:
                return c.write(op.offset, op.data, epoch, fua=op.fua)
            view = memoryview(op.data)
            return asyncio.gather(
                *(
                    c.write(op.offset + i, view[i : i + MAX_IO], epoch, fua=op.fua)
                    for i in range(0, op.length, MAX_IO)
                )
            )
        if op.kind == "unmap":
            return c.unmap(op.offset, op.length, epoch)
        return c.flush(epoch)

    async def _replicate(self, op: _Op) -> None:
        """Send `op` to every RW and WO member in one synchronous step; handle failures."""
        targets = [m for m in self.members.values() if m.mode in (RW, WO) and m.client]
        if not any(m.mode == RW for m in targets):
            self._check_io()
            raise VolumeIOError(f"{op.kind}: no current replica")
        epoch = self.epoch
        futs = [self._issue(m, op, epoch) for m in targets]  # all frames queued right here
        op.targets = targets
        op.done = asyncio.get_running_loop().create_future()
        oid = next(self._op_ids)
        # stays "in flight" until acknowledged, so an ejection re-sends it after SET_META
        self._inflight[oid] = op
        try:
            results = await asyncio.gather(*futs, return_exceptions=True)
            failed = [
                (m, r) for m, r in zip(targets, results, strict=True) if isinstance(r, Exception)
            ]
            for m, r in zip(targets, results, strict=True):
                if not isinstance(r, Exception):
                    m.writes += 1
            if failed:
                await self._failures(failed)
            if not self._stable.is_set():
                await self._stable.wait()
        finally:
            del self._inflight[oid]
            op.done.set_result(None)
        self._check_io()
        ok = any(
            m.mode == RW and not isinstance(r, Exception)
            for m, r in zip(targets, results, strict=True)
        )
        if not ok:
            self.stats["write_errors"] += 1
            raise VolumeIOError(f"{op.kind} {op.offset}+{op.length} failed on every replica")

    async def _failures(self, failed: list[tuple[Member, BaseException]]) -> None:
        """Eject failed members (rule 3), or fence on STALE_EPOCH."""
        for m, e in failed:
            if isinstance(e, ReplicaError) and e.status == wire.STALE_EPOCH:
                await self._fence(f"replica {m.address} reports a newer epoch: {e.message}")
                raise VolumeFenced(self.reason)
        await self._eject([m for m, _ in failed], {m.address: str(e) for m, e in failed})

    async def _fence(self, reason: str) -> None:
        if self.state == FENCED:
            return
        log.error("volume %s fenced: %s", self.name, reason)
        self.state = FENCED
        self.reason = f"fenced: {reason}; a newer controller owns the volume"
        self._stable.set()
        for m in self.members.values():
            if m.rebuild_task and m.rebuild_task is not asyncio.current_task():
                m.rebuild_task.cancel()
            await self._drop_client(m)

    async def _drop_client(self, m: Member) -> None:
        c, m.client = m.client, None
        if c is not None:
            with contextlib.suppress(Exception):
                await c.close()

    async def _eject(self, failed: list[Member], errors: dict[str, str]) -> None:
        """Remove failed members under a new epoch before anything else is acknowledged."""
        self._ejecting += 1
        self._stable.clear()
        try:
            async with self._meta_lock:
                await self._eject_locked(failed, errors)
        finally:
            self._ejecting -= 1
            if not self._ejecting:
                self._stable.set()

    async def _eject_locked(self, failed: list[Member], errors: dict[str, str]) -> None:
        while failed:
            failed = [m for m in failed if m.mode != ERR]
            if not failed or self.state != SERVING:
                return
            removed_rw = False
            for m in failed:
                log.warning("replica %s ejected: %s", m.address, errors.get(m.address))
                removed_rw |= m.mode == RW
                m.mode = ERR
                m.errors += 1
                m.rebuild = None
                m.last_error = errors.get(m.address) or "failed"
                if m.rebuild_task and m.rebuild_task is not asyncio.current_task():
                    m.rebuild_task.cancel()
                self.stats["ejections"] += 1
                await self._drop_client(m)
            if not removed_rw:
                return  # a WO replica is not in the membership: no new epoch needed
            rw = self.rw_members()
            if not rw:
                for x in self.members.values():  # rebuilds need a source: stop them
                    if x.mode == WO:
                        if x.rebuild_task and x.rebuild_task is not asyncio.current_task():
                            x.rebuild_task.cancel()
                        x.mode, x.rebuild, x.last_error = ERR, None, "rebuild source lost"
                        await self._drop_client(x)
                self.state = WAITING
                self.reason = (
                    "every member was lost ("
                    + ", ".join(f"{a}: {e}" for a, e in errors.items())
                    + "); waiting for the newest members to return"
                )
                self._wake.set()
                return
            # every unacknowledged write/unmap may have landed on the others before tracking
            # starts (including ones issued after the failure, which skipped the failed member):
            # re-send them after SET_META so the change map records them, then drop the
            # region-granular seed the replicas took at SET_META (it covers a controller crash
            # before the re-send is done)
            resend = [op for op in self._inflight.values() if op.kind != "flush"]
            self.epoch += 1
            self.stats["epoch_changes"] += 1
            membership = [m.address for m in rw]
            futs = [
                m.client.set_meta(epoch=self.epoch, membership=membership, start_tracking=True)
                for m in rw
            ]
            res = await asyncio.gather(*futs, return_exceptions=True)
            failed, errors = [], {}
            for m, r in zip(rw, res, strict=True):
                if isinstance(r, Exception):
                    if isinstance(r, ReplicaError) and r.status == wire.STALE_EPOCH:
                        await self._fence(f"replica {m.address} reports a newer epoch: {r}")
                        return
                    failed.append(m)
                    errors[m.address] = f"SET_META failed: {r}"
                else:
                    m.epoch = self.epoch
                    self.claimed = max(self.claimed, self.epoch)
            if resend and not failed:
                targets = [m for m in self.members.values() if m.mode in (RW, WO) and m.client]
                futs = [self._issue(m, op, self.epoch) for op in resend for m in targets]
                res = await asyncio.gather(*futs, return_exceptions=True)
                per = len(targets)
                for i, r in enumerate(res):
                    m = targets[i % per]
                    if isinstance(r, Exception) and m not in failed:
                        failed.append(m)
                        errors[m.address] = f"re-sending in-flight writes failed: {r}"
            if not failed:
                since = self.epoch
                res = await asyncio.gather(
                    *(m.client.set_meta(epoch=self.epoch, drop_seed=[since]) for m in rw),
                    return_exceptions=True,
                )
                for m, r in zip(rw, res, strict=True):
                    if isinstance(r, ReplicaError) and r.status == wire.STALE_EPOCH:
                        await self._fence(f"replica {m.address} reports a newer epoch: {r}")
                        return
                    if isinstance(r, Exception) and m not in failed:
                        failed.append(m)
                        errors[m.address] = f"SET_META drop_seed failed: {r}"

    # ------------------------------------------------------------------ background manager
    async def _manage(self) -> None:
        while not self._closed and self.state != FENCED:
            self._wake.clear()
            try:
                if self.state == WAITING:
                    await self._try_start()
                elif self.state == SERVING:
                    await self._tend()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep managing: report and retry next round
                log.exception("volume %s manager error", self.name)
                if self.state == WAITING:
                    self.reason = f"start-up failed: {e}; retrying"
            if self.state == SERVING and self._wake.is_set():
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_interval)

    async def _connect(self, m: Member) -> dict[str, Any] | None:
        """Connect `m` if needed and return its INFO (None when unreachable)."""
        if m.client is not None and m.client.connected:
            try:
                info = await m.client.info()
            except (ReplicaError, ReplicaUnavailable) as e:
                m.last_error = f"INFO failed: {e}"
                await self._drop_client(m)
                return None
        else:
            await self._drop_client(m)
            host, port = parse_hostport(m.address)
            c = ReplicaClient(host, port, self.name, self.secret, self.replica_timeout)
            try:
                await c.connect()
                info = await c.info()
            except (ReplicaError, ReplicaUnavailable, OSError) as e:
                m.last_error = str(e)  # connect() already closed what it opened
                return None
            m.client = c
        meta = _meta(info)
        m.info = info
        m.epoch = int(meta.get("epoch") or 0)
        size = int(meta.get("size") or 0)
        want = self._want_size or self.size
        if want and size != want:
            m.last_error = f"replica size {size} differs from the volume size {want}"
            await self._drop_client(m)
            return None
        return info

    async def _try_start(self) -> None:
        """Rule 4 and 5: serve only when every member of the newest membership is reachable."""
        pending = [m for m in self.members.values()]
        infos = await asyncio.gather(*(self._connect(m) for m in pending))
        reach = {m.address: _meta(i) for m, i in zip(pending, infos, strict=True) if i}
        if self.state != WAITING:
            return
        if not reach:
            self.reason = "no replica reachable: " + "; ".join(
                f"{m.address}: {m.last_error}" for m in pending
            )
            return
        newest = max(reach.values(), key=lambda meta: int(meta.get("epoch") or 0))
        top = int(newest.get("epoch") or 0)
        if self.claimed and top > self.claimed:
            # we served before and someone raised the epoch since: a newer controller owns it
            # (compared with the last epoch a replica confirmed for us: a bump of ours that never
            # landed must not let us re-claim a volume another controller took at that number)
            await self._fence(f"replicas are at epoch {top}, above ours ({self.claimed})")
            return
        if top == 0:
            missing = [a for a in self.members if a not in reach]
            if missing:
                self.reason = (
                    "new volume (no replica has data yet): waiting for every replica to "
                    f"initialise it together; unreachable: {', '.join(missing)}"
                )
                return
            membership = list(self.members)
        else:
            membership = [self._known(a).address for a in newest.get("membership") or []]
            if not membership:
                self.reason = (
                    f"the newest metadata (epoch {top}) names no member; refusing to guess"
                )
                return
            missing = [a for a in membership if a not in reach]
            if missing:
                missing = [f"{a} ({self.members[a].last_error})" for a in missing]
                # a freshly added address may have just been connected above; retry next round
                self.reason = (
                    f"waiting for replica(s) {', '.join(missing)}: members of the newest "
                    f"membership (epoch {top}) and possibly the only current copies; refusing to "
                    "serve from replicas that may be behind (reachable: "
                    + ", ".join(f"{a} epoch {int(reach[a].get('epoch') or 0)}" for a in reach)
                    + ")"
                )
                return
        if not self.size:
            self.size = int(newest.get("size") or 0)
        members = [self.members[a] for a in membership]
        self.reason = f"resynchronising members {', '.join(membership)}"
        self.epoch = top + 1
        self.stats["epoch_changes"] += 1
        # claim the volume first: any older controller now gets STALE_EPOCH from these replicas
        for m in members:
            if top == 0:
                await m.client.set_mode("RW")
            await m.client.set_meta(epoch=self.epoch, membership=membership)
            m.epoch = self.epoch
            self.claimed = max(self.claimed, self.epoch)
        maps = await asyncio.gather(*(m.client.dirty_map() for m in members))
        self.region_size = int(maps[0].get("region_size") or DEFAULT_REGION)
        dirty = sorted(set().union(*(set(d.get("dirty") or []) for d in maps)))
        if dirty and len(members) > 1:
            src = max(members, key=lambda m: int(reach[m.address].get("epoch") or 0))
            others = [m for m in members if m is not src]
            # adjacent dirty regions as one span, a few spans at once (nothing is served yet):
            # a restart right after a burst of random writes finds most regions dirty
            spans = _split(
                _merge([self._region(r) for r in dirty], self.size),
                REBUILD_SPAN * self.region_size,
            )
            gate = asyncio.Semaphore(REBUILD_PARALLEL)

            async def resync(off: int, ln: int) -> None:
                async with gate:
                    await self._copy(src, others, off, ln, rebuild=False)

            await _all([asyncio.ensure_future(resync(o, n)) for o, n in spans])
        for m in members:
            await m.client.flush(self.epoch)
            await m.client.clear_dirty(dirty if dirty else None)
        for m in members:
            m.mode = RW
            m.last_error = None
        log.info(
            "volume %s serving at epoch %d with %s (%d dirty regions resynchronised)",
            self.name,
            self.epoch,
            membership,
            len(dirty),
        )
        self.reason = f"resynchronised {len(dirty)} dirty region(s) at start-up" if dirty else ""
        self.state = SERVING
        self._wake.set()

    async def _tend(self) -> None:
        """While serving: ping members, reconnect lost replicas and start their rebuilds."""
        for m in list(self.members.values()):
            if m.mode != ERR or m.connecting or (m.rebuild_task and not m.rebuild_task.done()):
                continue  # RW members are checked by the pings below, WO ones by their rebuild
            m.connecting = True
            asyncio.get_running_loop().create_task(self._rejoin(m))
        rw = self.rw_members()
        res = await asyncio.gather(*(m.client.ping() for m in rw), return_exceptions=True)
        failed = [(m, r) for m, r in zip(rw, res, strict=True) if isinstance(r, Exception)]
        if failed and self.state == SERVING:
            with contextlib.suppress(VolumeFenced):
                await self._failures(failed)

    async def _rejoin(self, m: Member) -> None:
        try:
            info = await self._connect(m)
            if info is None or self.state != SERVING or self._closed:
                if info is not None and self.state != SERVING:
                    await self._drop_client(m)
                return
            m.rebuild_task = asyncio.get_running_loop().create_task(self._rebuild(m, _meta(info)))
        finally:
            m.connecting = False

    # ------------------------------------------------------------------ rebuild (rule 6)
    def _region(self, r: int) -> tuple[int, int]:
        off = r * self.region_size
        return off, max(0, min(self.region_size, self.size - off))

    async def _copy(self, src: Member, dsts: list[Member], off: int, ln: int, rebuild: bool) -> int:
        """Copy [off, off+ln) from src to dsts under the range lock; holes become holes."""
        copied = 0
        async with self._ranges.hold(off, ln):
            ext = await src.client.extents(off, ln)
            pos, end = off, off + ln
            for eo, el in [*_clip(ext, off, end), (end, 0)]:
                if eo > pos:
                    await _all([d.client.unmap(pos, eo - pos, self.epoch) for d in dsts])
                if el:
                    data = await src.client.read(eo, el, self.epoch)
                    await _all(
                        [d.client.write(eo, data, self.epoch, rebuild=rebuild) for d in dsts]
                    )
                    copied += el
                pos = eo + el
        return copied

    def _plan(self, rmeta: dict[str, Any], rdirty: dict[str, Any], sdm: dict[str, Any]) -> tuple:
        """What a returning replica needs: (kind, sorted merged byte extents, or None for full).

        Change maps come as byte runs ([offset, length], DIRTY_MAP `missed_granularity` fine);
        a replica of the older format answers region numbers, which are widened to regions.
        """
        r_epoch = int(rmeta.get("epoch") or 0)
        if (
            r_epoch <= 0
            or rmeta.get("rebuilding")
            or int(sdm.get("region_size") or 0) != self.region_size
        ):
            return "full", None
        if int(rdirty.get("region_size") or self.region_size) != self.region_size:
            return "full", None
        missed = {int(e): regs for e, regs in (sdm.get("missed") or {}).items()}
        usable = [e for e in missed if e <= r_epoch + 1]
        if not usable:
            return "full", None
        since = max(usable)
        ext: list[tuple[int, int]] = []
        for x in missed[since]:
            if isinstance(x, int):  # region number (older replica)
                ext.append(self._region(x))
            else:
                ext.append((int(x[0]), int(x[1])))
        ext.extend(self._region(r) for r in rdirty.get("dirty") or [])
        return f"incremental since epoch {since}", _merge(ext, self.size)

    async def _rebuild(self, m: Member, rmeta: dict[str, Any]) -> None:
        """Bring a non-member up to date as WO, then add it to the membership (rule 6)."""
        t0 = time.monotonic()
        try:
            c = m.client
            if m.epoch > self.epoch:
                # only a newer controller could have raised it: leave this replica alone
                raise ReplicaError(
                    wire.STALE_EPOCH,
                    f"replica has epoch {m.epoch}, newer than ours ({self.epoch}); "
                    "another controller may own the volume",
                )
            c.epoch = max(c.epoch, m.epoch)  # control ops carry the client's epoch
            rdirty = await c.dirty_map() if int(rmeta.get("epoch") or 0) > 0 else {}
            await c.set_mode("WO")  # persisted first: a crash from here on means a full rebuild
            # then raise its epoch so frames still queued from an old connection are refused
            await c.set_meta(epoch=self.epoch, membership=self.membership())
            m.mode = WO  # every write issued from now on also goes to this replica
            m.rebuild = {"done": 0, "total": 0}
            m.last_error = None
            before = list(self._inflight.values())
            for op in before:  # writes issued before the switch must land on the source first
                await op.done
            rw = self.rw_members()
            if not rw:
                raise ReplicaUnavailable("no current member to rebuild from")
            src = rw[next(self._rr) % len(rw)]
            sdm = await src.client.dirty_map()
            kind, extents = self._plan(rmeta, rdirty, sdm)
            if extents is None:
                used = set()
                for eo, el in [
                    *await src.client.extents(0, self.size),
                    *await c.extents(0, self.size),
                ]:
                    used.update(
                        range(eo // self.region_size, (eo + el - 1) // self.region_size + 1)
                    )
                extents = _merge([self._region(r) for r in used], self.size)
            total = sum(ln for _, ln in extents)
            m.rebuild = {"done": 0, "total": total}
            log.info(
                "rebuilding %s from %s: %s, %d extents, %d bytes",
                m.address, src.address, kind, len(extents), total,
            )  # fmt: skip
            copied = 0
            span = REBUILD_SPAN * self.region_size
            if self._throttle.rate:  # keep the pacing smooth: at most ~1/4 s of budget per span
                span = max(self.region_size, min(span, int(self._throttle.rate / 4)))
            todo = iter(_batches(_split(extents, span), min(span, VEC_BYTES)))
            failure: list[BaseException] = []
            unsynced = 0
            syncing: asyncio.Future | None = None
            syncs: list[asyncio.Future] = []

            async def copier() -> None:  # a few spans in flight at once, each range-locked
                nonlocal copied, unsynced, syncing
                for off, ln, ranges in todo:
                    if failure:
                        return
                    if m.mode != WO or src.mode != RW or self.state != SERVING:
                        failure.append(ReplicaUnavailable("rebuild interrupted"))
                        return
                    size = ln if ranges is None else sum(n for _, n in ranges)
                    await self._throttle.take(size)  # --rebuild-rate, shared by every rebuild
                    try:
                        n = await self._copy_checked(src, m, off, ln, ranges)
                    except Exception as e:
                        failure.append(e)
                        return
                    copied += n
                    self.stats["rebuild_bytes_copied"] += n
                    m.rebuild["done"] += size
                    # start the write-back of what is copied so far while copying goes on, so
                    # the final flush (before it becomes a member) only has the tail left
                    unsynced += n
                    if unsynced >= REBUILD_SYNC_EVERY and (syncing is None or syncing.done()):
                        unsynced = 0
                        syncing = c.flush(self.epoch)
                        syncs.append(syncing)

            await asyncio.gather(*(copier() for _ in range(REBUILD_PARALLEL)))
            sync_res = await asyncio.gather(*syncs, return_exceptions=True)
            if failure:
                raise failure[0]
            for r in sync_res:
                if isinstance(r, BaseException):
                    raise r
            await c.flush(self.epoch)  # everything copied is durable before it is a member
            m.last_rebuild = {
                "kind": kind.split()[0],
                "detail": kind,
                "source": src.address,
                "regions": len(extents),
                "copied": copied,
                "scanned": total,
                "seconds": round(time.monotonic() - t0, 3),
            }
            await self._promote(m)
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
                await self._drop_client(m)

    async def _copy_checked(
        self, src: Member, dst: Member, off: int, ln: int, ranges: list | None = None
    ) -> int:
        """One rebuild copy (a span, or a batch of small `ranges` inside [off, off+ln)); a
        failing source is ejected (rule 3), a failing target drops out."""
        try:
            if ranges is not None:
                async with self._ranges.hold(off, ln):
                    data = await src.client.readv(ranges, self.epoch)
                    await dst.client.writev(ranges, data, self.epoch, rebuild=True)
                return len(data)
            return await self._copy(src, [dst], off, ln, rebuild=True)
        except (ReplicaError, ReplicaUnavailable) as e:
            # find out which side failed: the source's failure is a membership change
            if src.client is None or not src.client.connected:
                await self._failures([(src, e)])
            raise

    async def _promote(self, m: Member) -> None:
        """Add a rebuilt replica to the membership under a new epoch."""
        async with self._meta_lock:
            if m.mode != WO or self.state != SERVING:
                raise ReplicaUnavailable("replica no longer rebuilding")
            self.epoch += 1
            self.stats["epoch_changes"] += 1
            members = [*self.rw_members(), m]
            membership = [x.address for x in members]
            await m.client.set_mode("RW")
            res = await asyncio.gather(
                *(x.client.set_meta(epoch=self.epoch, membership=membership) for x in members),
                return_exceptions=True,
            )
            bad = [(x, r) for x, r in zip(members, res, strict=True) if isinstance(r, Exception)]
            for x, r in zip(members, res, strict=True):
                if not isinstance(r, Exception):
                    x.epoch = self.epoch
                    self.claimed = max(self.claimed, self.epoch)
            # some members may have recorded it as a member even if others failed: treat it as
            # one, so a failure below is removed under a new epoch like any member's (rule 3)
            m.mode = RW
            m.rebuild = None
            m.last_error = None
            if not bad:
                self.stats["rebuilds_done"] += 1
                log.info("replica %s is current: membership %s", m.address, membership)
        if bad:
            await self._failures(bad)
            return
        await self._clear_settled(m)
        if all(x.mode == RW for x in self.members.values()):
            await self._stop_tracking()

    async def _clear_settled(self, m: Member) -> None:
        """Clear a rebuilt member's dirty bits (e.g. kept after its old connection dropped).

        Only regions with no write in flight are cleared: every write to them was acknowledged by
        every member, and a write issued later reaches the replica after this CLEAR_DIRTY.
        """
        try:
            dm = await m.client.dirty_map()
            regions = [r for r in dm.get("dirty") or [] if not self._ranges.busy(*self._region(r))]
            if regions:
                await m.client.clear_dirty(regions)  # queued before any later write
        except (ReplicaError, ReplicaUnavailable, AttributeError) as e:
            log.info("clearing dirty bits of %s: %s", m.address, e)

    async def _stop_tracking(self) -> None:
        """Every known replica is current: nobody needs the missed-write maps any more."""
        for x in self.rw_members():
            try:
                meta = _meta(await x.client.info())
                since = [
                    int(t["since"]) if isinstance(t, dict) else int(t)
                    for t in meta.get("tracking") or []
                ]
                if since:
                    await x.client.set_meta(epoch=self.epoch, stop_tracking=since)
            except (ReplicaError, ReplicaUnavailable) as e:
                log.warning("stop tracking on %s: %s", x.address, e)

    # ------------------------------------------------------------------ management
    async def add_replica(self, address: str) -> Member:
        """Add a replica address; it joins as WO, is rebuilt, then becomes RW."""
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        if addr in self.members:
            raise ValueError(f"replica {addr} is already part of volume {self.name}")
        m = self._known(addr)
        self._wake.set()
        return m

    async def remove_replica(self, address: str) -> None:
        """Forget a replica; a current member is removed under a new epoch (not the last one)."""
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        m = self.members.get(addr)
        if m is None:
            raise KeyError(f"replica {addr} is not part of volume {self.name}")
        if m.mode == RW and len(self.rw_members()) == 1:
            raise ValueError(f"replica {addr} is the only current copy; refusing to remove it")
        if m.mode == RW:
            await self._eject([m], {addr: "removed by the operator"})
        if m.rebuild_task:
            m.rebuild_task.cancel()
        m.mode = ERR
        await self._drop_client(m)
        self.members.pop(addr, None)
        if self.state == SERVING and all(x.mode == RW for x in self.members.values()):
            await self._stop_tracking()


def _merge(ext: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
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


def _batches(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int, list | None]]:
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


def _split(ext: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Cut extents into copy spans of at most `limit` bytes."""
    out: list[tuple[int, int]] = []
    for off, ln in ext:
        while ln > limit:
            out.append((off, limit))
            off, ln = off + limit, ln - limit
        out.append((off, ln))
    return out


async def _all(futs: list[asyncio.Future]) -> None:
    """Wait for every future; raise the first failure (after all are done, none left unread)."""
    for r in await asyncio.gather(*futs, return_exceptions=True):
        if isinstance(r, BaseException):
            raise r


def _meta(info: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata part of an INFO answer (accepts flat or {"meta": {...}} layouts)."""
    if not info:
        return {}
    meta = info.get("meta")
    return meta if isinstance(meta, dict) else info


def _clip(ext: list, start: int, end: int) -> list[tuple[int, int]]:
    """Sorted extents clipped to [start, end)."""
    out = []
    for eo, el in sorted((int(a), int(b)) for a, b in ext or []):
        a, b = max(eo, start), min(eo + el, end)
        if b > a:
            out.append((a, b - a))
    return out


__all__ = ["Volume", "Member", "OutOfRange", "RW", "WO", "ERR", "SERVING", "WAITING", "FENCED"]
