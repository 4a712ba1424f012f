"""Unit tests of the witness side of the health view and the failover plan (collection
module_utils jiva_ha): witness states in the health row and table, restarting a dead witness,
where a controller goes when its host is lost, and relocation never onto the witness's host."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_ha as H  # noqa: E402


def nodes(n: int) -> list[dict]:
    return [{"name": f"h{i}", "address": f"10.0.0.{i}", "eligible": True} for i in range(1, n + 1)]


ADDR = {f"h{i}": f"10.0.0.{i}" for i in range(1, 6)}


def vol(replicas=("h1", "h2"), controller="h1", witness="h3") -> dict:
    return {
        "name": "db",
        "portal": "10.0.0.100:3260",
        "portal_host": "10.0.0.100",
        "api": "10.0.0.100:9800",
        "replica_port": 9700,
        "quorum": "majority",
        "controller": controller,
        "replica_nodes": list(replicas),
        "replica_addresses": [f"{ADDR[h]}:9700" for h in replicas],
        "witness": witness,
        "witness_address": f"{ADDR[witness]}:9700" if witness else None,
    }


def doc(replicas=("h1", "h2"), modes=None, witness="h3", wstate="ok", state="serving") -> dict:
    modes = modes or ["RW"] * len(replicas)
    d = {
        "state": state,
        "epoch": (3 << 32) | 5,
        "term": 3,
        "view": 5,
        "degraded": any(m != "RW" for m in modes),
        "replicas": [
            {"address": f"{ADDR[h]}:9700", "id": f"id-{h}", "mode": m, "rebuild": None}
            for h, m in zip(replicas, modes, strict=True)
        ],
        "witnesses": [],
        "quorum": {"policy": "majority", "voters": len(replicas), "needed": 2, "missing": []},
    }
    if witness:
        d["witnesses"] = [
            {
                "address": f"{ADDR[witness]}:9700",
                "id": "w",
                "state": wstate,
                "epoch": d["epoch"],
                "last_error": None if wstate == "ok" else "connection refused",
            }
        ]
        d["quorum"]["voters"] += 1
    return d


def facts(hosts, ctl="h1", replicas=("h1", "h2"), witness="h3", dead=()) -> dict:
    out = {}
    for h in hosts:
        out[h] = {
            "controllers": ["db"] if h == ctl else [],
            "controllers_running": ["db"] if h == ctl and h not in dead else [],
            "replicas": ["db"] if h in replicas else [],
            "replicas_running": ["db"] if h in replicas and h not in dead else [],
            "replica_data": ["db"] if h in replicas else [],
            "witnesses": ["db"] if h == witness else [],
            "witnesses_running": ["db"] if h == witness and h not in dead else [],
            "witness_data": ["db"] if h == witness else [],
            "portals": [ADDR[h]] + (["10.0.0.100"] if h == ctl else []),
        }
    return out


# ---- health --------------------------------------------------------------------------------------


def test_health_row_and_table_show_the_witness():
    row = H.volume_health(vol(), doc(), None, {}, ADDR, "h1")
    assert row["degraded"] is False
    assert row["witnesses"] == [
        {
            "host": "h3",
            "address": "10.0.0.3:9700",
            "state": "ok",
            "id": "w",
            "epoch": (3 << 32) | 5,
            "last_error": None,
        }
    ]
    assert row["quorum"]["needed"] == 2 and (row["term"], row["view"]) == (3, 5)
    assert [r["id"] for r in row["replicas"]] == ["id-h1", "id-h2"]
    table = H.health_table_rows([row])
    assert H.HEALTH_HEADERS[5:7] == ["replicas", "witness"]
    assert table[0][5:8] == ["h1:RW, h2:RW", "h3:ok", "no"]
    # a volume without a witness shows '-'
    row3 = H.volume_health(
        vol(("h1", "h2", "h3"), witness=None), doc(("h1", "h2", "h3"), witness=None), None, {},
        ADDR, "h1",
    )  # fmt: skip
    assert H.health_table_rows([row3])[0][6] == "-" and row3["degraded"] is False


def test_unreachable_witness_or_no_quorum_makes_the_volume_degraded():
    row = H.volume_health(vol(), doc(wstate="unreachable"), None, {}, ADDR, "h1")
    assert row["degraded"] is True and H.health_table_rows([row])[0][6] == "h3:unreachable"
    assert row["witnesses"][0]["last_error"] == "connection refused"
    # its host does not answer the probe either
    row = H.volume_health(vol(), doc(wstate="connecting"), None, {"h3": "timed out"}, ADDR, "h1")
    assert row["witnesses"][0]["state"] == "unreachable" and row["degraded"]
    row = H.volume_health(vol(), doc(state="no quorum"), None, {}, ADDR, "h1")
    assert row["state"] == "no quorum" and row["degraded"] is True


def test_witness_state_without_an_answer_from_the_controller():
    row = H.volume_health(vol(), None, "refused", {}, ADDR, "h1")
    assert row["witnesses"][0]["state"] == "unknown" and row["degraded"]
    row = H.volume_health(vol(), None, "refused", {"h3": "x"}, ADDR, "h1")
    assert row["witnesses"][0]["state"] == "unreachable"
    # the controller answers without the placed witness (started before it was placed): missing
    row = H.volume_health(vol(), doc(witness=None), None, {}, ADDR, "h1")
    assert [(w["host"], w["state"]) for w in row["witnesses"]] == [("h3", "missing")]
    assert row["degraded"] is True


# ---- failover plan -------------------------------------------------------------------------------


def test_healthy_volume_with_a_witness_needs_nothing():
    p = H.plan([vol()], nodes(3), facts(["h1", "h2", "h3"]), {}, {"db": doc()}, {})
    assert p["actions"] == [] and p["report"][0]["found"] == ["healthy"]
    assert p["state"]["db"]["witness"] == "h3"
    assert p["volumes"][0]["witness_address"] == "10.0.0.3:9700"


def test_dead_witness_on_a_live_host_is_started_again():
    f = facts(["h1", "h2", "h3"], dead=("h3",))
    f["h3"]["witness_data"] = []
    p = H.plan([vol()], nodes(3), f, {}, {"db": doc(wstate="unreachable")}, {})
    assert p["actions"] == [
        {
            "host": "h3",
            "action": "start_witness",
            "volume": "db",
            "why": "witness process dead, host up",
        }
    ]
    assert p["report"][0]["found"] == ["witness on h3 not running, its metadata is gone (host up)"]
    assert p["act_on"] == ["h3"]


def test_unreachable_witness_host_is_reported_and_left_alone():
    f = facts(["h1", "h2"])
    p = H.plan([vol()], nodes(3), f, {"h3": "no route"}, {"db": doc(wstate="unreachable")}, {})
    assert p["actions"] == []
    assert p["report"][0]["found"] == ["witness host h3 unreachable"]
    assert "the replicas are a majority without it" in p["report"][0]["did"][0]
    # running, but the controller cannot reach it: reported, nothing to restart
    p = H.plan(
        [vol()], nodes(3), facts(["h1", "h2", "h3"]), {}, {"db": doc(wstate="unreachable")}, {}
    )
    assert p["actions"] == [] and "cannot reach it" in p["report"][0]["found"][0]


def test_no_quorum_is_reported():
    d = doc(state="no quorum")
    d["quorum"]["missing"] = ["10.0.0.2:9700", "10.0.0.3:9700"]
    p = H.plan([vol()], nodes(3), facts(["h1", "h2", "h3"]), {}, {"db": d}, {})
    assert "no quorum: missing 10.0.0.2:9700, 10.0.0.3:9700" in p["report"][0]["found"]


def test_three_hosts_three_replicas_the_new_controller_shares_a_host_with_a_replica():
    v = vol(("h1", "h2", "h3"), controller="h1", witness=None)
    f = facts(["h2", "h3"], replicas=("h1", "h2", "h3"), witness=None)
    p = H.plan([v], nodes(3), f, {"h1": "timed out"}, {"db": None}, {})
    (a,) = p["actions"]
    assert a["action"] == "start_controller" and a["host"] in ("h2", "h3")
    assert p["volumes"][0]["controller"] == a["host"]
    assert p["volumes"][0]["witness_address"] is None


def test_new_controller_host_prefers_no_voter_then_the_witness_then_a_replica():
    # 2 replicas + witness on 3 hosts, controller host h1 (a replica) lost: the witness's host
    f = facts(["h2", "h3"])
    p = H.plan([vol()], nodes(3), f, {"h1": "timed out"}, {"db": None}, {})
    (a,) = p["actions"]
    assert (a["action"], a["host"]) == ("start_controller", "h3")
    out = p["volumes"][0]
    # the controller started there gets the witness and the replicas, as site.yml would give it
    assert out["witness_address"] == "10.0.0.3:9700"
    assert out["replica_addresses"] == ["10.0.0.1:9700", "10.0.0.2:9700"]
    # a fourth host with no voter of the volume comes first
    f4 = facts(["h2", "h3", "h4"])
    p = H.plan([vol()], nodes(4), f4, {"h1": "timed out"}, {"db": None}, {})
    assert [(a["action"], a["host"]) for a in p["actions"]] == [("start_controller", "h4")]
    # witness and replica host both lost: the surviving replica's host
    p = H.plan([vol()], nodes(3), facts(["h2"]), {"h1": "x", "h3": "y"}, {"db": None}, {})
    assert [(a["action"], a["host"]) for a in p["actions"]] == [("start_controller", "h2")]
    assert H.new_controller_host("db", ["h2"], "h1", ["h1", "h2"], "h3") == "h2"
    assert H.new_controller_host("db", [], "h1", ["h1", "h2"], "h3") is None


def test_relocation_never_targets_the_witness_host():
    d = {"db": doc(modes=["RW", "ERR"])}
    # 4 hosts: h2's replica goes to h4, not to the witness's h3
    p = H.plan([vol()], nodes(4), facts(["h1", "h3", "h4"]), {"h2": "x"}, d, {}, relocate=True)
    assert [(a["action"], a["host"], a.get("replaces")) for a in p["actions"]] == [
        ("start_replica", "h4", "h2")
    ]
    assert p["volumes"][0]["replica_nodes"] == ["h1", "h4"]
    assert p["volumes"][0]["witness"] == "h3"
    # 3 hosts: the only other live host is the witness's: nothing, and why
    p = H.plan([vol()], nodes(3), facts(["h1", "h3"]), {"h2": "x"}, d, {}, relocate=True)
    assert p["actions"] == []
    assert (
        "no live eligible host without a replica or the witness of db" in p["report"][0]["did"][0]
    )


def test_current_witness_comes_from_the_controller_then_the_record_then_the_hosts():
    f = facts(["h1", "h2", "h3", "h4"], witness="h4")
    # the controller's own list wins (even over the placement and the state file)
    assert (
        H.current_witness(vol(), f, {"db": {"witness": "h3"}}, {}, doc(witness="h4"), ADDR) == "h4"
    )
    # a controller that answers without a witness has none, whatever the state file says
    assert (
        H.current_witness(vol(), f, {"db": {"witness": "h3"}}, {}, doc(witness=None), ADDR) is None
    )
    # no answer: the state file, then the one live host where it is configured, then placement
    assert H.current_witness(vol(), f, {"db": {"witness": "h3"}}, {}, None, ADDR) == "h3"
    assert H.current_witness(vol(), f, {}, {}, None, ADDR) == "h4"
    assert H.current_witness(vol(), facts(["h1", "h2"]), {}, {}, None, ADDR) == "h3"
