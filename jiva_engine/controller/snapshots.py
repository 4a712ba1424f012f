"""Snapshot orchestration (docs/ENGINE.md "Snapshots"): create, list and delete a volume's
snapshots on every current member, so every member always holds the same snapshot set.

Create is a write barrier: the whole volume is held in the range lock (new writes and unmaps
wait, the ones in flight finish: each is then acknowledged by every member, or failed), every
RW member is flushed, then every RW member freezes its data as the snapshot (SNAPSHOT, one id
made here), then writes go on. A write in flight at the barrier is thus in every copy of the
snapshot or in none. A member that fails FLUSH or SNAPSHOT is ejected as if it failed a write
(coordinator.failures), so the members that stay all took it.

Delete repeats bounded SNAP_DELETE steps on every RW member until each says done. A crash of the
controller during either leaves a snapshot on some members only: after a claim (a new term),
`claimed()` settles that before any rebuild or snapshot operation runs: a snapshot not on every
member is deleted from all (a create never acknowledged is undone; a delete is completed).

Rebuilds and snapshot operations exclude each other: create and delete are refused while a
rebuild runs, and a rebuild waits (`rebuilding()`) for a create, delete or settle to end, so a
rebuild's source keeps one snapshot list from its first comparison to the target's promotion.

The decisions (`check_name`, `create_refusal`, `delete_refusal`, `to_settle`, ...) are pure
functions; the Snapshots class does the talking. State changes only through its methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jiva_engine.controller.peers import RW, WO, Peer, meta_of
from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaError, ReplicaUnavailable
from jiva_engine.volume import VolumeError, VolumeNotReady

if TYPE_CHECKING:
    from jiva_engine.controller.coordinator import Coordinator

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 64  # --max-snapshots default
MAX_LIMIT = 250  # a replica refuses more layers than this
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WHOLE = 1 << 62  # the barrier's range: every byte the volume has or may grow to
BARRIER_TRIES = 5  # view changes waited out before a create gives up
SETTLE_RETRY = 1.0  # seconds between settle attempts that met a failing member


class SnapshotRefused(Exception):
    """A snapshot operation was refused; `status` is the HTTP status it maps to (400 bad input,
    404 unknown snapshot, 409 not now / conflict) and the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- pure decisions
