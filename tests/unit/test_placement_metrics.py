"""Metrics ports of replicas and witnesses: derived from the replica port (as stable as it), every
endpoint listed, clashes refused."""

from __future__ import annotations

import pytest

from tests.unit.test_placement import P, nodes, vol


def plan(volumes, base=9900, **kw):
    return P.plan_volumes(nodes(3), volumes, metrics_port_base=base, **kw)["volumes"]


def test_metrics_port_follows_the_replica_port_and_lists_every_endpoint():
    a, b = plan([vol("a"), vol("bb", 2)])
    assert (a["replica_port"], a["metrics_port"]) == (9700, 9900)
    assert (b["replica_port"], b["metrics_port"]) == (9701, 9901)
    assert len(a["replica_metrics"]) == 3 and all(m.endswith(":9900") for m in a["replica_metrics"])
    assert [m.rsplit(":", 1)[0] for m in a["replica_metrics"]] == [
        r.rsplit(":", 1)[0] for r in a["replica_addresses"]
    ]
    assert b["witness"] and b["witness_metrics"] == b["witness_address"].replace(":9701", ":9901")
    # a volume removed before it: the others keep their replica ports, so their metrics ports too
    (b2,) = plan([vol("bb", 2)], recorded_ports={"bb": {"replica_port": 9701, "api_port": 9801}})
    assert b2["metrics_port"] == 9901
    # an explicit replica port moves its metrics port with it
    (c,) = plan([vol("c", replica_port=12000)])
    assert c["metrics_port"] == 12200
    assert P.metrics_port(9705, 9900, 9700) == 9905


def test_metrics_off_and_clashes():
    (a,) = plan([vol("a")], base=0)
    assert a["metrics_port"] is None and a["replica_metrics"] == [] and a["witness_metrics"] is None
    with pytest.raises(P.PlacementError, match=r"metrics port 9900 .* replica_port"):
        plan([vol("a"), vol("bb", replica_port=9900)])
    with pytest.raises(P.PlacementError, match="jiva_metrics_port_base"):
        plan([vol("a")], base=70000)
    with pytest.raises(P.PlacementError, match="not a TCP port"):
        plan([vol("a", replica_port=100)], base=50)
