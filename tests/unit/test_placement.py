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
        v["name"]: {
            "replicas": v["replica_nodes"],
            "controller": v["controller"],
            "witness": v.get("witness"),
        }
        for v in placed
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
        (
            [vol("db", replicas=2, witness="yes")],
            3,
            "jiva_volumes[0] (volume 'db').witness must be true or false",
        ),
        (
            [vol("db", replicas=3, witness=True)],
            4,
            "jiva_volumes[0] (volume 'db').witness is true but the volume has 3 replicas",
        ),
        (
            [vol("db", replicas=1, witness=True)],
            3,
            "jiva_volumes[0] (volume 'db').witness is true but the volume has 1 replica:",
        ),
        (
            [vol("db", replicas=2, witness=True)],
            2,
            "jiva_volumes[0] (volume 'db').witness is true but no eligible host is left for the "
            "witness: it needs a third eligible host that holds no replica of the volume "
            "(eligible: n1, n2); add a host or set witness: false",
        ),
        (
            [vol("db", replicas=2, witness=True, quorum="off")],
            3,
            "jiva_volumes[0] (volume 'db').witness is true but jiva_volumes[0] (volume 'db').quorum is 'off'",
        ),
        (
            [vol("db", quorum="strict")],
            3,
            "jiva_volumes[0] (volume 'db').quorum must be 'majority' or 'off', got 'strict'",
        ),
        (None, 3, "'jiva_volumes' is not defined"),
        (
            [vol("lv1", qos={"max_iops": 0})],
            3,
            "jiva_volumes[0] (volume 'lv1').qos.max_iops must be a positive integer (I/Os per"
            " second), got 0",
        ),
        ([vol("lv1", qos={"max_iops": "fast"})], 3, "qos.max_iops must be a positive integer"),
        ([vol("lv1", qos={"max_iops": 1.5})], 3, "qos.max_iops must be a positive integer"),
        ([vol("lv1", qos={"max_iops": True})], 3, "qos.max_iops must be a positive integer"),
        (
            [vol("lv1", qos={"max_mbps": -5})],
            3,
            "jiva_volumes[0] (volume 'lv1').qos.max_mbps must be a positive number (MiB/s), got -5",
        ),
        ([vol("lv1", qos={"max_mbps": "100M"})], 3, "qos.max_mbps must be a positive number"),
        ([vol("lv1", qos={"max_mbps": float("inf")})], 3, "qos.max_mbps must be a positive"),
        ([vol("lv1", qos={"iops": 5})], 3, "(volume 'lv1').qos has unknown keys iops"),
        ([vol("lv1", qos=500)], 3, "(volume 'lv1').qos must be a mapping"),
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


# ---- witnesses ---------------------------------------------------------------------------------


def test_two_replica_volume_gets_a_witness_on_the_third_host():
    placed = P.place(
        nodes(3),
        [
            vol("a", replicas=2),
            vol("bb", replicas=3, portal="10.9.9.8"),
            vol("c", replicas=1, portal="10.9.9.7"),
        ],
    )
    a, bb, c = placed
    assert a["witness"] is not None and a["witness"] not in a["replica_nodes"]
    assert {a["witness"], *a["replica_nodes"]} == {"n1", "n2", "n3"}
    n = int(a["witness"][1:])
    assert a["witness_address"] == f"10.0.0.{n}:{a['replica_port']}"
    assert a["quorum"] == "majority"
    # 3 replicas are a majority of their own; 1 replica has no HA to protect
    assert bb["witness"] is None and bb["witness_address"] is None
    assert c["witness"] is None


def test_no_witness_when_opted_out_quorum_off_or_no_third_host():
    placed = P.place(
        nodes(3),
        [
            vol("a", replicas=2, witness=False),
            vol("bb", replicas=2, quorum="off", portal="10.9.9.8"),
        ],
    )
    assert [v["witness"] for v in placed] == [None, None]
    assert placed[1]["quorum"] == "off"
    # default: a witness when possible, none otherwise (two eligible hosts, or the third drained)
    assert P.place(nodes(2), [vol("a", replicas=2)])[0]["witness"] is None
    assert P.place(nodes(3, ineligible=("n3",)), [vol("a", replicas=2)])[0]["witness"] is None
    # witness: true is accepted when a third host exists
    assert P.place(nodes(3), [vol("a", replicas=2, witness=True)])[0]["witness"] is not None