def check_limit(limit: int) -> int:
    """The `--max-snapshots` value, or ValueError: 1..MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"--max-snapshots must be between 1 and {MAX_LIMIT} (got {limit!r})")
    return limit


def check_name(name: Any) -> str | None:
    """Why `name` cannot name a snapshot (None when it can)."""
    if not isinstance(name, str):
        return "a snapshot name must be a string"
    if not NAME_RE.fullmatch(name):
        return (
            f"invalid snapshot name {name!r}: 1 to 64 characters, letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return None


def busy_refusal(what: str, name: str, rebuilding: Sequence[str], settling: bool) -> str | None:
    """Why no snapshot may be created or deleted now (None: it may): a rebuild runs (it copies
    the snapshot set), or the set is being settled after a restart."""
    if rebuilding:
        return (
            f"cannot {what} snapshot {name!r} while replica(s) {', '.join(rebuilding)} are "
            "being rebuilt; retry when every replica is RW"
        )
    if settling:
        return (
            f"cannot {what} snapshot {name!r} now: the controller is reconciling the replicas' "
            "snapshot lists after a restart; retry in a moment"
        )
    return None


def create_refusal(
    name: Any,
    existing: Sequence[str],
    limit: int,
    *,
    serving: bool,
    reason: str = "",
    rebuilding: Sequence[str] = (),
    settling: bool = False,
    unsupported: Sequence[str] = (),
) -> SnapshotRefused | None:
    """Whether `create(name)` is refused, checked before anything changes: a bad name (400); a
    volume that does not serve, a member that does not support snapshots (`unsupported`: an
    older replica), a rebuild or a settle running, a name that exists or the limit reached
    (409). `existing` are the names the members hold (any member)."""
    why = check_name(name)
    if why:
        return SnapshotRefused(400, why)
    if not serving:
        return SnapshotRefused(409, f"the volume does not serve ({reason or 'no quorum'})")
    if unsupported:
        return SnapshotRefused(
            409,
            f"replica(s) {', '.join(unsupported)} do not support snapshots (a version from "
            "before them): upgrade them first",
        )
    busy = busy_refusal("create", name, rebuilding, settling)
    if busy:
        return SnapshotRefused(409, busy)
    if name in existing:
        return SnapshotRefused(409, f"snapshot {name!r} exists already")
    if len(existing) >= limit:
        return SnapshotRefused(
            409,
            f"the volume has {len(existing)} snapshot(s), its limit (--max-snapshots {limit}); "
            "delete one first",
        )
    return None


def delete_refusal(
    name: Any,
    *,
    serving: bool,
    reason: str = "",
    rebuilding: Sequence[str] = (),
    settling: bool = False,
    in_use: str | None = None,
) -> SnapshotRefused | None:
    """Whether `delete(name)` is refused before the members are asked (404 for a name no
    snapshot can have; 409 when the volume does not serve, the snapshot is in use (`in_use`
    says by what: a revert to it), or a rebuild or settle runs)."""
    if check_name(name):
        return SnapshotRefused(404, f"no snapshot named {name!r}")
    if not serving:
        return SnapshotRefused(409, f"the volume does not serve ({reason or 'no quorum'})")
    if in_use:
        return SnapshotRefused(409, f"snapshot {name!r} is in use ({in_use}); delete it after")
    busy = busy_refusal("delete", name, rebuilding, settling)
    return SnapshotRefused(409, busy) if busy else None


def new_record(name: str, now: float | None = None) -> dict[str, Any]:
    """The SNAPSHOT request body: the same id, name and time for every member."""
    return {
        "id": uuid.uuid4().hex,
        "name": name,
        "created": round(time.time() if now is None else now, 3),
    }


def snapshot_ids(info: Mapping[str, Any] | None) -> list[str] | None:
    """The snapshot ids (oldest first) an INFO answer reports; None when the replica reports none
    at all (it predates snapshots)."""
    if not info:
        return None
    for doc in (info, meta_of(dict(info))):
        ids = doc.get("snapshots")
        if isinstance(ids, list):
            return [str(i["id"]) if isinstance(i, dict) else str(i) for i in ids]
    return None


def hole_copy(ids: Sequence[list[str] | None]) -> str:
    """How a copy between replicas with these snapshot id lists (snapshot_ids) writes the
    source's holes: "unmap" when none of them knows snapshots (replicas from before them);
    "drop" when they hold the same snapshots (a hole in the source's head reads through to
    layers the target holds too); "data" otherwise: the hole is read (through the source's
    layers) and written as data, which gives the same view whatever the target holds."""
    if all(i is None for i in ids):
        return "unmap"
    if all(i is not None for i in ids) and all(i == ids[0] for i in ids):
        return "drop"
    return "data"


def common(lists: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The snapshots every list holds (in the first list's order, its entries)."""
    if not lists:
        return []
    others = [{str(s["id"]) for s in lst} for lst in lists[1:]]
    return [dict(s) for s in lists[0] if all(str(s["id"]) in o for o in others)]


