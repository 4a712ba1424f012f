"""The quorum rules (docs/ENGINE.md Q1-Q9), proven on the real state machine.

1. Deterministic scenarios: `Membership` fed the records a real cluster would give.
2. The exhaustive model (tests/unit/quorum_model.py): every interleaving of a 3-voter cluster
   (3 replicas, or 2 replicas + a witness) with two controllers, crashes at every step, lost
   requests and lost answers, broken links, checking "no acknowledged write lost" and "nothing
   served stale". The model is also run against deliberately broken rules, and must catch them
   (a model that cannot fail proves nothing).
Larger bounds run with `-m slow`.
"""

from __future__ import annotations

import pytest

from jiva_engine.controller import membership as mb
from jiva_engine.controller.membership import (
    Claim,
    Fence,
    Membership,
    Phase,
    Policy,
    Record,
    Takeover,
    View,
    Wait,
    quorate,
)
from jiva_engine.protocol.voting import make_epoch
from tests.unit.quorum_model import Model, Violation

E1 = make_epoch(1, 1)
ABC = frozenset("ABC")
VIEW = View(E1, ABC, ABC)


def rec(vid, view=VIEW, epoch=None, witness=False, quiet=None):
    return Record(vid, witness, epoch if epoch is not None else (view.epoch if view else 0),
                  view, quiet)  # fmt: skip


# ------------------------------------------------------------------ deterministic scenarios
def test_scenario_2_three_hosts_claims_with_the_two_survivors():
    """Controller and replica A lost together: B and C are a majority and current members."""
    m = Membership()
    d = m.plan({"B": rec("B"), "C": rec("C")}, ABC)
    assert d == Claim(make_epoch(2))
    t = m.claimed(d.epoch, {"B": rec("B", epoch=d.epoch), "C": rec("C", epoch=d.epoch)}, ABC, 0)
    assert isinstance(t, Takeover)
    assert t.view == View(make_epoch(2, 1), frozenset("BC"), ABC) and t.excluded == {"A"}
    assert not m.accepted("B") and m.accepted("C")  # 2 of 3 voters
    assert m.phase is Phase.WAITING  # committed; serves once resynchronised
    m.serving()
    assert m.may_ack() and m.members == frozenset("BC")


def test_witness_and_one_current_replica_serve_but_a_stale_one_never_does():
    view = View(E1, frozenset("AB"), frozenset("ABW"))
    shrunk = View(E1 + 1, frozenset("A"), frozenset("ABW"))
    m = Membership()
    # B was ejected (A + W accepted); the controller and A die; B + W answer
    d = m.decide({"B": rec("B", view), "W": rec("W", shrunk, witness=True)}, frozenset("ABW"))
    assert isinstance(d, Wait) and "no current copy" in d.reason
    # the same with A alive: A + W serve, B is left out
    d = m.decide({"A": rec("A", shrunk), "W": rec("W", shrunk, witness=True)}, frozenset("ABW"))
    assert isinstance(d, Takeover) and d.view.members == {"A"}


def test_no_claim_below_a_majority_and_the_reason_names_who_is_missing():
    m = Membership(names={"B": "10.0.0.2:9700", "C": "10.0.0.3:9700"})
    d = m.plan({"A": rec("A")}, ABC)
    assert isinstance(d, Wait) and m.phase is Phase.WAITING
    assert "no quorum: 1 of the 3 voters" in d.reason and "10.0.0.2:9700" in d.reason


def test_new_volume_needs_every_configured_voter():
    m = Membership()
    fresh = {v: rec(v, None) for v in "AB"}
    d = m.plan(fresh, frozenset({"A", "B", "addr:h3:9700"}))
    assert isinstance(d, Wait) and "new volume" in d.reason and "addr:h3:9700" in d.reason
    d = m.plan({**fresh, "W": rec("W", None, witness=True)}, frozenset("ABW"))
    t = m.claimed(d.epoch, {**fresh, "W": rec("W", None, witness=True)}, frozenset("ABW"), 0)
    assert t.view.members == frozenset("AB") and t.view.voters == frozenset("ABW")


def test_highest_view_wins_by_term_not_by_version():
    """An old controller's many views at a minority never outrank a newer term's claim."""
    old = View(make_epoch(1, 9), frozenset("A"), ABC)  # uncommitted, A only
    new = View(make_epoch(2, 1), frozenset("BC"), ABC)
    d = Membership().decide({"A": rec("A", old), "B": rec("B", new)}, ABC)
    assert isinstance(d, Takeover) and d.base == new and d.view.members == {"B"}


def test_quorum_off_waits_for_every_member_of_the_newest_view():
    m = Membership(policy=Policy.OFF)
    only_a = View(E1 + 1, frozenset("A"), ABC)
    d = m.decide({"B": rec("B"), "C": rec("C", only_a)}, ABC)
    assert isinstance(d, Wait) and "A" in d.reason
    d = m.decide({"A": rec("A", only_a)}, ABC)
    assert isinstance(d, Takeover) and d.view.members == {"A"}


