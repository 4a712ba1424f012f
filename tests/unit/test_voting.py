"""The voter rules every replica and witness applies (protocol/voting.py)."""

from __future__ import annotations

import pytest

from jiva_engine.protocol import voting
from jiva_engine.protocol.voting import VoteError, epoch_text, make_epoch, term_of, version_of


def test_epochs_order_by_term_then_version():
    assert make_epoch(2, 0) > make_epoch(1, 4_000_000)
    assert term_of(make_epoch(7, 3)) == 7 and version_of(make_epoch(7, 3)) == 3
    assert epoch_text(make_epoch(7, 3)) == "7.3" and epoch_text(None) == "-"


def test_claims_are_strict_and_accepts_may_repeat():
    meta = voting.fresh_fields()
    voting.check_claim(meta, make_epoch(1))
    voting.apply_claim(meta, make_epoch(1))
    with pytest.raises(VoteError) as ei:  # the same term twice: a second owner is refused
        voting.check_claim(meta, make_epoch(1))
    assert ei.value.stale
    body = {"epoch": make_epoch(1, 1), "membership": [meta["id"]], "voters": {meta["id"]: "h:1"}}
    voting.check_accept(meta, body)
    voting.apply_accept(meta, body)
    voting.check_accept(meta, body)  # the same view again (a re-send) is fine
    with pytest.raises(VoteError) as ei:
        voting.check_accept(meta, {"epoch": make_epoch(1)})
    assert ei.value.stale
    for bad in ({"epoch": -1}, {"membership": ["x"]}, {"epoch": 5, "voters": ["x"]},
                {"epoch": 5, "membership": "x"}, {"epoch": True}):  # fmt: skip
        with pytest.raises(VoteError) as ei:
            voting.check_accept(meta, bad)
        assert not ei.value.stale


def test_member_epoch_moves_only_with_views_that_name_the_voter():
    meta = voting.fresh_fields()
    me = meta["id"]
    voting.apply_accept(meta, {"epoch": make_epoch(1, 1), "membership": [me, "b"]})
    assert meta["member_epoch"] == meta["view_epoch"] == make_epoch(1, 1)
    voting.apply_accept(meta, {"epoch": make_epoch(1, 2), "membership": ["b"]})  # left out
    voting.apply_accept(meta, {"epoch": make_epoch(2, 1), "membership": ["b", "c"]})  # a voter
    assert meta["view_epoch"] == make_epoch(2, 1) and meta["member_epoch"] == make_epoch(1, 1)
    voting.apply_accept(meta, {"epoch": make_epoch(2, 2)})  # an epoch alone is no view
    assert meta["view_epoch"] == make_epoch(2, 1) and meta["epoch"] == make_epoch(2, 2)
    rec = voting.record(meta)
    assert rec["member_epoch"] == make_epoch(1, 1) and rec["membership"] == ["b", "c"]


def test_quiet_is_the_time_since_another_controller_spoke():
    assert voting.quiet_seconds(10.0, [None, 7.5], 6.0) == 2.5
    assert voting.quiet_seconds(10.0, [], None) is None
    assert voting.quiet_seconds(10.0, [None], 12.0) == 0.0


def test_a_dead_controller_on_this_host_is_known_gone(tmp_path):
    import subprocess
    import sys

    here = voting.host_identity()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # exited and reaped: its PID is free
    assert voting.owner_gone({"host": here, "pid": p.pid}, here)
    import os

    assert not voting.owner_gone({"host": here, "pid": os.getpid()}, here)  # alive
    assert not voting.owner_gone({"host": "other-host:1", "pid": p.pid}, here)  # elsewhere
    assert not voting.owner_gone(None, here) and not voting.owner_gone({"host": here}, here)
    meta = voting.fresh_fields()
    voting.apply_claim(meta, make_epoch(3), {"host": here, "pid": 42})
    assert voting.record(meta)["owner"] == {"host": here, "pid": 42}


def test_a_voter_names_who_spoke_to_it_within_the_lease():
    t = voting.Talkers()
    a, b = {"host": "h", "pid": 1}, {"host": "h", "pid": 2}
    t.closed(10.0, 9.0, a)  # closed, last spoke 1 s ago
    t.closed(10.0, None, b)  # never spoke (did not authenticate): no lease from it
    out = t.claim_fields(10.5, [(10.4, None), (None, b)])
    assert out["quiet"] == pytest.approx(0.1)
    assert out["talkers"] == [a, None]  # the unnamed open connection counts, unknown
    later = t.claim_fields(9.0 + voting.LEASE + 0.01, [])
    assert later["talkers"] == [] and later["quiet"] == pytest.approx(voting.LEASE + 0.01)
    t.closed(20.0, 19.5, b)  # old entries are dropped as new ones come
    assert t.claim_fields(20.0, [])["talkers"] == [b]
    assert voting.Talkers().claim_fields(1.0, []) == {"quiet": None, "talkers": []}


def test_the_lease_is_skipped_only_when_every_recent_talker_is_dead_here(tmp_path):
    import os
    import subprocess
    import sys

    here = voting.host_identity()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = {"host": here, "pid": p.pid, "id": "x"}
    me = {"host": here, "pid": os.getpid(), "id": "me"}
    other_me = {"host": here, "pid": os.getpid(), "id": "another controller object"}
    gone = voting.lease_holders_gone
    assert gone([{"talkers": [dead]}, {"talkers": [dead, me]}, {"talkers": []}], here, me)
    assert not gone([{"talkers": [dead]}, {"talkers": [other_me]}], here, me)  # alive
    assert not gone([{"talkers": [dead]}, {"talkers": [None]}], here, me)  # gave no identity
    assert not gone([{"talkers": [dead]}, {"quiet": 0.1}], here, me)  # an older voter
    assert not gone([{"talkers": [{**dead, "host": "elsewhere:1"}]}], here, me)
    assert voting.identity({"host": here, "pid": 3}) and voting.identity("x") is None
