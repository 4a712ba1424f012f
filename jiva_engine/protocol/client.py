"""Pipelining client for one replica: one TCP connection, requests keyed by req_id.

Frames are queued when a method is *called* and written in call order, coalesced into one
send per event-loop iteration, so writes reach the replica in the order the controller issued them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Any

from jiva_engine.buffers import POOL
from jiva_engine.protocol import auth, wire

log = logging.getLogger(__name__)

_pack = wire.HEADER.pack
_unpack_from = wire.HEADER.unpack_from
_MAGIC = wire.MAGIC
_MAX_PAYLOAD = wire.MAX_PAYLOAD
_Future = asyncio.Future


class ReplicaUnavailable(Exception):
    """The replica cannot be reached: connection refused/lost, or a request timed out."""


class ReplicaError(Exception):
    """The replica answered a request with an error status."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        self.message = message
        name = wire.STATUS_NAMES.get(status, str(status))
        super().__init__(f"{name}: {message}" if message else name)


class BadBlocks(ReplicaError):
    """A read met blocks failing their checksum on the replica (its data was withheld).

    `runs` are the bad [offset, length] byte runs; the replica is otherwise healthy."""

    def __init__(self, payload: bytes) -> None:
        try:
            body = wire.loads(payload)
            runs = [(int(o), int(n)) for o, n in body["bad"]]
            message = str(body.get("message", ""))
        except (wire.FrameError, KeyError, TypeError, ValueError):
            runs, message = [], f"unparseable BAD_BLOCKS answer {bytes(payload[:80])!r}"
        self.runs = runs
        super().__init__(wire.BAD_BLOCKS, message)


def _error(status: int, payload: bytes) -> ReplicaError:
    if status == wire.BAD_BLOCKS:
        return BadBlocks(payload)
    return ReplicaError(status, str(payload, "utf-8", "replace"))


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


_RBUF = wire.RECV_BUF  # receive buffer for small frames
_BIG = 64 * 1024  # payloads at least this big are received straight into their own buffer
ANSWER_TIMES = 4096  # answer times of fanned-out requests kept until the controller reads them


class _ClientProtocol(wire.RecvBuffer, asyncio.BufferedProtocol):
    """Receives answers with recv_into: small frames through one reusable buffer, big payloads
    (READ data) directly into the bytearray handed to the caller, so no extra copies."""

    def __init__(self, client: ReplicaClient) -> None:
        self.client = client
        self.buf = bytearray(_RBUF)
        self.mv = memoryview(self.buf)
        self.start = 0  # unparsed bytes are buf[start:end]
        self.end = 0
        self.big: bytearray | memoryview | None = None  # payload being received directly
        self.big_mv: memoryview | None = None
        self.big_filled = 0
        self.big_hdr: tuple[int, int, int] = (0, 0, 0)  # op, status, req_id

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client._protocol is not self:
            return  # a connection this client closed itself (and may have replaced: connect())
        self.client._lost(f"connection lost: {exc}" if exc else "connection closed by the replica")

    def buffer_updated(self, nbytes: int) -> None:
        if self.big is not None:
            self.big_filled += nbytes
            if self.big_filled == len(self.big):
                op, status, req_id = self.big_hdr
                data = self.big
                self.big = self.big_mv = None
                self._deliver(op, status, req_id, data)
            return
        self.end += nbytes
        self._parse()

    def _deliver(self, op: int, status: int, req_id: int, payload: Any) -> None:
        client = self.client
        fut = client._pending.pop(req_id, None)
        if fut is None:
            client._unsolicited(op, bytes(payload))
        elif status:
            if not fut.done():
                fut.set_exception(_error(status, bytes(payload)))
        elif not fut.done():
            fut.set_result(payload)

    def _parse(self) -> None:
        src = self.buf
        mv = self.mv
        pending = self.client._pending
        into = self.client._into
        pos = self.start
        n = self.end
        while n - pos >= 40:
            magic, op, status, plen, req_id, _o, _l, _e = _unpack_from(src, pos)
            if magic != _MAGIC or plen > _MAX_PAYLOAD:
                self.client._abort(f"malformed frame from replica: bad magic or length {plen}")
                self.start = self.end = 0
                return
            end = pos + 40 + plen
            if end > n:
                if plen >= _BIG or end - self.start > _RBUF:
                    # receive the rest of this payload straight into its final buffer: the
                    # caller's (read_into) when it has one of the right size, else a new one
                    have = n - pos - 40
                    dest = into.pop(req_id, None) if into else None
                    if dest is not None and (status or len(dest) != plen):
                        dest = None
                    big: bytearray | memoryview
                    if dest is None:
                        big = POOL.take(plen)  # every byte is received into it
                        POOL.lend(big)  # reused once its reader is done with it
                    else:
                        big = dest
                    big[:have] = mv[pos + 40 : n]
                    self.big, self.big_filled = big, have
                    self.big_mv = big if isinstance(big, memoryview) else memoryview(big)
                    self.big_hdr = (op, status, req_id)
                    self.start = self.end = 0
                    return
                break
            if into and req_id in into:
                dest = into.pop(req_id)
                if not status and len(dest) == plen:
                    dest[:] = mv[pos + 40 : end]
                    self._deliver(op, status, req_id, dest)
                else:
                    self._deliver(op, status, req_id, bytes(mv[pos + 40 : end]))
            elif status or req_id not in pending:
                self._deliver(op, status, req_id, bytes(mv[pos + 40 : end]))
            else:
                fut = pending.pop(req_id)
                if not fut.done():
                    fut.set_result(bytes(mv[pos + 40 : end]) if plen else b"")
            pos = end
        if pos == n:
            self.start = self.end = 0
        else:
            self.start = pos


