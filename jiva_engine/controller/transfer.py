"""Snapshot data in and out of a volume (issue 15; docs/ENGINE.md "Snapshot data, revert and
import"): export (a snapshot's extents and data), revert (the snapshot's view written back over
the blocks changed since it), import (data written into the volume from outside: a backup
restore, a clone).

Everything goes through the volume's ordinary paths: a snapshot is read with SNAP_READ from a
current member (a block failing its checksum there is read from another member; a block bad on
every member is an error naming it), and revert and import write with the volume's replicated
`write` / `unmap`, so they are as crash safe as any write (re-running one completes it).

Revert and import need the volume to themselves: `Gate` refuses them while an iSCSI initiator
is logged in, and the iSCSI target asks `Gate.login_refusal` before it accepts a login, so no
initiator logs in while one runs. Progress is one `Transfer` (kind, source, done, total, rate,
result) per export, revert or import, shown in the status JSON as "transfer".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jiva_engine.controller.peers import Peer
from jiva_engine.controller.rebuild import clip
from jiva_engine.protocol.client import BadBlocks, ReplicaError, ReplicaUnavailable
from jiva_engine.volume import VolumeError

if TYPE_CHECKING:
    from jiva_engine.controller.volume import Volume

log = logging.getLogger(__name__)

BLOCK = 4096
MAX_DATA = 16 << 20  # largest export read / import write in one request
PIECE = 4 << 20  # one SNAP_READ + write of a revert
PARALLEL = 4  # revert pieces in flight at once
ZERO_STEP = 256 << 20  # an import's zeroed range is unmapped this much at a time
WINDOW = 1 << 30  # SNAP_EXTENTS asked per window of this many bytes (bounded answers)
IMPORT_IDLE = 600.0  # an import with no request for this long is abandoned (its gate released)
EXPORT_IDLE = 60.0  # an export with no read for this long is shown as ended
KINDS = ("export", "revert", "import")

Runs = list[tuple[int, int]]


class TransferRefused(Exception):
    """The transfer cannot run now (initiators logged in, another one runs, not serving): 409."""


class SnapshotUnknown(LookupError):
    """No snapshot of that name: 404."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown snapshot"


class SnapshotBadBlocks(Exception):
    """Blocks of a snapshot's view fail their checksum on every member holding them: 422."""

    def __init__(self, name: str, runs: Runs) -> None:
        self.runs = merge(runs)
        first = self.runs[0][0] if self.runs else 0
        super().__init__(
            f"snapshot {name}: {sum(n for _, n in self.runs)} byte(s) have no good copy on any"
            f" replica, the first block at byte {first}"
        )


class TransferFailed(Exception):
    """No member could answer (unreachable, or it does not know the operation): 503."""


# ---------------------------------------------------------------------- run arithmetic
def merge(runs: Runs) -> Runs:
    """Sorted runs with adjacent and overlapping ones joined."""
    out: Runs = []
    for o, n in sorted(runs):
        if out and o <= out[-1][0] + out[-1][1]:
            po, pn = out[-1]
            out[-1] = (po, max(pn, o + n - po))
        elif n > 0:
            out.append((o, n))
    return out


def split_changed(changed: Runs, has: Runs, piece: int = PIECE) -> list[tuple[int, int, bool]]:
    """What a revert does with each changed run: (offset, length, True) pieces the snapshot's
    view holds (copy its data) and (offset, length, False) pieces it does not (unmap), none
    longer than `piece`."""
    out: list[tuple[int, int, bool]] = []

    def emit(o: int, n: int, data: bool) -> None:
        for i in range(o, o + n, piece):
            out.append((i, min(piece, o + n - i), data))

    hs = merge(has)
    for o, n in merge(changed):
        pos, end = o, o + n
        for ho, hn in clip(hs, o, end):
            if ho > pos:
                emit(pos, ho - pos, False)
            emit(ho, hn, True)
            pos = ho + hn
        if pos < end:
            emit(pos, end - pos, False)
    return out