def test_witness_weight_has_its_own_salt_and_ignores_inventory_order():
    vols = [vol(f"v{i}", replicas=2, portal=f"10.9.{i}.1") for i in range(40)]
    one = P.place(nodes(6), vols)
    two = P.place(list(reversed(nodes(6))), vols)
    assert [v["witness"] for v in one] == [v["witness"] for v in two]
    for v in one:
        free = [f"n{i}" for i in range(1, 7) if f"n{i}" not in v["replica_nodes"]]
        others = [n for n in free if n != v["controller"]] or free
        assert v["witness"] == max(others, key=lambda n: P.hrw_score(v["name"], n, "witness"))
    # not simply the next replica pick: some witnesses differ from the third replica choice
    third = [
        P.place(nodes(6), [vol(v["name"], replicas=3, portal="10.9.9.1")])[0]["replica_nodes"][2]
        for v in one
    ]
    assert any(w != t for w, t in zip((v["witness"] for v in one), third, strict=True))


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True
    ),
    n=st.integers(3, 7),
    added=st.integers(1, 4),
)
def test_witness_never_shares_a_host_with_a_replica_and_never_moves_when_nodes_are_added(
    names, n, added
):
    vols = [vol(name, replicas=2, portal=f"10.9.{i}.1") for i, name in enumerate(names)]
    before = P.place(nodes(n), vols)
    for v in before:
        assert v["witness"] is not None and v["witness"] not in v["replica_nodes"]
    after = P.place(nodes(n + added), vols, existing=existing_of(before))
    for b, a in zip(before, after, strict=True):
        assert (a["replica_nodes"], a["controller"], a["witness"]) == (
            b["replica_nodes"],
            b["controller"],
            b["witness"],
        )
        assert a["witness_address"] == b["witness_address"]


def test_an_existing_witness_stays_and_moves_only_off_an_ineligible_host():
    first = P.place(nodes(5), [vol("db", replicas=2)])[0]
    free = [f"n{i}" for i in range(1, 6) if f"n{i}" not in first["replica_nodes"]]
    elsewhere = next(h for h in free if h != first["witness"])
    existing = {"db": {"replicas": first["replica_nodes"], "witness": elsewhere}}
    kept = P.place(nodes(5), [vol("db", replicas=2)], existing=existing)[0]
    assert kept["witness"] == elsewhere and kept["replica_nodes"] == first["replica_nodes"]
    drained = P.place(
        nodes(5, ineligible=(elsewhere,)), [vol("db", replicas=2)], existing=existing
    )[0]
    assert drained["witness"] not in (elsewhere, *drained["replica_nodes"])
    # witness: false (or quorum off) drops it
    off = P.place(nodes(5), [vol("db", replicas=2, witness=False)], existing=existing)[0]
    assert off["witness"] is None


def test_new_replicas_avoid_the_existing_witness_host_when_they_can():
    placed = P.place(nodes(4), [vol("db", replicas=2)])[0]
    r1, r2 = placed["replica_nodes"]
    w = placed["witness"]
    spare = ({"n1", "n2", "n3", "n4"} - {r1, r2, w}).pop()
    # r2's host is drained: its replica goes to the spare host, not to the witness's host
    again = P.place(
        nodes(4, ineligible=(r2,)), [vol("db", replicas=2)], existing=existing_of([placed])
    )[0]
    assert again["replica_nodes"] == [r1, spare] and again["witness"] == w
    assert again["moved"] == [r2]
    # with no spare host the replica takes the witness's host, and the witness goes elsewhere
    three = P.place(
        nodes(4, ineligible=(r2, spare)), [vol("db", replicas=2)], existing=existing_of([placed])
    )[0]
    assert three["replica_nodes"] == [r1, w] and three["witness"] is None


def test_witness_prefers_a_host_not_giving_up_a_replica():
    # 3 -> 2 replicas on 4 hosts: the dropped replica's host is the witness's last choice
    for i in range(30):
        name = f"v{i}"
        three = P.place(nodes(4), [vol(name, replicas=3)])[0]
        two = P.place(nodes(4), [vol(name, replicas=2)], existing=existing_of([three]))[0]
        (dropped,) = two["moved"]
        spare = ({"n1", "n2", "n3", "n4"} - set(three["replica_nodes"])).pop()
        assert two["witness"] == spare, (three, two)
        assert dropped not in two["replica_nodes"]
    # on 3 hosts the dropped replica's host is the only one left: it takes the witness
    three = P.place(nodes(3), [vol("db", replicas=3)])[0]
    two = P.place(nodes(3), [vol("db", replicas=2)], existing=existing_of([three]))[0]
    assert two["witness"] == two["moved"][0]


