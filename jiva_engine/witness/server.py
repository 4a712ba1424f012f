"""The witness server: a voter that answers the metadata part of the replica protocol.

It speaks DESIGN.md §3 (same header, HELLO/AUTH handshake and shared secret as a replica) and
answers PING, INFO, CLAIM, SET_META (voter fields only) and BYE; every data operation is refused
with EINVAL: a witness stores no data. One request at a time per connection, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from jiva_engine.metrics import Exposition, label
from jiva_engine.protocol import auth, voting, wire
from jiva_engine.witness.store import WitnessStore

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 << 10  # a witness only ever gets small JSON bodies
_VOTER_FIELDS = {"epoch", "membership", "voters"}


class _Conn:
    """One controller connection's handshake state."""

    __slots__ = ("name", "nonce", "authed", "active", "owner")

    def __init__(self, name: str) -> None:
        self.name = name
        self.nonce = auth.new_nonce()
        self.authed = False
        self.active: float | None = None  # loop time it last sent a frame (once authenticated)
        self.owner: dict[str, Any] | None = None  # the controller's identity (AUTH, CLAIM)


class WitnessServer:
    """Accepts controller connections for one WitnessStore."""

    def __init__(
        self, store: WitnessStore, secret: bytes | None = None, previous_secret: bytes | None = None
    ) -> None:
        self.store = store
        self.secret = secret
        self.previous_secret = previous_secret  # also accepted, during a rotation
        self.auth_timeout = 10.0
        self.conns: dict[asyncio.StreamWriter, _Conn] = {}
        self.talkers = voting.Talkers()  # who spoke lately, for CLAIM answers (Q8)
        self._lock = asyncio.Lock()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting and close every connection."""
        if self._server is not None:
            self._server.close()
        for w in list(self.conns):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def info(self, claimer: _Conn | None = None) -> dict[str, Any]:
        """INFO answer: the voter record, plus `quiet` and `talkers` for a CLAIM answer."""
        out = {"kind": "witness", "volume": self.store.volume, **voting.record(self.store.meta)}
        out["connections"] = len(self.conns)
        if claimer is not None:
            others = [(c.active, c.owner) for c in self.conns.values() if c is not claimer]
            out.update(self.talkers.claim_fields(asyncio.get_running_loop().time(), others))
        return out

    def metrics_text(self, address: str) -> str:
        """`GET /metrics` of `--metrics` (Prometheus text format), labelled with `--listen`."""
        out = Exposition()
        lbl = f'volume="{label(self.store.volume)}",witness="{label(address)}"'
        out.metric("jiva_witness_process_up", "gauge", "1 while the witness process serves",
                   [(lbl, 1)])  # fmt: skip
        out.metric("jiva_witness_connections", "gauge", "controller connections",
                   [(lbl, len(self.conns))])  # fmt: skip
        out.metric("jiva_witness_epoch", "gauge", "epoch recorded (term << 32 | view)",
                   [(lbl, self.store.meta["epoch"])])  # fmt: skip
        return out.text()

    async def _persist(self) -> None:
        async with self._lock:
            snap = self.store.snapshot()
            await asyncio.get_running_loop().run_in_executor(None, self.store.persist, snap)

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = self.conns[writer] = _Conn(f"{peer[0]}:{peer[1]}" if peer else "?")
        store = self.store
        hello = auth.hello_body(store.volume, conn.nonce, self.secret, "witness", store.id)
        writer.write(wire.encode(wire.HELLO, 0, wire.dumps(hello), epoch=store.meta["epoch"]))
        loop = asyncio.get_running_loop()
        frames = wire.FrameReader(limit=MAX_PAYLOAD)
        try:
            while True:
                timeout = None if conn.authed else self.auth_timeout
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    log.warning("%s did not authenticate in time; closing", conn.name)
                    return
                if not data:
                    return
                if conn.authed:
                    conn.active = loop.time()
                for f in frames.feed(data):
                    status, answer, close = await self._handle(conn, f.op, f.epoch, f.payload)
                    writer.write(
                        wire.encode(f.op, f.req_id, answer, status, epoch=store.meta["epoch"])
                    )
                    await writer.drain()
                    if close:
                        return
        except ConnectionError:
            return
        except wire.FrameError as e:
            log.warning("malformed frame from %s: %s; closing", conn.name, e)
        finally:
            self.conns.pop(writer, None)
            self.talkers.closed(loop.time(), conn.active, conn.owner)
            writer.close()

    async def _handle(
        self, conn: _Conn, op: int, ep: int, payload: bytes | bytearray
    ) -> tuple[int, bytes, bool]:
        """(status, answer payload, close after answering) for one request."""
        store = self.store
        if not conn.authed:
            if op != wire.AUTH:
                return wire.AUTH_REQUIRED, b"authenticate first (AUTH)", False
            try:
                body = wire.loads(payload)
                mac = auth.answer_auth(
                    self.secret, store.volume, conn.nonce, body, self.previous_secret
                )
            except auth.Refused as e:
                log.warning("refused %s: %s", conn.name, e)
                status = wire.WRONG_VOLUME if e.wrong_volume else wire.AUTH_FAILED
                return status, str(e).encode(), True
            except ValueError as e:
                raise wire.FrameError(str(e)) from None
            conn.authed = True
            conn.active = asyncio.get_running_loop().time()
            conn.owner = voting.identity(body.get("owner"))
            log.info("controller %s authenticated", conn.name)
            return wire.OK, wire.dumps({"mac": mac}), False
        if op == wire.PING:
            return wire.OK, b"", False
        if op == wire.INFO:
            return wire.OK, wire.dumps(self.info()), False
        if op == wire.BYE:
            return wire.OK, b"", True
        if op == wire.CLAIM:
            body = wire.loads(payload) if payload else {}
            try:
                voting.check_claim(store.meta, ep)
            except voting.VoteError as e:
                return (wire.STALE_EPOCH if e.stale else wire.EINVAL), str(e).encode(), False
            owner = voting.identity(body.get("owner")) if isinstance(body, dict) else None
            voting.apply_claim(store.meta, ep, owner)
            conn.owner = owner or conn.owner
            await self._persist()
            log.info("epoch %s promised to %s", voting.epoch_text(ep), conn.name)
            return wire.OK, wire.dumps(self.info(claimer=conn)), False
        if op == wire.SET_META:
            body = wire.loads(payload)
            if not isinstance(body, dict) or set(body) - _VOTER_FIELDS:
                extra = sorted(set(body) - _VOTER_FIELDS) if isinstance(body, dict) else body
                why = f"SET_META: a witness takes only {sorted(_VOTER_FIELDS)}, not {extra}"
                return wire.EINVAL, why.encode(), False
            try:
                voting.check_accept(store.meta, body)
            except voting.VoteError as e:
                return (wire.STALE_EPOCH if e.stale else wire.EINVAL), str(e).encode(), False
            voting.apply_accept(store.meta, body)
            await self._persist()
            log.info("epoch %s from %s: members %s", voting.epoch_text(store.meta["epoch"]),
                     conn.name, store.meta["membership"])  # fmt: skip
            return wire.OK, wire.dumps(self.info()), False
        if op == wire.AUTH:
            return wire.EINVAL, b"already authenticated", False
        if op in wire.OP_NAMES and op != wire.HELLO:
            return wire.EINVAL, f"{wire.OP_NAMES[op]}: a witness stores no data".encode(), False
        return wire.UNKNOWN_OP, f"unknown operation {op}".encode(), False
