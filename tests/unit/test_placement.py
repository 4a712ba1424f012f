"""Unit tests of the collection's placement and inventory validation (rendezvous hashing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
_path = ROOT / "collections/ansible_collections/jiva/storage/plugins/module_utils/jiva_placement.py"
_spec = importlib.util.spec_from_file_location("jiva_placement", _path)
P = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(P)


def nodes(n: int, ineligible: tuple[str, ...] = ()) -> list[dict]:
    return [
        {"name": f"n{i}", "address": f"10.0.0.{i}", "eligible": f"n{i}" not in ineligible}
        for i in range(1, n + 1)
    ]


def vol(name: str, replicas: int = 3, **kw) -> dict:
    return {"name": name, "size": "1G", "replicas": replicas, "portal": f"10.9.9.{len(name)}", **kw}


def existing_of(placed: list[dict]) -> dict:
    return {
        v["name"]: {"replicas": v["replica_nodes"], "controller": v["controller"]} for v in placed
    }


def test_replicas_on_distinct_eligible_nodes_and_controller_on_a_replica_node():
    vols = [vol(f"v{i}", replicas=3, portal=f"10.9.9.{i}") for i in range(20)]
    placed = P.place(nodes(5, ineligible=("n2",)), vols)
    for v in placed:
        assert len(v["replica_nodes"]) == 3
        assert len(set(v["replica_nodes"])) == 3
        assert "n2" not in v["replica_nodes"]
        assert v["controller"] in v["replica_nodes"]
    # HRW spreads 20 volumes over the 4 eligible nodes: every one gets some
    assert {n for v in placed for n in v["replica_nodes"]} == {"n1", "n3", "n4", "n5"}


def test_independent_of_inventory_order():
    vols = [vol("a"), vol("bb", portal="10.9.9.9")]
    one = P.place(nodes(6), vols)
    two = P.place(list(reversed(nodes(6))), vols)
    assert [v["replica_nodes"] for v in one] == [v["replica_nodes"] for v in two]


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True
    ),
    n=st.integers(3, 8),
    added=st.integers(1, 4),
)
def test_added_nodes_never_move_existing_replicas(names, n, added):
    vols = [vol(name, replicas=3, portal=f"10.9.{i}.1") for i, name in enumerate(names)]
    before = P.place(nodes(n), vols)
    after = P.place(nodes(n + added), vols, existing=existing_of(before))
    for b, a in zip(before, after, strict=True):
        assert a["replica_nodes"] == b["replica_nodes"]
        assert a["controller"] == b["controller"]
        assert a["moved"] == []


def test_without_existing_state_hrw_moves_only_to_the_new_node():
    vols = [vol(f"v{i}", portal=f"10.9.{i}.1") for i in range(30)]
    before = P.place(nodes(4), vols)
    after = P.place(nodes(5), vols)
    for b, a in zip(before, after, strict=True):
        # minimal disruption: any change brings in n5 and keeps the other picks
        assert set(a["replica_nodes"]) - set(b["replica_nodes"]) <= {"n5"}


def test_pinned_nodes_are_used_and_ineligible_existing_replicas_move():
    placed = P.place(nodes(5), [vol("db", nodes=["n4", "n2"], controller="n2")])
    assert placed[0]["replica_nodes"][:2] == ["n4", "n2"]
    assert placed[0]["controller"] == "n2"
    drained = P.place(nodes(5, ineligible=("n4",)), [vol("db")], existing=existing_of(placed))
    assert "n4" not in drained[0]["replica_nodes"]
    assert drained[0]["moved"] == ["n4"]
    assert set(placed[0]["replica_nodes"]) - {"n4"} <= set(drained[0]["replica_nodes"])


def test_ports_are_derived_from_the_list_position_or_given():
    placed = P.place(nodes(3), [vol("a"), vol("bb", replica_port=9999, portal="10.9.9.7:3261")])
    assert (placed[0]["replica_port"], placed[0]["api_port"]) == (9700, 9800)
    assert (placed[1]["replica_port"], placed[1]["api_port"]) == (9999, 9801)
    assert placed[1]["portal"] == "10.9.9.7:3261"
    assert placed[0]["replica_addresses"][0].endswith(":9700")


@pytest.mark.parametrize(
    ("volumes", "nodecount", "message"),
    [
        ([vol("db", replicas=4)], 3, "volume 'db') asks for 4 replicas but only 3 eligible nodes"),
        ([vol("db"), vol("db", portal="10.1.1.1")], 3, "duplicate volume name 'db'"),
        ([vol("db", size="ten gigs")], 3, "jiva_volumes[0] (volume 'db').size: invalid size"),
        ([vol("db", size="1000")], 3, "not a multiple of 512"),
        (
            [vol("a", replica_port=9000), vol("bb", replica_port=9000, portal="10.1.1.1")],
            3,
            "port clash",
        ),
        ([vol("a", portal="10.1.1.1:3260"), vol("bb", portal="10.1.1.1:3260")], 3, "port clash"),
        ([{"name": "db", "size": "1G", "replicas": 2}], 3, "volume 'db') has no 'portal'"),
        ([vol("db", nodes=["n9"])], 3, "nodes names unknown host 'n9'"),
        ([vol("db", controller="n7")], 3, "controller names unknown host 'n7'"),
        ([vol("Bad_Name")], 3, "jiva_volumes[0].name must be"),
        ([vol("db", replicas=0)], 3, "replicas must be a positive integer"),
        ([vol("db", colour="red")], 3, "unknown keys colour"),
        ([vol("db", chap={"user": "u", "secret": "short"})], 3, "chap.secret must be 12 to 255"),
        ([vol("db", allowed_initiators=["client1"])], 3, "is not an iSCSI name"),
        (None, 3, "'jiva_volumes' is not defined"),
    ],
)
def test_bad_inventories_fail_with_a_message_naming_the_variable(volumes, nodecount, message):
    with pytest.raises(P.PlacementError) as err:
        P.place(nodes(nodecount), volumes)
    assert message in str(err.value)


def test_ineligible_nodes_do_not_count():
    with pytest.raises(
        P.PlacementError, match=r"asks for 3 replicas but only 2 eligible nodes exist \(n1, n3\)"
    ):
        P.place(nodes(3, ineligible=("n2",)), [vol("db")])
    with pytest.raises(
        P.PlacementError, match="pins host 'n2', which is marked jiva_eligible=false"
    ):
        P.place(nodes(4, ineligible=("n2",)), [vol("db", nodes=["n2"])])


def test_bad_nodes():
    with pytest.raises(P.PlacementError, match="group 'jiva_nodes' is empty"):
        P.place([], [vol("db")])
    with pytest.raises(P.PlacementError, match="host 'n2' has no 'jiva_address'"):
        P.place([{"name": "n1", "address": "10.0.0.1"}, {"name": "n2", "address": ""}], [])
    with pytest.raises(P.PlacementError, match="is also used by host 'n1'"):
        P.place([{"name": "n1", "address": "10.0.0.1"}, {"name": "n2", "address": "10.0.0.1"}], [])


def test_sizes():
    assert P.parse_size("512M") == 512 << 20
    assert P.parse_size("1G") == 1 << 30
    assert P.parse_size(4096) == 4096
    for bad in ("", "-1", "1.5G", "0", True):
        with pytest.raises(ValueError):
            P.parse_size(bad)
