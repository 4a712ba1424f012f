"""Unit tests of stable ports, volume removal (state: absent, unlisted volumes) and placement with
hosts down (jiva_placement.plan_volumes): the pure logic behind site.yml's placement step."""

from __future__ import annotations

import pytest

from tests.unit.test_placement import P, existing_of, nodes, vol


def plan(vols, n=3, **kw):
    return P.plan_volumes(nodes(n), vols, kw.pop("existing", None), **kw)


def ports_of(result) -> dict:
    return {v["name"]: (v["replica_port"], v["api_port"]) for v in result["volumes"]}


def three():
    return [vol("a", portal="10.9.9.1"), vol("b", portal="10.9.9.2"), vol("c", portal="10.9.9.3")]


def test_new_volumes_get_base_plus_index_like_before_ports_were_recorded():
    r = plan(three())
    assert ports_of(r) == {"a": (9700, 9800), "b": (9701, 9801), "c": (9702, 9802)}
    assert r["ports"] == {
        "a": {"replica_port": 9700, "api_port": 9800},
        "b": {"replica_port": 9701, "api_port": 9801},
        "c": {"replica_port": 9702, "api_port": 9802},
    }
    assert r["volumes"][1]["api"] == "10.9.9.2:9801"
    assert r["volumes"][1]["port_source"] == {"replica_port": "assigned", "api_port": "assigned"}


def test_removing_or_reordering_volumes_moves_no_port():
    record = plan(three())["ports"]
    a, b, c = three()
    # b removed from the middle (its entry marked absent, then gone), the list reordered
    gone = plan([a, dict(b, state="absent"), c], recorded_ports=record)
    assert ports_of(gone) == {"a": (9700, 9800), "c": (9702, 9802)}
    assert [x["name"] for x in gone["removed"]] == ["b"]
    # while b's entry is listed as absent its ports stay taken: a new volume gets others
    d = vol("d", portal="10.9.9.4")
    busy = plan([a, dict(b, state="absent"), c, d], recorded_ports=gone["ports"])
    assert ports_of(busy)["d"] == (9703, 9803)
    assert busy["ports"]["b"] == {"replica_port": 9701, "api_port": 9801, "state": "absent"}
    # once b's entry is gone (and nothing of it runs) its ports are free again
    later = plan([c, a, d], recorded_ports=gone["ports"])
    assert ports_of(later) == {"c": (9702, 9802), "a": (9700, 9800), "d": (9701, 9801)}
    assert "b" not in later["ports"]
    assert later["volumes"][0]["port_source"]["replica_port"] == "recorded"


def test_running_services_are_the_authority_when_the_record_is_lost():
    # deployed with position-derived ports, then the middle volume left the list: no state file
    a, _b, c = three()
    running = P.running_ports(
        {
            "n1": {"a": {"replica_port": 9700}, "c": {"replica_port": 9702, "api_port": 9802}},
            "n2": {"a": {"replica_port": 9700, "api_port": 9800}, "c": {"replica_port": 9702}},
        }
    )
    r = plan([a, c], running=running)
    assert ports_of(r) == {"a": (9700, 9800), "c": (9702, 9802)}
    assert r["volumes"][1]["port_source"] == {"replica_port": "running", "api_port": "running"}
    # running beats a (stale) record; an explicit port beats both
    stale = {"c": {"replica_port": 9990, "api_port": 9991}}
    assert ports_of(plan([a, c], running=running, recorded_ports=stale))["c"] == (9702, 9802)
    r = plan([a, dict(c, replica_port=9950)], running=running, recorded_ports=stale)
    assert ports_of(r)["c"] == (9950, 9802)


def test_hosts_that_disagree_on_a_port():
    by_host = {
        "n1": {"v": {"replica_port": 9705}},
        "n2": {"v": {"replica_port": 9701}},
        "n3": {"v": {"replica_port": 9701, "portal_host": "10.9.9.9"}},
    }
    assert P.running_ports(by_host) == {"v": {"replica_port": 9701, "portal_host": "10.9.9.9"}}
    recorded = {"v": {"replica_port": 9705}}
    assert P.running_ports(by_host, recorded)["v"]["replica_port"] == 9705


@pytest.mark.parametrize(
    ("vols", "kw", "message"),
    [
        (
            [vol("a"), vol("bb", portal="10.9.9.7", replica_port=9700)],
            {"recorded_ports": {"a": {"replica_port": 9700, "api_port": 9800}}},
            "port clash: jiva_volumes[1] (volume 'bb') replica_port 9700 is also the replica_port "
            "of volume 'a'",
        ),
        (
            [vol("bb", portal="10.9.9.7", replica_port=9700), vol("a")],
            {"recorded_ports": {"a": {"replica_port": 9700, "api_port": 9800}}},
            "port clash: jiva_volumes[1] (volume 'a') replica_port 9700 (recorded in the HA state "
            "file) is also the replica_port of volume 'bb'",
        ),
        ([vol("a", state="gone")], {}, "jiva_volumes[0] (volume 'a').state must be 'present' or"),
        ([vol("a", delete_data=True)], {}, "jiva_volumes[0] (volume 'a').delete_data is true but"),
        ([vol("a", state="absent", delete_data="yes")], {}, "delete_data must be true or false"),
        ([vol("a")], {"replica_port_base": 0}, "jiva_replica_port_base must be between"),
    ],
)
def test_bad_ports_and_removals_name_the_variable(vols, kw, message):
    with pytest.raises(P.PlacementError) as err:
        plan(vols, **kw)
    assert message in str(err.value)


