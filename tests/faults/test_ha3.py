"""HA on 3 test hosts with the controllers beside replicas (the quorum rules, docs/ENGINE.md Q1-Q9).

One cluster for the module, deployed by the real site.yml: volume ha3 (3 replicas on h1-h3) and
volume ha2 (2 replicas on h1, h2; its witness lands on h3), BOTH controllers pinned on h1, which
holds a replica of each. Under checking workloads (torture blocks: LBA, sequence, CRC; every
acknowledged write must read back at its latest version) through each volume's portal:
- h1 drops off the network (link down): `jiva ha watch` + failover.yml serve both volumes from
  h2/h3 at once (a majority of the voters that includes a current member answers), a long-lived
  qemu-io session (libiscsi) on ha3 keeps writing through the same portal and reconnects by
  itself; when h1 returns its stale controllers are fenced and removed, its replicas catch up;
- site.yml puts the controllers back on their pinned host h1 (a planned move under writes);
- h1 is partitioned (blackhole: it keeps its local replica and its controllers keep running):
  the controllers on h1 hold I/O (`no quorum`) and acknowledge nothing, new controllers on h2/h3
  win; after healing the old ones are fenced and h1's replicas catch up incrementally.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.faults.ha_harness import (
    QEMU_OFFSET,
    Cluster,
    QemuIoSession,
    deployed,
    eventually,
    longest_gap,
    no_workload_outlives_its_test,  # noqa: F401 - autouse fixture
)
from tests.sandbox import needs_root

pytestmark = [pytest.mark.hosts, needs_root]

GAP_BOUND = 30.0  # s; target 10 s (docs/HA.md), bounded loosely: the play dominates under load
QEMU: dict = {}  # what the link-down test's qemu-io session saw


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One deployed 3-host cluster for the whole module (torn down at the end, also on failure)."""
    with deployed(tmp_path_factory.mktemp("ha3"), hosts=3) as c:
        yield c


class StaleControllers:
    """What the controllers left behind on a host (`old`) say about themselves, read from inside
    that host's network namespace, until failover.yml has removed them.

    Only answers of the old controllers count: their term is below the new controller's (the
    address may already lead elsewhere once the host lost it)."""

    def __init__(self, c: Cluster, old: str, new_terms: dict[str, int]) -> None:
        self.c, self.old, self.new_terms = c, old, new_terms
        self.seen: dict[str, list[str]] = {v.name: [] for v in c.vols}

    def sample(self) -> None:
        for v in self.c.vols:
            st = self.c.status_on(self.old, v)
            if (st and st["term"] < self.new_terms[v.name]
                    and (not self.seen[v.name] or self.seen[v.name][-1] != st["state"])):  # fmt: skip
                self.seen[v.name].append(st["state"])

    def wait_gone(self, timeout: float = 120) -> None:
        def check() -> bool:
            self.sample()
            return all(self.c.stale_gone(self.old, v) for v in self.c.vols)

        eventually(check, timeout, f"stale controllers on {self.old} removed", interval=0.3,
                   detail=lambda: f"seen {self.seen}\n{self.c.watch_log()[-4000:]}")  # fmt: skip


def rejoined(c: Cluster, host: str) -> dict[str, dict]:
    """Wait until every volume is healthy; return volume -> last_rebuild of its replica on `host`
    (asserted incremental: it copied what it missed, not the whole volume)."""
    out = {}
    for v in c.vols:
        st = c.wait_healthy(120, v)
        lr = c.replica_of(st, host)["last_rebuild"]
        assert lr and lr["kind"] == "incremental", (v.name, lr)
        assert 0 < lr["copied"] < v.size_mb << 20, (v.name, lr)
        out[v.name] = lr
    return out


def _gaps(wls: dict, t0: float, t1: float) -> dict[str, float]:
    return {name: round(wl.gap(t0, t1), 2) for name, wl in wls.items()}


def _held(held: dict[str, dict]) -> dict[str, tuple]:
    return {name: (st["state"], st["quorum"]["missing"]) for name, st in held.items()}


def check_health(c: Cluster, tmp_path, name: str) -> dict:
    r, doc = c.health(tmp_path / f"{name}.json")
    assert r.rc == 0, r.output[-3000:]
    assert doc["degraded"] == [] and {row["state"] for row in doc["volumes"]} == {"serving"}
    return doc


