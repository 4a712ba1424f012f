"""The controller's snapshot decisions (controller/snapshots.py), without I/O: names, refusals
(checked before anything changes), the limit, settling after a crash, and how copies between
replicas write holes."""

from __future__ import annotations

import pytest

from jiva_engine.controller.peers import Peer
from jiva_engine.controller.snapshots import (
    MAX_LIMIT,
    check_limit,
    check_name,
    common,
    create_refusal,
    delete_refusal,
    find,
    hole_copy,
    new_record,
    snapshot_ids,
    split_failures,
    to_settle,
)
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaError, ReplicaUnavailable


def snap(sid: str, name: str | None = None) -> dict:
    return {"id": sid, "name": name or f"n-{sid}", "created": 1.0, "size": 4096}


@pytest.mark.parametrize("name", ["a", "A9", "daily-2026.11.29_01", "x" * 64, "0"])
def test_good_names(name):
    assert check_name(name) is None


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "a b", "a/b", "x" * 65, "é", None, 3, "a\n"]
)
def test_bad_names(name):
    assert check_name(name)


def test_limit_bounds():
    assert check_limit(1) == 1
    assert check_limit(MAX_LIMIT) == MAX_LIMIT
    for bad in (0, -1, MAX_LIMIT + 1, True, "64"):
        with pytest.raises(ValueError, match="--max-snapshots"):
            check_limit(bad)


def test_create_allowed():
    assert create_refusal("s1", ["s0"], 64, serving=True) is None


def test_create_refusals_in_order():
    r = create_refusal("bad name", [], 64, serving=False)
    assert r is not None and r.status == 400  # a bad name is a bad request, whatever the state
    r = create_refusal("s", [], 64, serving=False, reason="no quorum: 1 of 3 voters")
    assert r is not None and r.status == 409 and "no quorum" in str(r)
    r = create_refusal("s", [], 64, serving=True, unsupported=["127.0.0.1:9701"])
    assert r is not None and r.status == 409 and "upgrade" in str(r) and "9701" in str(r)
    r = create_refusal("s", [], 64, serving=True, rebuilding=["127.0.0.1:9700"])
    assert r is not None and r.status == 409 and "rebuilt" in str(r) and "9700" in str(r)
    r = create_refusal("s", [], 64, serving=True, settling=True)
    assert r is not None and r.status == 409 and "restart" in str(r)
    r = create_refusal("s", ["s"], 64, serving=True)
    assert r is not None and r.status == 409 and "exists" in str(r)


def test_limit_checked_before_anything_changes():
    names = [f"s{i}" for i in range(3)]
    r = create_refusal("new", names, 3, serving=True)
    assert r is not None and r.status == 409
    assert "limit" in str(r) and "--max-snapshots 3" in str(r) and "delete one" in str(r)
    assert create_refusal("new", names[:2], 3, serving=True) is None


def test_delete_refusals():
    assert delete_refusal("s", serving=True) is None
    r = delete_refusal("no such/name", serving=True)
    assert r is not None and r.status == 404
    r = delete_refusal("s", serving=False, reason="waiting")
    assert r is not None and r.status == 409
    r = delete_refusal("s", serving=True, rebuilding=["r1"])
    assert r is not None and r.status == 409 and "rebuilt" in str(r)
    r = delete_refusal("s", serving=True, in_use="a revert to it runs")
    assert r is not None and r.status == 409 and "revert" in str(r)
    r = delete_refusal("s", serving=True, settling=True)
    assert r is not None and r.status == 409


def test_record_same_for_every_member():
    a, b = new_record("s", now=10.0), new_record("s", now=10.0)
    assert a["name"] == "s" and a["created"] == 10.0
    assert len(a["id"]) == 32 and int(a["id"], 16) >= 0
    assert a["id"] != b["id"]


def test_snapshot_ids_from_info():
    assert snapshot_ids({"snapshots": ["a", "b"]}) == ["a", "b"]
    assert snapshot_ids({"meta": {"snapshots": [{"id": "a"}]}}) == ["a"]
    assert snapshot_ids({"snapshots": []}) == []
    assert snapshot_ids({"meta": {"epoch": 1}}) is None  # a replica from before snapshots
    assert snapshot_ids(None) is None


def test_hole_copy():
    assert hole_copy([None, None]) == "unmap"
    assert hole_copy([[], []]) == "drop"
    assert hole_copy([["a", "b"], ["a", "b"]]) == "drop"
    assert hole_copy([["a", "b"], ["a"]]) == "data"  # a create or delete interrupted
    assert hole_copy([["a"], None]) == "data"


def test_common_and_settle_after_an_interrupted_create():
    # the crash came after SNAPSHOT reached r0 only: c is not on every member
    lists = [[snap("a"), snap("b"), snap("c")], [snap("a"), snap("b")], [snap("a"), snap("b")]]
    assert [s["id"] for s in common(lists)] == ["a", "b"]
    assert to_settle(lists) == ["c"]


def test_settle_after_an_interrupted_delete():
    # r1 finished deleting a, the others had not: a goes everywhere
    lists = [[snap("a"), snap("b")], [snap("b")], [snap("a"), snap("b")]]
    assert to_settle(lists) == ["a"]
    assert to_settle([[snap("a")], [snap("a")]]) == []
    assert to_settle([]) == [] and common([]) == []


def test_find_by_name_on_any_member():
    lists = [[snap("a", "x")], [snap("a", "x"), snap("b", "y")]]
    found = find(lists, "y")
    assert found is not None and found["id"] == "b"
    assert find(lists, "z") is None


def test_split_failures():
    p1, p2, p3, p4 = (Peer(f"127.0.0.1:{i}") for i in range(4))
    ok, refused, lost = split_failures(
        [p1, p2, p3, p4],
        [
            {"snapshots": []},
            ReplicaError(wire.EINVAL, "duplicate name"),
            ReplicaUnavailable("gone"),
            ReplicaError(wire.STALE_EPOCH, "newer"),
        ],
    )
    assert ok == [p1]
    assert [p for p, _ in refused] == [p2]
    assert [p for p, _ in lost] == [p3, p4]  # a newer epoch goes to failures(), which fences