def test_view_change_commits_on_a_majority_and_holds_acks_until_then():
    m = Membership(view=VIEW, phase=Phase.SERVING, term=1)
    v = m.propose(frozenset("AB"))
    assert v.epoch == E1 + 1 and not m.may_ack()
    assert not m.accepted("A")
    m.stalled()  # B and C do not answer
    assert m.phase is Phase.NO_QUORUM and "I/O is held" in m.reason and not m.may_ack()
    assert m.accepted("B") and m.phase is Phase.SERVING and m.may_ack()
    assert m.covers("AB") and not m.covers("A")


def test_voter_change_needs_both_majorities():
    old = View(E1, frozenset("AB"), frozenset("ABC"))
    new = View(E1 + 1, frozenset("ABD"), frozenset("ABD"))  # C replaced by D
    assert not quorate(Policy.MAJORITY, new, old, {"A", "D"})  # 2/3 of new, 1/3 of old
    assert not quorate(Policy.MAJORITY, new, old, {"A", "C"})  # 2/3 of old, 1/3 of new
    assert quorate(Policy.MAJORITY, new, old, {"A", "B"})
    assert quorate(Policy.OFF, new, old, {"A", "B", "D"})


def test_stale_answer_or_newer_term_fences():
    m = Membership(view=VIEW, phase=Phase.SERVING, term=1)
    f = m.stale("B", make_epoch(2, 1))
    assert isinstance(f, Fence) and m.phase is Phase.FENCED and not m.may_ack()
    m = Membership(term=3)
    assert isinstance(m.plan({"A": rec("A", epoch=make_epoch(4))}, ABC), Fence)


def test_read_lease_needs_a_majority_of_recent_answers():
    m = Membership(view=VIEW, phase=Phase.SERVING, term=1, lease=2.0)
    m.renew("A", 10.0)
    assert m.lease_until() == float("-inf")
    m.renew("B", 11.0)
    assert m.lease_until() == 12.0  # the older of the two most recent answers + lease
    m.renew("C", 11.5)
    assert m.lease_until() == 13.0  # B and C are the two most recent: 11.0 + 2
    assert Membership(policy=Policy.OFF).lease_until() == float("inf")


def test_claim_waits_out_the_previous_read_lease():
    m = Membership(lease=2.0)
    recs = {"A": rec("A", quiet=0.5), "B": rec("B", quiet=5.0)}
    d = m.decide(recs, ABC)
    assert isinstance(d, Takeover) and d.lease_wait == pytest.approx(1.5)


# ------------------------------------------------------------------ the exhaustive model
def _explore(args: tuple) -> dict:
    witness, first, writes = args
    return Model(witness=witness, first=first, writes=writes, breaks=1, reads=1).explore()


def test_model_every_interleaving_is_safe():
    """Controller 0 serves (or takes over) and may crash at any step of an ejection, a claim
    or a write; controller 1 starts at any point reaching any subset of the voters. Four
    layouts, two at a time (one per core)."""
    import multiprocessing

    cases = [(False, "serving", 2), (True, "serving", 2), (False, "claiming", 1),
             (True, "claiming", 1)]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_explore, cases, chunksize=1)
    for case, res in zip(cases, results, strict=True):
        assert res["states"] > 30_000 and res["second_controller_serving"] > 1000, (case, res)
    total = sum(r["states"] for r in results)
    print(f"quorum model: {total} states over {len(cases)} layouts, no violation")


@pytest.mark.slow
@pytest.mark.parametrize("witness", [False, True], ids=["3-replicas", "2-replicas+witness"])
def test_model_larger_bounds(witness):
    res = Model(witness=witness, writes=2, breaks=2, reads=1).explore(limit=20_000_000)
    assert res["second_controller_serving"] > 0


def test_model_off_policy_is_safe_too():
    res = Model(witness=False, policy=Policy.OFF, writes=1, breaks=1, reads=0).explore()
    assert res["states"] > 1000


@pytest.mark.parametrize(
    "broken",
    [
        "minority_commit",  # a view committed by one voter
        "any_reachable_member",  # serving from any reachable replica
        "no_strict_claim",  # a voter promising a term twice
    ],
)
def test_model_catches_broken_rules(monkeypatch, broken):
    """Break one rule at a time: the model must find a violation (else it proves nothing)."""
    if broken == "minority_commit":
        monkeypatch.setattr(mb, "majority", lambda _n: 1)
    elif broken == "any_reachable_member":
        real = Membership.decide

        def decide(self, records, configured, epoch=0):
            d = real(self, records, configured, epoch)
            if isinstance(d, Takeover):
                replicas = frozenset(i for i, r in records.items() if not r.witness)
                d = Takeover(View(d.view.epoch, replicas, d.view.voters), d.base,
                             frozenset(), d.lease_wait)  # fmt: skip
            return d

        monkeypatch.setattr(Membership, "decide", decide)
    else:  # a voter that promises an epoch it already promised: two owners of one term
        from jiva_engine.protocol import voting

        real = voting.check_claim

        def check_claim(meta, epoch):
            real({**meta, "epoch": meta["epoch"] - 1}, epoch)

        monkeypatch.setattr(voting, "check_claim", check_claim)
    first = "claiming" if broken == "no_strict_claim" else "serving"
    with pytest.raises(Violation):
        Model(witness=False, first=first, writes=1, breaks=1, reads=1).explore(depth_first=True)