def test_deployed_with_controllers_beside_replicas(cluster, tmp_path):
    c = cluster
    for v in c.vols:
        assert c.portal_holders(v) == ["h1"], (v.name, c.portal_holders(v))
        assert len(c.controller_procs("h1", v)) == 2, v.name  # its supervisor and the controller
        assert not c.controller_procs("h2", v) and not c.controller_procs("h3", v), v.name
    doc = check_health(c, tmp_path, "deployed")
    rows = {row["volume"]: row for row in doc["volumes"]}
    assert rows["ha3"]["controller_host"] == "h1" and rows["ha2"]["controller_host"] == "h1"
    assert sorted(r["host"] for r in rows["ha3"]["replicas"]) == ["h1", "h2", "h3"]
    assert sorted(r["host"] for r in rows["ha2"]["replicas"]) == ["h1", "h2"]
    assert [(w["host"], w["state"]) for w in rows["ha2"]["witnesses"]] == [("h3", "ok")]
    assert rows["ha3"]["witnesses"] == []
    for row in rows.values():
        assert row["quorum"]["policy"] == "majority" and row["quorum"]["voters"] == 3, row
    assert {
        "controller-ha3.env",
        "controller-ha2.env",
        "replica-ha3.env",
        "replica-ha2.env",
    } <= set(c.configured_on("h1"))
    assert "witness-ha2.env" in c.configured_on("h3")


def test_controller_host_link_down_then_back(cluster, tmp_path):
    """Scenario 2 on 3 hosts: the host with both controllers and a replica of each goes offline."""
    c = cluster
    c.start_watch()
    try:
        c.wait_watch_run(1)  # the watch loop's first run (nothing to do) is over
        terms = {v.name: c.status(v.api)["term"] for v in c.vols}
        wls = {v.name: c.workload(v, seed=11 + i) for i, v in enumerate(c.vols)}
        for wl in wls.values():
            wl.start()
            wl.wait_acks(50)
        qemu = QemuIoSession(c.vol.url, QEMU_OFFSET)
        qemu.start()
        qemu.wait_writes(5)
        t0 = time.monotonic()
        c.sb.link("h1", False)
        new = c.wait_moved_off("h1", terms)
        t_moved = time.monotonic() - t0
        ends = {name: wl.wait_acks(100, timeout=120) for name, wl in wls.items()}
        q_end = qemu.wait_writes(10, timeout=120)
        gaps = _gaps(wls, t0, max(ends.values()))
        failed = {name: wls[name].errors_between(t0, ends[name]) for name in wls}
        pause = longest_gap(qemu.completions(), t0, q_end)
        # ha2's witness host (no data of ha2) is preferred over a replica's host (docs/HA.md)
        assert new["ha2"] == "h3" and new["ha3"] in ("h2", "h3"), new
        new_terms = {v.name: c.status(v.api)["term"] for v in c.vols}

        # h1 comes back with its controllers still running and holding the portal addresses
        stale = StaleControllers(c, "h1", new_terms)
        stale.sample()
        t_back = time.monotonic()
        c.sb.link("h1", True)
        stale.wait_gone()
        for v in c.vols:
            assert c.portal_holders(v) == [new[v.name]], (v.name, c.portal_holders(v))
        lrs = rejoined(c, "h1")
        back_end = time.monotonic()
        stats = {name: wl.stop_and_verify() for name, wl in wls.items()}
        q = qemu.stop_and_verify()
        for v in c.vols:  # (once nothing writes)
            c.assert_identical(v)
    finally:
        c.stop_watch()
    QEMU.update(q, pause=pause, errors_at=[round(t - t0, 2) for t, _ in q["errors"]])
    print(
        f"\n3 hosts, h1 (both controllers + a replica of each) link down: moved to {new} "
        f"(seen serving after {t_moved:.1f} s); gaps {gaps} s, failed (unacknowledged, retried) "
        f"writes {failed}; qemu-io: {q['writes']} writes, longest pause {pause:.2f} s, "
        f"{len(q['errors'])} failed at {QEMU['errors_at']} s "
        f"({sorted({e.splitlines()[0][:90] for _, e in q['errors']})}); "
        f"stale controllers on h1 said {stale.seen}; after h1 came back: gaps "
        f"{_gaps(wls, t_back, back_end)} s, qemu-io pause "
        f"{longest_gap(qemu.completions(), t_back, back_end):.2f} s; "
        f"h1 caught up {lrs}; workloads {stats}"
    )
    for name, s in stats.items():
        assert s["violations"] == [], (name, s["violations"][:10])
        assert s["verified"] > 0
    # the controllers left on h1 never served again: they held I/O (no quorum) and were fenced
    # by the voters' newer term, or stopped by failover.yml first
    for states in stale.seen.values():
        assert "serving" not in states, stale.seen
    # qemu-io (libiscsi) reconnected by itself to the new controller and went on writing: no
    # write failed (I/O is held while the new controller claims the volume), every block reads
    # back with the pattern of its last completed write, qemu-io exited cleanly
    assert q["mismatches"] == [], q["mismatches"]
    logs = c.host_logs(6000) + c.watch_runs()[-6000:]
    assert q["errors"] == [] and q["rc"] == 0, (QEMU["errors_at"], q["errors"][:3], logs)
    assert max(gaps.values()) < GAP_BOUND and pause < GAP_BOUND, (gaps, pause, logs)
    check_health(c, tmp_path, "after-link-down")


