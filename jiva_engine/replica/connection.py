"""One controller connection to a replica: handshake, then frames applied strictly in order.

The connection only parses, validates and answers; every change of the replica's state is a
`ReplicaStore` method. Frames that change data follow one sequence (`_mutate`): if a region is
not durably dirty yet, mark it, hold back the frames after it until the bitmap is on disk, then
apply. Plain READs/WRITEs at the head of the receive buffer are applied straight from it
(`_fast`); a READ that would wait for the disk runs in a worker thread while later frames keep
flowing, so its answer may overtake (and may see) a WRITE sent after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from jiva_engine.buffers import POOL
from jiva_engine.protocol import auth, voting, wire
from jiva_engine.protocol.wire import Frame
from jiva_engine.replica import snapshots
from jiva_engine.replica.checksums import block_sums
from jiva_engine.replica.store import DROP, SnapshotError, StoreError

if TYPE_CHECKING:
    from jiva_engine.replica.server import ReplicaServer

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
_SET_META_FIELDS = frozenset(
    {"epoch", "membership", "voters", "start_tracking", "excluded", "stop_tracking",
     "drop_seed", "clean", "pin_dirty"}
)  # fmt: skip


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


class _CacheRead:
    """preadv that only reads what is in the page cache (RWF_NOWAIT) where the kernel and the
    filesystem can; elsewhere a plain preadv (then a read may block the loop briefly)."""

    def __init__(self) -> None:
        self.flag = _probe_nowait()

    def __call__(self, fd: int, buf: bytearray, off: int) -> int:
        if self.flag:
            return os.preadv(fd, (buf,), off, self.flag)
        return os.preadv(fd, (buf,), off)

    def disable(self) -> None:
        log.info("RWF_NOWAIT unsupported for this data file: reading in the event loop")
        self.flag = 0


_cache_read = _CacheRead()


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
            with contextlib.suppress(OSError):
                sock.setsockopt(level, name, value)


def _ints(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in x)


class ReplicaConnection(wire.RecvBuffer, asyncio.BufferedProtocol):
    """One controller connection. Bytes are received with recv_into: small frames into one
    reusable buffer (plain READs and WRITEs are applied straight from it), big WRITE payloads
    into their own bytearray."""

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
        self.big_hdr: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
        self.queue: collections.deque[Frame] = collections.deque()
        self.queued_bytes = 0
        self.out: list[bytes | bytearray] = []
        self.flush_scheduled = False
        self.blocked = False  # a frame waits for the disk: the ones after it wait too
        self.closing = False
        self.authed = False
        self.active: float | None = None  # loop time this (authenticated) peer last sent bytes
        self.owner: dict[str, Any] | None = None  # the controller's identity (AUTH, CLAIM)
        self.wrote = False  # this connection changed data (its loss pins the dirty regions)
        self.read_paused = False
        self.write_paused = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.peer = "?"
        self.nonce = auth.new_nonce()
        self.loop = asyncio.get_event_loop()
        self.ops: dict[int, Callable[[Frame], None]] = {
            wire.READ: self._read,
            wire.WRITE: self._write,
            wire.WRITEV: self._writev,
            wire.UNMAP: self._unmap,
            wire.READV: self._readv,
            wire.FLUSH: self._flush_op,
            wire.PING: self._ping,
            wire.INFO: self._info,
            wire.DIRTY_MAP: self._dirty_map,
            wire.EXTENTS: self._extents,
            wire.BYE: self._bye,
            wire.AUTH: self._auth,
            wire.SET_META: self._set_meta,
            wire.SET_MODE: self._set_mode,
            wire.CLEAR_DIRTY: self._clear_dirty,
            wire.CLAIM: self._claim,
            wire.GROW: self._grow,
            wire.CHECKSUMS: self._checksums,
            wire.SNAPSHOT: self._snapshot,
            wire.SNAP_DELETE: self._snap_delete,
            wire.SNAP_LIST: self._snap_list,
            wire.SNAP_EXTENTS: self._snap_extents,
            wire.SNAP_READ: self._snap_read,
            wire.SNAP_RESET: self._snap_reset,
            wire.DROP: self._drop,
        }

    # ------------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.transport.set_write_buffer_limits(high=8 << 20)
        _keepalive(transport.get_extra_info("socket"))
        self.server.conns.add(self)
        store = self.store
        hello = auth.hello_body(store.volume, self.nonce, self.server.secret, "replica", store.id)
        self._reply(wire.HELLO, 0, wire.dumps(hello))
        log.debug("connection from %s", self.peer)
        self.loop.call_later(self.server.auth_timeout, self._auth_deadline)

    def _auth_deadline(self) -> None:
        if not self.authed and not self.closing and not self.transport.is_closing():
            log.warning("%s did not authenticate within %.0fs; closing", self.peer,
                        self.server.auth_timeout)  # fmt: skip
            self.transport.close()

    def connection_lost(self, _exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        self.server.connection_gone(self)
        log.debug("connection from %s closed", self.peer)
        if self.wrote and not self.server.stopping:
            # A controller that goes away may leave writes that reached this replica but not
            # its peers: keep every region dirty now until a controller's CLEAR_DIRTY says the
            # members agree, instead of letting the lazy clearing forget them.
            kept = self.store.pin_dirty()
            if kept:
                log.info("writer %s disconnected: %d dirty region(s) kept until CLEAR_DIRTY",
                         self.peer, kept)  # fmt: skip

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
                    frame = Frame(*self.big_hdr, self.big)
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
                pos = 0 if self.blocked or self.queue or not self.authed else self._fast(src)
                frames, pos = wire.split_frames(src, pos)
                if n - pos >= wire.HEADER_SIZE:  # a partial frame: receive a big payload in place
                    _magic, op, st, plen, rid, off, ln, ep = _unpack_from(src, pos)
                    if plen >= _BIG:
                        if not self.authed:  # no big allocations for strangers
                            raise wire.FrameError(f"{plen}-byte payload before authentication")
                        big = POOL.take(plen)  # every byte is received into it
                        POOL.lend(big)  # reused once the frame is done with it
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

    def _enqueue(self, frames: list[Frame]) -> None:
        self.queue.extend(frames)
        self.queued_bytes += sum(len(f.payload) for f in frames)
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
        epoch = store.epoch
        size = store.size
        write_if_durable = store.write_if_durable
        fd = store.fd
        st = self.stats
        out = self.out
        cache_read = _cache_read
        bad_sums = store.sums.bad
        layered = bool(store.layers)
        n = len(src)
        pos = 0
        replies = 0
        wrote = False
        with memoryview(src) as mv:
            while n - pos >= 40:
                magic, op, _st, plen, rid, off, ln, ep = _unpack_from(src, pos)
                end = pos + 40 + plen
                if end > n or magic != _MAGIC or ep < epoch:
                    break
                if op == _WRITE:
                    if (
                        not plen
                        or (off | plen) & 511
                        or off + plen > size
                        or ln & ~_FLAG_REBUILD  # FUA and unknown flags: general path
                        or not write_if_durable(off, mv[pos + 40 : end])
                    ):
                        break
                    wrote = True
                    st.writes += 1
                    st.bytes_written += plen
                    if ln:
                        st.rebuild_bytes_written += plen
                    out.append(_pack(_MAGIC, _WRITE, 0, 0, rid, 0, 0, epoch))
                elif op == _READ:
                    # whole 4 KiB blocks only (the others are read widened, then checked)
                    if (
                        ln <= 0
                        or ln > _MAX_IO
                        or (off | ln) & 4095
                        or off + ln > size
                        or plen
                        or layered  # reads through to the layers: the general path
                    ):
                        break
                    data = POOL.take(ln)  # filled by the read, or not used
                    POOL.lend(data)  # reused once sent
                    try:  # only from the page cache here; a disk read goes to a thread
                        if cache_read(fd, data, off) != ln:
                            break
                    except OSError:
                        break
                    if bad_sums(off, data):
                        break  # the general path reads it again and answers BAD_BLOCKS
                    st.reads += 1
                    st.bytes_read += ln
                    out.append(_pack(_MAGIC, _READ, 0, ln, rid, 0, 0, epoch))
                    out.append(data)
                else:
                    break
                replies += 1
                pos = end
        if wrote:
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
        self, op: int, req_id: int, payload: bytes | bytearray = b"", status: int = 0
    ) -> None:
        self.out.append(_pack(_MAGIC, op, status, len(payload), req_id, 0, 0, self.store.epoch))
        if payload:
            self.out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _error(self, f: Frame, status: int, message: str) -> None:
        self.stats.errors += 1
        self._reply(f.op, f.req_id, message.encode(), status)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out:
            self.out = []
            if self.transport is not None and not self.transport.is_closing():
                _send_pieces(self.transport, out)

    def _close_after_reply(self) -> None:
        self.closing = True
        self.queue.clear()
        self._flush()
        self.transport.close()

    # ------------------------------------------------------------------ frame loop
    def _run(self) -> None:
        q = self.queue
        try:
            while q and not self.blocked and not self.closing:
                f = q.popleft()
                self.queued_bytes -= len(f.payload)
                self._dispatch(f)
        except _Malformed as e:
            self._malformed(str(e))
            return
        if self.read_paused:
            self._update_reading()

    def _dispatch(self, f: Frame) -> None:
        """Answer one frame: handshake first, then the op's handler, fenced by epoch."""
        op = f.op
        if not self.authed and op != wire.AUTH:
            return self._error(f, wire.AUTH_REQUIRED, "authenticate first (AUTH)")
        handler = self.ops.get(op)
        if handler is None:
            return self._error(f, wire.UNKNOWN_OP, f"unknown operation {op}")
        if op in wire.FENCED_OPS and f.epoch < self.store.epoch:
            return self._error(
                f,
                wire.STALE_EPOCH,
                f"request epoch {voting.epoch_text(f.epoch)} is older than the replica's epoch "
                f"{voting.epoch_text(self.store.epoch)}",
            )
        handler(f)

    def _block(self, coro: Coroutine[Any, Any, None]) -> None:
        """Hold back later frames of this connection until `coro` (which replies) is done."""
        self.blocked = True
        self.server.spawn(coro).add_done_callback(self._unblock)

    def _unblock(self, task: asyncio.Task) -> None:
        self.blocked = False
        if not task.cancelled() and task.exception() is not None:
            log.error("request from %s failed: %r", self.peer, task.exception())
        if not self.closing:
            self._run()

    def _json(self, payload: bytes | bytearray | memoryview) -> Any:
        try:
            return wire.loads(bytes(payload))
        except wire.FrameError as e:
            raise _Malformed(str(e)) from None

    # ------------------------------------------------------------------ changing data (§2)
    def _mutate(self, f: Frame, ranges: list[tuple[int, int]], data: Any, fua: bool) -> None:
        """Write `data` (None: unmap) to `ranges`, keeping the write-intent rule: a region is
        durably dirty before data lands in it. Later frames wait while the bitmap is written."""
        store = self.store
        if store.needs_intent(ranges):
            store.mark(ranges)
            self._premark(self.queue)
            self._block(self._mutate_after_intent(f, ranges, data, fua))
        else:
            self._apply(f, ranges, data, fua)

    async def _mutate_after_intent(
        self, f: Frame, ranges: list[tuple[int, int]], data: Any, fua: bool
    ) -> None:
        try:
            while self.store.needs_intent(ranges):
                await self.server.persist.request()
        except Exception as e:
            return self._error(f, wire.EIO, f"cannot record write intent: {e}")
        self._apply(f, ranges, data, fua)

    def _apply(self, f: Frame, ranges: list[tuple[int, int]], data: Any, fua: bool) -> None:
        name = wire.OP_NAMES[f.op]
        try:
            self.store.apply(ranges, data)
            if f.op == _WRITE and f.length & wire.FLAG_POISON:
                self.store.poison(ranges)
        except OSError as e:
            return self._error(f, wire.EIO, f"{name.lower()} failed: {e}")
        finally:
            self.wrote = True
        n = sum(ln for _, ln in ranges)
        st = self.stats
        if data is None or data is DROP:
            st.unmaps += 1
        else:
            st.writes += 1
            st.bytes_written += n
            if f.length & wire.FLAG_REBUILD:
                st.rebuild_bytes_written += n
        if fua:
            self.server.spawn(self._synced_reply(f))
        else:
            self._reply(f.op, f.req_id)

    def _premark(self, frames: Any) -> None:
        """Mark the regions of queued writes/unmaps now, so one bitmap write covers them all."""
        store = self.store
        size = store.size
        for f in frames:
            if f.op == _WRITE:
                off, n = f.offset, len(f.payload)
            elif f.op in (wire.UNMAP, wire.DROP):
                off, n = f.offset, f.length
            else:
                continue
            if n > 0 and off >= 0 and off + n <= size and store.needs_intent([(off, n)]):
                store.mark([(off, n)])

    async def _synced_reply(self, f: Frame) -> None:
        try:
            await self.server.syncer.request()
        except Exception as e:
            return self._error(f, wire.EIO, f"fdatasync failed: {e}")
        self._reply(f.op, f.req_id)

    def _write(self, f: Frame) -> None:
        n = len(f.payload)
        if n == 0 or f.offset % 512 or n % 512 or f.offset + n > self.store.size:
            why = self.store.check_range(f.offset, n) or "bad range"
            return self._error(f, wire.EINVAL, f"WRITE refused: {why}")
        if f.length & wire.FLAG_POISON and (
            f.offset % 4096 or (n % 4096 and f.offset + n != self.store.size)
        ):
            return self._error(f, wire.EINVAL, "WRITE refused: POISON needs whole 4 KiB blocks")
        self._mutate(f, [(f.offset, n)], f.payload, bool(f.length & wire.FLAG_FUA))

    def _unmap(self, f: Frame) -> None:
        why = self.store.check_range(f.offset, f.length)
        if why:
            return self._error(f, wire.EINVAL, f"UNMAP refused: {why}")
        self._mutate(f, [(f.offset, f.length)], None, False)

    def _drop(self, f: Frame) -> None:
        store = self.store
        off, n = f.offset, f.length
        why = store.check_range(off, n)
        if why is None and (off % 4096 or (n % 4096 and off + n != store.size)):
            why = f"DROP needs whole 4096-byte blocks, not {off}+{n}"
        if why:
            return self._error(f, wire.EINVAL, f"DROP refused: {why}")
        self._mutate(f, [(off, n)], DROP, False)

    def _writev(self, f: Frame) -> None:
        mv = memoryview(f.payload)
        hl = int.from_bytes(mv[:4], "big") if len(mv) >= 4 else -1
        if hl < 0 or 4 + hl > len(mv):
            return self._error(f, wire.EINVAL, "WRITEV: payload too short for its header")
        ranges = self._ranges(f, self._json(mv[4 : 4 + hl]))
        if ranges is None:
            return None
        data = mv[4 + hl :]
        if len(data) != sum(n for _, n in ranges):
            return self._error(f, wire.EINVAL, "WRITEV: data length != sum of the ranges")
        self._mutate(f, ranges, data, False)

    def _ranges(self, f: Frame, body: Any) -> list[tuple[int, int]] | None:
        """Validate a READV/WRITEV range list; answers EINVAL and returns None when bad."""
        name = wire.OP_NAMES[f.op]
        if not isinstance(body, list) or not 0 < len(body) <= wire.MAX_VEC:
            self._error(f, wire.EINVAL, f"{name}: need 1..{wire.MAX_VEC} [offset, length]")
            return None
        out: list[tuple[int, int]] = []
        total = 0
        for r in body:
            if not _ints(r) or len(r) != 2:
                self._error(f, wire.EINVAL, f"{name}: bad range {r!r}")
                return None
            why = self.store.check_range(r[0], r[1])
            if why:
                self._error(f, wire.EINVAL, f"{name} refused: {why}")
                return None
            total += r[1]
            out.append((r[0], r[1]))
        if total > wire.MAX_IO:
            self._error(f, wire.EINVAL, f"{name}: {total} bytes exceed {wire.MAX_IO}")
            return None
        return out

    # ------------------------------------------------------------------ reading
    def _read(self, f: Frame) -> None:
        store = self.store
        off, n = f.offset, f.length
        if n > wire.MAX_IO or n <= 0 or off % 512 or n % 512 or off + n > store.size:
            why = store.check_range(off, n) or f"length {n} exceeds {wire.MAX_IO}"
            return self._error(f, wire.EINVAL, f"READ refused: {why}")
        a, b = store.span(off, n)  # whole blocks are read: each is checked
        data = POOL.take(b - a)  # filled by the read, or not used
        POOL.lend(data)
        try:
            got = _cache_read(store.fd, data, a)
        except BlockingIOError:
            got = -1
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not _cache_read.flag:
                return self._error(f, wire.EIO, f"read failed: {e}")
            _cache_read.disable()  # this filesystem has no RWF_NOWAIT: plain reads from now on
            got = -1
        if got != b - a:  # not (all) in the page cache: read in a thread, keep serving meanwhile
            self.stats.reads_offloaded += 1
            self.server.spawn(self._read_slow(f, a, b))
            return
        self._read_done(f, a, data)

    async def _read_slow(self, f: Frame, a: int, b: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, self.store.preadv, [(a, b - a)])
        except OSError as e:
            return self._error(f, wire.EIO, f"read failed: {e}")
        self._read_done(f, a, data)

    def _read_done(self, f: Frame, a: int, data: bytearray) -> None:
        """Check the blocks read at `a` (verify runs in the loop thread); answer the frame's
        range, or BAD_BLOCKS."""
        bad = self.store.verify(a, data)
        if bad:
            return self._bad_blocks(f, bad)
        off, n = f.offset, f.length
        self._served(f, data if (a, len(data)) == (off, n) else data[off - a : off - a + n])

    def _served(self, f: Frame, data: bytes | bytearray) -> None:
        st = self.stats
        st.reads += 1
        st.bytes_read += len(data)
        self._reply(f.op, f.req_id, data)

    def _bad_blocks(self, f: Frame, bad: list[int]) -> None:
        """Blocks failed their checksum: their data is withheld; the answer names them."""
        store = self.store
        runs = store.block_runs(bad)
        self.stats.checksum_errors += len(bad)
        msg = f"{len(bad)} block(s) failed their checksum: " + ", ".join(
            f"{o}+{n}" for o, n in runs[:8]) + (" ..." if len(runs) > 8 else "")  # fmt: skip
        log.warning("%s: %s", store.dir, msg)
        self._reply(f.op, f.req_id, wire.dumps({"message": msg, "bad": runs}), wire.BAD_BLOCKS)

    def _readv(self, f: Frame) -> None:
        ranges = self._ranges(f, self._json(f.payload))
        if ranges is None:
            return None
        try:
            data, bad = self.store.read_verified(ranges)
        except OSError as e:
            return self._error(f, wire.EIO, f"read failed: {e}")
        if bad:
            return self._bad_blocks(f, bad)
        self._served(f, data)

    def _checksums(self, f: Frame) -> None:
        store = self.store
        off, n = f.offset, f.length
        why = store.check_range(off, n)
        if why is None and (off % 4096 or (n % 4096 and off + n != store.size)):
            why = f"CHECKSUMS needs whole 4096-byte blocks, not {off}+{n}"
        if why is None and n > wire.MAX_IO:
            why = f"length {n} exceeds {wire.MAX_IO}"
        if why:
            return self._error(f, wire.EINVAL, f"CHECKSUMS refused: {why}")
        self.server.spawn(self._checksums_job(f))

    async def _checksums_job(self, f: Frame) -> None:
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, self.store.preadv, [(f.offset, f.length)])
        except OSError as e:
            return self._error(f, wire.EIO, f"read failed: {e}")
        bad = self.store.verify(f.offset, data)
        if bad:
            self.stats.checksum_errors += len(bad)
        self._reply(f.op, f.req_id, wire.dumps({"sums": block_sums(data), "bad": bad}))

    def _extents(self, f: Frame) -> None:
        why = self.store.check_range(f.offset, f.length)
        if why:
            return self._error(f, wire.EINVAL, why)
        self.server.spawn(self._extents_job(f))

    async def _extents_job(self, f: Frame) -> None:
        # in a thread: a fragmented file needs many lseeks; writes already applied are seen
        loop = asyncio.get_running_loop()
        try:
            runs = await loop.run_in_executor(None, self.store.extents, f.offset, f.length)
        except OSError as e:
            return self._error(f, wire.EIO, f"extents failed: {e}")
        self._reply(f.op, f.req_id, wire.dumps(runs))

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self, f: Frame) -> None:
        body = self._json(f.payload)
        why = self.store.check_snapshot(body)
        if why is not None:
            return self._error(f, wire.EINVAL, f"SNAPSHOT refused: {why}")
        self._block(self._snapshot_job(f, body))  # later writes of this connection go after it

    async def _snapshot_job(self, f: Frame, rec: dict[str, Any]) -> None:
        server = self.server
        async with server.snap_lock:
            why = self.store.check_snapshot(rec)
            if why is not None:
                return self._error(f, wire.EINVAL, f"SNAPSHOT refused: {why}")
            try:
                await snapshots.take(self.store, rec, server.syncer.request, server.write_meta)
            except OSError as e:
                return self._error(f, wire.EIO, f"SNAPSHOT failed: {e}")
        log.info("snapshot %r (id %s) taken for %s", rec["name"], rec["id"], self.peer)
        self._reply(f.op, f.req_id, wire.dumps({"snapshots": self.store.snapshot_list()}))

    def _snap_delete(self, f: Frame) -> None:
        body = self._json(f.payload)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return self._error(f, wire.EINVAL, 'SNAP_DELETE needs {"id": text}')
        self.server.spawn(self._snap_delete_job(f, body["id"]))

    async def _snap_delete_job(self, f: Frame, snap_id: str) -> None:
        server = self.server
        async with server.snap_lock:
            try:
                out = await snapshots.delete_step(
                    self.store, snap_id, server.merge_cursors, server.write_meta
                )
            except OSError as e:
                return self._error(f, wire.EIO, f"SNAP_DELETE failed: {e}")
        if out["done"]:
            log.info("snapshot id %s deleted for %s", snap_id, self.peer)
        self._reply(f.op, f.req_id, wire.dumps(out))

    def _snap_list(self, f: Frame) -> None:
        self._reply(f.op, f.req_id, wire.dumps({"snapshots": self.store.snapshot_list()}))

    def _snap_extents(self, f: Frame) -> None:
        body = self._json(f.payload)
        why = self.store.check_range(f.offset, f.length)
        if why is None and not (
            isinstance(body, dict)
            and all(body.get(k) is None or isinstance(body.get(k), str) for k in ("to", "from"))
        ):
            why = 'needs {"to": id or null, "from": id or null}'
        if why is not None:
            return self._error(f, wire.EINVAL, f"SNAP_EXTENTS refused: {why}")
        try:
            runs = self.store.snap_extents(f.offset, f.length, body.get("to"), body.get("from"))
        except KeyError as e:
            return self._error(f, wire.EINVAL, f"SNAP_EXTENTS refused: no snapshot {e}")
        except SnapshotError as e:
            return self._error(f, wire.EINVAL, f"SNAP_EXTENTS refused: {e}")
        self._reply(f.op, f.req_id, wire.dumps(runs))

    def _snap_read(self, f: Frame) -> None:
        body = self._json(f.payload)
        why = self.store.check_range(f.offset, f.length)
        if why is None and f.length > wire.MAX_IO:
            why = f"length {f.length} exceeds {wire.MAX_IO}"
        if why is None and not (isinstance(body, dict) and isinstance(body.get("id"), str)):
            why = 'needs {"id": text}'
        if why is None and body["id"] not in self.store.layers.ids():
            why = f"no snapshot {body['id']!r}"
        if why is not None:
            return self._error(f, wire.EINVAL, f"SNAP_READ refused: {why}")
        self.server.spawn(self._snap_read_job(f, body["id"]))

    async def _snap_read_job(self, f: Frame, snap_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            data, bad = await loop.run_in_executor(
                None, self.store.snap_read, snap_id, f.offset, f.length
            )
        except KeyError:
            return self._error(f, wire.EINVAL, f"SNAP_READ refused: no snapshot {snap_id!r}")
        except OSError as e:
            return self._error(f, wire.EIO, f"read failed: {e}")
        if bad:
            return self._bad_blocks(f, bad)
        self._served(f, data)

    def _snap_reset(self, f: Frame) -> None:
        self._block(self._snap_reset_job(f))

    async def _snap_reset_job(self, f: Frame) -> None:
        server = self.server
        async with server.snap_lock:
            try:
                await snapshots.reset(self.store, server.write_meta)
            except OSError as e:
                return self._error(f, wire.EIO, f"SNAP_RESET failed: {e}")
            server.merge_cursors.clear()
        log.info("every snapshot forgotten and the data emptied for %s (a full rebuild)", self.peer)
        self._reply(f.op, f.req_id, wire.dumps({"snapshots": []}))

    # ------------------------------------------------------------------ control
    def _ping(self, f: Frame) -> None:
        self._reply(f.op, f.req_id)

    def _info(self, f: Frame) -> None:
        self._reply(f.op, f.req_id, wire.dumps(self.server.info()))

    def _dirty_map(self, f: Frame) -> None:
        self._reply(f.op, f.req_id, wire.dumps(self.store.dirty_report()))

    def _bye(self, f: Frame) -> None:
        self.wrote = False  # orderly: the client says nothing of it is in flight
        self._reply(f.op, f.req_id)
        self._close_after_reply()

    def _auth(self, f: Frame) -> None:
        if self.authed:
            return self._error(f, wire.EINVAL, "already authenticated")
        store = self.store
        try:
            body = wire.loads(bytes(f.payload))
            answer = auth.answer_auth(
                self.server.secret, store.volume, self.nonce, body, self.server.previous_secret
            )
        except (ValueError, wire.FrameError) as e:
            raise _Malformed(str(e)) from None
        except auth.Refused as e:
            if e.wrong_volume:
                log.warning("refused %s: %s", self.peer, e)
            else:
                log.warning("authentication of %s failed (wrong secret)", self.peer)
            self._error(f, wire.WRONG_VOLUME if e.wrong_volume else wire.AUTH_FAILED, str(e))
            return self._close_after_reply()
        self.authed = True
        self.active = self.loop.time()
        self.owner = voting.identity(body.get("owner"))
        log.info("controller %s authenticated", self.peer)
        self._reply(wire.AUTH, f.req_id, wire.dumps({"mac": answer}))

    def _flush_op(self, f: Frame) -> None:
        self.stats.flushes += 1
        self.server.spawn(self._flush_job(f))

    async def _flush_job(self, f: Frame) -> None:
        try:
            await self.server.sync_and_clear()
        except Exception as e:
            return self._error(f, wire.EIO, f"fdatasync failed: {e}")
        self._reply(f.op, f.req_id)

    def _claim(self, f: Frame) -> None:
        body = self._json(f.payload) if f.payload else {}
        owner = voting.identity(body.get("owner")) if isinstance(body, dict) else None
        try:
            self.store.claim(f.epoch, owner)
        except voting.VoteError as e:
            return self._error(f, wire.STALE_EPOCH if e.stale else wire.EINVAL, str(e))
        self.owner = owner or self.owner
        log.info("epoch %s promised to %s", voting.epoch_text(f.epoch), self.peer)
        self._block(self._persist_meta(f, claimer=True))

    def _set_meta(self, f: Frame) -> None:
        body = self._json(f.payload)
        if not isinstance(body, dict) or set(body) - _SET_META_FIELDS:
            extra = sorted(set(body) - _SET_META_FIELDS) if isinstance(body, dict) else "no object"
            return self._error(f, wire.EINVAL, f"SET_META: unexpected fields {extra}")
        why = None
        for key, ok in (
            ("start_tracking", lambda v: isinstance(v, bool)),
            ("clean", lambda v: isinstance(v, bool)),
            ("pin_dirty", lambda v: isinstance(v, bool)),
            ("excluded", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
            ("stop_tracking", _ints),
            ("drop_seed", _ints),
        ):
            if body.get(key) is not None and not ok(body[key]):
                why = f"SET_META: bad {key} {body[key]!r}"
                break
        store = self.store
        if why is None:
            try:
                store.accept(body)
            except voting.VoteError as e:
                return self._error(f, wire.STALE_EPOCH if e.stale else wire.EINVAL, str(e))
        if why is not None:
            return self._error(f, wire.EINVAL, why)
        if body.get("clean") is not None:
            store.set_clean(body["clean"])
        if body.get("pin_dirty"):
            # the controller lost its quorum with writes in flight: keep every region dirty
            # until a controller's CLEAR_DIRTY, so a newer controller resynchronises them
            store.pin_dirty()
        self._block(self._set_meta_job(f, body))

    async def _set_meta_job(self, f: Frame, body: dict[str, Any]) -> None:
        store = self.store
        try:
            if body.get("start_tracking"):
                store.start_tracking(store.epoch, body.get("excluded"))
                await self.server.persist.request()  # the change map exists before meta names it
            if body.get("stop_tracking"):
                store.stop_tracking(body["stop_tracking"])
            if body.get("drop_seed"):
                store.drop_seed(body["drop_seed"])
            await self.server.write_meta()
            if body.get("stop_tracking"):
                await self.server.persist.request()  # meta no longer names them: delete files
        except Exception as e:
            return self._error(f, wire.EIO, f"SET_META could not be persisted: {e}")
        log.info(
            "meta updated by %s: epoch %s view %s membership %s tracking %s",
            self.peer,
            voting.epoch_text(store.epoch),
            voting.epoch_text(store.meta.get("view_epoch")),
            store.meta["membership"],
            sorted(store.missed),
        )
        self._reply(f.op, f.req_id, wire.dumps(self.server.info()))

    async def _persist_meta(self, f: Frame, claimer: bool = False) -> None:
        """Persist meta.json, then answer with INFO (+ `quiet` for a CLAIM)."""
        try:
            await self.server.write_meta()
        except Exception as e:
            return self._error(f, wire.EIO, f"{wire.OP_NAMES[f.op]} could not be persisted: {e}")
        info = self.server.info(claimer=self if claimer else None)
        self._reply(f.op, f.req_id, wire.dumps(info))

    def _grow(self, f: Frame) -> None:
        body = self._json(f.payload)
        size = body.get("size") if isinstance(body, dict) and set(body) == {"size"} else None
        why = self.store.check_grow(size) if size is not None else 'needs {"size": bytes}'
        if why is not None or not isinstance(size, int):
            return self._error(f, wire.EINVAL, f"GROW refused: {why}")
        self.server.spawn(self._grow_job(f, size))

    async def _grow_job(self, f: Frame, size: int) -> None:
        old = self.store.size
        try:
            changed = await self.server.grow(size)
        except StoreError as e:
            return self._error(f, wire.EINVAL, f"GROW refused: {e}")
        except Exception as e:
            return self._error(f, wire.EIO, f"GROW failed: {e}")
        if changed:
            log.info("grown from %d to %d bytes by %s", old, size, self.peer)
        self._reply(f.op, f.req_id, wire.dumps(self.server.info()))

    def _set_mode(self, f: Frame) -> None:
        body = self._json(f.payload)
        if not isinstance(body, dict) or body.get("mode") not in ("RW", "WO"):
            return self._error(f, wire.EINVAL, 'SET_MODE needs {"mode": "RW" or "WO"}')
        self.store.set_rebuilding(body["mode"] == "WO")
        log.info("mode set to %s by %s (reported mode %s)", body["mode"], self.peer,
                 self.store.mode)  # fmt: skip
        self._block(self._persist_meta(f))

    def _clear_dirty(self, f: Frame) -> None:
        body = self._json(f.payload)
        regions = body.get("regions") if isinstance(body, dict) else None
        if body is not None and not isinstance(body, dict):
            return self._error(f, wire.EINVAL, 'CLEAR_DIRTY needs {"regions": [..] | null}')
        if regions is not None and not _ints(regions):
            return self._error(f, wire.EINVAL, "CLEAR_DIRTY: regions must be integers")
        self._block(self._clear_dirty_job(f, regions))

    async def _clear_dirty_job(self, f: Frame, regions: list[int] | None) -> None:
        store = self.store
        seq = store.wseq
        try:
            await self.server.syncer.request()
            store.clear_regions(regions, seq)
            await self.server.persist.request()
        except Exception as e:
            return self._error(f, wire.EIO, f"CLEAR_DIRTY failed: {e}")
        self._reply(f.op, f.req_id, wire.dumps({"dirty": sorted(store.dirty)}))