def to_settle(lists: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Ids of snapshots some members hold and others do not (oldest first as the first holder
    lists them): what a crash in the middle of a create or delete left; each is deleted."""
    everywhere = {str(s["id"]) for s in common(lists)}
    out: list[str] = []
    for lst in lists:
        for s in lst:
            sid = str(s["id"])
            if sid not in everywhere and sid not in out:
                out.append(sid)
    return out


def find(lists: Sequence[Sequence[Mapping[str, Any]]], name: str) -> dict[str, Any] | None:
    """The snapshot called `name` on any member (the first found)."""
    for lst in lists:
        for s in lst:
            if s.get("name") == name:
                return dict(s)
    return None


def split_failures(
    peers: Sequence[Peer], results: Sequence[Any]
) -> tuple[list[Peer], list[tuple[Peer, BaseException]], list[tuple[Peer, BaseException]]]:
    """Sort one request's answers from several members: (succeeded, refused with an error
    status other than STALE_EPOCH, lost or fenced)."""
    ok: list[Peer] = []
    refused: list[tuple[Peer, BaseException]] = []
    lost: list[tuple[Peer, BaseException]] = []
    for p, r in zip(peers, results, strict=True):
        if not isinstance(r, BaseException):
            ok.append(p)
        elif isinstance(r, ReplicaError) and r.status != wire.STALE_EPOCH:
            refused.append((p, r))
        else:
            lost.append((p, r))
    return ok, refused, lost


# ---------------------------------------------------------------------- orchestration
class Snapshots:
    """The snapshots of one volume, as its current members hold them."""

    def __init__(
        self,
        coord: Coordinator,
        ranges: RangeLock,
        admit: Callable[[bool], Awaitable[None]],
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.coord = coord
        self.ranges = ranges
        self.admit = admit  # the I/O path's admission: waits for a committed view (bounded)
        self.limit = check_limit(limit)
        self.count = 0  # snapshots every member holds, as last seen
        self.rebuilds = 0  # rebuilds inside rebuilding()
        self.op: str | None = None  # "create", "delete" or "settle" while one runs
        self.settling = False  # set at a claim until the members' lists agree
        self._gated: set[Peer] = set()  # replicas whose rebuild is inside rebuilding()
        # what uses a snapshot by name (set by the volume: a revert to it), None when nothing
        self.in_use: Callable[[str], str | None] = lambda _name: None
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ the gate
    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def _rebuilding(self) -> list[str]:
        """Replicas being rebuilt: WO ones, and those inside the gate that are not members yet
        (a rebuild copying snapshots, before the replica takes writes). One promoted already
        (RW) does not count while its rebuild finishes its housekeeping."""
        return [
            p.address
            for p in self.coord.replicas()
            if p.mode == WO or (p in self._gated and p.mode != RW)
        ]

    @contextlib.asynccontextmanager
    async def rebuilding(self, peer: Peer) -> AsyncIterator[None]:
        """Held by the rebuild of `peer` from before it compares snapshot lists until it ends:
        it waits for a create, delete or settle to end; none starts until `peer` is a member."""
        await self._wait(lambda: self.op is None and not self.settling)
        self.rebuilds += 1
        self._gated.add(peer)
        try:
            yield
        finally:
            self.rebuilds -= 1
            self._gated.discard(peer)
            self._pulse()

    @contextlib.asynccontextmanager
    async def _exclusive(self, op: str) -> AsyncIterator[None]:
        await self._wait(lambda: self.op is None)
        self.op = op
        try:
            yield
        finally:
            self.op = None
            self._pulse()

    # ------------------------------------------------------------------ views
    def status(self) -> dict[str, Any]:
        """The `snapshots` object of the status JSON."""
        return {
            "count": self.count,
            "limit": self.limit,
            "busy": self.op,
            "settling": self.settling,
        }

    async def _lists(self, peers: Sequence[Peer]) -> list[list[dict[str, Any]]]:
        """Every peer's SNAP_LIST; a member that cannot answer is ejected (SnapshotRefused when
        none answers). A replica from before snapshots (UNKNOWN_OP) has none."""

        async def listed(p: Peer) -> list[dict[str, Any]]:
            try:
                return await p.link.snap_list()
            except ReplicaError as e:
                if e.status == wire.UNKNOWN_OP:
                    return []
                raise

        res = await asyncio.gather(*(listed(p) for p in peers), return_exceptions=True)
        ok, refused, lost = split_failures(peers, res)
        if refused or lost:
            bad = refused + lost
            if not ok:
                raise SnapshotRefused(
                    409, "no member could list its snapshots: "
                    + "; ".join(f"{p.address}: {e}" for p, e in bad),
                )  # fmt: skip
            await self.coord.failures(bad)
        return [r for r in res if not isinstance(r, BaseException)]

    async def entries(self) -> list[dict[str, Any]]:
        """The snapshots every current member holds, oldest first (the first member's entries:
        "id", "name", "created", "size", "bytes", "unique")."""
        rw = self.coord.rw_peers()
        if not self.coord.serving() or not rw:
            raise SnapshotRefused(
                409, f"the volume does not serve ({self.coord.mem.reason or 'no members'})"
            )
        snaps = common(await self._lists(rw))
        if not self.settling and self.op is None:
            self.count = len(snaps)
        return snaps

    # ------------------------------------------------------------------ create
    def _refused(self, name: Any, existing: Sequence[str]) -> SnapshotRefused | None:
        coord = self.coord
        return create_refusal(
            name,
            existing,
            self.limit,
            serving=coord.serving() and bool(coord.rw_peers()),
            reason=coord.mem.reason,
            rebuilding=self._rebuilding(),
            settling=self.settling,
            unsupported=[p.address for p in coord.rw_peers() if snapshot_ids(p.info) is None],
        )

    async def create(self, name: str) -> dict[str, Any]:
        """Take snapshot `name` on every current member at one point of the write stream.
        Returns its entry; SnapshotRefused when refused (nothing changed then)."""
        why = self._refused(name, [])
        if why:
            raise why
        coord = self.coord
        async with self._exclusive("create"):
            lists = await self._lists(coord.rw_peers())
            names = sorted({str(s.get("name")) for lst in lists for s in lst})
            why = self._refused(name, names)  # again: the state may have changed meanwhile
            if why:
                raise why
            rec = new_record(name)
            taken = await self._barrier(rec)
            self.count = len(names) + 1
            try:
                await self.admit(False)  # an ejection (a member failed) is committed
            except VolumeNotReady as e:
                raise SnapshotRefused(
                    409,
                    f"snapshot {name!r} was taken on the members that stay, but removing a "
                    f"member that failed it could not be committed: {e}",
                ) from None
        entry = next((s for s in taken if s.get("id") == rec["id"]), dict(rec))
        log.info("volume %s: snapshot %s (%s) taken", coord.name, name, rec["id"])
        return entry

    async def _barrier(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """Hold the whole volume in the range lock (new writes wait, the ones in flight end),
        then freeze it on every member. A view change going on (a member failing meanwhile) is
        waited out first, outside the lock (bounded by the I/O hold)."""
        coord = self.coord
        for _ in range(BARRIER_TRIES):
            await self.admit(False)
            async with self.ranges.hold(0, WHOLE):
                if coord.open and coord.serving():
                    return await self._freeze(rec)
        raise SnapshotRefused(409, f"the volume does not serve ({coord.mem.reason})")

    async def _freeze(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """Inside the barrier: FLUSH, then SNAPSHOT, on every RW member. Members failing either
        are ejected; the ones that took it are the membership that stays. Returns a member's
        snapshot list after it."""
        coord = self.coord
        if not coord.open or not coord.serving():
            raise SnapshotRefused(409, f"the volume does not serve ({coord.mem.reason})")
        epoch = coord.mem.epoch
        rw = coord.rw_peers()
        res = await asyncio.gather(*(p.link.flush(epoch) for p in rw), return_exceptions=True)
        flushed, refused, lost = split_failures(rw, res)
        failed = refused + lost
        if not flushed:
            await self._fail(failed)
            raise SnapshotRefused(409, "no member could flush: " + _why(failed))
        res = await asyncio.gather(
            *(p.link.snapshot(rec, epoch) for p in flushed), return_exceptions=True
        )
        took, refused, lost = split_failures(flushed, res)
        answers = [r for r in res if not isinstance(r, BaseException)]
        took = [
            p for p, r in zip(flushed, res, strict=True)
            if not isinstance(r, BaseException) and _holds(r, rec["id"])
        ]  # fmt: skip
        refused += [
            (p, ReplicaError(wire.EIO, "its answer does not list the new snapshot"))
            for p, r in zip(flushed, res, strict=True)
            if not isinstance(r, BaseException) and not _holds(r, rec["id"])
        ]
        if not took:
            # nobody holds it: the members that refused keep their (same) lists; only the
            # ones lost (or that failed the flush) are ejected, as they would be by a write
            await self._fail(failed + lost)
            raise SnapshotRefused(409, "no member took the snapshot: " + _why(refused + lost))
        await self._fail(failed + refused + lost)
        return [dict(s) for s in answers[0].get("snapshots") or []] if answers else []

    async def _fail(self, failed: list[tuple[Peer, BaseException]]) -> None:
        if failed:
            for p, e in failed:
                log.warning("volume %s: snapshot step failed on %s: %s", self.coord.name,
                            p.address, e)  # fmt: skip
            await self.coord.failures(failed)

    # ------------------------------------------------------------------ delete
    async def delete(self, name: str) -> dict[str, Any]:
        """Delete snapshot `name` from every current member (its data merged into the next
        newer layer, its space reclaimed). Returns {"deleted", "reclaimed", "id"}."""
        coord = self.coord

        def refused() -> SnapshotRefused | None:
            return delete_refusal(
                name,
                serving=coord.serving() and bool(coord.rw_peers()),
                reason=coord.mem.reason,
                rebuilding=self._rebuilding(),
                settling=self.settling,
                in_use=self.in_use(name),
            )

        why = refused()
        if why:
            raise why
        async with self._exclusive("delete"):
            why = refused()
            if why:
                raise why
            lists = await self._lists(coord.rw_peers())
            snap = find(lists, name)
            if snap is None:
                raise SnapshotRefused(404, f"no snapshot named {name!r}")
            reclaimed = max(
                (int(s.get("unique") or 0) for lst in lists for s in lst if s["id"] == snap["id"]),
                default=0,
            )
            await self._delete_id(str(snap["id"]))
            await self.admit(False)
            self.count = len(common(await self._lists(coord.rw_peers())))
        log.info("volume %s: snapshot %s (%s) deleted", coord.name, name, snap["id"])
        return {"deleted": name, "id": snap["id"], "reclaimed": reclaimed}

    async def _delete_id(self, sid: str) -> None:
        """SNAP_DELETE steps on every RW member until each is done; a member failing a step is
        ejected (it will be rebuilt with the others' snapshot list)."""
        coord = self.coord
        rw = coord.rw_peers()

        async def steps(p: Peer) -> None:
            while True:
                if not coord.serving():
                    raise ReplicaUnavailable(f"the volume stopped serving: {coord.mem.reason}")
                r = await p.link.snap_delete(sid, coord.mem.epoch)
                if not isinstance(r, dict):
                    raise ReplicaError(wire.EIO, f"bad SNAP_DELETE answer: {r!r}")
                if r.get("done"):
                    return

        res = await asyncio.gather(*(steps(p) for p in rw), return_exceptions=True)
        done, refused, lost = split_failures(rw, res)
        failed = refused + lost
        if failed and not done:
            await self._fail([f for f in failed if f in lost])
            raise SnapshotRefused(409, f"no member could delete snapshot {sid}: " + _why(failed))
        await self._fail(failed)

    # ------------------------------------------------------------------ after a claim
    def claimed(self) -> None:
        """The controller claimed the volume and serves (a new term): settle the members'
        snapshot lists before any rebuild or snapshot operation runs (call before serving)."""
        self.settling = True
        self._pulse()
        self.coord.spawn(self.settle())

    async def settle(self) -> None:
        """Delete every snapshot that some members hold and others do not (a crash during a
        create or delete), until the lists agree or the volume stops serving."""
        coord = self.coord
        try:
            await self._wait(lambda: self.rebuilds == 0)
            async with self._exclusive("settle"):
                while coord.serving() and not coord.closed:
                    try:
                        # a replica from before snapshots (a downgrade) holds none and takes
                        # part in no snapshot operation: it must not make the others' look odd
                        rw = [p for p in coord.rw_peers() if snapshot_ids(p.info) is not None]
                        lists = await self._lists(rw)
                        odd = to_settle(lists)
                        if not odd:
                            self.count = len(common(lists))
                            return
                        for sid in odd:
                            log.warning(
                                "volume %s: snapshot %s is not on every member (a create or "
                                "delete was interrupted): deleting it", coord.name, sid,
                            )  # fmt: skip
                            await self._delete_id(sid)
                    except (SnapshotRefused, ReplicaError, ReplicaUnavailable, VolumeError) as e:
                        log.warning("volume %s: settling snapshots: %s", coord.name, e)
                        await asyncio.sleep(SETTLE_RETRY)
        finally:
            self.settling = False
            self._pulse()


def _holds(answer: Any, sid: str) -> bool:
    snaps = answer.get("snapshots") if isinstance(answer, dict) else None
    return isinstance(snaps, list) and any(
        isinstance(s, dict) and s.get("id") == sid for s in snaps
    )


def _why(failed: Sequence[tuple[Peer, BaseException]]) -> str:
    return "; ".join(f"{p.address}: {e}" for p, e in failed) or "no member"