def test_site_yml_moves_controllers_back_to_pinned_host(cluster):
    """site.yml puts the controllers back on h1 (pinned), under writes, without losing any."""
    c = cluster
    wls = {v.name: c.workload(v, seed=21 + i) for i, v in enumerate(c.vols)}
    for wl in wls.values():
        wl.start()
        wl.wait_acks(50)
    t0 = time.monotonic()
    r = c.play("site.yml")
    assert r.rc == 0, r.output[-4000:] + c.host_logs()
    for v in c.vols:
        eventually(lambda v=v: c.portal_holders(v) == ["h1"], 30, f"{v.name} portal on h1 only")
        c.wait_healthy(60, v)
        for h in ("h2", "h3"):
            assert not c.stale_gone("h1", v) and c.stale_gone(h, v), (h, v.name)
    ends = [wl.wait_acks(100, timeout=120) for wl in wls.values()]
    gaps = _gaps(wls, t0, max(ends))
    stats = {name: wl.stop_and_verify() for name, wl in wls.items()}
    print(f"\n3 hosts, site.yml moves both controllers back to h1: gaps {gaps} s, {stats}")
    for name, s in stats.items():
        assert s["violations"] == [], (name, s["violations"][:10])


def test_partitioned_controller_host_holds_io_and_is_fenced(cluster, tmp_path):
    """h1 cut off from h2, h3 and the control node (blackhole) while its controllers and its
    replicas keep running: they cannot reach a majority, hold I/O and acknowledge nothing; new
    controllers on h2/h3 win; after healing the old ones are fenced and h1 catches up."""
    c = cluster
    c.start_watch()
    local = None
    try:
        c.wait_watch_run(1)
        terms = {v.name: c.status(v.api)["term"] for v in c.vols}
        wls = {v.name: c.workload(v, seed=31 + i) for i, v in enumerate(c.vols)}
        for wl in wls.values():
            wl.start()
            wl.wait_acks(50)
        t0 = time.monotonic()
        c.sb.blackhole("h1", True)
        try:
            # inside h1 the old controllers lost their quorum: I/O held, the missing voters named
            held = {
                v.name: eventually(
                    lambda v=v: (s := c.status_on("h1", v)) and s["state"] == "no quorum" and s,
                    30,
                    f"controller of {v.name} on h1 in 'no quorum'",
                )
                for v in c.vols
            }
            # a client inside h1 (it still reaches the old controller) gets no acknowledgement
            local = subprocess.Popen(
                ["ip", "netns", "exec", c.sb.host("h1")["netns"], "qemu-io", "-f", "raw",
                 "-c", f"write -P 0x5a {QEMU_OFFSET} 4k", c.vol.url],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
            new = c.wait_moved_off("h1", terms)
            ends = {name: wl.wait_acks(100, timeout=120) for name, wl in wls.items()}
            gaps = _gaps(wls, t0, max(ends.values()))
            # the old controllers still hold I/O (no quorum), they do not serve
            for v in c.vols:
                st = c.status_on("h1", v)
                assert st and st["state"] == "no quorum" and st["term"] == terms[v.name], st
            out, _ = local.communicate(timeout=60)
            local = None
        finally:
            c.sb.blackhole("h1", False)
        t_back = time.monotonic()
        new_terms = {v.name: c.status(v.api)["term"] for v in c.vols}
        stale = StaleControllers(c, "h1", new_terms)
        stale.wait_gone()
        for v in c.vols:
            assert c.portal_holders(v) == [new[v.name]], (v.name, c.portal_holders(v))
        lrs = rejoined(c, "h1")
        back_end = time.monotonic()
        stats = {name: wl.stop_and_verify() for name, wl in wls.items()}
        for v in c.vols:
            c.assert_identical(v)
    finally:
        if local is not None:
            local.kill()
            local.wait()
        c.stop_watch()
    print(
        f"\n3 hosts, h1 partitioned (blackhole): moved to {new}; gaps {gaps} s; old controllers "
        f"on h1: {_held(held)}, then said "
        f"{stale.seen}; after healing: gaps {_gaps(wls, t_back, back_end)}; "
        f"qemu-io inside h1: {out.strip()!r}; h1 caught up {lrs}; workloads {stats}"
    )
    assert f"wrote 4096/4096 bytes at offset {QEMU_OFFSET}" not in out, out
    assert "write failed" in out, out
    for name, s in stats.items():
        assert s["violations"] == [], (name, s["violations"][:10])
    for states in stale.seen.values():
        assert "serving" not in states, stale.seen
    assert max(gaps.values()) < GAP_BOUND, gaps
    check_health(c, tmp_path, "after-partition")