def test_absent_volumes_are_removed_with_or_without_their_data():
    r = plan(
        [vol("a", state="absent"), vol("b", portal="10.9.9.2", state="absent", delete_data=True)],
        recorded_ports={"a": {"replica_port": 9700, "api_port": 9800}},
    )
    assert r["volumes"] == []
    assert r["removed"] == [
        {"name": "a", "index": 0, "listed": True, "portal_host": "10.9.9.1",
         "replica_port": 9700, "api_port": 9800, "delete_data": False},
        {"name": "b", "index": 1, "listed": True, "portal_host": "10.9.9.2",
         "replica_port": None, "api_port": None, "delete_data": True},
    ]  # fmt: skip
    assert r["ports"] == {"a": {"replica_port": 9700, "api_port": 9800, "state": "absent"}}


def test_volumes_that_run_but_are_not_listed_are_refused_or_removed_on_request():
    placed = P.place(nodes(3), three())
    existing = existing_of(placed)
    a, _b, c = three()
    with pytest.raises(P.PlacementError) as err:
        plan([a, c], existing=existing, unlisted="refuse")
    msg = str(err.value)
    assert "volumes run that are not in jiva_volumes: volume 'b' on n" in msg, msg
    assert "'state: absent'" in msg and "jiva_remove_unlisted_volumes=true" in msg, msg
    with pytest.raises(P.PlacementError, match="jiva_volumes lists no volume but volumes run"):
        plan([], existing=existing, unlisted="refuse")
    # listed as absent: fine
    assert plan([a, dict(_b, state="absent"), c], existing=existing, unlisted="refuse")["removed"]
    # on request: removed, data kept, its ports still taken in this run
    running = {"b": {"replica_port": 9701, "api_port": 9801, "portal_host": "10.9.9.2"}}
    d = vol("d", portal="10.9.9.4")
    r = plan([a, c, d], existing=existing, unlisted="remove", running=running)
    assert [(x["name"], x["listed"], x["delete_data"], x["portal_host"]) for x in r["removed"]] == [
        ("b", False, False, "10.9.9.2")
    ]
    assert ports_of(r)["d"] == (9703, 9803)
    # nothing runs anywhere: an empty list is fine
    assert plan([], unlisted="refuse")["volumes"] == []


def live_view(placed, down):
    """What reachable hosts report (existing) when the hosts in `down` cannot be asked."""
    out = {}
    for v in placed:
        out[v["name"]] = {
            "replicas": [n for n in v["replica_nodes"] if n not in down],
            "controller": v["controller"] if v["controller"] not in down else None,
            "witness": v["witness"] if v["witness"] not in down else None,
        }
    return out


@pytest.mark.parametrize("with_record", [True, False])
@pytest.mark.parametrize("n", [3, 4, 5])
def test_a_down_host_keeps_what_it_runs(n, with_record):
    vols = [vol(f"v{i}", replicas=2 + i % 2, portal=f"10.9.9.{i}") for i in range(12)]
    # the steady state: what every later run places (the replicas in rendezvous order)
    placed = P.place(nodes(n), vols, existing_of(P.place(nodes(n), vols)))
    record = P.layout_record(placed)
    for down in [f"n{i}" for i in range(1, n + 1)]:
        again = P.place(
            nodes(n),
            vols,
            live_view(placed, {down}),
            down=[down],
            layout=record if with_record else None,
        )
        for before, after in zip(placed, again, strict=True):
            assert after["replica_nodes"] == before["replica_nodes"], (down, before["name"])
            assert len(set(after["replica_nodes"])) == len(after["replica_nodes"])
            assert after["controller"] == before["controller"], (down, before["name"])
            assert after["witness"] == before["witness"], (down, before["name"])


def test_new_parts_go_to_reachable_hosts_while_a_host_is_down():
    placed = P.place(nodes(4), [vol("old", replicas=2)])
    record = P.layout_record(placed)
    for down in ["n1", "n2", "n3", "n4"]:
        new = P.place(
            nodes(4),
            [vol("old", replicas=2), vol("new", replicas=3, portal="10.9.9.8")],
            live_view(placed, {down}),
            down=[down],
            layout=record,
        )[1]
        assert down not in new["replica_nodes"] and new["controller"] != down


def test_two_controller_configs_the_recorded_one_wins():
    # n1 was cut off, failover.yml started the controller on n2 and recorded it; n1 is back with
    # its old config: the controller stays on n2 (site.yml then removes n1's)
    services = {"n1": ["controller-v.env", "replica-v.env"], "n2": ["controller-v.env"]}
    existing = P.parse_existing_services(services)
    layout = {"v": {"controller": "n2", "replicas": ["n1", "n2", "n3"], "witness": None}}
    for record, want in ((layout, "n2"), (None, existing["v"]["controller"])):
        assert P.place(nodes(3), [vol("v")], existing, layout=record)[0]["controller"] == want
