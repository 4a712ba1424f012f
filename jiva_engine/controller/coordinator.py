"""Carries out the membership state machine's decisions over the voter connections.

`Membership` (membership.py) decides; this class does the talking: it connects to every voter,
claims the volume (CLAIM, then the claim view, then the start-up resynchronisation), commits view
changes (a failed member leaves, a rebuilt one joins, voters change), holds I/O while a change
cannot reach a quorum and resumes when one is back, fences this controller when a newer one
answers, and pings the voters (failure detection and the read lease, docs/ENGINE.md Q8). The I/O
path (volume.py) reads `open` / `lease_until` and waits on `changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from jiva_engine.controller.backend import Connector, tcp_connector
from jiva_engine.controller.grow import fit
from jiva_engine.controller.lag import LagDetector, LagPolicy
from jiva_engine.controller.membership import (
    Fence,
    Membership,
    Phase,
    Policy,
    Record,
    Takeover,
    View,
    Wait,
    majority,
)
from jiva_engine.controller.peers import ERR, REPLICA, RW, WITNESS, WO, Peer, meta_of
from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.controller.rebuild import (
    REBUILD_PARALLEL,
    REBUILD_SPAN,
    copy_range,
    merge,
    region_extent,
    split,
    wait_all,
)
from jiva_engine.controller.snapshots import hole_copy, snapshot_ids
from jiva_engine.protocol import voting, wire
from jiva_engine.protocol.client import ReplicaError, ReplicaUnavailable
from jiva_engine.protocol.voting import epoch_text, term_of
from jiva_engine.util import parse_hostport
from jiva_engine.volume import ResizeListeners, VolumeFenced

log = logging.getLogger(__name__)

START_GRACE = 0.5  # s a start-up waits for the other voters once a majority answered
PING_INTERVAL = 0.5  # seconds between pings of every connected voter (failures, read lease)
LAG_TICK = 0.1  # seconds between two looks at the members' answer times (lag.py)
# ... while idle (no answers since the last look, nothing unanswered: no I/O, or reads only);
# at most half --slow-replica-floor, so an unanswered PING or write is seen before it can stall
LAG_IDLE_TICK = 0.5


def _stale(e: BaseException) -> bool:
    return isinstance(e, ReplicaError) and e.status == wire.STALE_EPOCH


class Coordinator:
    """The voters of one volume and the quorum protocol with them."""

    def __init__(
        self,
        name: str,
        replicas: list[str],
        witnesses: list[str] | tuple[str, ...] = (),
        *,
        ranges: RangeLock,
        resend: Callable[[], Awaitable[list[tuple[Peer, BaseException]]]],
        size: int | None = None,
        policy: Policy = Policy.MAJORITY,
        replica_timeout: float = 3.0,
        secret: str | bytes | tuple[str | bytes, ...] | None = None,
        retry_interval: float = 1.0,
        connector: Connector = tcp_connector,
        lag: LagPolicy | None = None,
    ) -> None:
        self.name = name
        self.mem = Membership(policy=Policy(policy))
        self.lag = LagDetector(lag)  # members far behind their peers leave early (lag.py)
        # the size served: --size until the claim, then the largest of that and what the members
        # recorded (grow.py); it only grows, through `resize`
        self.size = size or 0
        self.resized = ResizeListeners()  # the SCSI unit follows the size (Volume.on_resize)
        self.sizing = asyncio.Lock()  # one grow at a time; no replica starts taking writes then
        self.region_size = wire.DEFAULT_REGION
        self.replica_timeout = replica_timeout
        self.secret = secret
        self.retry_interval = retry_interval
        self.connector = connector
        self.ranges = ranges
        self.resend = resend  # re-send the writes in flight to the current targets (after Q3)
        self.rebuilder: Any = None  # set by the volume (rebuild.Rebuilder)
        self.repairer: Any = None  # set by the volume (repair.Repairer)
        self.snapshots: Any = None  # set by the volume (snapshots.Snapshots)
        self.peers: dict[str, Peer] = {}
        self.addresses: dict[str, str] = {}  # voter id -> last known address (from views)
        for a in replicas:
            self.known(a, REPLICA, configured=True)
        for a in witnesses:
            self.known(a, WITNESS, configured=True)
        self.lock = asyncio.Lock()  # one view change at a time
        self.changed = asyncio.Event()  # pulsed on every phase / gate change
        self.open = False  # I/O may be acknowledged (mem.may_ack())
        self.lease_until = float("-inf")
        self.closed = False
        self.wake = asyncio.Event()
        self.stats: dict[str, float] = {
            "ejections": 0,
            "lag_ejections": 0,
            "epoch_changes": 0,
            "quorum_losses": 0,
            "lease_wait_seconds": 0.0,
        }
        self._tasks: set[asyncio.Task] = set()
        self._connects: dict[str, asyncio.Task] = {}  # connect() running per voter (start-up)
        self._failing: dict[Peer, str] = {}  # failed replicas waiting for their ejection
        self.duplicates: set[str] = set()  # voter ids found at two addresses before serving
        # who this controller is to the voters (AUTH, CLAIM): they name it to the next claimer,
        # whose host + PID check says whether it is dead (Q8); `id` tells it from another
        # controller object of the same process
        self.host = voting.host_identity()
        self.identity: dict[str, Any] = {
            "host": self.host,
            "pid": os.getpid(),
            "id": uuid.uuid4().hex[:12],
        }
        self._ejector: asyncio.Task | None = None
        self._rr = 0

    # ------------------------------------------------------------------ peers
    def known(self, address: str, kind: str | None = None, configured: bool = False) -> Peer:
        """The peer for an address (created if new); `kind` None = learn it when connected."""
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        p = self.peers.get(addr)
        if p is None:
            p = self.peers[addr] = Peer(addr, kind or REPLICA, configured=configured)
        elif configured:
            p.configured = True
            p.kind = kind or p.kind
        elif kind:
            p.kind = kind
        return p

    def by_id(self, vid: str) -> Peer | None:
        for p in self.peers.values():
            if p.id == vid:
                return p
        return None

    def peer(self, vid: str) -> Peer:
        """The peer of a voter the caller knows is there (a member, a promiser)."""
        p = self.by_id(vid)
        if p is None:
            raise KeyError(f"no known address for voter {vid}")
        return p

    def replicas(self) -> list[Peer]:
        return [p for p in self.peers.values() if not p.witness]

    def witnesses(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.witness]

    def rw_peers(self) -> list[Peer]:
        """Current members with a connection."""
        return [p for p in self.peers.values() if p.mode == RW and p.client is not None]

    def pick(self, peers: list[Peer]) -> Peer:
        """Round robin over `peers`."""
        self._rr += 1
        return peers[self._rr % len(peers)]

    def serving(self) -> bool:
        return self.mem.phase is Phase.SERVING

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run a background job, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _signal(self) -> None:
        """The phase or the gate changed: recompute `open`, wake I/O waiting for it."""
        self.open = self.mem.may_ack() and not self._failing
        self.lease_until = self.mem.lease_until()
        self.changed.set()
        self.changed = asyncio.Event()

    def configured_ids(self) -> frozenset[str]:
        """The voters given on the command line: ids where known, else address placeholders."""
        return frozenset(
            p.id if p.id else f"addr:{p.address}" for p in self.peers.values() if p.configured
        )

    def _names(self) -> None:
        self.mem.names = {p.id: p.address for p in self.peers.values() if p.id}
        for vid, addr in self.addresses.items():
            self.mem.names.setdefault(vid, addr)

    # ------------------------------------------------------------------ connections
    def _connect_task(self, p: Peer) -> asyncio.Task:
        """connect(p) as a background task, one at a time per voter (a start-up attempt may
        leave one running: it is reused, and `connecting` keeps tend() from starting another)."""
        t = self._connects.get(p.key)
        if t is None or t.done():
            p.connecting = True
            t = self._connects[p.key] = self.spawn(self.connect(p))
            t.add_done_callback(lambda _t: setattr(p, "connecting", False))
        return t

    async def _answers(
        self, peers: list[Peer], tasks: list[asyncio.Task], early: bool
    ) -> list[dict[str, Any] | None]:
        """The INFO of each peer (None: unreachable or still connecting). With `early`, return
        as soon as a majority of the configured voters answered: a voter whose host is down costs
        a connect timeout, and deciding without it is what the rules allow anyway (any voter may
        be unreachable, Q4); its connect goes on in the background (tend() picks it up)."""
        need = majority(sum(1 for p in peers if p.configured))
        pending = {t for t in tasks if not t.done()}
        while pending:
            answered = sum(
                1
                for p, t in zip(peers, tasks, strict=True)
                if p.configured and t.done() and t.result() is not None
            )
            if early and answered >= need:
                # a short grace for the others: a live voter answers within it, and one left
                # out would only catch up afterwards
                await asyncio.wait(pending, timeout=min(START_GRACE, self.replica_timeout / 3))
                break
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        return [t.result() if t.done() else None for t in tasks]

    async def drop_client(self, p: Peer) -> None:
        c, p.client = p.client, None
        if c is not None:
            with contextlib.suppress(Exception):
                await c.close()

    async def connect(self, p: Peer) -> dict[str, Any] | None:
        """Connect `p` if needed and return its INFO (None when unreachable or refused)."""
        if p.client is not None and p.client.connected:
            try:
                info = await p.link.info()
            except (ReplicaError, ReplicaUnavailable) as e:
                p.last_error = f"INFO failed: {e}"
                await self.drop_client(p)
                return None
        else:
            await self.drop_client(p)
            host, port = parse_hostport(p.address)
            c = self.connector(host, port, self.name, self.secret, self.replica_timeout)
            c.owner = self.identity
            try:
                await c.connect()
                info = await c.info()
            except (ReplicaError, ReplicaUnavailable, OSError) as e:
                p.last_error = str(e)  # connect() already closed what it opened
                return None
            p.client = c
        return await self._check_peer(p, info)

    async def _check_peer(self, p: Peer, info: dict[str, Any]) -> dict[str, Any] | None:
        meta = meta_of(info)
        kind = str(info.get("kind") or p.link.kind or REPLICA)
        vid = str(meta.get("id") or meta.get("uuid") or "") or None
        why = None
        if p.configured and kind != p.kind:
            why = f"{p.address} is a {kind}, but was given as a {p.kind}"
        elif vid is None:
            why = f"{p.address} reports no voter id"
        elif vid in self.duplicates:
            why = (
                f"{p.address} has a voter id ({vid}) found at two addresses: a copied data "
                "folder? refusing both until this controller restarts"
            )
        else:
            twin = next((q for q in self.peers.values() if q is not p and q.id == vid), None)
            if twin is not None and (twin.connected or twin.configured):
                # two addresses answer with one id (or were both given): a copied folder
                why = (
                    f"{p.address} has the same voter id ({vid}) as {twin.address}: a copied data "
                    "folder? refusing to use it"
                )
                if self.mem.phase is Phase.WAITING:  # nothing tells which one is real: neither,
                    self.duplicates.add(vid)  # for as long as this controller runs
                    twin.last_error = f"{twin.address} and {why}"
                    await self.drop_client(twin)
            elif twin is not None:  # the voter a view knew elsewhere answers here (re-IP, port)
                log.warning("voter %s moved from %s to %s", vid, twin.address, p.address)
                twin.id, twin.last_error = None, f"its voter answers at {p.address} now"
                p.last_rebuild = twin.last_rebuild
                if not twin.configured:
                    self.peers.pop(twin.address, None)
        if why is not None:
            if p.last_error != why:
                log.error("volume %s: %s", self.name, why)
            p.last_error = why
            await self.drop_client(p)
            return None
        p.kind, p.id, p.info = kind, vid, info
        if p.witness:
            p.last_error = None
        p.epoch = int(meta.get("epoch") or 0)
        for other_id, addr in (meta.get("voters") or {}).items():
            self.addresses.setdefault(other_id, addr)
        return info

    def _record(self, p: Peer, info: dict[str, Any]) -> Record:
        """The membership machine's view of one voter's answer."""
        meta = meta_of(info)
        view = None
        ve = int(meta.get("view_epoch", meta.get("epoch")) or 0)
        if ve > 0:
            by_addr = {q.address: q.id for q in self.peers.values() if q.id}
            members = frozenset(by_addr.get(m, m) for m in meta.get("membership") or [])
            view = View(ve, members, frozenset(meta.get("voters") or {}))
        quiet = info.get("quiet")
        return Record(
            p.id or p.address,
            p.witness,
            int(meta.get("epoch") or 0),
            view,
            float(quiet) if isinstance(quiet, (int, float)) else None,
        )

    def view_fields(self, view: View | None) -> dict[str, Any]:
        """SET_META body that makes a voter accept `view` (its epoch, members and voters)."""
        if view is None:
            return {"epoch": self.mem.epoch}
        voters = {}
        for vid in sorted(view.voters):
            q = self.by_id(vid)
            voters[vid] = q.address if q else self.addresses.get(vid, "")
        return {"epoch": view.epoch, "membership": sorted(view.members), "voters": voters}

    # ------------------------------------------------------------------ start-up (Q4-Q6, Q8)
    async def try_start(self) -> None:
        """One start-up attempt: find the voters, claim, commit, resynchronise, serve."""
        peers = list(self.peers.values())
        tasks = [self._connect_task(p) for p in peers]
        for early in (True, False):
            infos = await self._answers(peers, tasks, early)
            # peers named by a view but not configured were added by connect(): reach them too
            for vid, addr in list(self.addresses.items()):
                if addr and self.by_id(vid) is None and addr not in self.peers:
                    q = self.known(addr)
                    peers.append(q)
                    tasks.append(self._connect_task(q))
                    infos.append(await tasks[-1])
            self._names()
            records = {p.key: self._record(p, i) for p, i in zip(peers, infos, strict=True) if i}
            if self.mem.phase is not Phase.WAITING:
                return
            if not records:
                if early and not all(t.done() for t in tasks):
                    continue
                self.mem.reason = "no voter reachable: " + "; ".join(
                    f"{p.address}: {p.last_error}" for p in peers
                )
                return
            decision = self.mem.plan(records, self.configured_ids())
            if isinstance(decision, Wait) and early and not all(t.done() for t in tasks):
                continue  # what a majority said is not enough: hear the slower ones too
            break
        if isinstance(decision, Fence):
            return await self.fence(decision.reason)
        if isinstance(decision, Wait):
            return
        await self._claim(decision.epoch)

    async def _claim(self, epoch: int) -> None:
        reached = [p for p in self.peers.values() if p.connected]
        sent = time.monotonic()
        res = await asyncio.gather(
            *(p.link.claim(epoch, self.identity) for p in reached), return_exceptions=True
        )
        got = time.monotonic()
        promises: dict[str, Record] = {}
        answers: list[dict[str, Any]] = []
        for p, r in zip(reached, res, strict=True):
            if isinstance(r, BaseException):
                p.last_error = f"CLAIM failed: {r}"
                if not _stale(r):
                    await self.drop_client(p)
                continue
            p.epoch = epoch
            promises[p.key] = self._record(p, r)
            answers.append(r)
        if self.mem.phase is not Phase.WAITING:
            return
        # every controller that spoke to the promising voters lately ran here and is dead: no
        # read lease can be left to wait out (Q8)
        gone = voting.lease_holders_gone(answers, self.host, self.identity)
        decision = self.mem.claimed(epoch, promises, self.configured_ids(), sent, gone)
        if not isinstance(decision, Takeover):
            return
        if await self._takeover(decision, got):
            return
        self.mem.abandon(self.mem.reason or "the claim failed; retrying")
        self._signal()

    async def _takeover(self, t: Takeover, promised_at: float) -> bool:
        """Commit the claim view, resynchronise its members, wait out the old lease, serve."""
        view = t.view
        members = [self.peer(i) for i in sorted(view.members)]
        if t.base is None:  # a new volume: every replica starts current (all are empty)
            for p in members:
                await p.link.set_mode("RW", view.epoch)
        tracking = (
            {"start_tracking": True, "excluded": sorted(t.excluded)} if t.excluded else {}
        )  # members of the newest view left out: they catch up from the change maps later
        if not await self.commit(view, tracking):
            return False
        self.stats["epoch_changes"] += 1
        # the size to serve: the largest of --size (or what was served before) and what the
        # members recorded; one that missed (part of) a grow is grown before anything is copied
        size = max([self.size, *(p.size for p in members)])
        for p in members:
            await fit(p, size)
        self.resize(size)
        self.mem.reason = f"resynchronising members {', '.join(p.address for p in members)}"
        t_resync = time.monotonic()
        # members with the same snapshots copy holes as DROP (read through to their layers);
        # different ones (a crash in the middle of a create or delete) copy them as data, and
        # are settled once serving (snapshots.claimed)
        held = [snapshot_ids(p.info) for p in members]
        hole = hole_copy(held)
        newest = held[0][-1] if hole == "drop" and held[0] else None
        dirty = await self._resync(members, view.epoch, hole, newest)
        t_resync = time.monotonic() - t_resync
        wait = promised_at + t.lease_wait - time.monotonic()
        if wait > 0:  # the previous controller may still serve reads from its lease (Q8)
            self.mem.reason = f"waiting {wait:.1f}s for the previous controller's read lease"
            self.stats["lease_wait_seconds"] += wait
            await asyncio.sleep(wait)
        for p in self.replicas():
            if p.id in view.members:
                p.mode, p.last_error, p.epoch = RW, None, view.epoch
            elif p.mode == RW:
                p.mode = ERR
        self.mem.serving(
            f"resynchronised {len(dirty)} dirty region(s) at start-up" if dirty else ""
        )
        if self.snapshots is not None:  # before any rebuild can start
            self.snapshots.claimed()
        log.info(
            "volume %s serving at epoch %s with %s (%d dirty regions resynchronised in %.2fs%s)",
            self.name,
            epoch_text(view.epoch),
            [p.address for p in members],
            len(dirty),
            t_resync,
            f"; left out {sorted(self.mem.names.get(i, i) for i in t.excluded)}"
            if t.excluded
            else "",
        )
        self._signal()
        self.wake.set()
        return True

    async def _resync(
        self, members: list[Peer], epoch: int, hole: str = "unmap", newest: str | None = None
    ) -> list[int]:
        """Rule 5: copy every region dirty on any member from one member to the others."""
        maps = await asyncio.gather(*(p.link.dirty_map() for p in members))
        self.region_size = int(maps[0].get("region_size") or wire.DEFAULT_REGION)
        dirty = sorted(set().union(*(set(d.get("dirty") or []) for d in maps)))
        if dirty and len(members) > 1:
            src = members[0]
            others = members[1:]
            # adjacent dirty regions as one span, a few spans at once (nothing is served yet):
            # a restart right after a burst of random writes finds most regions dirty
            spans = split(
                merge([region_extent(r, self.region_size, self.size) for r in dirty], self.size),
                REBUILD_SPAN * self.region_size,
            )
            gate = asyncio.Semaphore(REBUILD_PARALLEL)

            async def resync(off: int, ln: int) -> None:
                async with gate:
                    # past writes parked in the range lock: writes in flight when every member
                    # was lost wait there for this claim (they re-send themselves afterwards)
                    await copy_range(
                        self.ranges, src, others, off, ln, epoch, rebuild=False, past_parked=True,
                        repair=self.repairer, hole=hole, newest=newest,
                    )  # fmt: skip

            await wait_all([asyncio.ensure_future(resync(o, n)) for o, n in spans])
        for p in members:
            await p.link.flush(epoch)
            await p.link.clear_dirty(dirty if dirty else None)
        return dirty

    # ------------------------------------------------------------------ committing views (Q2, Q3)
    async def commit(self, view: View, member_fields: dict[str, Any] | None = None) -> bool:
        """Send the pending `view` to every connected voter; True once a quorum accepted it.

        Returns as soon as the quorum is there (slower voters answer in the background). False
        when every reachable voter answered and the quorum is short (the machine says why), or
        when a voter says a newer controller claimed the volume (this one is then fenced).
        """
        targets = [p for p in self.peers.values() if p.connected]
        futs: dict[asyncio.Future, Peer] = {}
        for p in targets:
            body = self.view_fields(view)
            if member_fields and p.id in view.members:
                body.update(member_fields)
            futs[asyncio.ensure_future(p.link.set_meta(**body))] = p
        sent = time.monotonic()
        committed = self.mem.view is view
        while futs and not committed:
            done, _ = await asyncio.wait(list(futs), return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                p = futs.pop(f)
                if await self._accept_result(p, f, view, sent):
                    committed = True
                if self.mem.phase is Phase.FENCED:
                    return False
        for f, p in futs.items():  # stragglers: note their answer when it comes
            f.add_done_callback(partial(self._late_accept, p, view, sent))
        if not committed and self.mem.pending is view:
            self.mem.stalled()
            self._signal()
        return committed

    async def _accept_result(self, p: Peer, f: asyncio.Future, view: View, sent: float) -> bool:
        """Handle one voter's answer to a view; True if it completed the quorum."""
        e = f.exception()
        if e is not None:
            if _stale(e):
                await self.fence(f"{p.address} refused epoch {epoch_text(view.epoch)}: {e}")
            else:
                p.last_error = f"SET_META failed: {e}"
            return False
        p.epoch = max(p.epoch, view.epoch)
        self.mem.renew(p.key, sent)
        return self.mem.pending is view and self.mem.accepted(p.key)

    def _late_accept(self, p: Peer, view: View, sent: float, f: asyncio.Future) -> None:
        self.spawn(self._accept_result(p, f, view, sent))

    async def _hold_until_quorum(self, view: View) -> bool:
        """Q3: the change to `view` is short of a quorum. Keep the replicas' dirty regions
        (writes in flight may be on some members only), then keep asking the voters until a
        majority accepted it (True) or a newer controller answers (False)."""
        self.stats["quorum_losses"] += 1
        log.error("volume %s: %s", self.name, self.mem.reason)
        for p in self.replicas():
            if p.connected and p.mode in (RW, WO):
                with contextlib.suppress(ReplicaError, ReplicaUnavailable):
                    await p.link.set_meta(pin_dirty=True)
        while not self.closed and self.mem.pending is view:
            await asyncio.sleep(self.retry_interval)
            lost = [p for p in self.peers.values() if not p.connected and p.id in view.voters]
            infos = await asyncio.gather(*(self.connect(p) for p in lost))
            for p, info in zip(lost, infos, strict=True):
                if info and term_of(p.epoch) > self.mem.term:
                    await self.fence(f"{p.address} is at epoch {epoch_text(p.epoch)}")
                    return False
            if self.mem.phase is Phase.FENCED:
                return False
            if await self.commit(view):
                log.info("volume %s: quorum back at epoch %s", self.name, epoch_text(view.epoch))
                return True
        return False

    async def change(self, view: View, member_fields: dict[str, Any] | None = None) -> bool:
        """Commit a proposed view change (acknowledgements held meanwhile). False if fenced or
        closed before a quorum accepted it."""
        self._signal()  # closes the gate: the machine has a pending view
        ok = await self.commit(view, member_fields)
        if not ok and self.mem.phase is Phase.NO_QUORUM:
            ok = await self._hold_until_quorum(view)
        if ok:
            self.stats["epoch_changes"] += 1
        self._signal()
        return ok

    def resize(self, size: int) -> None:
        """Serve `size` bytes from now on (every replica that takes writes has that much: the
        caller grew them); the SCSI unit is told when a known size changed. Never smaller."""
        old = self.size
        if size < old:
            raise ValueError(f"volume {self.name} is {old} bytes: it cannot shrink to {size}")
        if size == old:
            return
        self.size = size
        if old:
            log.info("volume %s grown from %d to %d bytes", self.name, old, size)
            self.resized.notify(old, size)

    # ------------------------------------------------------------------ failures and ejection
    async def failures(self, failed: list[tuple[Peer, BaseException]]) -> None:
        """Report failed replicas: they are ejected in the background (rule 3) and nothing is
        acknowledged until that view change is committed (the caller then waits in the I/O
        path's admission, bounded by the hold). STALE_EPOCH fences (raises VolumeFenced)."""
        for p, e in failed:
            if _stale(e):
                await self.fence(f"replica {p.address} reports a newer epoch: {e}")
                raise VolumeFenced(self.mem.reason)
        for p, e in failed:
            if p.mode != ERR:
                self._failing.setdefault(p, str(e))
        self._signal()  # the gate closes at once
        if self._failing and (self._ejector is None or self._ejector.done()):
            self._ejector = self.spawn(self._eject())
        if self.mem.phase is Phase.FENCED:
            raise VolumeFenced(self.mem.reason)

    async def _eject(self) -> None:
        """Remove the failed replicas; members leave under a new view before anything else is
        acknowledged, and the writes in flight are re-sent to the remaining ones."""
        async with self.lock:
            try:
                while self._failing and self.mem.phase in (Phase.SERVING, Phase.NO_QUORUM):
                    await self._eject_batch()
            finally:
                if self.mem.phase not in (Phase.SERVING, Phase.NO_QUORUM):
                    self._failing.clear()
                self._signal()

    async def _eject_batch(self) -> None:
        batch = {p: e for p, e in self._failing.items() if p.mode != ERR}
        out = set()
        for p, why in batch.items():
            log.warning("replica %s ejected: %s", p.address, why)
            if p.id in self.mem.members:
                out.add(p.id)
            p.mode, p.rebuild = ERR, None
            p.errors += 1
            p.last_error = why or "failed"
            self._cancel_rebuild(p)
            self.stats["ejections"] += 1
            await self.drop_client(p)
        errors = {p.address: why for p, why in self._failing.items()}
        self._failing.clear()
        if not out:
            return  # a WO replica is not in the membership: no new view needed
        left = self.mem.members - out
        if not left:
            await self._lost_all(errors)
            return
        view = self.mem.propose(left)
        if not await self.change(view, {"start_tracking": True, "excluded": sorted(out)}):
            return
        # every unacknowledged write/unmap may have landed on the others before tracking
        # started: re-send them so the change maps record them, then drop the seed the
        # replicas took at SET_META (it covers a crash before the re-send is done)
        for p, e in await self.resend():
            self._failing.setdefault(p, str(e))
        if self._failing:
            return
        rw = self.rw_peers()
        res = await asyncio.gather(
            *(p.link.set_meta(epoch=view.epoch, drop_seed=[view.epoch]) for p in rw),
            return_exceptions=True,
        )
        for p, r in zip(rw, res, strict=True):
            if isinstance(r, BaseException):
                self._failing.setdefault(p, f"SET_META drop_seed failed: {r}")

    async def _lost_all(self, errors: dict[str, str]) -> None:
        for p in self.replicas():  # rebuilds need a source: stop them
            if p.mode == WO:
                self._cancel_rebuild(p)
                p.mode, p.rebuild, p.last_error = ERR, None, "rebuild source lost"
                await self.drop_client(p)
        self.mem.lost_all(
            "every member was lost ("
            + ", ".join(f"{a}: {e}" for a, e in errors.items())
            + "); waiting for the newest members to return"
        )
        self._signal()
        self.wake.set()

    def _cancel_rebuild(self, p: Peer) -> None:
        if p.rebuild_task and p.rebuild_task is not asyncio.current_task():
            p.rebuild_task.cancel()

    async def fence(self, reason: str) -> None:
        """A newer controller owns the volume: stop serving and let go of the voters."""
        if self.mem.phase is Phase.FENCED:
            return
        self.mem.fence(reason)
        log.error("volume %s %s", self.name, self.mem.reason)
        self._signal()
        for p in self.peers.values():
            self._cancel_rebuild(p)
            await self.drop_client(p)

    # ------------------------------------------------------------------ joining (rule 6, Q7)
    async def promote(self, p: Peer) -> None:
        """Add a rebuilt replica to the membership (and to the voters) under a new view."""
        async with self.lock:
            if p.mode != WO or not self.serving() or self.mem.pending is not None:
                raise ReplicaUnavailable("replica no longer rebuilding")
            assert self.mem.view is not None  # serving
            voters = set(self.mem.view.voters)
            if p.key not in voters:  # a new voter; an old id at its address is replaced (Q7)
                voters -= {v for v in voters if self.addresses.get(v) == p.address}
                voters.add(p.key)
            await p.link.set_mode("RW")
            view = self.mem.propose(self.mem.members | {p.key}, voters)
            if not await self.change(view):
                raise ReplicaUnavailable("the view adding it was not committed")
            p.mode, p.rebuild, p.last_error = RW, None, None
            self.lag.rejoined(p.key)  # judged afresh
            self.addresses[p.key] = p.address
            log.info("replica %s is current: %s", p.address, view.describe())
        await self.rebuilder.clear_settled(p)
        if all(q.mode == RW for q in self.replicas()):
            await self.stop_tracking()

    async def remove(self, address: str) -> None:
        """Forget a replica or witness (DELETE /v1/replicas): it leaves the members and the
        voters under a new view (not the only current copy)."""
        host, port = parse_hostport(address)
        addr = f"{host}:{port}"
        p = self.peers.get(addr)
        if p is None:
            raise KeyError(f"replica {addr} is not part of volume {self.name}")
        if p.mode == RW and len(self.rw_peers()) == 1:
            raise ValueError(f"replica {addr} is the only current copy; refusing to remove it")
        async with self.lock:
            view = self.mem.view
            if view is not None and self.serving() and p.id in view.voters | view.members:
                new = self.mem.propose(view.members - {p.id}, view.voters - {p.id})
                if not await self.change(new, {"start_tracking": True, "excluded": [p.id]}):
                    raise ValueError("the view removing it could not be committed")
            self._cancel_rebuild(p)
            p.mode = ERR
            await self.drop_client(p)
            self.peers.pop(addr, None)
        if self.serving() and all(x.mode == RW for x in self.replicas()):
            await self.stop_tracking()

    async def stop_tracking(self) -> None:
        """Every known replica is current: nobody needs the missed-write maps any more."""
        for x in self.rw_peers():
            try:
                meta = meta_of(await x.link.info())
                since = [
                    int(t["since"]) if isinstance(t, dict) else int(t)
                    for t in meta.get("tracking") or []
                ]
                if since:
                    await x.link.set_meta(epoch=self.mem.epoch, stop_tracking=since)
            except (ReplicaError, ReplicaUnavailable) as e:
                log.warning("stop tracking on %s: %s", x.address, e)

    # ------------------------------------------------------------------ while serving
    async def tend(self) -> None:
        """Ping every connected voter (failures; the read lease), reconnect the others, start
        rebuilds of returning replicas."""
        failed: list[tuple[Peer, BaseException]] = []
        for p in list(self.peers.values()):
            if p.mode == RW:
                if not p.connected:  # its connection broke between two requests
                    failed.append((p, ReplicaUnavailable(f"replica {p.address}: connection lost")))
                continue
            busy = p.connecting or (p.rebuild_task is not None and not p.rebuild_task.done())
            if busy or (p.connected and (p.witness or p.mode != ERR)):
                continue  # reconnect lost voters; rebuild replicas that are not members
            if not p.witness and not self.lag.may_rejoin(p.key):
                continue  # ejected for lag again soon: it waits out its backoff
            p.connecting = True
            self.spawn(self._rejoin(p))
        pinged = [p for p in self.peers.values() if p.connected and p.mode != WO]
        sent = time.monotonic()
        res = await asyncio.gather(*(p.link.ping() for p in pinged), return_exceptions=True)
        for p, r in zip(pinged, res, strict=True):
            if isinstance(r, BaseException):
                if p.mode == RW:
                    failed.append((p, r))
                elif p.client is None:
                    continue  # dropped meanwhile (ejected): its last error says why
                else:
                    p.last_error = f"ping failed: {r}"
                    await self.drop_client(p)
            elif p.id in self.mem.voters:
                self.mem.renew(p.id, sent)
        self.lease_until = self.mem.lease_until()
        if failed and self.serving():
            with contextlib.suppress(VolumeFenced):
                await self.failures(failed)
        elif self.open and not self.lock.locked():
            await self._reconcile_voters()

    async def _reconcile_voters(self) -> None:
        """Bring the view's voters to what this controller was configured with, one voter per
        view change (Q7): a configured witness that answers joins; a voter that is neither
        configured nor a current copy (a witness or replica taken out of the inventory, a
        folder replaced at its address) leaves. Current copies never leave this way."""
        view = self.mem.view
        if view is None:
            return
        configured = [p for p in self.peers.values() if p.configured]
        ids = {p.id for p in configured if p.id}
        unknown = {p.address for p in configured if not p.id}
        add = next(
            (p.id for p in configured if p.witness and p.connected and p.id not in view.voters),
            None,
        )
        drop = next(
            (
                v
                for v in sorted(view.voters - view.members - ids)
                if self.addresses.get(v) not in unknown
            ),
            None,
        )
        if add is None and drop is None:
            return
        voters = view.voters | {add} if add else view.voters - {drop}
        async with self.lock:
            if self.mem.view is not view or not self.open:
                return
            new = self.mem.propose(view.members, voters)
            what = f"witness {self.peer(add).address} joins" if add else f"voter {drop} leaves"
            if await self.change(new):
                log.info("volume %s: %s the voters (%s)", self.name, what, new.describe())
                if drop:  # forget it (an address learned from a view, never configured)
                    gone = self.by_id(drop) or self.peers.get(self.addresses.get(drop, ""))
                    self.addresses.pop(drop, None)
                    if gone is not None and not gone.configured:
                        await self.drop_client(gone)
                        self.peers.pop(gone.address, None)

    async def _rejoin(self, p: Peer) -> None:
        try:
            info = await self.connect(p)
            if info is None or self.closed:
                return
            if term_of(p.epoch) > self.mem.term:
                await self.fence(f"{p.address} is at epoch {epoch_text(p.epoch)}")
                return
            if not self.serving():
                return
            if p.witness:
                p.last_error = None
                return
            p.rebuild_task = self.spawn(self.rebuilder.run(p, meta_of(info)))
        finally:
            p.connecting = False

    # ------------------------------------------------------------------ lifecycle
    async def watch_lag(self) -> None:
        """Background loop: feed the members' answer times to the lag detector; eject a member
        far behind its peers through the usual failure path (a view change without it)."""
        idle_tick = min(LAG_IDLE_TICK, self.lag.policy.floor / 2)
        busy = True
        while not self.closed and self.mem.phase is not Phase.FENCED:
            await asyncio.sleep(LAG_TICK if busy else idle_tick)
            try:
                busy = await self.check_lag()
            except VolumeFenced:
                return
            except Exception:  # keep watching: report it (the timeout still applies)
                busy = True
                log.exception("volume %s lag watch error", self.name)

    async def check_lag(self) -> bool:
        """One look at the members' answer times; ejects at most one member for lag. False when
        it was idle: no member answered a replicated request since the last look and none has
        one (or a PING) unanswered, so nothing can stall before a look `floor` / 2 from now."""
        now = time.monotonic()
        rw = self.rw_peers()
        busy = False
        for p in rw:
            c = p.link
            times = c.answer_times
            age = c.oldest_age(now)
            if times:
                samples = list(times)
                times.clear()
                self.lag.answered(p.key, samples)
                busy = True
            self.lag.outstanding(p.key, age)
            busy = busy or age is not None
            p.latency = self.lag.latency(p.key)
        # decide only while serving with no view change running (it would judge a moving view)
        if not self.open or self._failing or self.lock.locked():
            return busy
        rebuilding = any(q.mode == WO for q in self.replicas())
        verdict = self.lag.check([p.key for p in rw], rebuilding)
        if verdict is None:
            return busy
        p = next(q for q in rw if q.key == verdict.member)
        p.lag_ejections += 1
        self.stats["lag_ejections"] += 1
        why = f"replica {p.address} {verdict.reason}"
        log.warning("volume %s: %s", self.name, why)
        await self.failures([(p, ReplicaUnavailable(why))])
        return True

    async def manage(self) -> None:
        """Background loop: start-up attempts while waiting, tending while serving."""
        if self.lag.policy.enabled:
            self.spawn(self.watch_lag())
        last_try = 0.0
        while not self.closed and self.mem.phase is not Phase.FENCED:
            self.wake.clear()
            try:
                if self.mem.phase is Phase.WAITING:
                    last_try = time.monotonic()
                    await self.try_start()
                elif self.mem.phase is Phase.SERVING:
                    await self.tend()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep managing: report and retry next round
                log.exception("volume %s manager error", self.name)
                if self.mem.phase is Phase.WAITING:
                    self.mem.abandon(f"start-up failed: {e}; retrying")
            if self.mem.phase is Phase.SERVING and self.wake.is_set():
                continue
            if self.mem.phase is Phase.WAITING:
                delay = max(0.0, last_try + self.retry_interval - time.monotonic())
            else:
                delay = PING_INTERVAL
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def close(self) -> None:
        self.closed = True
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        for p in self.peers.values():
            await self.drop_client(p)

    # ------------------------------------------------------------------ status
    def quorum(self) -> dict[str, Any]:
        """The `quorum` object of the status JSON."""
        voters = self.mem.voters
        if not voters:
            voters = frozenset(self.configured_ids())
        missing = []
        for vid in sorted(voters):
            p = self.by_id(vid)
            if p is None or not p.connected:
                missing.append(p.address if p else self.addresses.get(vid) or vid)
        return {
            "policy": self.mem.policy.value,
            "voters": len(voters),
            "needed": majority(len(voters)) if self.mem.policy is Policy.MAJORITY else None,
            "missing": missing,
        }
