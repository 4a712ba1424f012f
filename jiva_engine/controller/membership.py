"""The controller's membership and epoch state machine: every quorum decision, no I/O.

The rules are docs/ENGINE.md "Quorum" Q1-Q9; this module is their only implementation. The
coordinator (controller/coordinator.py) feeds it what voters answered and carries out what it
decides; the model check (tests/unit/test_quorum_model.py) drives the same class against
in-memory voters through every interleaving of a small cluster.

Vocabulary: a **voter** is a replica or a witness (metadata only); a **view** is (epoch, members,
voters): `members` are the replicas that hold every acknowledged write (the current copies),
`voters` the ids whose majority decides. Epochs are `term << 32 | version` (protocol/voting.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from jiva_engine.protocol.voting import LEASE, epoch_text, make_epoch, term_of


class Policy(StrEnum):
    """`majority` (default): every change needs a majority of voters. `off`: the older rule,
    every member of the new view must accept and a restart waits for every member."""

    MAJORITY = "majority"
    OFF = "off"


class Phase(StrEnum):
    """What the volume does with I/O."""

    WAITING = "waiting"  # not serving yet: looking for a quorum and a current member
    SERVING = "serving"
    NO_QUORUM = "no quorum"  # a view change cannot reach a majority: I/O held
    FENCED = "fenced"  # a newer controller owns the volume: this one is done


@dataclass(frozen=True)
class View:
    """A membership: `members` (replica ids, current copies) and `voters` (ids), at `epoch`."""

    epoch: int
    members: frozenset[str]
    voters: frozenset[str]

    def describe(self) -> str:
        return f"epoch {epoch_text(self.epoch)}"


@dataclass(frozen=True)
class Record:
    """One voter's durable state, as it answered INFO or CLAIM."""

    id: str
    witness: bool
    epoch: int  # the highest epoch it promised or accepted
    view: View | None  # the last view it accepted (None: never took part)
    quiet: float | None = None  # CLAIM answers: seconds since another controller talked to it


@dataclass(frozen=True)
class Wait:
    """Do not serve (yet): `reason` says why and who is missing."""

    reason: str


@dataclass(frozen=True)
class Fence:
    """A newer controller owns the volume."""

    reason: str


@dataclass(frozen=True)
class Claim:
    """Ask every reachable voter to promise `epoch` (a new term)."""

    epoch: int


@dataclass(frozen=True)
class Takeover:
    """The promises suffice: commit `view`, then resynchronise its members, then serve.

    `base` is the newest view found (None for a new volume), `excluded` its members left out
    (unreachable: change maps are started for them), `lease_wait` the seconds to wait after the
    promises before serving (the previous controller's read lease, rule Q8).
    """

    view: View
    base: View | None
    excluded: frozenset[str]
    lease_wait: float


def majority(n: int) -> int:
    """Smallest majority of n voters."""
    return n // 2 + 1


def quorate(policy: Policy, new: View, prev: View | None, acks: Iterable[str]) -> bool:
    """Has `new` (replacing `prev`) been accepted by enough voters to count as committed? (Q2)"""
    acked = set(acks)
    if policy is Policy.OFF:
        return new.members <= acked
    if len(new.voters & acked) < majority(len(new.voters)):
        return False
    if prev is not None and prev.voters != new.voters:  # a voter change: both majorities (Q7)
        return len(prev.voters & acked) >= majority(len(prev.voters))
    return True


def _names(ids: Iterable[str], names: Mapping[str, str]) -> str:
    return ", ".join(sorted(names.get(i, i) for i in ids)) or "none"


