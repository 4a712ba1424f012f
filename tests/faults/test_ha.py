"""The four HA scenarios on 4 test hosts with a 3-replica volume deployed by site.yml, while a
checking iSCSI workload writes through the portal address: supervisor restarts for process
crashes, the `jiva ha watch` loop + failover.yml for host loss, the stale controller host."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.faults.ha_harness import (
    VOLUME,
    VOLUME2,
    BackgroundWorkload,
    Cluster,
    deployed,
    eventually,
    no_workload_outlives_its_test,  # noqa: F401 - autouse fixture
)
from tests.sandbox import needs_root

pytestmark = [pytest.mark.hosts, needs_root]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One deployed cluster for the whole module (torn down at the end, also on failure)."""
    with deployed(tmp_path_factory.mktemp("ha"), hosts=4) as c:
        yield c


def run_scenario(cluster: Cluster, inject, recovered) -> tuple[dict, float, int]:
    """Workload on; inject; wait for `recovered()` and 200 more acknowledged writes; verify every
    block; return (stats, gap, errors)."""
    wl = BackgroundWorkload(cluster.portal_host, 3260, history=cluster.history)
    wl.start()
    wl.wait_acks(50)
    t0 = time.monotonic()
    inject()
    recovered()
    t1 = wl.wait_acks(200, timeout=120)
    gap, errors = wl.gap(t0, t1), wl.errors_between(t0, t1)
    stats = wl.stop_and_verify()
    assert stats["violations"] == [], stats["violations"][:10]
    assert stats["verified"] > 0
    return stats, gap, errors


def test_health_play_reports_healthy_table_and_json(cluster, tmp_path):
    out = tmp_path / "health.json"
    r = cluster.play(
        "health.yml", "-e", f"jiva_health_file={out}", "-e", "jiva_fail_on_degraded=true"
    )
    assert r.rc == 0, r.output[-3000:]
    doc = json.loads(out.read_text())
    row = next(r for r in doc["volumes"] if r["volume"] == VOLUME)
    assert len(doc["volumes"]) == 2 and doc["degraded"] == []
    assert row["volume"] == VOLUME and row["state"] == "serving" and row["degraded"] is False
    assert row["controller_host"] == "h4"
    assert sorted(x["host"] for x in row["replicas"]) == ["h1", "h2", "h3"]
    assert {x["mode"] for x in row["replicas"]} == {"RW"}
    assert "volume" in r.output and "h1:RW" in r.output
    # failover on a healthy cluster changes nothing
    again = cluster.play("failover.yml")
    assert again.rc == 0 and again.changed() == 0, again.output[-3000:]
    assert "healthy" in again.output


def test_scenario1_controller_process_crash(cluster):
    old = cluster.child_pid("h4", "controller")
    stats, gap, errors = run_scenario(
        cluster,
        lambda: cluster.kill_child("h4", "controller"),
        lambda: cluster.wait_healthy(60),
    )
    assert cluster.child_pid("h4", "controller") != old  # the supervisor restarted it
    assert cluster.controller_host() == "h4"
    print(f"\nscenario 1 (controller kill -9): gap {gap:.2f}s, failed writes {errors}, {stats}")
    assert gap < 3.0
    cluster.assert_identical()


def test_scenario3_replica_process_crash(cluster):
    old = cluster.child_pid("h2", "replica")
    stats, gap, errors = run_scenario(
        cluster, lambda: cluster.kill_child("h2", "replica"), cluster.caught_up("h2")
    )
    assert cluster.child_pid("h2", "replica") != old
    st = cluster.status()
    r2 = next(r for r in st["replicas"] if r["address"].startswith(cluster.sb.address("h2")))
    assert r2["last_rebuild"]["kind"] == "incremental", r2
    print(
        f"\nscenario 3 (replica kill -9): gap {gap:.2f}s, failed writes {errors}, rebuild {r2['last_rebuild']}"
    )
    assert errors == 0
    cluster.assert_identical()


def test_scenario4_replica_host_offline_catches_up(cluster):
    size = cluster.status()["size"]
    down_for = 30.0  # "a replica host that returns after 30 s of writes"

    def inject():
        cluster.sb.link("h3", False)
        time.sleep(down_for)
        cluster.sb.link("h3", True)

    stats, gap, errors = run_scenario(cluster, inject, cluster.caught_up("h3"))
    st = cluster.status()
    r3 = next(r for r in st["replicas"] if r["address"].startswith(cluster.sb.address("h3")))
    lr = r3["last_rebuild"]
    print(
        f"\nscenario 4 (replica host link down {down_for}s): gap {gap:.2f}s, failed writes {errors}, rebuild {lr}"
    )
    assert errors == 0
    assert gap < 2.5
    assert lr["kind"] == "incremental" and 0 < lr["copied"] < size // 2, lr
    cluster.assert_identical()


