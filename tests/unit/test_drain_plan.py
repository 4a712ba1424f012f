"""Unit tests of the drain plan (collection module_utils jiva_drain, behind playbooks/drain.yml):
where replicas, witnesses and controllers of a drained host go, the refusals that come before
anything is touched, the drained list in the HA state file (kept by failover runs), and that the
end state is what site.yml places from it (so a later site.yml moves nothing back)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_drain as D  # noqa: E402
from ansible_collections.jiva.storage.plugins.module_utils import jiva_ha as H  # noqa: E402
from ansible_collections.jiva.storage.plugins.module_utils import (  # noqa: E402
    jiva_placement as P,
)

ADDR = {f"h{i}": f"10.0.0.{i}" for i in range(1, 7)}


def nodes(n: int = 4) -> list[dict]:
    return [{"name": f"h{i}", "address": ADDR[f"h{i}"], "eligible": True} for i in range(1, n + 1)]


def volumes() -> list[dict]:
    return [
        {"name": "ha3", "size": "32M", "replicas": 3, "portal": "10.0.0.101"},
        {"name": "ha2", "size": "8M", "replicas": 2, "portal": "10.0.0.102"},
    ]


def deployed(n: int = 4, vols: list[dict] | None = None) -> list[dict]:
    """The volumes as site.yml places them on a fresh cluster."""
    return P.place(nodes(n), vols or volumes())


def doc_of(v: dict, modes: dict | None = None, state: str = "serving") -> dict:
    modes = modes or {}
    return {
        "state": state,
        "degraded": False,
        "replicas": [
            {"address": a, "mode": modes.get(h, "RW")}
            for h, a in zip(v["replica_nodes"], v["replica_addresses"], strict=True)
        ],
        "witnesses": [{"address": v["witness_address"], "state": "ok"}] if v["witness"] else [],
    }


def node_state(placed: list[dict], n: int = 4, down: tuple[str, ...] = ()) -> dict:
    out = {}
    for h in [f"h{i}" for i in range(1, n + 1)]:
        if h in down:
            continue
        reps = [v["name"] for v in placed if h in v["replica_nodes"]]
        ctls = [v["name"] for v in placed if v["controller"] == h]
        wits = [v["name"] for v in placed if v["witness"] == h]
        out[h] = {
            "revision": "r1" if reps or ctls or wits else "",
            "replicas": reps, "replicas_running": reps, "replica_data": reps,
            "controllers": ctls, "controllers_running": ctls,
            "witnesses": wits, "witnesses_running": wits, "witness_data": wits,
            "portals": [],
        }  # fmt: skip
    return out


def plan(host: str, placed: list[dict], down: tuple[str, ...] = (), n: int = 4, **kw) -> dict:
    docs = {v["name"]: (None if v["controller"] in down else doc_of(v)) for v in placed}
    docs.update(kw.pop("docs", {}))
    return D.drain_plan(
        host,
        kw.pop("vols", volumes()),
        nodes(n),
        node_state(placed, n, down),
        {h: "timed out" for h in down},
        docs,
        {},
        **kw,
    )


def controller_host_of(placed: list[dict], name: str) -> str:
    return next(v["controller"] for v in placed if v["name"] == name)


def test_live_host_with_replica_and_controller_moves_everything_off():
    placed = deployed()
    ha3 = placed[0]
    host = ha3["controller"]
    assert host in ha3["replica_nodes"]  # (placement puts the controller beside a replica)
    p = plan(host, placed)
    assert p["node_live"] and p["drained"] == [host]
    entry = next(e for e in p["volumes"] if e["name"] == "ha3")
    (free,) = {"h1", "h2", "h3", "h4"} - set(ha3["replica_nodes"])
    assert [r["host"] for r in entry["new_replicas"]] == [free]
    assert [r["host"] for r in entry["removed_replicas"]] == [host]
    assert entry["move_controller"] and entry["controller_to"] != host
    # the controller is (re)started with today's replicas; the final list drops the drained host
    assert host in entry["interim"]["replica_nodes"]
    assert host not in entry["final"]["replica_nodes"] and free in entry["final"]["replica_nodes"]
    acts = {(a["action"], a["host"]) for a in p["actions"] if a["volume"] == "ha3"}
    assert ("stop_controller", host) in acts and ("start_replica", free) in acts
    for v in p["final"]:
        assert host not in v["replica_nodes"] and v["controller"] != host and v["witness"] != host


def test_final_layout_is_what_site_yml_places_afterwards():
    """site.yml finds the services where the drain left them and must place them the same way
    (same replica order: the controller's --replica list), with the host drained ineligible."""
    placed = deployed()
    for host in ("h1", "h2", "h3", "h4"):
        p = plan(host, placed)
        after = [dict(n, eligible=n["name"] != host) for n in nodes()]
        existing = {
            v["name"]: {"replicas": v["replica_nodes"], "controller": v["controller"], "witness": v["witness"]}
            for v in p["final"]
        }  # fmt: skip
        again = {v["name"]: v for v in P.place(after, volumes(), existing)}
        for v in p["final"]:
            w = again[v["name"]]
            assert w["replica_addresses"] == v["replica_addresses"], host
            assert (w["witness"], w["controller"]) == (v["witness"], v["controller"]), host


def test_unreachable_host_controller_moves_replicas_rebuilt_from_survivors():
    placed = deployed()
    host = placed[0]["controller"]
    p = plan(host, placed, down=(host,))
    assert not p["node_live"]
    entry = next(e for e in p["volumes"] if e["name"] == "ha3")
    assert entry["move_controller"] and entry["controller_to"] != host
    assert not any(a["host"] == host for a in p["actions"])  # nothing is done on the lost host


def test_witness_on_drained_host_moves_and_controller_restarts_with_it():
    placed = deployed()
    ha2 = placed[1]
    host = ha2["witness"]
    p = plan(host, placed)
    entry = next(e for e in p["volumes"] if e["name"] == "ha2")
    assert entry["witness_to"] not in (None, host) + tuple(ha2["replica_nodes"])
    if entry["controller_from"] != host:
        assert entry["restart_controller"]
        assert entry["interim"]["witness"] == entry["witness_to"]


def test_refusals_name_the_problem():
    placed = deployed(3)
    with pytest.raises(D.DrainRefused, match="unknown host 'nope'"):
        plan("nope", placed, n=3)
    with pytest.raises(
        D.DrainRefused,
        match="volume 'ha3' needs 3 replicas but only 2 eligible nodes would remain .*add a node first",
    ):
        plan("h1", placed, n=3)
    placed4 = deployed()
    pinned = volumes()
    pinned[0]["controller"] = "h2"
    with pytest.raises(D.DrainRefused, match="pinned to h2.*remove the pin"):
        plan("h2", placed4, vols=pinned)


def test_degraded_volume_refused_unless_the_degraded_part_is_on_the_host():
    placed = deployed()
    ha3 = placed[0]
    a, b = ha3["replica_nodes"][0], ha3["replica_nodes"][1]
    docs = {"ha3": doc_of(ha3, {b: "WO"})}
    with pytest.raises(D.DrainRefused, match="volume 'ha3' is degraded: its replica .* is WO"):
        plan(a, placed, docs=docs)
    p = plan(b, placed, docs=docs)  # the rebuilding replica is the one leaving
    assert any(e["name"] == "ha3" for e in p["volumes"])
    with pytest.raises(
        D.DrainRefused, match=f"volume 'ha3' is degraded: {b} .* is unreachable too"
    ):
        plan(a, placed, down=(b,))


def test_state_file_keeps_drained_across_failover_writes(tmp_path):
    path = str(tmp_path / "state.json")
    placed = deployed()
    params = {
        "host": "h4", "undrain": False, "volumes": volumes(), "nodes": nodes(),
        "replica_port_base": 9700, "api_port_base": 9800, "node_state": node_state(placed),
        "hosts_down": {}, "docs": {v["name"]: doc_of(v) for v in placed}, "state_file": path,
    }  # fmt: skip
    r = D.make_drain(params, check_mode=False)
    assert r["changed"] and H.load_drained(path) == ["h4"]
    assert not D.make_drain(params, check_mode=False)["changed"]  # again: nothing new
    # a failover run writes `volumes` and keeps `drained`
    H.save_state_doc(path, {"volumes": {"ha3": {"controller": "h1"}}})
    doc = json.loads(Path(path).read_text())
    assert doc["drained"] == ["h4"] and doc["volumes"]["ha3"]["controller"] == "h1"
    r = D.make_drain(dict(params, undrain=True), check_mode=False)
    assert r["changed"] and H.load_drained(path) == []
    assert H.load_drained(str(tmp_path / "none.json")) == []


def test_site_yml_keeps_the_moved_controller_and_witness_when_the_drained_host_returns():
    """A drained host that comes back still has the configs of the controller and the witness
    that moved off it: site.yml's placement keeps the ones on eligible hosts (the real ones)."""
    placed = deployed()
    ha2 = placed[1]
    host = ha2["witness"]  # ha2's witness host; make it hold ha2's controller config too
    others = [h for h in ("h1", "h2", "h3", "h4") if h not in ha2["replica_nodes"] and h != host]
    services = {h: [] for h in ("h1", "h2", "h3", "h4")}
    for h in ha2["replica_nodes"]:
        services[h].append("replica-ha2.env")
    services[host] += ["witness-ha2.env", "controller-ha2.env"]  # stale, on the drained host
    services[others[0]] += ["witness-ha2.env", "controller-ha2.env"]  # where the drain put them
    existing = P.parse_existing_services(services)
    after = [dict(n, eligible=n["name"] != host) for n in nodes()]
    again = P.place(after, volumes()[1:], existing)[0]
    assert (again["witness"], again["controller"]) == (others[0], others[0])


def test_a_moved_controller_prefers_a_host_that_has_the_engine():
    """The free host of a 4-host cluster runs nothing (no engine yet, as far as the play knows):
    the controller of the drained host goes to a host with services, the new replica there."""
    placed = deployed()
    host = placed[0]["controller"]
    p = plan(host, placed, down=(host,))
    entry = next(e for e in p["volumes"] if e["name"] == "ha3")
    (fresh,) = [h for h, st in node_state(placed).items() if not st["revision"]]
    assert [r["host"] for r in entry["new_replicas"]] == [fresh]
    assert entry["controller_to"] not in (host, fresh)