def subtract(o: int, n: int, bad: Runs) -> Runs:
    """The parts of [o, o+n) outside the `bad` runs."""
    out: Runs = []
    pos, end = o, o + n
    for bo, bn in clip(bad, o, end):
        if bo > pos:
            out.append((pos, bo - pos))
        pos = max(pos, bo + bn)
    if pos < end:
        out.append((pos, end - pos))
    return out


def whole_blocks(runs: Runs, start: int, end: int) -> Runs:
    """Runs widened to whole blocks and clipped to [start, end)."""
    wide = [(o - o % BLOCK, -(-(o + n) // BLOCK) * BLOCK - (o - o % BLOCK)) for o, n in runs]
    return clip(merge(wide), start, end)


async def run_all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines concurrently; when one fails the others are cancelled (so nothing of
    a failed transfer keeps writing after it reported its end), then the error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------- exclusive access
class Gate:
    """Exclusive access for revert and import: taken only while no iSCSI initiator is logged
    in; while it is held the target refuses logins (`login_refusal`). `sessions` is set by the
    controller's wiring to count the target's logged-in (non-discovery) sessions."""

    def __init__(self) -> None:
        self.sessions: Callable[[], int] = lambda: 0
        self.holder: str | None = None  # what holds it ("revert to snapshot S", ...)
        self.deadline: float | None = None  # released by itself after this (monotonic)
        self.on_expire: Callable[[], None] | None = None

    def acquire(self, what: str, idle: float | None = None) -> None:
        """Take the gate for `what` (TransferRefused when busy or initiators are logged in);
        with `idle`, it expires unless `touch()`ed within that many seconds."""
        if self.busy():
            raise TransferRefused(f"{what} refused: {self.holder} is running")
        n = self.sessions()
        if n:
            raise TransferRefused(
                f"{what} needs the volume to itself, but {n} iSCSI initiator session(s) are"
                " logged in: log them out first"
            )
        self.holder = what
        self.deadline = time.monotonic() + idle if idle else None

    def touch(self, idle: float) -> None:
        """The holder is still active: push the expiry back."""
        if self.deadline is not None:
            self.deadline = time.monotonic() + idle

    def release(self) -> None:
        """Give the gate back: logins are accepted again."""
        self.holder = None
        self.deadline = None

    def busy(self) -> str | None:
        """What holds the gate (None: free); an expired holder is released here."""
        if self.holder and self.deadline is not None and time.monotonic() > self.deadline:
            log.warning("%s: no request for a while, abandoned", self.holder)
            self.release()
            if self.on_expire:
                self.on_expire()
        return self.holder

    def login_refusal(self) -> str | None:
        """Why an iSCSI login must be refused now (None: accept it)."""
        what = self.busy()
        return f"{what} is running: logins are refused until it ends" if what else None


# ---------------------------------------------------------------------- progress
@dataclass(eq=False)
class Transfer:
    """One export, revert or import: its progress, and its result once it ended."""

    kind: str
    source: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: str | None = None  # "done", "failed: ...", "abandoned: ..." once ended
    t0: float = field(default_factory=time.monotonic)
    active: float = field(default_factory=time.monotonic)  # last progress (monotonic)
    t1: float | None = None

    @property
    def running(self) -> bool:
        return self.result is None

    @property
    def rate(self) -> float:
        """Bytes per second so far (over the whole transfer once it ended)."""
        took = (self.t1 or time.monotonic()) - self.t0
        return self.done / took if took > 0 else 0.0

    def add(self, n: int) -> None:
        self.done += n
        self.active = time.monotonic()

    def finish(self, result: str) -> None:
        if self.result is None:
            self.result = result
            self.finished = time.time()
            self.t1 = time.monotonic()

    def view(self) -> dict[str, Any]:
        """The status JSON's "transfer" object."""
        return {
            "kind": self.kind,
            "source": self.source,
            "state": "running" if self.running else "ended",
            "done": self.done,
            "total": self.total,
            "rate": round(self.rate),
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
        }


# ---------------------------------------------------------------------- the transfers
class Transfers:
    """A volume's exports, reverts and imports (one revert or import at a time)."""

    def __init__(self, volume: Volume) -> None:
        self.vol = volume
        self.gate = Gate()
        self.gate.on_expire = self._expired
        self.current: Transfer | None = None  # the revert or import holding the gate
        self.export: Transfer | None = None  # the current (else last) export
        self.last: Transfer | None = None  # the transfer shown once nothing runs
        self.bytes: dict[str, int] = dict.fromkeys(KINDS, 0)  # jiva_transfer_bytes_total{kind}
        self._task: asyncio.Task | None = None

    def status(self) -> dict[str, Any] | None:
        """The running revert/import, else the transfer started last (running or ended)."""
        self.gate.busy()  # expires an abandoned import
        ex = self.export
        if ex is not None and ex.running and time.monotonic() - ex.active > EXPORT_IDLE:
            ex.finish("done" if ex.done >= ex.total else "ended: no read for a while")
        t = self.current if self.current is not None and self.current.running else self.last
        return t.view() if t else None

    def _expired(self) -> None:
        t = self.current
        if t is not None:
            t.finish(f"abandoned: no request for {IMPORT_IDLE:g} s")
            self.current = None

    def _ended(self, t: Transfer, result: str) -> None:
        t.finish(result)
        self.last = t
        if t is self.current:
            self.current = None
            self.gate.release()

    # ------------------------------------------------------------------ snapshots
    def _members(self, rotate: bool = False) -> list[Peer]:
        """The current members; `rotate`: starting with the next in turn (data reads)."""
        members = [m for m in self.vol.rw_members() if m.client is not None]
        if not members:
            raise TransferFailed(f"volume {self.vol.name}: no current replica to read from")
        k = next(self.vol._rr) % len(members) if rotate else 0
        return members[k:] + members[:k]

    async def snapshot(self, name: str) -> dict[str, Any]:
        """The snapshot record {"id", "name", "size", ...} named `name` (SNAP_LIST of a current
        member); SnapshotUnknown when there is none."""
        await self.vol._admit(True)
        errors = []
        for m in self._members():
            try:
                snaps = await m.link.snap_list()
            except (ReplicaError, ReplicaUnavailable) as e:
                errors.append(f"{m.address}: {e}")
                continue
            for rec in snaps:
                if rec.get("name") == name:
                    return rec
            raise SnapshotUnknown(f"volume {self.vol.name} has no snapshot {name!r}")
        raise TransferFailed("no replica could list the snapshots: " + "; ".join(errors))

    async def _extents(self, offset: int, length: int, to: str | None, since: str | None) -> Runs:
        """SNAP_EXTENTS from a current member (the first that answers), clipped to the range."""
        errors = []
        for m in self._members():
            epoch = self.vol.epoch
            try:
                runs = await m.link.snap_extents(offset, length, to, since, epoch)
            except (ReplicaError, ReplicaUnavailable) as e:
                errors.append(f"{m.address}: {e}")
                continue
            return clip(runs, offset, offset + length)
        raise TransferFailed("no replica could list the snapshot's blocks: " + "; ".join(errors))

    async def extents_of(self, rec: dict[str, Any], to: str | None, since: str | None) -> Runs:
        """Every run of SNAP_EXTENTS over the volume (or the snapshot's size), window by window."""
        size = int(rec["size"]) if to is not None else self.vol.size
        runs: Runs = []
        for off in range(0, size, WINDOW):
            runs += await self._extents(off, min(WINDOW, size - off), to, since)
        return merge(runs)

    async def extents(self, name: str) -> tuple[int, Runs]:
        """(size, runs of blocks present in the snapshot's view): starts an export."""
        rec = await self.snapshot(name)
        runs = await self.extents_of(rec, rec["id"], None)
        self._new_export(name, sum(n for _, n in runs))
        return int(rec["size"]), runs

    def _new_export(self, name: str, total: int) -> Transfer:
        t = Transfer("export", name, total)
        self.export = self.last = t
        return t

    async def read(self, name: str, offset: int, length: int) -> bytearray:
        """Bytes of the snapshot's view (an export's data request). ValueError for a request
        not in whole blocks (the last may end at the snapshot's end) or past its end."""
        rec = await self.snapshot(name)
        size = int(rec["size"])
        end = offset + length
        if offset < 0 or length <= 0 or length > MAX_DATA:
            raise ValueError(f"length must be 1..{MAX_DATA} bytes and offset not negative")
        if end > size:
            raise ValueError(f"{offset}+{length} reaches past the snapshot's end ({size} bytes)")
        if offset % BLOCK or (length % BLOCK and end != size):
            raise ValueError(f"offset and length must be whole {BLOCK}-byte blocks (or to the end)")
        data = await self.read_view(name, rec["id"], offset, length)
        t = self.export
        if t is None or not t.running or t.source != name:
            t = self._new_export(name, size)
        t.add(length)
        self.bytes["export"] += length
        if t.done >= t.total:
            t.finish("done")
        return data

    async def read_view(self, name: str, snap_id: str, offset: int, length: int) -> bytearray:
        """The snapshot's view of the range: from one current member, the blocks it reports bad
        from the others (SnapshotBadBlocks naming the blocks bad on every member)."""
        await self.vol._admit(True)
        buf = bytearray(length)
        lost: Runs = []

        async def fill(o: int, n: int, members: list[Peer]) -> None:
            errors: list[str] = []
            for i, m in enumerate(members):
                try:
                    data = await m.link.snap_read(snap_id, o, n, self.vol.epoch)
                except BadBlocks as e:
                    self.vol.io_stats["checksum_errors"] += 1
                    bad = whole_blocks(e.runs, o, o + n) or [(o, n)]
                    log.warning("volume %s: snapshot %s: %s reports bad blocks %s; reading them"
                                " from another replica", self.vol.name, name, m.address, bad)  # fmt: skip
                    for go, gn in subtract(o, n, bad):  # good there: read them from it
                        await fill(go, gn, [m, *members[i + 1 :]])
                    for bo, bn in bad:
                        await fill(bo, bn, members[i + 1 :])
                    return
                except (ReplicaError, ReplicaUnavailable) as e:
                    errors.append(f"{m.address}: {e}")
                    continue
                if len(data) != n:
                    errors.append(f"{m.address}: short read ({len(data)} of {n} bytes)")
                    continue
                buf[o - offset : o - offset + n] = data
                return
            if errors:  # the members left did not answer: not known to be lost
                raise TransferFailed(f"snapshot {name}: no replica could read {o}+{n}: "
                                     + "; ".join(errors))  # fmt: skip
            lost.append((o, n))  # bad on every member

        # the pieces in parallel, each from the next member in turn
        pieces = range(offset, offset + length, PIECE)
        await run_all(
            [fill(o, min(PIECE, offset + length - o), self._members(rotate=True)) for o in pieces]
        )
        if lost:
            raise SnapshotBadBlocks(name, lost)
        return buf

    # ------------------------------------------------------------------ revert
    async def revert(self, name: str) -> int:
        """Write snapshot `name`'s view back over every block changed since it (exclusive);
        returns the bytes written or unmapped. Every snapshot is kept, newer ones too."""
        self._serving()
        rec = await self.snapshot(name)
        self.gate.acquire(f"revert to snapshot {name}")
        t = Transfer("revert", name, 0)
        self.current = self.last = t
        self._task = asyncio.get_running_loop().create_task(self._revert(rec, t))
        self._task.add_done_callback(lambda f: f.cancelled() or f.exception())
        # shielded: a client that goes away does not stop a revert half way
        return await asyncio.shield(self._task)

    async def _revert(self, rec: dict[str, Any], t: Transfer) -> int:
        vol = self.vol
        sid = rec["id"]
        try:
            changed = await self.extents_of(rec, None, sid)  # written since the snapshot
            has = await self.extents_of(rec, sid, None)  # what the snapshot's view holds
            plan = split_changed(changed, has)
            t.total = sum(n for _, n, _d in plan)
            log.info("volume %s: revert to snapshot %s: %d byte(s) changed since it",
                     vol.name, rec["name"], t.total)  # fmt: skip
            todo = iter(plan)

            async def worker() -> None:
                for o, n, data in todo:
                    if data:
                        view = memoryview(await self.read_view(rec["name"], sid, o, n))
                        await vol.write(o, view, qos=False)  # internal: not the initiators'
                    else:
                        await vol.unmap(o, n, qos=False)
                    t.add(n)
                    self.bytes["revert"] += n

            await run_all([worker() for _ in range(PARALLEL)])
            await vol.flush()
        except BaseException as e:
            self._ended(t, f"failed: {e}")
            log.error("volume %s: revert to snapshot %s failed: %s", vol.name, rec["name"], e)
            raise
        self._ended(t, "done")
        log.info("volume %s: reverted to snapshot %s (%d byte(s) in %.1f s)", vol.name,
                 rec["name"], t.done, (t.t1 or 0) - t.t0)  # fmt: skip
        return t.done

    # ------------------------------------------------------------------ import
    def _serving(self) -> None:
        if self.vol.state != "serving":
            raise TransferRefused(f"volume {self.vol.name} does not serve: {self.vol.reason}")

    def begin_import(self, source: str, total: int) -> Transfer:
        """Start an exclusive import of `total` bytes from `source` (a text for the status)."""
        self._serving()
        if total > self.vol.size:
            raise TransferRefused(
                f"volume {self.vol.name} is {self.vol.size} bytes, smaller than the {total}"
                " bytes to import"
            )
        self.gate.acquire(f"import from {source}", IMPORT_IDLE)
        t = Transfer("import", source, total)
        self.current = self.last = t
        log.info("volume %s: import of %d byte(s) from %s begins", self.vol.name, total, source)
        return t

    def _importing(self) -> Transfer:
        self.gate.busy()
        t = self.current
        if t is None or t.kind != "import":
            raise TransferRefused('no import is running (POST /v1/import {"action": "begin"})')
        self.gate.touch(IMPORT_IDLE)
        return t

    async def import_data(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset` (replicated, as any write) as part of the import."""
        t = self._importing()
        if len(data) > MAX_DATA:
            raise ValueError(f"at most {MAX_DATA} bytes per request")
        await self.vol.write(offset, data, qos=False)  # an import is not limited by QoS
        t.add(len(data))
        self.bytes["import"] += len(data)

    async def import_zero(self, offset: int, length: int) -> None:
        """Unmap a range (it reads as zeroes) as part of the import."""
        t = self._importing()
        for o in range(offset, offset + length, ZERO_STEP):  # bounded work per replica request
            n = min(ZERO_STEP, offset + length - o)
            await self.vol.unmap(o, n, qos=False)
            t.add(n)
            self.bytes["import"] += n

    async def end_import(self, error: str | None = None) -> Transfer:
        """End the import: flush every member and open the volume to logins again; `error`
        (the importer's reason to give up) makes the result "failed: ..."."""
        t = self._importing()
        try:
            if error is None:
                await self.vol.flush()
        except (VolumeError, ReplicaError, ReplicaUnavailable) as e:
            error = f"flush: {e}"
        self._ended(t, "done" if error is None else f"failed: {error}")
        log.info("volume %s: import from %s ended: %s (%d byte(s))", self.vol.name, t.source,
                 t.result, t.done)  # fmt: skip
        return t
