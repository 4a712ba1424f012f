"""The replica server: serves one ReplicaStore over the wire protocol (DESIGN.md §3).

Frames of a connection are applied strictly in arrival order; a frame that needs disk metadata
first (a dirty bit going 0->1, SET_META) holds back the ones after it. Writes and cached reads go
straight to the page cache from the event loop; fsyncs and reads that would wait for the disk run
in worker threads.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from jiva_engine.protocol import auth, voting, wire
from jiva_engine.replica.store import ReplicaStore

log = logging.getLogger(__name__)

_pack = wire.HEADER.pack
_send_pieces = wire.send_pieces
_unpack_from = wire.HEADER.unpack_from
_MAGIC = wire.MAGIC
_READ, _WRITE = wire.READ, wire.WRITE
_FLAG_REBUILD = wire.FLAG_REBUILD
_MAX_IO = wire.MAX_IO
_RBUF = wire.RECV_BUF  # per-connection receive buffer for small frames
_BIG = 64 * 1024  # payloads at least this big are received straight into their own bytearray
_QUEUE_FRAMES_MAX = 4096  # frames buffered per connection before we stop reading
_QUEUE_BYTES_MAX = 64 << 20


class Coalescer:
    """Runs an async job on demand; each request() is answered by a run that started after it.

    Concurrent requests share one run (one fdatasync covers many FUA writes).
    """

    def __init__(self, job: Callable[[], Awaitable[None]], name: str) -> None:
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


class Stats:
    """I/O counters reported by INFO."""

    __slots__ = (
        "reads",
        "writes",
        "unmaps",
        "flushes",
        "bytes_read",
        "bytes_written",
        "rebuild_bytes_written",
        "errors",
        "reads_offloaded",
    )

    def __init__(self) -> None:
        for k in self.__slots__:
            setattr(self, k, 0)

    def as_dict(self) -> dict[str, int]:
        """Counters as a JSON-able dict."""
        return {k: getattr(self, k) for k in self.__slots__}


class ReplicaServer:
    """Accepts controller connections for one store; owns the sync/bitmap background work."""

    def __init__(
        self,
        store: ReplicaStore,
        secret: bytes | None = None,
        sync_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.secret = secret
        self.sync_interval = sync_interval
        self.stats = Stats()
        self.conns: set[ReplicaConnection] = set()
        self.meta_lock = asyncio.Lock()
        self.persist = Coalescer(self._persist_job, "dirty-map write")
        self.syncer = Coalescer(self._sync_job, "fdatasync")
        self._server: asyncio.base_events.Server | None = None
        self._tick: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        # a connection that has not authenticated after this many seconds is closed, so idle or
        # trickling peers cannot pile up file descriptors
        self.auth_timeout = 10.0
        self.stopping = False
        self.last_closed_active: float | None = None  # when a closed controller last spoke

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
        return self._server.sockets[0].getsockname()[1]

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

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
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
            store = self.store
            if store.dirty and (store.dirty - store.sticky):
                try:
                    await self.sync_and_clear(force=False)
                except Exception as e:
                    log.error("periodic sync failed: %s", e)

    async def write_meta(self) -> None:
        """Persist meta.json (atomically) from the current in-memory meta."""
        async with self.meta_lock:
            snap = self.store.meta_snapshot()
            await asyncio.get_running_loop().run_in_executor(None, self.store.write_meta, snap)

    def info(self, claimer: ReplicaConnection | None = None) -> dict[str, Any]:
        """INFO answer: meta, mode, dirty state and stats (+ `quiet` for a CLAIM answer)."""
        store = self.store
        out = dict(store.meta)
        out["tracking"] = sorted(store.missed)
        if claimer is not None:
            others = [c.active for c in self.conns if c is not claimer]
            now = asyncio.get_running_loop().time()
            out["quiet"] = voting.quiet_seconds(now, others, self.last_closed_active)
        out["mode"] = store.mode
        out["dirty"] = bool(store.dirty)
        out["dirty_regions"] = len(store.dirty)
        out["stats"] = self.stats.as_dict()
        out["connections"] = len(self.conns)
        return out


def _probe_nowait() -> int:
    """RWF_NOWAIT when this kernel/filesystem supports it for buffered reads, else 0."""
    flag = getattr(os, "RWF_NOWAIT", 0)
    if not flag or not hasattr(os, "preadv"):
        return 0
    import tempfile

    try:
        with tempfile.TemporaryFile() as f:
            f.write(b"x" * 512)
            f.flush()
            os.preadv(f.fileno(), (bytearray(512),), 0, flag)
        return flag
    except OSError:
        return 0


def _preadv_plain(fd: int, bufs: Any, off: int, flags: int = 0) -> int:
    return os.preadv(fd, bufs, off)


_NOWAIT = _probe_nowait()
_preadv = os.preadv if _NOWAIT else _preadv_plain


def _disable_nowait() -> None:
    global _NOWAIT, _preadv
    log.info("RWF_NOWAIT unsupported for this data file: reading in the event loop")
    _NOWAIT = 0
    _preadv = _preadv_plain


class _Malformed(Exception):
    pass


def _keepalive(sock: socket.socket | None) -> None:
    """Notice a controller whose host vanished (no FIN) within ~10 s, even when idle."""
    if sock is None or not hasattr(sock, "setsockopt"):
        return
    opts = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 4),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 2),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), 10_000),
    ]
    for level, name, value in opts:
        if name is not None:
            try:
                sock.setsockopt(level, name, value)
            except OSError:
                pass


class ReplicaConnection(wire.RecvBuffer, asyncio.BufferedProtocol):
    """One controller connection: handshake, then frames applied in order.

    Bytes are received with recv_into: small frames into one reusable buffer (plain READs and
    WRITEs are applied straight from it), big WRITE payloads into their own bytearray.
    """

    def __init__(self, server: ReplicaServer) -> None:
        self.server = server
        self.store = server.store
        self.stats = server.stats
        self.buf = bytearray(_RBUF)
        self.mv = memoryview(self.buf)
        self.start = 0  # received, not yet consumed: buf[start:end]
        self.end = 0
        self.big: bytearray | None = None  # a big payload being received in place
        self.big_mv: memoryview | None = None
        self.big_filled = 0
        self.big_hdr: tuple = ()
        self.queue: collections.deque[tuple] = collections.deque()
        self.queued_bytes = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.blocked = False
        self.closing = False
        self.authed = False
        self.active: float | None = None  # loop time this (authenticated) peer last sent bytes
        self.wrote = False  # this connection changed data (its loss pins the dirty regions)
        self.read_paused = False
        self.write_paused = False
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.nonce = auth.new_nonce()
        self.loop = asyncio.get_event_loop()

    # ------------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=8 << 20)  # type: ignore[attr-defined]
        _keepalive(transport.get_extra_info("socket"))
        self.server.conns.add(self)
        store = self.store
        hello = auth.hello_body(store.volume, self.nonce, self.server.secret, "replica", store.id)
        self._reply(wire.HELLO, 0, wire.dumps(hello))
        log.debug("connection from %s", self.peer)
        asyncio.get_running_loop().call_later(self.server.auth_timeout, self._auth_deadline)

    def _auth_deadline(self) -> None:
        if not self.authed and not self.closing and not self.transport.is_closing():
            log.warning("%s did not authenticate within %.0fs; closing", self.peer,
                        self.server.auth_timeout)  # fmt: skip
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        self.server.conns.discard(self)
        if self.active is not None:
            self.server.last_closed_active = max(self.server.last_closed_active or 0, self.active)
        log.debug("connection from %s closed", self.peer)
        if self.wrote and not self.server.stopping:
            # A controller that goes away may leave writes that reached this replica but not
            # its peers; keep every region dirty now until a controller's CLEAR_DIRTY says the
            # members agree, instead of letting the lazy clearing forget them.
            store = self.store
            kept = store.dirty - store.sticky
            store.sticky |= store.dirty
            if kept:
                log.info(
                    "writer %s disconnected: %d dirty region(s) kept until CLEAR_DIRTY",
                    self.peer,
                    len(kept),
                )

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        want_pause = self.write_paused or (
            len(self.queue) > _QUEUE_FRAMES_MAX or self.queued_bytes > _QUEUE_BYTES_MAX
        )
        if want_pause != self.read_paused and not self.closing:
            self.read_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        if self.authed:
            self.active = self.loop.time()
        try:
            if self.big is not None:
                self.big_filled += nbytes
                if self.big_filled == len(self.big):
                    frame = (*self.big_hdr, self.big)
                    self.big = self.big_mv = None
                    self._enqueue([frame])
                return
            self.end += nbytes
            self._received()
        except Exception as e:  # a bug must cost one connection, not the process or a traceback
            log.error("internal error serving %s: %r; closing that connection", self.peer, e)
            self.closing = True
            self.queue.clear()
            self.transport.abort()

    def _received(self) -> None:
        with self.mv[self.start : self.end] as src:
            n = len(src)
            try:
                if self.blocked or self.queue or not self.authed:
                    pos = 0
                else:
                    pos = self._fast(src)
                frames, pos = wire.split_frames(src, pos)
                if n - pos >= wire.HEADER_SIZE:  # a partial frame: receive a big payload in place
                    magic, op, st, plen, rid, off, ln, ep = _unpack_from(src, pos)
                    if plen >= _BIG:
                        if not self.authed:  # no big allocations for strangers
                            raise wire.FrameError(f"{plen}-byte payload before authentication")
                        big = bytearray(plen)
                        have = n - pos - wire.HEADER_SIZE
                        big[:have] = src[pos + wire.HEADER_SIZE :]
                        self.big, self.big_mv, self.big_filled = big, memoryview(big), have
                        self.big_hdr = (op, st, rid, off, ln, ep)
                        pos = n
            except wire.FrameError as e:
                self._malformed(str(e))
                return
        self.start += pos
        if self.start == self.end:
            self.start = self.end = 0
        if frames:
            self._enqueue(frames)

    def _enqueue(self, frames: list[tuple]) -> None:
        q = self.queue
        q.extend(frames)
        self.queued_bytes += sum(len(f[6]) for f in frames)
        if self.blocked:
            self._premark(frames)
            self._update_reading()
        else:
            self._run()

    def _fast(self, src: memoryview) -> int:
        """Apply the plain READs/WRITEs at the head of `src` without queueing or copying.

        Returns where it stopped: at a partial frame, or at the first frame that needs the
        general path (control ops, errors, a region not yet durably dirty, ...).
        """
        store = self.store
        epoch = store.meta["epoch"]
        size = store.size
        shift = store.shift
        dirty = store.dirty
        und = store.undurable
        lastw = store.last_write
        missed = store.missed
        fd = store.fd
        st = self.stats
        out = self.out
        pwrite = os.pwrite
        preadv = _preadv
        n = len(src)
        pos = 0
        seq = store.wseq
        replies = 0
        with memoryview(src) as mv:
            while n - pos >= 40:
                magic, op, _st, plen, rid, off, ln, ep = _unpack_from(src, pos)
                end = pos + 40 + plen
                if end > n or magic != _MAGIC or ep < epoch:
                    break
                if op == _WRITE:
                    r0 = off >> shift
                    if (
                        not plen
                        or (off | plen) & 511
                        or off + plen > size
                        or ln & ~_FLAG_REBUILD  # FUA and unknown flags: general path
                        or (off + plen - 1) >> shift != r0
                        or r0 not in dirty
                        or (und and r0 in und)
                    ):
                        break
                    try:
                        if pwrite(fd, mv[pos + 40 : end], off) != plen:
                            break  # short write: let the general path finish it
                    except OSError:
                        break
                    if missed:
                        store.note_missed(off, plen)
                    seq += 1
                    lastw[r0] = seq
                    st.writes += 1
                    st.bytes_written += plen
                    if ln:
                        st.rebuild_bytes_written += plen
                    out.append(_pack(_MAGIC, _WRITE, 0, 0, rid, 0, 0, epoch))
                elif op == _READ:
                    if ln <= 0 or ln > _MAX_IO or (off | ln) & 511 or off + ln > size or plen:
                        break
                    data = bytearray(ln)
                    try:  # only from the page cache here; a disk read goes to a thread
                        if preadv(fd, (data,), off, _NOWAIT) != ln:
                            break
                    except OSError:
                        break
                    st.reads += 1
                    st.bytes_read += ln
                    out.append(_pack(_MAGIC, _READ, 0, ln, rid, 0, 0, epoch))
                    out.append(data)
                else:
                    break
                replies += 1
                pos = end
        if seq != store.wseq:
            store.wseq = seq
            self.wrote = True
        if replies and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return pos

    def _malformed(self, reason: str) -> None:
        log.warning("malformed frame from %s: %s; closing that connection", self.peer, reason)
        self.stats.errors += 1
        self.closing = True
        self.queue.clear()
        self._flush()
        self.transport.close()

    # ------------------------------------------------------------------ output
    def _reply(
        self, op: int, req_id: int, payload: bytes = b"", status: int = 0, offset: int = 0
    ) -> None:
        out = self.out
        out.append(
            _pack(_MAGIC, op, status, len(payload), req_id, offset, 0, self.store.meta["epoch"])
        )
        if payload:
            out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _error(self, op: int, req_id: int, status: int, message: str) -> None:
        self.stats.errors += 1
        self._reply(op, req_id, message.encode(), status)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out:
            self.out = []
            if self.transport is not None and not self.transport.is_closing():
                _send_pieces(self.transport, out)

    # ------------------------------------------------------------------ frame loop
    def _run(self) -> None:
        q = self.queue
        try:
            while q and not self.blocked and not self.closing:
                f = q.popleft()
                self.queued_bytes -= len(f[6])
                op = f[0]
                if op == _WRITE and self.authed:
                    self._write(f)
                elif op == _READ and self.authed:
                    self._read(f)
                else:
                    self._control(f)
        except _Malformed as e:
            self._malformed(str(e))
            return
        if self.read_paused:
            self._update_reading()

    def _block(self, coro: Awaitable[None]) -> None:
        """Hold back later frames of this connection until `coro` (which replies) is done."""
        self.blocked = True
        self.server.spawn(coro).add_done_callback(self._unblock)

    def _unblock(self, task: asyncio.Task) -> None:
        self.blocked = False
        if not task.cancelled() and task.exception() is not None:
            log.error("request from %s failed: %r", self.peer, task.exception())
        if not self.closing:
            self._run()

    def _stale(self, op: int, req_id: int, epoch: int) -> None:
        self._error(
            op,
            req_id,
            wire.STALE_EPOCH,
            f"request epoch {epoch} is older than the replica's epoch {self.store.meta['epoch']}",
        )

    # ------------------------------------------------------------------ data ops
    def _write(self, f: tuple) -> None:
        _op, _st, rid, off, flags, ep, payload = f
        store = self.store
        if ep < store.meta["epoch"]:
            return self._stale(_WRITE, rid, ep)
        n = len(payload)
        if n == 0 or off % 512 or n % 512 or off + n > store.size:
            why = store.check_range(off, n) or "bad range"
            return self._error(_WRITE, rid, wire.EINVAL, f"WRITE refused: {why}")
        if store.needs_intent(off, n):
            store.mark(off, n)
            self._premark(self.queue)
            return self._block(self._write_slow(f))
        self._apply_write(f)

    def _premark(self, frames: Any) -> None:
        """Mark the regions of queued writes/unmaps now, so one bitmap write covers them all."""
        store = self.store
        size = store.size
        for f in frames:
            op = f[0]
            if op == _WRITE:
                off, n = f[3], len(f[6])
            elif op == wire.UNMAP:
                off, n = f[3], f[4]
            else:
                continue
            if n > 0 and off >= 0 and off + n <= size and store.needs_intent(off, n):
                store.mark(off, n)

    async def _write_slow(self, f: tuple) -> None:
        store = self.store
        try:
            while store.needs_intent(f[3], len(f[6])):
                await self.server.persist.request()
        except Exception as e:
            return self._error(_WRITE, f[2], wire.EIO, f"cannot record write intent: {e}")
        self._apply_write(f)

    def _apply_write(self, f: tuple) -> None:
        _op, _st, rid, off, flags, _ep, payload = f
        n = len(payload)
        store = self.store
        try:
            store.pwrite(off, payload)
        except OSError as e:
            return self._error(_WRITE, rid, wire.EIO, f"write failed: {e}")
        store.note_write(off, n)
        self.wrote = True
        st = self.stats
        st.writes += 1
        st.bytes_written += n
        if flags & wire.FLAG_REBUILD:
            st.rebuild_bytes_written += n
        if flags & wire.FLAG_FUA:
            self.server.spawn(self._synced_reply(_WRITE, rid))
        else:
            self._reply(_WRITE, rid)

    async def _synced_reply(self, op: int, rid: int) -> None:
        try:
            await self.server.syncer.request()
        except Exception as e:
            return self._error(op, rid, wire.EIO, f"fdatasync failed: {e}")
        self._reply(op, rid)

    def _read(self, f: tuple) -> None:
        _op, _st, rid, off, n, ep, _payload = f
        store = self.store
        if ep < store.meta["epoch"]:
            return self._stale(_READ, rid, ep)
        if n > wire.MAX_IO or n <= 0 or off % 512 or n % 512 or off + n > store.size:
            why = store.check_range(off, n) or f"length {n} exceeds {wire.MAX_IO}"
            return self._error(_READ, rid, wire.EINVAL, f"READ refused: {why}")
        data = bytearray(n)
        try:
            got = _preadv(store.fd, (data,), off, _NOWAIT)
        except BlockingIOError:
            got = -1
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not _NOWAIT:
                return self._error(_READ, rid, wire.EIO, f"read failed: {e}")
            _disable_nowait()  # this filesystem has no RWF_NOWAIT: plain reads from now on
            got = -1
        if got != n:  # not (all) in the page cache: read in a thread, keep serving meanwhile
            self.stats.reads_offloaded += 1
            self.server.spawn(self._read_slow(rid, off, n))
            return
        self._read_done(rid, n, data)

    async def _read_slow(self, rid: int, off: int, n: int) -> None:
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, self.store.pread, off, n)
        except OSError as e:
            return self._error(_READ, rid, wire.EIO, f"read failed: {e}")
        self._read_done(rid, n, data)

    def _read_done(self, rid: int, n: int, data: bytes | bytearray) -> None:
        st = self.stats
        st.reads += 1
        st.bytes_read += n
        self._reply(_READ, rid, data)

    # ------------------------------------------------------------------ control ops
    def _json(self, payload: bytes) -> Any:
        try:
            return wire.loads(payload)
        except wire.FrameError as e:
            raise _Malformed(str(e)) from None

    def _control(self, f: tuple) -> None:
        op, _st, rid, off, length, ep, payload = f
        if not self.authed:
            if op == wire.AUTH:
                return self._auth(rid, self._json(payload))
            return self._error(op, rid, wire.AUTH_REQUIRED, "authenticate first (AUTH)")
        store = self.store
        if op == wire.PING:
            return self._reply(op, rid)
        if op == wire.INFO:
            return self._reply(op, rid, wire.dumps(self.server.info()))
        if op == wire.DIRTY_MAP:
            body = {
                "region_size": store.region_size,
                "dirty": sorted(store.dirty),
                "missed_granularity": store.mgran,
                "missed": {str(e): store.missed_runs(e) for e in store.missed},
                "excluded": {str(e): store.excluded.get(e) for e in store.missed},
            }
            return self._reply(op, rid, wire.dumps(body))
        if op == wire.EXTENTS:
            if off < 0 or length <= 0 or off + length > store.size:
                return self._error(op, rid, wire.EINVAL, store.check_range(off, length) or "")
            self.server.spawn(self._extents(rid, off, length))
            return None
        if op == wire.AUTH:
            return self._error(op, rid, wire.EINVAL, "already authenticated")
        if op == wire.BYE:
            self.wrote = False  # orderly: the client says nothing of it is in flight
            self._reply(op, rid)
            return self._close_after_reply()
        if op not in wire.OP_NAMES or op == wire.HELLO:
            return self._error(op, rid, wire.UNKNOWN_OP, f"unknown operation {op}")
        # the rest change state: fenced by epoch
        if ep < store.meta["epoch"]:
            return self._stale(op, rid, ep)
        if op == wire.FLUSH:
            self.stats.flushes += 1
            self.server.spawn(self._flush_op(rid))
        elif op == wire.UNMAP:
            self._unmap(rid, off, length)
        elif op == wire.READV:
            self._readv(rid, payload)
        elif op == wire.WRITEV:
            self._writev(rid, length, payload)
        elif op == wire.SET_META:
            body = self._json(payload)
            self._block(self._set_meta(rid, ep, body))
        elif op == wire.CLAIM:
            self._block(self._claim(rid, ep))
        elif op == wire.SET_MODE:
            body = self._json(payload)
            self._block(self._set_mode(rid, body))
        elif op == wire.CLEAR_DIRTY:
            body = self._json(payload)
            self._block(self._clear_dirty(rid, body))

    def _auth(self, rid: int, body: Any) -> None:
        store = self.store
        try:
            answer = auth.answer_auth(self.server.secret, store.volume, self.nonce, body)
        except ValueError as e:
            raise _Malformed(str(e)) from None
        except auth.Refused as e:
            if e.wrong_volume:
                log.warning("refused %s: %s", self.peer, e)
            else:
                log.warning("authentication of %s failed (wrong secret)", self.peer)
            status = wire.WRONG_VOLUME if e.wrong_volume else wire.AUTH_FAILED
            self._error(wire.AUTH, rid, status, str(e))
            return self._close_after_reply()
        self.authed = True
        self.active = self.loop.time()
        log.info("controller %s authenticated", self.peer)
        self._reply(wire.AUTH, rid, wire.dumps({"mac": answer}))

    def _close_after_reply(self) -> None:
        self.closing = True
        self.queue.clear()
        self._flush()
        self.transport.close()

    def _ranges(self, op: int, rid: int, body: Any) -> list[tuple[int, int]] | None:
        """Validate a READV/WRITEV range list; answers EINVAL and returns None when bad."""
        store = self.store
        name = wire.OP_NAMES[op]
        if not isinstance(body, list) or not 0 < len(body) <= wire.MAX_VEC:
            self._error(op, rid, wire.EINVAL, f"{name}: need 1..{wire.MAX_VEC} [offset, length]")
            return None
        out: list[tuple[int, int]] = []
        total = 0
        for r in body:
            if (
                not isinstance(r, list)
                or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            ):
                self._error(op, rid, wire.EINVAL, f"{name}: bad range {r!r}")
                return None
            why = store.check_range(r[0], r[1])
            if why:
                self._error(op, rid, wire.EINVAL, f"{name} refused: {why}")
                return None
            total += r[1]
            out.append((r[0], r[1]))
        if total > wire.MAX_IO:
            self._error(op, rid, wire.EINVAL, f"{name}: {total} bytes exceed {wire.MAX_IO}")
            return None
        return out

    def _readv(self, rid: int, payload: Any) -> None:
        ranges = self._ranges(wire.READV, rid, self._json(payload))
        if ranges is None:
            return
        store = self.store
        data = bytearray(sum(n for _, n in ranges))
        mv = memoryview(data)
        pos = 0
        try:
            for off, n in ranges:
                got = os.preadv(store.fd, (mv[pos : pos + n],), off)
                if got < n:  # past EOF (truncated behind our back): zeroes
                    mv[pos + got : pos + n] = bytes(n - got)
                pos += n
        except OSError as e:
            return self._error(wire.READV, rid, wire.EIO, f"read failed: {e}")
        finally:
            mv.release()
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        self._reply(wire.READV, rid, data)

    def _writev(self, rid: int, flags: int, payload: Any) -> None:
        op = wire.WRITEV
        mv = memoryview(payload)
        hl = int.from_bytes(mv[:4], "big") if len(mv) >= 4 else -1
        if hl < 0 or 4 + hl > len(mv):
            return self._error(op, rid, wire.EINVAL, "WRITEV: payload too short for its header")
        ranges = self._ranges(op, rid, self._json(bytes(mv[4 : 4 + hl])))
        if ranges is None:
            return
        data = mv[4 + hl :]
        if len(data) != sum(n for _, n in ranges):
            return self._error(op, rid, wire.EINVAL, "WRITEV: data length != sum of the ranges")
        store = self.store
        if any(store.needs_intent(off, n) for off, n in ranges):
            for off, n in ranges:
                store.mark(off, n)
            self._premark(self.queue)
            return self._block(self._writev_slow(rid, flags, ranges, data))
        self._apply_writev(rid, flags, ranges, data)

    async def _writev_slow(
        self, rid: int, flags: int, ranges: list[tuple[int, int]], data: memoryview
    ) -> None:
        store = self.store
        try:
            while any(store.needs_intent(off, n) for off, n in ranges):
                await self.server.persist.request()
        except Exception as e:
            return self._error(wire.WRITEV, rid, wire.EIO, f"cannot record write intent: {e}")
        self._apply_writev(rid, flags, ranges, data)

    def _apply_writev(
        self, rid: int, flags: int, ranges: list[tuple[int, int]], data: memoryview
    ) -> None:
        store = self.store
        pos = 0
        try:
            for off, n in ranges:
                store.pwrite(off, data[pos : pos + n])
                store.note_write(off, n)
                pos += n
        except OSError as e:
            return self._error(wire.WRITEV, rid, wire.EIO, f"write failed: {e}")
        finally:
            self.wrote = True
        st = self.stats
        st.writes += 1
        st.bytes_written += pos
        if flags & wire.FLAG_REBUILD:
            st.rebuild_bytes_written += pos
        self._reply(wire.WRITEV, rid)

    def _unmap(self, rid: int, off: int, length: int) -> None:
        store = self.store
        why = store.check_range(off, length)
        if why:
            return self._error(wire.UNMAP, rid, wire.EINVAL, f"UNMAP refused: {why}")
        if store.needs_intent(off, length):
            store.mark(off, length)
            self._premark(self.queue)
            return self._block(self._unmap_slow(rid, off, length))
        self._apply_unmap(rid, off, length)

    async def _unmap_slow(self, rid: int, off: int, length: int) -> None:
        try:
            while self.store.needs_intent(off, length):
                await self.server.persist.request()
        except Exception as e:
            return self._error(wire.UNMAP, rid, wire.EIO, f"cannot record write intent: {e}")
        self._apply_unmap(rid, off, length)

    def _apply_unmap(self, rid: int, off: int, length: int) -> None:
        try:
            self.store.punch(off, length)
        except OSError as e:
            return self._error(wire.UNMAP, rid, wire.EIO, f"unmap failed: {e}")
        self.store.note_write(off, length)
        self.wrote = True
        self.stats.unmaps += 1
        self._reply(wire.UNMAP, rid)

    async def _extents(self, rid: int, off: int, length: int) -> None:
        # in a thread: a fragmented file needs many lseeks; writes already applied are seen
        loop = asyncio.get_running_loop()
        try:
            runs = await loop.run_in_executor(None, self.store.extents, off, length)
        except OSError as e:
            return self._error(wire.EXTENTS, rid, wire.EIO, f"extents failed: {e}")
        self._reply(wire.EXTENTS, rid, wire.dumps(runs))

    async def _flush_op(self, rid: int) -> None:
        try:
            await self.server.sync_and_clear()
        except Exception as e:
            return self._error(wire.FLUSH, rid, wire.EIO, f"fdatasync failed: {e}")
        self._reply(wire.FLUSH, rid)

    async def _claim(self, rid: int, epoch: int) -> None:
        """CLAIM: promise a new controller term (strictly above ours), answer INFO + quiet."""
        store = self.store
        try:
            voting.check_claim(store.meta, epoch)
        except voting.VoteError as e:
            status = wire.STALE_EPOCH if e.stale else wire.EINVAL
            return self._error(wire.CLAIM, rid, status, str(e))
        voting.apply_claim(store.meta, epoch)
        try:
            await self.server.write_meta()
        except Exception as e:
            return self._error(wire.CLAIM, rid, wire.EIO, f"CLAIM could not be persisted: {e}")
        log.info("epoch %s promised to %s", voting.epoch_text(epoch), self.peer)
        self._reply(wire.CLAIM, rid, wire.dumps(self.server.info(claimer=self)))

    async def _set_meta(self, rid: int, hdr_epoch: int, body: Any) -> None:
        op = wire.SET_META
        store = self.store
        allowed = {
            "epoch",
            "membership",
            "voters",
            "start_tracking",
            "excluded",
            "stop_tracking",
            "drop_seed",
            "clean",
            "pin_dirty",
        }
        if not isinstance(body, dict) or set(body) - allowed:
            extra = sorted(set(body) - allowed) if isinstance(body, dict) else "not an object"
            return self._error(op, rid, wire.EINVAL, f"SET_META: unexpected fields {extra}")
        start = body.get("start_tracking")
        excluded = body.get("excluded")
        stop = body.get("stop_tracking")
        drop_seed = body.get("drop_seed")
        clean = body.get("clean")
        pin = body.get("pin_dirty")
        try:
            voting.check_accept(store.meta, body)
        except voting.VoteError as e:
            status = wire.STALE_EPOCH if e.stale else wire.EINVAL
            return self._error(op, rid, status, str(e))
        if start is not None and not isinstance(start, bool):
            return self._error(op, rid, wire.EINVAL, "SET_META: start_tracking must be a boolean")
        if excluded is not None and (
            not isinstance(excluded, list) or not all(isinstance(x, str) for x in excluded)
        ):
            return self._error(op, rid, wire.EINVAL, "SET_META: excluded must list replica ids")
        if stop is not None and (
            not isinstance(stop, list) or not all(isinstance(e, int) for e in stop)
        ):
            return self._error(op, rid, wire.EINVAL, "SET_META: stop_tracking must list epochs")
        if drop_seed is not None and (
            not isinstance(drop_seed, list)
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in drop_seed)
        ):
            return self._error(op, rid, wire.EINVAL, "SET_META: drop_seed must list epochs")
        if clean is not None and not isinstance(clean, bool):
            return self._error(op, rid, wire.EINVAL, "SET_META: clean must be a boolean")
        if pin is not None and not isinstance(pin, bool):
            return self._error(op, rid, wire.EINVAL, "SET_META: pin_dirty must be a boolean")
        voting.apply_accept(store.meta, body)
        if clean is not None:
            store.meta["clean"] = clean
        if pin:
            # the controller lost its quorum with writes in flight: keep every region dirty now
            # until a controller's CLEAR_DIRTY, so a newer controller resynchronises them
            store.sticky |= store.dirty
        try:
            if start:
                store.start_tracking(store.meta["epoch"], excluded)
                await self.server.persist.request()  # the change map exists before meta names it
            if stop:
                store.stop_tracking(stop)
            if drop_seed:
                store.drop_seed(drop_seed)
            await self.server.write_meta()
            if stop:
                await self.server.persist.request()  # meta no longer names them: delete files
        except Exception as e:
            return self._error(op, rid, wire.EIO, f"SET_META could not be persisted: {e}")
        log.info(
            "meta updated by %s: epoch %s view %s membership %s tracking %s",
            self.peer,
            voting.epoch_text(store.meta["epoch"]),
            voting.epoch_text(store.meta.get("view_epoch")),
            store.meta["membership"],
            sorted(store.missed),
        )
        self._reply(op, rid, wire.dumps(self.server.info()))

    async def _set_mode(self, rid: int, body: Any) -> None:
        op = wire.SET_MODE
        if not isinstance(body, dict) or body.get("mode") not in ("RW", "WO"):
            return self._error(op, rid, wire.EINVAL, 'SET_MODE needs {"mode": "RW" or "WO"}')
        self.store.meta["rebuilding"] = body["mode"] == "WO"
        try:
            await self.server.write_meta()
        except Exception as e:
            return self._error(op, rid, wire.EIO, f"SET_MODE could not be persisted: {e}")
        log.info(
            "mode set to %s by %s (reported mode %s)", body["mode"], self.peer, self.store.mode
        )
        self._reply(op, rid, wire.dumps(self.server.info()))

    async def _clear_dirty(self, rid: int, body: Any) -> None:
        op = wire.CLEAR_DIRTY
        regions = body.get("regions") if isinstance(body, dict) else None
        if body is not None and not isinstance(body, dict):
            return self._error(op, rid, wire.EINVAL, 'CLEAR_DIRTY needs {"regions": [..] | null}')
        if regions is not None and (
            not isinstance(regions, list) or not all(isinstance(r, int) for r in regions)
        ):
            return self._error(op, rid, wire.EINVAL, "CLEAR_DIRTY: regions must be integers")
        store = self.store
        seq = store.wseq
        try:
            await self.server.syncer.request()
            store.clear_regions(regions, seq)
            await self.server.persist.request()
        except Exception as e:
            return self._error(op, rid, wire.EIO, f"CLEAR_DIRTY failed: {e}")
        self._reply(op, rid, wire.dumps({"dirty": sorted(store.dirty)}))
