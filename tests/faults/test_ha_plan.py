"""Unit tests of the failover plan (collection module_utils jiva_ha): what is found and done per
volume for each scenario, from probe results and host facts (no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_ha as H  # noqa: E402

NODES = [{"name": f"h{i}", "address": f"10.0.0.{i}", "eligible": True} for i in range(1, 5)]
VOL = {
    "name": "db",
    "portal": "10.0.0.100:3260",
    "portal_host": "10.0.0.100",
    "api": "10.0.0.100:9800",
    "replica_port": 9700,
    "controller": "h4",
    "replica_nodes": ["h1", "h2", "h3"],
    "replica_addresses": ["10.0.0.1:9700", "10.0.0.2:9700", "10.0.0.3:9700"],
}


def doc(modes=("RW", "RW", "RW"), state="serving") -> dict:
    return {
        "state": state,
        "epoch": 3,
        "degraded": any(m != "RW" for m in modes),
        "replicas": [
            {"address": f"10.0.0.{i + 1}:9700", "mode": m, "rebuild": None}
            for i, m in enumerate(modes)
        ],
    }


def facts(ctl: str | None = "h4", dead_replica: str | None = None, portal_on=("h4",)) -> dict:
    out = {}
    for n in NODES:
        h = n["name"]
        rep = h in ("h1", "h2", "h3")
        out[h] = {
            "controllers": ["db"] if h == ctl else [],
            "controllers_running": ["db"] if h == ctl else [],
            "replicas": ["db"] if rep else [],
            "replicas_running": ["db"] if rep and h != dead_replica else [],
            "replica_data": ["db"] if rep else [],
            "portals": [n["address"]] + (["10.0.0.100"] if h in portal_on else []),
        }
    return out


def test_healthy_cluster_does_nothing():
    p = H.plan([VOL], NODES, facts(), {}, {"db": doc()}, {})
    assert p["actions"] == [] and p["report"][0]["found"] == ["healthy"]
    assert p["state"]["db"]["controller"] == "h4"


def test_dead_controller_process_restarted_on_same_host():
    f = facts()
    f["h4"]["controllers_running"] = []
    p = H.plan([VOL], NODES, f, {}, {"db": None}, {})
    assert p["actions"] == [
        {
            "host": "h4",
            "action": "start_controller",
            "volume": "db",
            "why": "controller process dead, host up",
        }
    ]


def test_unreachable_controller_host_moves_controller_and_fences_when_back():
    f = facts()
    del f["h4"]
    p = H.plan([VOL], NODES, f, {"h4": "timed out"}, {"db": None}, {})
    (a,) = p["actions"]
    assert a["action"] == "start_controller" and a["host"] in ("h1", "h2", "h3")
    new = a["host"]
    assert p["volumes"][0]["controller"] == new and p["state"]["db"]["controller"] == new
    # h4 comes back with its old controller and portal: fenced, the new one stays
    f2 = facts(ctl=new, portal_on=(new,))
    f2["h4"]["controllers"] = f2["h4"]["controllers_running"] = ["db"]
    f2["h4"]["portals"].append("10.0.0.100")
    p2 = H.plan([VOL], NODES, f2, {}, {"db": doc()}, p["state"])
    assert p2["actions"] == [
        {"host": "h4", "action": "fence_controller", "volume": "db", "why": f"the controller of db runs on {new}"},
        {"host": new, "action": "announce_portal", "volume": "db", "why": "portal address also seen on h4"},
    ]  # fmt: skip
    # if the stale one fenced the new controller meanwhile, the new one is restarted (re-claims)
    p3 = H.plan(
        [VOL], NODES, facts(ctl=new, portal_on=(new,)), {}, {"db": doc(state="fenced")}, p["state"]
    )
    assert [a["action"] for a in p3["actions"]] == ["restart_controller"] and p3["actions"][0][
        "host"
    ] == new


def test_controller_host_ssh_down_but_api_serving_is_left_alone():
    f = facts()
    del f["h4"]
    p = H.plan([VOL], NODES, f, {"h4": "refused"}, {"db": doc()}, {})
    assert p["actions"] == [] and "only the management path" in p["report"][0]["did"][0]


def test_dead_replica_restarted_and_data_loss_reported():
    f = facts(dead_replica="h2")
    f["h2"]["replica_data"] = []
    p = H.plan([VOL], NODES, f, {}, {"db": doc(("RW", "ERR", "RW"))}, {})
    assert p["actions"] == [
        {
            "host": "h2",
            "action": "start_replica",
            "volume": "db",
            "why": "replica process dead, host up",
        }
    ]
    assert "data is gone" in p["report"][0]["found"][0]


def test_unreachable_replica_host_not_moved_by_default_but_relocated_on_request():
    f = facts()
    del f["h3"]
    d = {"db": doc(("RW", "RW", "ERR"))}
    p = H.plan([VOL], NODES, f, {"h3": "no route"}, d, {})
    assert p["actions"] == [] and "stays with its disk" in p["report"][0]["did"][0]
    p = H.plan([VOL], NODES, f, {"h3": "no route"}, d, {}, relocate=True)
    (a,) = p["actions"]
    assert a == {
        "host": "h4",
        "action": "start_replica",
        "volume": "db",
        "why": "relocated from unreachable h3",
        "replaces": "h3",
    }  # the only live eligible host without a replica of db
    assert p["volumes"][0]["replica_nodes"] == ["h1", "h2", "h4"]


def test_health_row_marks_replicas_of_dead_hosts_unreachable():
    row = H.volume_health(
        VOL,
        doc(("RW", "RW", "ERR")),
        None,
        {"h3": "x"},
        {n["name"]: n["address"] for n in NODES},
        "h4",
    )
    assert [r["mode"] for r in row["replicas"]] == ["RW", "RW", "unreachable"] and row["degraded"]
    row = H.volume_health(VOL, None, "refused", {}, {n["name"]: n["address"] for n in NODES}, "h4")
    assert row["state"] == "unreachable" and {r["mode"] for r in row["replicas"]} == {"unknown"}


def test_two_live_controllers_the_higher_epoch_wins_over_a_stale_state_file():
    # the run that moved the controller to h3 died before recording it: the state file still says
    # h4; h4 comes back with its old controller (epoch 3) while h3 serves with epoch 4
    f = facts(ctl="h3", portal_on=("h3", "h4"))
    f["h4"]["controllers"] = f["h4"]["controllers_running"] = ["db"]
    f["h3"]["controller_status"] = {"db": {"state": "serving", "epoch": 4}}
    f["h4"]["controller_status"] = {"db": {"state": "serving", "epoch": 3}}
    stale_state = {"db": {"controller": "h4", "replicas": ["h1", "h2", "h3"]}}
    p = H.plan([VOL], NODES, f, {}, {"db": doc()}, stale_state)
    assert p["state"]["db"]["controller"] == "h3"
    assert {(a["host"], a["action"]) for a in p["actions"]} == {
        ("h4", "fence_controller"),
        ("h3", "announce_portal"),
    }
    # a fenced or silent controller never wins, whatever its epoch
    f["h4"]["controller_status"] = {"db": {"state": "fenced", "epoch": 9}}
    p = H.plan([VOL], NODES, f, {}, {"db": doc()}, stale_state)
    assert p["state"]["db"]["controller"] == "h3"
    # no status from either host (older node_state): the state file decides, as before
    for h in ("h3", "h4"):
        del f[h]["controller_status"]
    p = H.plan([VOL], NODES, f, {}, {"db": doc()}, stale_state)
    assert p["state"]["db"]["controller"] == "h4"


def test_fenced_answer_through_a_shared_portal_does_not_restart_a_serving_controller():
    # h4 came back holding the portal too; the portal API answered from h4 (fenced); h3's own
    # controller serves: h3 is left alone, h4 is fenced
    f = facts(ctl="h3", portal_on=("h3", "h4"))
    f["h4"]["controllers"] = f["h4"]["controllers_running"] = ["db"]
    f["h3"]["controller_status"] = {"db": {"state": "serving", "epoch": 4}}
    f["h4"]["controller_status"] = {"db": {"state": "fenced", "epoch": 3}}
    state = {"db": {"controller": "h3", "replicas": ["h1", "h2", "h3"]}}
    p = H.plan([VOL], NODES, f, {}, {"db": doc(state="fenced")}, state)
    assert {(a["host"], a["action"]) for a in p["actions"]} == {
        ("h4", "fence_controller"),
        ("h3", "announce_portal"),
    }


def test_host_lost_between_probe_and_host_check_counts_as_down():
    # h4 answered the probe, then its link went down: Ansible registered an unreachable result
    # instead of the facts; no repair may be planned on it, the controller moves instead
    f = facts()
    f["h4"] = {"unreachable": True, "changed": False, "msg": "Data could not be sent"}
    for d in (None, doc()):  # the API answer was read before h4 went away: it proves nothing
        p = H.plan([VOL], NODES, f, {}, {"db": d}, {})
        (a,) = p["actions"]
        assert a["action"] == "start_controller" and a["host"] != "h4"
        assert "lost during this run" in p["report"][0]["found"][0]