def test_pinned_controller_may_share_a_host_with_a_replica_and_the_witness_avoids_it():
    placed = P.place(nodes(3), [vol("db", replicas=2, nodes=["n1", "n2"], controller="n1")])[0]
    assert placed["controller"] == "n1" and "n1" in placed["replica_nodes"]
    assert placed["witness"] == "n3"
    placed = P.place(nodes(3), [vol("db", replicas=3, controller="n2")])[0]
    assert placed["controller"] == "n2" and "n2" in placed["replica_nodes"]
    # a controller pinned off the replicas: the witness takes another free host when there is one
    placed = P.place(nodes(4), [vol("db", replicas=2, nodes=["n1", "n2"], controller="n3")])[0]
    assert placed["controller"] == "n3" and placed["witness"] == "n4"
    placed = P.place(nodes(3), [vol("db", replicas=2, nodes=["n1", "n2"], controller="n3")])[0]
    assert placed["controller"] == "n3" and placed["witness"] == "n3"


def test_existing_services_give_the_witness_hosts():
    existing = P.parse_existing_services(
        {
            "n1": ["replica-db.env", "controller-db.env"],
            "n2": ["replica-db.env", "witness-logs.env"],
            "n3": ["witness-db.env", "replica-logs.env"],
        }
    )
    assert existing["db"] == {"replicas": ["n1", "n2"], "controller": "n1", "witness": "n3"}
    assert existing["logs"]["witness"] == "n2" and existing["logs"]["replicas"] == ["n3"]
    placed = P.place(
        nodes(4),
        [vol("db", replicas=2), vol("logs", replicas=2, portal="10.9.9.8")],
        existing=existing,
    )
    assert placed[0]["witness"] == "n3" and placed[1]["witness"] == "n2"
    assert set(placed[0]["replica_nodes"]) == {"n1", "n2"}


def test_a_two_replica_volume_without_a_witness_is_warned_about():
    placed = P.place(
        nodes(3),
        [
            vol("a", replicas=2),
            vol("bb", replicas=2, witness=False, portal="10.9.9.8"),
            vol("c", replicas=2, quorum="off", portal="10.9.9.7"),
            vol("d", replicas=3, portal="10.9.9.6"),
        ],
    )
    assert P.placement_warnings(placed) == [
        "jiva_volumes[1] (volume 'bb') has 2 replicas and no witness (witness: false): under "
        "quorum majority it holds its I/O while either replica's host is down; add an eligible "
        "host for a witness, use 3 replicas, or set quorum: off"
    ]
    (msg,) = P.placement_warnings(P.place(nodes(2), [vol("a", replicas=2)]))
    assert "(no third eligible host)" in msg


def test_qos_becomes_the_controller_flags():
    """A volume's `qos:` reaches the controller's command line (placement -> the controller role
    passes item.max_iops/max_mbps -> the controller module's arguments); a volume without one
    gets no QoS flag (unlimited)."""
    import sys

    sys.path.insert(0, str(ROOT / "collections"))
    from ansible_collections.jiva.storage.plugins.modules import controller as C

    placed = P.place(
        nodes(3),
        [vol("lv1", qos={"max_iops": 500, "max_mbps": 40}), vol("lv22"),
         vol("lv333", qos={"max_mbps": 2.5})],
    )  # fmt: skip
    by_name = {v["name"]: v for v in placed}
    assert (by_name["lv1"]["max_iops"], by_name["lv1"]["max_mbps"]) == (500, 40.0)
    assert (by_name["lv22"]["max_iops"], by_name["lv22"]["max_mbps"]) == (None, None)
    params = dict(api="10.0.0.1:9800", portal="10.9.9.3:3260", replicas=["10.0.0.1:9700"],
                  witnesses=[], quorum=None, size="1G", replica_timeout=None, rebuild_rate=None,
                  scrub_interval=None, scrub_rate=None, max_snapshots=None, chap_user=None,
                  allowed_initiators=[])  # fmt: skip

    def args(v: dict) -> list[str]:
        # roles/controller/tasks/main.yml: max_iops/max_mbps from the placed item, else omitted
        return C.daemon_args({**params, "name": v["name"], "max_iops": v["max_iops"],
                              "max_mbps": v["max_mbps"]})  # fmt: skip

    a = args(by_name["lv1"])
    assert a[a.index("--max-iops") + 1] == "500" and a[a.index("--max-mbps") + 1] == "40"
    assert "--max-iops" not in args(by_name["lv22"]) and "--max-mbps" not in args(by_name["lv22"])
    c = args(by_name["lv333"])
    assert "--max-iops" not in c and c[c.index("--max-mbps") + 1] == "2.5"
    role = ROOT / "collections/ansible_collections/jiva/storage/roles/controller/tasks/main.yml"
    text = role.read_text()
    # (each volume's instance gets the limits it has, and no key for one it has not)
    assert "{%- for opt in ['max_iops', 'max_mbps'] if v[opt] | default(none) -%}" in text
