"""An exhaustive model of controllers and voters around controller/membership.py.

The world: 3 voters (replicas holding one block, or 2 replicas and a witness) and up to two
controllers, each running the real `Membership` state machine through a driver that follows the
coordinator's sequence (INFO round -> CLAIM round -> commit the claim view -> resynchronise ->
serve; while serving: write to every member, eject failed members under a new view, re-send,
acknowledge; reads from a member). Every request travels on a FIFO channel per (controller,
voter) and, at every step, any channel may break (requests not yet delivered are lost, the
reply of a delivered one may be lost), any controller may crash (its undelivered requests may
still arrive later, or never), and a second controller may start. Breadth-first search over
every interleaving, with states deduplicated, checks after every step:

- **no acknowledged write lost**: a controller that starts serving resynchronises from a copy
  that holds the last acknowledged write (or a newer one);
- **nothing served stale**: a read returns the last write acknowledged before it started (or a
  newer one); the read lease of rule Q8 is modelled as "a majority of the view's voters has not
  promised a newer term" (the timing argument that makes the lease hold is in ENGINE.md).

Writes carry increasing ids in issue order, so "holds write k or newer" is `value >= k`.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from jiva_engine.controller.membership import (
    Claim,
    Membership,
    Phase,
    Policy,
    Record,
    Takeover,
    View,
    majority,
)
from jiva_engine.protocol import voting
from jiva_engine.protocol.voting import make_epoch, term_of


class Violation(AssertionError):
    """An invariant broke; the message holds the trace."""


class Voter(NamedTuple):
    witness: bool
    epoch: int = 0
    view: View | None = None
    value: int = 0  # id of the last write applied to the block (replicas)


class Ctl(NamedTuple):
    """One controller: its Membership fields, its driver stage and its channels."""

    alive: bool = True
    stage: str = "claim"  # claim, commit, resync, serving, change, resend, idle
    # Membership fields (rebuilt into the real class for every decision)
    phase: Phase = Phase.WAITING
    term: int = 0
    view: View | None = None
    pending: View | None = None
    prev: View | None = None
    acks: frozenset[str] = frozenset()
    # driver state
    out: tuple[tuple[tuple, ...], ...] = ()  # per voter: FIFO of undelivered requests
    broken: frozenset[int] = frozenset()
    outstanding: tuple[int, ...] = ()  # per voter: requests sent, answer not yet seen
    records: frozenset[tuple[str, Record]] = frozenset()
    epoch: int = 0  # claim epoch
    write: int = 0  # write in progress (0: none)
    holders: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    source: str = ""
    reads: int = 0
    read_floor: int = -1  # last acked id when the read in flight started (-1: no read)


class World(NamedTuple):
    voters: tuple[Voter, ...]
    ctls: tuple[Ctl, ...]
    next_write: int = 1
    last_acked: int = 0
    writes_left: int = 2
    breaks: int = 0


IDS = ("A", "B", "C")


class Model:
    """Successor function and invariant checks for one cluster layout and policy."""

    def __init__(
        self,
        witness: bool,
        policy: Policy = Policy.MAJORITY,
        controllers: int = 2,
        writes: int = 2,
        reads: int = 1,
        breaks: int = 2,
        first: str = "serving",
    ) -> None:
        self.ids = ("A", "B", "W") if witness else IDS
        self.witness = witness
        self.policy = policy
        self.max_ctls = controllers
        self.writes = writes
        self.max_reads = reads
        self.max_breaks = breaks
        self.configured = frozenset(self.ids)
        self.first = first  # "serving": controller 0 serves; "claiming": it takes over first

    # ------------------------------------------------------------------ helpers
    def initial(self) -> list[World]:
        """A volume made at term 1 whose write 1 was acknowledged by every replica. "serving":
        controller 0 still serves it; "claiming": its controller is gone and controller 0
        takes over (reaching any subset of the voters)."""
        epoch = make_epoch(1, 1)
        replicas = frozenset(i for i in self.ids if i != "W")
        view = View(epoch, replicas, frozenset(self.ids))
        voters = tuple(Voter(i == "W", epoch, view, 0 if i == "W" else 1) for i in self.ids)
        n = len(self.ids)
        w = World(voters, (), next_write=2, last_acked=1, writes_left=self.writes)
        if self.first == "claiming":
            return [x for _, x in self._starts(w)]
        c0 = Ctl(
            stage="serving", phase=Phase.SERVING, term=1, view=view,
            out=tuple(() for _ in range(n)), outstanding=tuple(0 for _ in range(n)),
        )  # fmt: skip
        return [w._replace(ctls=(c0,))]

    def _starts(self, w: World):
        """A new controller, reaching a subset of the voters (the others time out): it reads
        their INFO, then claims or waits (plan)."""
        n = len(self.ids)
        for mask in range(1, 1 << n):
            reach = [v for v in range(n) if mask >> v & 1]
            c = Ctl(out=tuple(() for _ in range(n)), outstanding=tuple(0 for _ in range(n)),
                    broken=frozenset(v for v in range(n) if v not in reach))  # fmt: skip
            records = {self.ids[v]: self._record(v, w.voters[v]) for v in reach}
            m = self._mem(c)
            d = m.plan(records, self.configured)
            if not isinstance(d, Claim):
                continue  # it waits: nothing more happens with it in this model
            c = self._store(c, m, stage="claim", epoch=d.epoch)
            c = self._send_all(c, ("CLAIM", d.epoch), reach)
            label = f"start c{len(w.ctls)} reaching {''.join(self.ids[v] for v in reach)}"
            yield label, w._replace(ctls=(*w.ctls, c))

    def _mem(self, c: Ctl) -> Membership:
        m = Membership(policy=self.policy)
        m.phase, m.term, m.view, m.pending, m.prev = c.phase, c.term, c.view, c.pending, c.prev
        m.acks = set(c.acks)
        return m

    def _store(self, c: Ctl, m: Membership, **kw) -> Ctl:
        return c._replace(
            phase=m.phase, term=m.term, view=m.view, pending=m.pending, prev=m.prev,
            acks=frozenset(m.acks), **kw,
        )  # fmt: skip

    def _send(self, c: Ctl, v: int, req: tuple) -> Ctl:
        # a request to a broken channel is queued too and fails at once (see _settle)
        out = list(c.out)
        out[v] = out[v] + (req,)
        outst = list(c.outstanding)
        outst[v] += 1
        return c._replace(out=tuple(out), outstanding=tuple(outst))

    def _send_all(self, c: Ctl, req: tuple, vs) -> Ctl:
        for v in vs:
            c = self._send(c, v, req)
        return c

    def _record(self, v: int, voter: Voter) -> Record:
        return Record(self.ids[v], voter.witness, voter.epoch, voter.view)

    def _idx(self, vid: str) -> int:
        return self.ids.index(vid)

    def _round_done(self, c: Ctl) -> bool:
        return not any(c.outstanding)

    # ------------------------------------------------------------------ voters
    def _apply(self, voter: Voter, req: tuple) -> tuple[Voter, tuple]:
        """A voter processes one request: (new state, reply)."""
        kind = req[0]
        if kind == "INFO":
            return voter, ("REC", voter)
        meta = {"epoch": voter.epoch}  # the voter rules are the real ones (protocol/voting.py)
        if kind == "CLAIM":
            try:
                voting.check_claim(meta, req[1])
            except voting.VoteError:
                return voter, ("STALE", voter.epoch)
            voter = voter._replace(epoch=req[1])
            return voter, ("REC", voter)
        epoch = req[1]
        try:
            voting.check_accept(meta, {"epoch": epoch})
        except voting.VoteError:
            return voter, ("STALE", voter.epoch)
        if kind == "ACCEPT":
            return voter._replace(epoch=epoch, view=req[2]), ("OK",)
        if voter.witness:
            return voter, ("EINVAL",)
        if kind == "WRITE":
            return voter._replace(value=req[2]), ("OK",)
        if kind == "READ":
            return voter, ("VAL", voter.value)
        raise AssertionError(req)

    # ------------------------------------------------------------------ controller driver
    def _react(self, w: World, ci: int, v: int, req: tuple, reply: tuple | None) -> World:
        """Controller `ci` learns the outcome of `req` to voter `v` (reply None: lost)."""
        c = w.ctls[ci]
        outst = list(c.outstanding)
        outst[v] -= 1
        c = c._replace(outstanding=tuple(outst))
        vid = self.ids[v]
        kind = req[0]
        if reply is not None and reply[0] == "STALE" and c.stage != "claim":
            m = self._mem(c)
            m.stale(vid, reply[1])
            return self._set(w, ci, self._store(c, m, stage="idle"))
        if c.stage == "claim" and kind == "CLAIM":
            if reply is not None and reply[0] == "REC":
                c = c._replace(records=c.records | {(vid, self._record(v, reply[1]))})
            if reply is not None and reply[0] == "STALE":
                c = c._replace(failed=c.failed | {vid})  # someone promised more: give up
            if self._round_done(c):
                m = self._mem(c)
                if c.failed:
                    m.abandon("claim refused")
                    return self._set(w, ci, self._store(c, m, stage="idle", failed=frozenset()))
                d = m.claimed(c.epoch, dict(c.records), self.configured, 0.0)
                if isinstance(d, Takeover):
                    c = self._store(c, m, stage="commit")
                    c = self._send_all(c, ("ACCEPT", d.view.epoch, d.view), self._reachable(c))
                    return self._set(w, ci, c)
                return self._set(w, ci, self._store(c, m, stage="idle"))
            return self._set(w, ci, c)
        if c.stage in ("commit", "change") and kind == "ACCEPT":
            m = self._mem(c)
            if reply is not None and reply[0] == "OK" and req[2] == m.pending:
                committed_before = m.view
                if m.accepted(vid):
                    c = self._store(c, m)
                    if c.stage == "commit" and committed_before is None:
                        return self._start_resync(w, ci, c)
                    return self._resend(w, ci, c)
                c = self._store(c, m)
            if self._round_done(c) and m.pending is not None:
                m.stalled()
                return self._set(w, ci, self._store(c, m, stage="idle"))
            return self._set(w, ci, c)
        if c.stage == "resync":
            return self._resync_reply(w, ci, c, v, req, reply)
        if c.stage in ("serving", "resend") and kind == "WRITE":
            if reply is not None and reply[0] == "OK":
                c = c._replace(holders=c.holders | {vid})
            elif reply is None:
                c = c._replace(failed=c.failed | {vid})
            if self._round_done(c):
                return self._write_done(w, ci, c)
            return self._set(w, ci, c)
        if kind == "READ" and c.read_floor >= 0:
            if reply is not None and reply[0] == "VAL" and reply[1] < c.read_floor:
                raise Violation(
                    f"stale read: controller {ci} read write {reply[1]} from {vid} after "
                    f"write {c.read_floor} was acknowledged"
                )
            return self._set(w, ci, c._replace(read_floor=-1))
        # late answers of an earlier round (e.g. accepts after the commit): nothing to do
        return self._set(w, ci, c)

    def _reachable(self, c: Ctl) -> list[int]:
        return [v for v in range(len(self.ids)) if v not in c.broken]

    def _start_resync(self, w: World, ci: int, c: Ctl) -> list[World] | World:
        # the real coordinator may take any member as the source: branch over all of them
        members = sorted(c.view.members)
        outs = []
        for s in members:
            cc = c._replace(stage="resync", source=s, holders=frozenset())
            cc = self._send(cc, self._idx(s), ("READ", cc.view.epoch))
            outs.append(self._set(w, ci, cc))
        return outs

    def _resync_reply(self, w, ci, c, v, req, reply):
        vid = self.ids[v]
        if req[0] == "READ" and vid == c.source:
            if reply is None or reply[0] != "VAL":
                return self._set(w, ci, c._replace(stage="idle"))  # start-up failed: retried
            value = reply[1]
            c = c._replace(write=value, holders=frozenset({vid}))
            for m in sorted(c.view.members - {vid}):
                c = self._send(c, self._idx(m), ("WRITE", c.view.epoch, value))
            if self._round_done(c):
                return self._set(w, ci, self._serve(w, ci, c))
            return self._set(w, ci, c)
        if req[0] == "WRITE":
            if reply is None or reply[0] != "OK":
                return self._set(w, ci, c._replace(stage="idle"))
            c = c._replace(holders=c.holders | {vid})
            if self._round_done(c):
                return self._set(w, ci, self._serve(w, ci, c))
        return self._set(w, ci, c)

    def _serve(self, w: World, ci: int, c: Ctl) -> Ctl:
        # a controller whose lease already lapsed can neither read nor acknowledge (its
        # members refuse it): what it resynchronised from does not matter
        if c.write < w.last_acked and self._lease(w, c):
            raise Violation(
                f"acknowledged write lost: controller {ci} starts serving with the data of "
                f"{c.source} (write {c.write}), but write {w.last_acked} was acknowledged"
            )
        m = self._mem(c)
        m.serving()
        return self._store(c, m, stage="serving", write=0, holders=frozenset())

    def _write_done(self, w: World, ci: int, c: Ctl) -> World:
        m = self._mem(c)
        if c.failed:
            left = m.members - c.failed
            if not left:
                m.lost_all("every member failed")
                return self._set(w, ci, self._store(c, m, stage="idle"))
            view = m.propose(left)
            c = self._store(c, m, stage="change", failed=frozenset())
            c = self._send_all(c, ("ACCEPT", view.epoch, view), self._reachable(c))
            return self._set(w, ci, c)
        if m.may_ack() and m.covers(c.holders):
            # a write issued before a newer one may be acknowledged after it (they overlap):
            # what must hold is that no read returns anything older than the newest acked
            w = w._replace(last_acked=max(w.last_acked, c.write))
            return self._set(w, ci, c._replace(stage="serving", write=0, holders=frozenset()))
        raise Violation(f"write {c.write} neither acknowledged nor failed: {c}")

    def _resend(self, w: World, ci: int, c: Ctl) -> World:
        """After a view change commits: re-send the write in flight to every member (Q3)."""
        c = c._replace(stage="resend", holders=frozenset())
        for mid in sorted(c.view.members):
            c = self._send(c, self._idx(mid), ("WRITE", c.view.epoch, c.write))
        if self._round_done(c):  # every member unreachable from here
            return self._write_done(w, ci, c._replace(failed=c.view.members))
        return self._set(w, ci, c)

    def _set(self, w: World, ci: int, c: Ctl) -> World:
        # forget what no later step reads, so equal situations are one state
        if c.stage not in ("claim",) and c.records:
            c = c._replace(records=frozenset())
        if c.pending is None and c.acks:
            c = c._replace(acks=frozenset())
        if c.stage in ("serving", "idle") and c.write == 0 and (c.source or c.holders or c.failed):
            c = c._replace(source="", holders=frozenset(), failed=frozenset())
        if c.stage == "idle" or not c.alive:
            c = c._replace(write=0, source="", holders=frozenset(), failed=frozenset(),
                           read_floor=-1, records=frozenset(), outstanding=(0,) * len(c.out),
                           reads=0)  # fmt: skip
        ctls = list(w.ctls)
        ctls[ci] = c
        return w._replace(ctls=tuple(ctls))

    # ------------------------------------------------------------------ successors
    def successors(self, w: World):
        """(label, next world) for every step the world can take."""
        for ci, c in enumerate(w.ctls):
            for v in range(len(self.ids)):
                if c.out[v]:
                    yield from self._deliveries(w, ci, v)
                if c.alive and v not in c.broken and self._breaks(w) < self.max_breaks:
                    yield f"break c{ci}-{self.ids[v]}", self._break(w, ci, v)
            if not c.alive:
                continue
            yield f"crash c{ci}", self._set(w, ci, c._replace(alive=False))
            if c.stage == "serving" and c.write == 0 and c.read_floor < 0:
                if w.writes_left:
                    yield f"c{ci} write {w.next_write}", self._issue_write(w, ci, c)
                if c.reads < self.max_reads and self._lease(w, c):
                    for mid in sorted(c.view.members):
                        if self._idx(mid) not in c.broken:
                            cc = c._replace(reads=c.reads + 1, read_floor=w.last_acked)
                            cc = self._send(cc, self._idx(mid), ("READ", c.view.epoch))
                            yield f"c{ci} read {mid}", self._set(w, ci, cc)
        if len(w.ctls) < self.max_ctls:
            yield from self._starts(w)

    def _breaks(self, w: World) -> int:
        """Channels broken while in use (a controller's initial unreachable voters are free)."""
        return w.breaks

    def _lease(self, w: World, c: Ctl) -> bool:
        """Q8 as modelled: no majority of the view's voters has promised a newer term."""
        voters = c.view.voters
        moved = sum(1 for vid in voters if term_of(w.voters[self._idx(vid)].epoch) > c.term)
        return len(voters) - moved >= majority(len(voters))

    def _issue_write(self, w: World, ci: int, c: Ctl):
        wid = w.next_write
        c = c._replace(write=wid, holders=frozenset(), failed=frozenset())
        for mid in sorted(c.view.members):
            c = self._send(c, self._idx(mid), ("WRITE", c.view.epoch, wid))
        w = w._replace(next_write=wid + 1, writes_left=w.writes_left - 1)
        w = self._set(w, ci, c)
        if self._round_done(c):
            return self._write_done(w, ci, c._replace(failed=c.view.members))
        return w

    def _deliveries(self, w: World, ci: int, v: int):
        c = w.ctls[ci]
        req = c.out[v][0]
        out = list(c.out)
        out[v] = out[v][1:]
        voters = list(w.voters)
        voters[v], reply = self._apply(voters[v], req)
        w2 = w._replace(voters=tuple(voters))
        w2 = self._set(w2, ci, c._replace(out=tuple(out)))
        if not c.alive:
            yield f"late {req[0]} c{ci}->{self.ids[v]}", w2
            return
        res = self._react(w2, ci, v, req, reply)
        for r in res if isinstance(res, list) else [res]:
            yield f"{req[0]} c{ci}->{self.ids[v]}", r
        if self._breaks(w) < self.max_breaks:  # applied, answer lost, channel broken
            yield f"{req[0]} c{ci}->{self.ids[v]} (answer lost)", self._break(w2, ci, v, req)

    def _break(self, w: World, ci: int, v: int, lost: tuple | None = None) -> World:
        """Break channel (ci, v): queued requests fail (via _settle), and so does `lost`, a
        request the voter applied whose answer never came back."""
        c = w.ctls[ci]
        out = list(c.out)
        if lost is not None:
            out[v] = (lost, *out[v])
        if not c.alive:
            out[v] = ()
        w = self._set(w, ci, c._replace(out=tuple(out), broken=c.broken | {v}))
        return w._replace(breaks=w.breaks + 1)

    def _settle(self, w: World) -> list[World]:
        """Fail every request queued on a broken channel of a live controller (unreachable)."""
        for ci, c in enumerate(w.ctls):
            if not c.alive:
                continue
            for v in c.broken:
                if c.out[v]:
                    req = c.out[v][0]
                    out = list(c.out)
                    out[v] = out[v][1:]
                    w2 = self._set(w, ci, c._replace(out=tuple(out)))
                    res = self._react(w2, ci, v, req, None)
                    return [x for r in (res if isinstance(res, list) else [res])
                            for x in self._settle(r)]  # fmt: skip
        return [w]

    # ------------------------------------------------------------------ search
    def explore(self, limit: int = 3_000_000, depth_first: bool = False) -> dict:
        """Visit every reachable state (breadth first: shortest traces; depth first finds a
        deep violation sooner). Raises Violation with the trace that leads to it."""
        starts = self.initial()
        seen: dict = {s: None for s in starts}
        queue = deque(starts)
        served = 0
        while queue:
            w = queue.pop() if depth_first else queue.popleft()
            try:
                steps = list(self.successors(w))
            except Violation as e:
                raise Violation(f"{e}\ntrace:\n" + "\n".join(self._trace(seen, w))) from None
            for label, nxt in steps:
                try:
                    settled = [x for n in (nxt if isinstance(nxt, list) else [nxt])
                               for x in self._settle(n)]  # fmt: skip
                except Violation as e:
                    trace = self._trace(seen, w) + [label]
                    raise Violation(f"{e}\ntrace:\n" + "\n".join(trace)) from None
                for n in settled:
                    if n not in seen:
                        seen[n] = (w, label)
                        queue.append(n)
                        if any(c.stage == "serving" for c in n.ctls[1:]):
                            served += 1
            if len(seen) > limit:
                raise RuntimeError(f"state space above {limit}")
        return {"states": len(seen), "second_controller_serving": served}

    def _trace(self, seen: dict, w: World) -> list[str]:
        out = []
        while seen.get(w):
            w, label = seen[w]
            out.append(label)
        return list(reversed(out))