# opt-in (-m slow): the same scenario, the controller's host lost under writes, `jiva ha watch`
# moving the controller and the portal, the stale host fenced and unconfigured when it returns, is
# proven in the default suite by tests/faults/test_ha3.py::test_controller_host_link_down_then_back
# (the harder layout: that host also holds a replica of each volume) and, for the plan, by
# tests/faults/test_ha_plan.py::test_unreachable_controller_host_moves_controller_and_fences_when_back
@pytest.mark.slow
def test_scenario2_controller_host_offline_and_stale_host(cluster):
    cluster.start_watch()
    try:
        cluster.wait_watch_run(1)  # the watch loop's first run (nothing to do) is over

        def inject():
            cluster.sb.link("h4", False)

        def moved():
            h = cluster.controller_host()
            st = cluster.status()
            return h not in (None, "h4") and st and st["state"] == "serving"

        def recovered():
            eventually(moved, 60, "controller moved", detail=lambda: cluster.watch_log()[-4000:])

        wl_stats, gap, errors = run_scenario(cluster, inject, recovered)
        new = [h for h in cluster.portal_holders() if h != "h4"]
        assert len(new) == 1, cluster.portal_holders()
        print(
            f"\nscenario 2 (controller host link down): gap {gap:.2f}s, failed writes {errors}, moved to {new[0]}"
        )
        # the stale host comes back: it must not serve, and it loses the portal on the next run
        before = cluster.status()
        wl = BackgroundWorkload(cluster.portal_host, 3260, seed=9, history=cluster.history)
        wl.start()
        cluster.sb.link("h4", True)
        # a run still busy with the move (waiting for both volumes to serve) finishes first
        eventually(
            lambda: "h4" not in cluster.portal_holders(),
            120,
            "h4 lost the portal address",
            interval=0.5,
            detail=lambda: cluster.watch_log()[-4000:],
        )
        wl.wait_acks(100)
        stats = wl.stop_and_verify()
        assert stats["violations"] == []
        after = cluster.status()
        assert after["epoch"] >= before["epoch"]
        out = cluster.sb.ssh("h4", "ls /etc/jiva; ls /run/jiva", check=False).stdout
        assert f"controller-{VOLUME}.env" not in out, out
    finally:
        cluster.stop_watch()
    cluster.wait_healthy(60)
    cluster.assert_identical()
    # target 10 s (docs/HA.md): the play run dominates; on this 2-core machine under parallel test
    # load it alone takes ~15 s, so the test bounds the gap at 30 s and prints the figure
    assert gap < 30.0


def qemu_io(portal: str, command: str) -> str:
    url = f"iscsi://{portal}/iqn.2026-11.org.jiva-py:{VOLUME2}/0"
    p = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", command, url], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "failed" not in p.stdout.lower(), p.stdout + p.stderr
    return p.stdout


def test_two_replica_volume_loses_a_host_then_controller_restarts(cluster):
    """ENGINE.md policy (2 replicas + the witness site.yml placed): the survivor and the witness
    are a majority, so the volume keeps serving; a restarted controller serves from the survivor;
    the returning replica catches up from it."""
    c = cluster
    qemu_io(c.portal2, "write -P 0x11 0 1M")
    c.sb.link("h2", False)
    try:
        qemu_io(c.portal2, "write -P 0x22 1M 1M")  # served by the survivor alone
        st = c.status(c.api2)
        assert st["state"] == "serving" and st["degraded"] is True
        h2 = next(r for r in st["replicas"] if r["address"].startswith(c.sb.address("h2") + ":"))
        assert h2["mode"] == "ERR"
        c.kill_child(c.controller_host(c.vol2), "controller", VOLUME2)
        # restarted on the survivor's membership (with the witness: a majority of the voters)
        eventually(
            lambda: (c.status(c.api2) or {}).get("state") == "serving", 30, f"{VOLUME2} serving"
        )
        qemu_io(c.portal2, "read -P 0x22 1M 1M")
        qemu_io(c.portal2, "write -P 0x33 2M 1M")
    finally:
        c.sb.link("h2", True)
    c.wait_healthy(60, c.vol2)
    qemu_io(c.portal2, "read -P 0x11 0 1M")
    qemu_io(c.portal2, "read -P 0x33 2M 1M")
    c.assert_identical(c.vol2)
