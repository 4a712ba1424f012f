"""The replica server: serves one ReplicaStore over the wire protocol (DESIGN.md §3).

It listens, keeps the connections (replica/connection.py: one per controller), and owns the
background disk work they share: coalesced bitmap writes and fdatasyncs, the periodic lazy
clearing of dirty regions, meta.json writes. Writes and cached reads go straight to the page
cache from the event loop; fsyncs and reads that would wait for the disk run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from jiva_engine.metrics import Exposition, label
from jiva_engine.protocol import voting
from jiva_engine.replica.connection import ReplicaConnection
from jiva_engine.replica.store import ReplicaStore

log = logging.getLogger(__name__)


class Coalescer:
    """Runs an async job on demand; each request() is answered by a run that started after it.

    Concurrent requests share one run (one fdatasync covers many FUA writes).
    """

    def __init__(self, job: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self.job = job
        self.name = name
        self.waiters: list[asyncio.Future] = []
        self.task: asyncio.Task | None = None

    def request(self) -> asyncio.Future:
        """Ask for a run; the future resolves (or fails) when a covering run has finished."""
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self.waiters:
                waiters, self.waiters = self.waiters, []
                exc: BaseException | None = None
                try:
                    await self.job()
                except Exception as e:  # reported to every waiter
                    log.error("%s failed: %s", self.name, e)
                    exc = e
                for w in waiters:
                    if not w.done():
                        if exc is None:
                            w.set_result(None)
                        else:
                            w.set_exception(exc)
        finally:
            self.task = None


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


@dataclass(slots=True)
class Stats:
    """I/O counters reported by INFO."""

    reads: int = 0
    writes: int = 0
    unmaps: int = 0
    flushes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    rebuild_bytes_written: int = 0
    errors: int = 0
    reads_offloaded: int = 0
    checksum_errors: int = 0  # blocks that failed their checksum when read (then repaired)

    def as_dict(self) -> dict[str, int]:
        """Counters as a JSON-able dict."""
        return asdict(self)


class ReplicaServer:
    """Accepts controller connections for one store; owns the sync/bitmap background work."""

    def __init__(
        self,
        store: ReplicaStore,
        secret: bytes | None = None,
        sync_interval: float = 5.0,
        writer_silence: float = 1.5,
        previous_secret: bytes | None = None,
    ) -> None:
        self.store = store
        self.secret = secret
        self.previous_secret = previous_secret  # also accepted, during a rotation
        self.sync_interval = sync_interval
        # a writing controller not heard from for this long may be cut off from its other
        # replicas with writes in flight: its regions are pinned before the lazy clearing runs
        self.writer_silence = writer_silence
        self.stats = Stats()
        self.conns: set[ReplicaConnection] = set()
        self.meta_lock = asyncio.Lock()
        self.grow_lock = asyncio.Lock()  # one grow at a time (each records what it synced)
        self.snap_lock = asyncio.Lock()  # one snapshot operation (create/delete step/reset)
        # snapshot id -> (block its delete goes on from, DROPs seen by then)
        self.merge_cursors: dict[str, tuple[int, int]] = {}
        self.persist = Coalescer(self._persist_job, "dirty-map write")
        self.syncer = Coalescer(self._sync_job, "fdatasync")
        self._server: asyncio.base_events.Server | None = None
        self._tick: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        # a connection that has not authenticated after this many seconds is closed, so idle or
        # trickling peers cannot pile up file descriptors
        self.auth_timeout = 10.0
        self.stopping = False
        self.talkers = voting.Talkers()  # who spoke lately, for CLAIM answers (Q8)

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port and start the periodic sync-and-clear."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ReplicaConnection(self), host, port, reuse_address=True
        )
        self._tick = loop.create_task(self._tick_loop())

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving, finish background disk work, close the store cleanly."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._tick is not None:
            self._tick.cancel()
        for c in list(self.conns):
            c.transport.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=10)
        for co in (self.persist, self.syncer):
            if co.task is not None:
                await asyncio.wait([co.task], timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close, True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run a per-request coroutine, keeping a reference until it finishes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ------------------------------------------------------------------ background disk work
    async def _persist_job(self) -> None:
        store = self.store
        snap = store.bitmap_snapshot()
        await asyncio.get_running_loop().run_in_executor(None, store.write_bitmaps, snap)
        store.bitmaps_written(snap)

    async def _sync_job(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.store.datasync)

    async def sync_and_clear(self, force: bool = True) -> None:
        """fdatasync the data, then lazily clear dirty bits of regions idle since the last pass.

        Without `force` (the periodic pass) nothing is synced when no region could be cleared.
        """
        cand, seq = self.store.begin_clear()
        if not cand and not force:
            return
        await self.syncer.request()
        if cand and self.store.finish_clear(cand, seq):
            self.persist.request().add_done_callback(_consume)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            self.pin_for_silent_writers()
            if self.store.clearing_due():
                try:
                    await self.sync_and_clear(force=False)
                except Exception as e:
                    log.error("periodic sync failed: %s", e)

    def pin_for_silent_writers(self) -> None:
        """Keep every dirty region (until CLEAR_DIRTY) while a controller that wrote here has
        been silent past `writer_silence`. It pings every 0.5 s, so silence means it is cut off
        from this replica, possibly from the others too, with writes that may have landed here
        and not there; without a pin the lazy clearing would forget them before a newer
        controller resynchronises (a partitioned controller keeps its connections open, so
        no disconnect pins them)."""
        now = asyncio.get_running_loop().time()
        silent = [c for c in self.conns if c.wrote and c.active is not None
                  and now - c.active > self.writer_silence]  # fmt: skip
        if silent:
            kept = self.store.pin_dirty()
            if kept:
                log.info("writer %s silent for %.1fs: %d dirty region(s) kept until CLEAR_DIRTY",
                         silent[0].peer, now - (silent[0].active or now), kept)  # fmt: skip

    async def grow(self, size: int) -> bool:
        """Grow the store to `size` bytes (GROW): extend the data file, make that durable, then
        record the size (bitmaps at their new length, then meta.json). Frames keep flowing
        meanwhile: writes inside the old size are unaffected, and the controller sends none
        past it before this answered. False when already that size (still persisted: a grow
        whose answer was lost is repeated). StoreError when refused, OSError from the disk."""
        async with self.grow_lock:
            changed = self.store.extend(size)
            await self.syncer.request()
            self.store.commit_size()
            await self.persist.request()
            await self.write_meta()
        return changed

    async def write_meta(self) -> None:
        """Persist meta.json (atomically) from the current in-memory meta."""
        async with self.meta_lock:
            snap = self.store.meta_snapshot()
            await asyncio.get_running_loop().run_in_executor(None, self.store.write_meta, snap)

    def info(self, claimer: ReplicaConnection | None = None) -> dict[str, Any]:
        """INFO answer: meta, mode, dirty state and stats (+ `quiet` and `talkers` for a CLAIM
        answer)."""
        out = self.store.info()
        if claimer is not None:
            others = [(c.active, c.owner) for c in self.conns if c is not claimer]
            out.update(self.talkers.claim_fields(asyncio.get_running_loop().time(), others))
        out["stats"] = self.stats.as_dict()
        out["connections"] = len(self.conns)
        return out

    def connection_gone(self, conn: ReplicaConnection) -> None:
        """A connection closed: forget it, remember when its controller last spoke."""
        self.conns.discard(conn)
        self.talkers.closed(conn.loop.time(), conn.active, conn.owner)

    def metrics_text(self, address: str) -> str:
        """`GET /metrics` of `--metrics` (Prometheus text format); `address` is the replica's
        `--listen`, its label (the controller's metrics name replicas by that address too)."""
        store = self.store
        out = Exposition()
        lbl = f'volume="{label(store.volume)}",replica="{label(address)}"'
        out.metric("jiva_replica_up", "gauge", "1 while the replica process serves", [(lbl, 1)])
        st = self.stats
        for key, mname, help_text in [
            ("reads", "jiva_replica_reads_total", "read requests served"),
            ("writes", "jiva_replica_writes_total", "write requests stored"),
            ("unmaps", "jiva_replica_unmaps_total", "unmap requests"),
            ("flushes", "jiva_replica_flushes_total", "flush requests"),
            ("bytes_read", "jiva_replica_read_bytes_total", "bytes read"),
            ("bytes_written", "jiva_replica_write_bytes_total", "bytes written"),
            ("rebuild_bytes_written", "jiva_replica_rebuild_written_bytes_total",
             "bytes written by rebuilds (copied to this replica)"),
            ("errors", "jiva_replica_io_errors_total", "requests that failed (disk or input)"),
            ("checksum_errors", "jiva_replica_checksum_errors_total",
             "blocks that failed their checksum when read"),
        ]:  # fmt: skip
            out.metric(mname, "counter", help_text, [(lbl, getattr(st, key))])
        out.metric("jiva_replica_dirty_regions", "gauge", "regions in the write-intent map",
                   [(lbl, len(store.dirty))])  # fmt: skip
        out.metric("jiva_replica_snapshots", "gauge", "snapshot layers held",
                   [(lbl, len(store.layers.ids()))])  # fmt: skip
        out.metric("jiva_replica_connections", "gauge", "controller connections",
                   [(lbl, len(self.conns))])  # fmt: skip
        out.metric("jiva_replica_size_bytes", "gauge", "volume size", [(lbl, store.size)])
        out.metric("jiva_replica_epoch", "gauge", "epoch recorded (term << 32 | view)",
                   [(lbl, store.epoch)])  # fmt: skip
        out.metric(
            "jiva_replica_store_mode",
            "gauge",
            "1 for the mode the replica's store records",
            [(f'{lbl},mode="{m}"', store.mode == m) for m in ("RW", "WO", "ERR")],
        )
        return out.text()