class _SecretRefused(ReplicaError):
    """The replica answered AUTH with AUTH_FAILED: it does not accept the secret presented."""


class ReplicaClient:
    """One connection to one replica; see DESIGN.md §3 for the operations.

    `secret` is one secret, or a tuple of them to present in turn (a rotation: the current one,
    then the previous): when the replica refuses one (AUTH_FAILED), `connect` opens a new
    connection with the next (ENGINE.md "Authentication and secret rotation").

    `read`, `write`, `flush` and `unmap` are plain methods returning an awaitable future, so the
    frame is queued at call time (issue order == wire order == apply order). A request that gets no
    answer within `timeout` seconds closes the connection and fails every pending request with
    ReplicaUnavailable (the replica is then considered gone; reconnect with a new client).
    """

    def __init__(
        self,
        host: str,
        port: int,
        volume: str,
        secret: str | bytes | tuple[str | bytes, ...] | None = None,
        timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self.volume = volume
        candidates = secret if isinstance(secret, tuple) else (secret,)
        self.secrets: tuple[str | bytes, ...] = tuple(s for s in candidates if s)
        self.secret: str | bytes | None = self.secrets[0] if self.secrets else None  # presented
        self.timeout = timeout
        self.address = f"{host}:{port}"
        self.epoch = 0  # highest epoch this client has used; default for fenced control ops
        self.hello: dict[str, Any] | None = None
        # the controller's identity, sent in AUTH: a voter names who spoke to it lately (Q8)
        self.owner: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: _ClientProtocol | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._into: dict[int, memoryview] = {}  # read_into destinations by request id
        # (deadline, last req_id) per flushed batch: one entry per send, not per request
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_id = 1
        self._hello_fut: asyncio.Future | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed_reason: str | None = "not connected"
        self._ready = False  # handshake done
        # seconds from queueing to answer of each replicated WRITE/UNMAP/FLUSH (write_all & co.):
        # the same requests go to every member, so the controller compares these (lag.py)
        self.answer_times: collections.deque[float] = collections.deque(maxlen=ANSWER_TIMES)
        self._probes: dict[int, float] = {}  # PINGs in flight: request id -> sent (oldest_age)

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        """True while the connection is up and authenticated."""
        return self._ready and self._transport is not None and self._closed_reason is None

    async def connect(self) -> None:
        """Open the connection and run the HELLO/AUTH handshake (ReplicaError on refusal).

        A replica that refuses the secret is tried again with the next one in `secrets`."""
        for i, secret in enumerate(self.secrets or (None,)):
            self.secret = secret
            try:
                return await self._connect_once()
            except _SecretRefused as e:
                if i + 1 == len(self.secrets):
                    raise ReplicaError(e.status, e.message) from None
                log.info(
                    "replica %s refused secret %d of %d (a rotation in progress): presenting the"
                    " next",
                    self.address,
                    i + 1,
                    len(self.secrets),
                )

    async def _connect_once(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._hello_fut = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(self._new_protocol, self.host, self.port),
                self.timeout,
            )
        except (TimeoutError, OSError) as e:
            raise ReplicaUnavailable(f"cannot connect to replica {self.address}: {e}") from None
        self._transport = transport
        self._closed_reason = None
        self._arm_watchdog()
        try:
            await self._handshake()
        except BaseException:
            await self.close()
            raise
        self._ready = True

    def _new_protocol(self) -> _ClientProtocol:
        self._protocol = _ClientProtocol(self)  # the only one whose loss is this client's
        return self._protocol

    async def _handshake(self) -> None:
        assert self._hello_fut is not None  # made by connect()
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello_fut), self.timeout)
        except TimeoutError:
            raise ReplicaUnavailable(f"replica {self.address} sent no HELLO") from None
        if not isinstance(hello, dict) or not isinstance(hello.get("nonce"), str):
            raise ReplicaUnavailable(f"replica {self.address} sent a malformed HELLO")
        self.hello = hello
        if hello.get("volume") != self.volume:
            raise ReplicaError(
                wire.WRONG_VOLUME,
                f"replica {self.address} serves volume {hello.get('volume')!r}, not {self.volume!r}",
            )
        if hello.get("auth") and not self.secret:
            raise ReplicaError(wire.AUTH_REQUIRED, f"replica {self.address} requires a secret")
        if self.secret and not hello.get("auth"):
            raise ReplicaError(
                wire.AUTH_FAILED,
                f"replica {self.address} has no secret configured but this client has one",
            )
        cnonce = auth.new_nonce()
        mac = (
            auth.client_mac(self.secret, self.volume, hello["nonce"], cnonce) if self.secret else ""
        )
        try:
            body: dict[str, Any] = {"volume": self.volume, "mac": mac, "cnonce": cnonce}
            if self.owner:
                body["owner"] = self.owner
            answer = await self._json(wire.AUTH, body)
        except ReplicaError as e:
            if e.status == wire.AUTH_FAILED and self.secret:
                raise _SecretRefused(e.status, e.message) from None
            raise
        if self.secret:
            want = auth.server_mac(self.secret, self.volume, hello["nonce"], cnonce)
            if not isinstance(answer, dict) or not auth.verify(want, answer.get("mac")):
                raise ReplicaError(
                    wire.AUTH_FAILED, f"replica {self.address} failed to prove the shared secret"
                )

    async def close(self) -> None:
        """Close the connection; pending requests fail with ReplicaUnavailable.

        With nothing in flight the close is orderly (a BYE frame first). Otherwise the replica
        sees a writer vanish and keeps its dirty regions until a controller's CLEAR_DIRTY.
        """
        if self._transport is not None:
            if not self._pending and self._closed_reason is None:
                self._send(wire.BYE).add_done_callback(_consume)
            self._flush()
            self._transport.close()
        self._lost("connection closed by the client")

    def _abort(self, reason: str) -> None:
        log.warning("replica %s: %s", self.address, reason)
        if self._transport is not None:
            self._transport.abort()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._transport = None
        self._protocol = None  # its connection_lost, still to come after a close, is ignored
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._out.clear()
        pending, self._pending = self._pending, {}
        self._into.clear()
        self._probes.clear()
        self._deadlines.clear()
        err_text = f"replica {self.address}: {self._closed_reason}"
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ReplicaUnavailable(err_text))
        if self._hello_fut is not None and not self._hello_fut.done():
            self._hello_fut.set_exception(ReplicaUnavailable(err_text))

    def _arm_watchdog(self) -> None:
        period = max(0.02, min(0.5, self.timeout / 4))
        assert self._loop is not None  # set by connect()
        self._watchdog = self._loop.call_later(period, self._check_timeouts)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        dl = self._deadlines
        oldest = next(iter(self._pending), None)  # dicts keep insertion (= req_id) order
        if oldest is None:
            dl.clear()
        else:
            while dl and dl[0][1] < oldest:  # batches whose requests are all answered
                dl.popleft()
            if dl and dl[0][0] <= now:
                age = self.timeout + now - dl[0][0]
                self._abort(f"request {oldest} got no answer in {age:.1f}s (timeout)")
                return
        self._arm_watchdog()

    def oldest_age(self, now: float) -> float | None:
        """Seconds since the oldest unanswered comparable request was sent: a replicated
        WRITE/UNMAP/FLUSH (write_all & co.) or a PING, which every member gets alike (None:
        none unanswered). Reads, rebuild copies and control requests differ per member."""
        sent = None
        probes = self._probes
        while probes:
            rid, t = next(iter(probes.items()))
            if rid in self._pending:
                sent = t
                break
            del probes[rid]  # answered
        for fut in self._pending.values():  # _Slot entries stand in for futures (_fan)
            if isinstance(fut, _Slot):
                sent = fut.fan.sent if sent is None else min(sent, fut.fan.sent)
                break
        return None if sent is None else max(0.0, now - sent)

    # ------------------------------------------------------------------ frames
    def _send(
        self,
        op: int,
        offset: int = 0,
        length: int = 0,
        epoch: int = 0,
        payload: Any = b"",
        fut: Any = None,
    ) -> Any:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if fut is None:
            fut = _Future(loop=loop)
        if self._transport is None:
            fut.set_exception(ReplicaUnavailable(f"replica {self.address}: {self._closed_reason}"))
            return fut
        if epoch > self.epoch:
            self.epoch = epoch
        rid = self._next_id
        self._next_id = rid + 1
        self._pending[rid] = fut
        out = self._out
        plen = len(payload)
        out.append(_pack(_MAGIC, op, 0, plen, rid, offset, length, epoch))
        if plen:
            out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out and self._transport is not None:
            self._out = []
            self._deadlines.append((time.monotonic() + self.timeout, self._next_id - 1))
            wire.send_pieces(self._transport, out)

    def _unsolicited(self, op: int, payload: bytes) -> None:
        hello = self._hello_fut
        if op == wire.HELLO and hello is not None and not hello.done():
            try:
                hello.set_result(wire.loads(payload))
            except wire.FrameError as e:
                hello.set_exception(ReplicaUnavailable(f"bad HELLO: {e}"))

    async def _json(self, op: int, obj: Any = None, epoch: int | None = None, **kw: int) -> Any:
        payload = wire.dumps(obj) if obj is not None else b""
        ep = self.epoch if epoch is None else epoch
        data = await self._send(op, epoch=ep, payload=payload, **kw)
        try:
            return wire.loads(data)
        except wire.FrameError as e:
            raise ReplicaError(
                wire.EIO, f"bad JSON answer from replica {self.address}: {e}"
            ) from None

    # ------------------------------------------------------------------ data operations
    def read(self, offset: int, length: int, epoch: int) -> asyncio.Future:
        """Read `length` bytes at `offset`; the future resolves to bytes."""
        return self._send(wire.READ, offset, length, epoch)

    def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        epoch: int,
        fua: bool = False,
        rebuild: bool = False,
        poison: bool = False,
    ) -> asyncio.Future:
        """Write `data` at `offset` (do not modify `data` until the future is done).

        fua: stable on disk before the answer; rebuild: counted as rebuild traffic; poison:
        `data` is zeroes for whole blocks that must read as failing their checksum.
        """
        flags = (wire.FLAG_FUA if fua else 0) | (wire.FLAG_REBUILD if rebuild else 0)
        flags |= wire.FLAG_POISON if poison else 0
        return self._send(wire.WRITE, offset, flags, epoch, data)

    def read_into(self, offset: int, dest: memoryview, epoch: int) -> asyncio.Future:
        """Read len(dest) bytes at `offset` straight into `dest` (no copy for big payloads).

        Resolves to `dest` once filled; an answer of another size fails with ReplicaError EIO.
        `dest` must stay untouched until the future is done.
        """
        fut: asyncio.Future = _Future(loop=asyncio.get_running_loop())
        if self._transport is not None:
            self._into[self._next_id] = dest  # the id _send gives this request
        inner = self._send(wire.READ, offset, len(dest), epoch)

        def done(f: asyncio.Future) -> None:
            if fut.done():
                return
            if f.cancelled():
                fut.cancel()
            elif (exc := f.exception()) is not None:
                fut.set_exception(exc)
            elif f.result() is not dest:
                fut.set_exception(ReplicaError(wire.EIO, f"short read: {len(f.result())} bytes"))
            else:
                fut.set_result(dest)

        inner.add_done_callback(done)
        return fut

    def readv(self, ranges: list[tuple[int, int]], epoch: int) -> asyncio.Future:
        """Read several ranges in one round trip; resolves to their data, concatenated."""
        return self._send(wire.READV, 0, 0, epoch, wire.dumps([list(r) for r in ranges]))

    def writev(
        self,
        ranges: list[tuple[int, int]],
        data: bytes | bytearray | memoryview,
        epoch: int,
        rebuild: bool = False,
    ) -> asyncio.Future:
        """Write `data` (the ranges' contents, concatenated) to several ranges in one frame."""
        head = wire.dumps([list(r) for r in ranges])
        payload = b"".join((len(head).to_bytes(4, "big"), head, data))
        return self._send(wire.WRITEV, 0, wire.FLAG_REBUILD if rebuild else 0, epoch, payload)

    def flush(self, epoch: int) -> asyncio.Future:
        """Make every write answered so far stable on the replica's disk."""
        return self._send(wire.FLUSH, 0, 0, epoch)

    def unmap(self, offset: int, length: int, epoch: int) -> asyncio.Future:
        """Deallocate a range; it reads back as zeroes."""
        return self._send(wire.UNMAP, offset, length, epoch)

    # ------------------------------------------------------------------ control operations
    async def ping(self) -> None:
        """Round trip to check the replica answers."""
        if self._transport is not None:
            self._probes[self._next_id] = time.monotonic()  # the id _send gives it
        await self._send(wire.PING)

    async def info(self) -> dict[str, Any]:
        """Replica metadata, mode, stats and dirty state (see DESIGN.md §3 INFO)."""
        return await self._json(wire.INFO)

    @property
    def kind(self) -> str:
        """ "replica" or "witness", from the HELLO (older replicas send none: "replica")."""
        return str((self.hello or {}).get("kind") or "replica")

    @property
    def voter_id(self) -> str | None:
        """The voter id the HELLO announced (None from an older replica)."""
        vid = (self.hello or {}).get("id")
        return vid if isinstance(vid, str) else None

    async def claim(self, epoch: int, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """Promise `epoch` (a new controller term) to `owner` ({"host", "pid"} of the claiming
        controller): refused with STALE_EPOCH unless it is above everything this voter
        promised. Answers INFO plus `quiet` (seconds since another controller last talked to
        it, or None)."""
        return await self._json(wire.CLAIM, {"owner": owner} if owner else None, epoch)

    async def set_meta(self, **fields: Any) -> dict[str, Any]:
        """Update epoch/membership/tracking/clean; persisted before the answer. Returns the meta."""
        ep = fields.get("epoch")
        return await self._json(wire.SET_META, fields, ep if isinstance(ep, int) else None)

    async def set_mode(self, mode: str, epoch: int | None = None) -> dict[str, Any]:
        """Tell the replica it is "WO" (being rebuilt, not current) or "RW" (current)."""
        return await self._json(wire.SET_MODE, {"mode": mode}, epoch)

    async def grow(self, size: int) -> dict[str, Any]:
        """Grow the replica to `size` bytes (never shrinks: EINVAL), persisted before the
        answer, which is the INFO object (its `size` is the recorded size)."""
        return await self._json(wire.GROW, {"size": size})

    async def dirty_map(self) -> dict[str, Any]:
        """{"region_size", "dirty": [regions], "missed_granularity", "missed": {"E": [[off, len]..]}}."""
        return await self._json(wire.DIRTY_MAP)

    async def clear_dirty(self, regions: list[int] | None = None, epoch: int | None = None) -> None:
        """Clear dirty bits (all when `regions` is None) after syncing the data file."""
        await self._json(wire.CLEAR_DIRTY, {"regions": regions}, epoch)

    async def checksums(self, offset: int, length: int, epoch: int) -> dict[str, Any]:
        """Per-block checksums of a range of whole blocks and the blocks failing their check."""
        body = await self._json(wire.CHECKSUMS, None, epoch, offset=offset, length=length)
        if not isinstance(body, dict) or not isinstance(body.get("sums"), list):
            raise ReplicaError(wire.EIO, f"bad CHECKSUMS answer from replica {self.address}")
        return body

    async def extents(self, offset: int, length: int) -> list[list[int]]:
        """Allocated [offset, length] runs inside the range."""
        return await self._json(wire.EXTENTS, None, offset=offset, length=length)

    # ------------------------------------------------------------------ snapshots
    async def snapshot(self, rec: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Freeze the data written so far as snapshot `rec` ({"id", "name", "created"})."""
        return await self._json(wire.SNAPSHOT, rec, epoch)

    async def snap_delete(self, snap_id: str, epoch: int) -> dict[str, Any]:
        """One bounded step of deleting a snapshot -> {"done": bool, "merged": bytes}."""
        return await self._json(wire.SNAP_DELETE, {"id": snap_id}, epoch)

    async def snap_list(self) -> list[dict[str, Any]]:
        """The replica's snapshots, oldest first."""
        body = await self._json(wire.SNAP_LIST)
        if not isinstance(body, dict) or not isinstance(body.get("snapshots"), list):
            raise ReplicaError(wire.EIO, f"bad SNAP_LIST answer from replica {self.address}")
        return body["snapshots"]

    async def snap_extents(
        self, offset: int, length: int, to: str | None, since: str | None, epoch: int
    ) -> list[list[int]]:
        """Runs of blocks present in a layer newer than `since` up to `to` (None: the head)."""
        body = {"to": to, "from": since}
        return await self._json(wire.SNAP_EXTENTS, body, epoch, offset=offset, length=length)

    def snap_read(self, snap_id: str, offset: int, length: int, epoch: int) -> asyncio.Future:
        """The volume's contents at snapshot `snap_id` (BadBlocks as `read`)."""
        return self._send(wire.SNAP_READ, offset, length, epoch, wire.dumps({"id": snap_id}))

    async def snap_reset(self, epoch: int) -> dict[str, Any]:
        """Forget every layer and empty the head (a full rebuild's first step)."""
        return await self._json(wire.SNAP_RESET, {}, epoch)

    def drop(self, offset: int, length: int, epoch: int) -> asyncio.Future:
        """The head keeps nothing of its own in the range (reads go through to the layers)."""
        return self._send(wire.DROP, offset, length, epoch)


class _Slot:
    """One replica's part of a fan-out: stands in for a Future in ReplicaClient._pending."""

    __slots__ = ("fan", "idx", "fired", "times")

    def __init__(self, fan: _Fan, idx: int, times: collections.deque[float] | None) -> None:
        self.fan = fan
        self.idx = idx
        self.fired = False
        self.times = times  # the client's answer_times

    def done(self) -> bool:
        return self.fired

    def set_result(self, _payload: bytes) -> None:
        if not self.fired:
            self.fired = True
            if self.times is not None:
                self.times.append(time.monotonic() - self.fan.sent)
            self.fan.arrive()

    def set_exception(self, exc: BaseException) -> None:
        if not self.fired:
            self.fired = True
            self.fan.results[self.idx] = exc
            self.fan.arrive()


class _Fan:
    __slots__ = ("future", "results", "remaining", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.sent = time.monotonic()
        self.future: asyncio.Future = _Future(loop=loop)
        self.results: list[BaseException | None] = [None] * n
        self.remaining = n
        if n == 0:
            self.future.set_result(self.results)

    def arrive(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.results)


def _fan(
    clients: Sequence[Any], op: int, offset: int, length: int, epoch: int, data: Any
) -> asyncio.Future:
    fan = _Fan(asyncio.get_running_loop(), len(clients))
    for i, c in enumerate(clients):
        c._send(op, offset, length, epoch, data, _Slot(fan, i, getattr(c, "answer_times", None)))
    return fan.future


def write_all(
    clients: Sequence[Any],
    offset: int,
    data: bytes | bytearray | memoryview,
    epoch: int,
    fua: bool = False,
    rebuild: bool = False,
) -> asyncio.Future:
    """WRITE to several replicas (ReplicaClients) at once; cheaper than one future per replica
    plus gather (the controller's write path, ~5 us per replicated 4K write).

    Frames are queued at call time, in list order. The future never raises: it resolves to a
    list with, per client, None (done) or the exception (ReplicaError / ReplicaUnavailable).
    """
    flags = (wire.FLAG_FUA if fua else 0) | (wire.FLAG_REBUILD if rebuild else 0)
    return _fan(clients, wire.WRITE, offset, flags, epoch, data)


def unmap_all(clients: Sequence[Any], offset: int, length: int, epoch: int) -> asyncio.Future:
    """UNMAP on several replicas at once; resolves like write_all."""
    return _fan(clients, wire.UNMAP, offset, length, epoch, b"")


def flush_all(clients: Sequence[Any], epoch: int) -> asyncio.Future:
    """FLUSH on several replicas at once; resolves like write_all."""
    return _fan(clients, wire.FLUSH, 0, 0, epoch, b"")