@dataclass
class Membership:
    """The controller's side of the quorum protocol (docs/ENGINE.md Q1-Q9).

    `view` is the committed view the controller serves with; `pending` a view it has proposed
    and not yet seen committed (acknowledgements are held meanwhile, rule Q3).
    """

    policy: Policy = Policy.MAJORITY
    lease: float = LEASE
    phase: Phase = Phase.WAITING
    reason: str = "starting: connecting to the voters"
    term: int = 0  # our term once claimed (0: never claimed)
    view: View | None = None
    pending: View | None = None
    prev: View | None = None  # what `pending` replaces (its voters count too, Q7)
    acks: set[str] = field(default_factory=set)
    renewed: dict[str, float] = field(default_factory=dict)  # voter -> send time last answered
    names: dict[str, str] = field(default_factory=dict)  # voter id -> address, for messages

    # ------------------------------------------------------------------ views of the state
    @property
    def epoch(self) -> int:
        """The epoch requests carry: the pending view's once proposed (sent after it, in order)."""
        v = self.pending or self.view
        return v.epoch if v else 0

    @property
    def members(self) -> frozenset[str]:
        """Ids of the current copies (the committed view's members)."""
        return self.view.members if self.view else frozenset()

    @property
    def voters(self) -> frozenset[str]:
        """Ids of the voters of the newest view (pending or committed)."""
        v = self.pending or self.view
        return v.voters if v else frozenset()

    def may_ack(self) -> bool:
        """Q3: acknowledge I/O only with a committed view and no change in flight."""
        return self.phase is Phase.SERVING and self.pending is None

    def covers(self, holders: Iterable[str]) -> bool:
        """Q1: a write may be acknowledged once every member of the view holds it."""
        return self.view is not None and self.view.members <= set(holders)

    def missing(self) -> list[str]:
        """Voters of the pending view that have not accepted it yet."""
        return sorted(self.voters - self.acks) if self.pending else []

    # ------------------------------------------------------------------ start-up (Q4-Q6, Q8)
    def plan(
        self, records: Mapping[str, Record], configured: frozenset[str]
    ) -> Wait | Fence | Claim:
        """From the INFO records of the reachable voters: claim, wait, or step down.

        `configured` = the voters this controller was started with (ids where reached, else
        `addr:HOST:PORT` placeholders); they count when no view names its voters.
        """
        top = max((r.epoch for r in records.values()), default=0)
        if self.term and term_of(top) > self.term:
            return self.fence(f"voters are at epoch {epoch_text(top)}, past our term {self.term}")
        decision = self.decide(records, configured)
        if isinstance(decision, Wait):
            return self._wait(decision.reason)
        return Claim(make_epoch(max(term_of(top), self.term) + 1))

    def decide(
        self, records: Mapping[str, Record], configured: frozenset[str], epoch: int = 0
    ) -> Wait | Takeover:
        """Q4/Q5: which view a controller claiming `epoch` may commit, given voters' records."""
        views = [r.view for r in records.values() if r.view is not None]
        reached = set(records)
        replicas = {i for i, r in records.items() if not r.witness}
        if not views:
            missing = configured - reached
            if missing:
                return Wait(
                    "new volume (no voter has taken part yet): waiting for every configured "
                    f"voter to create it together; unreachable: {_names(missing, self.names)}"
                )
            view = View(epoch or 1, frozenset(replicas), frozenset(configured))
            return Takeover(view, None, frozenset(), 0.0)
        base = max(views, key=lambda v: v.epoch)
        voters = base.voters or configured
        if self.policy is Policy.MAJORITY:
            need = majority(len(voters))
            if len(voters & reached) < need:
                return Wait(
                    f"no quorum: {len(voters & reached)} of the {len(voters)} voters of the "
                    f"newest view ({base.describe()}) answer, {need} needed; missing: "
                    f"{_names(voters - reached, self.names)}"
                )
            current = base.members & replicas
        else:
            absent = base.members - reached
            if absent:
                return Wait(
                    f"waiting for replica(s) {_names(absent, self.names)}: members of the newest "
                    f"view ({base.describe()}) and possibly the only current copies (quorum off)"
                )
            current = base.members
        if not current:
            return Wait(
                f"no current copy reachable: the members of the newest view ({base.describe()}), "
                f"{_names(base.members, self.names)}, do not answer; refusing to serve from "
                f"replicas that may be behind (reachable: {_names(reached, self.names)})"
            )
        quiet = [r.quiet for r in records.values() if r.quiet is not None]
        wait = max([0.0, *(self.lease - q for q in quiet)]) if self.policy is Policy.MAJORITY else 0
        view = View(epoch or base.epoch, frozenset(current), frozenset(voters))
        return Takeover(view, base, base.members - current, wait)

    def claimed(
        self,
        epoch: int,
        promises: Mapping[str, Record],
        configured: frozenset[str],
        now: float,
        predecessor_gone: bool = False,
    ) -> Wait | Takeover:
        """The voters in `promises` promised `epoch`: propose the claim view, or wait again.

        `predecessor_gone`: every controller the voters had promised before is known dead (it
        ran on this host and its process is gone), so no read lease can be left (Q8)."""
        decision = self.decide(promises, configured, epoch + 1)
        if isinstance(decision, Wait):
            return self._wait(decision.reason)
        if predecessor_gone and decision.lease_wait:
            decision = Takeover(decision.view, decision.base, decision.excluded, 0.0)
        self.term = term_of(epoch)
        self.pending, self.prev, self.acks = decision.view, decision.base, set()
        for vid in promises:
            self.renewed[vid] = now
        self.reason = f"claimed the volume at epoch {epoch_text(epoch)}; committing the view"
        return decision

    # ------------------------------------------------------------------ view changes (Q2, Q3, Q7)
    def propose(self, members: Iterable[str], voters: Iterable[str] | None = None) -> View:
        """Propose the next view of our term; acknowledgements wait until it is committed."""
        if self.pending is not None or self.view is None:
            raise RuntimeError("one view change at a time, from a committed view")
        new = View(
            self.view.epoch + 1,
            frozenset(members),
            frozenset(voters) if voters is not None else self.view.voters,
        )
        if not new.members:
            raise ValueError("a view needs at least one member")
        self.pending, self.prev, self.acks = new, self.view, set()
        return new

    def accepted(self, voter: str) -> bool:
        """`voter` accepted the pending view; True once it is committed."""
        if self.pending is None:
            return False
        self.acks.add(voter)
        if not quorate(self.policy, self.pending, self.prev, self.acks):
            return False
        serving = self.view is not None  # a change while serving (else our claim's view)
        self.view, self.pending, self.prev = self.pending, None, None
        if serving and self.phase is not Phase.FENCED:
            self.phase, self.reason = Phase.SERVING, ""
        return True

    def serving(self, reason: str = "") -> None:
        """The claim view is committed and its members resynchronised: serve (Q5)."""
        if self.view is None or self.pending is not None:
            raise RuntimeError("serve only with a committed view")
        if self.phase is not Phase.FENCED:
            self.phase, self.reason = Phase.SERVING, reason

    def stalled(self) -> None:
        """Every reachable voter answered and the pending view is short of a quorum (Q3)."""
        if self.pending is None or self.phase is Phase.FENCED:
            return
        if self.view is not None:  # serving before: hold I/O until a majority is back
            self.phase = Phase.NO_QUORUM
            self.reason = (
                f"no quorum: the view change to {self.pending.describe()} has "
                f"{len(self.acks & self.voters)} of {len(self.voters)} voters, "
                f"{majority(len(self.voters))} needed; missing: "
                f"{_names(self.voters - self.acks, self.names)}; I/O is held"
            )
        else:
            self.abandon(f"the claim did not reach a quorum; missing: "
                         f"{_names(self.voters - self.acks, self.names)}")  # fmt: skip

    def abandon(self, reason: str) -> None:
        """Give up a claim in progress (back to waiting; the next claim uses a higher term)."""
        self.pending, self.prev, self.acks = None, None, set()
        if self.view is None:
            self._wait(reason)

    def stale(self, voter: str, their_epoch: int) -> Fence:
        """A voter refused us with STALE_EPOCH: a newer controller claimed the volume (Q6)."""
        return self.fence(
            f"{self.names.get(voter, voter)} is at epoch {epoch_text(their_epoch)}, "
            f"above ours ({epoch_text(self.epoch)})"
        )

    def lost_all(self, reason: str) -> None:
        """No member left: stop serving and run the start-up rules again."""
        self.view, self.pending, self.prev, self.acks = None, None, None, set()
        self._wait(reason)

    # ------------------------------------------------------------------ read lease (Q8)
    def renew(self, voter: str, sent_at: float) -> None:
        """`voter` answered a request sent at `sent_at` (monotonic seconds)."""
        if sent_at > self.renewed.get(voter, float("-inf")):
            self.renewed[voter] = sent_at

    def lease_until(self) -> float:
        """Until when this controller may serve reads without hearing from a majority again."""
        if self.policy is Policy.OFF:
            return float("inf")
        voters = self.voters
        times = sorted((self.renewed.get(v, float("-inf")) for v in voters), reverse=True)
        need = majority(len(voters))
        return times[need - 1] + self.lease if len(times) >= need else float("-inf")

    # ------------------------------------------------------------------ internal
    def _wait(self, reason: str) -> Wait:
        if self.phase is not Phase.FENCED:
            self.phase, self.reason = Phase.WAITING, reason
        return Wait(reason)

    def fence(self, reason: str) -> Fence:
        """Step down for good: a newer controller owns the volume."""
        self.phase = Phase.FENCED
        self.reason = f"fenced: {reason}; a newer controller owns the volume"
        self.pending, self.prev = None, None
        return Fence(self.reason)


__all__ = [
    "Claim",
    "Fence",
    "Membership",
    "Phase",
    "Policy",
    "Record",
    "Takeover",
    "View",
    "Wait",
    "majority",
    "quorate",
]
