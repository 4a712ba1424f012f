"""I/O gap of the HA scenarios on test hosts (needs root): prints a table.

A checking iSCSI workload writes through the portal while each fault is injected; the gap is the
longest time without an acknowledged write. Targets: scenario 1 < 3 s, 2 < 10 s, 4 < 2 s with
zero I/O errors.
  4 hosts (default): volume ha3 on h1-h3, its controller alone on h4; scenarios 1, 3, 4, 2.
  --hosts 3: volumes ha3 (3 replicas) and ha2 (2 replicas + a witness on h3), both controllers on
  h1 beside a replica of each; scenario 2 (h1 link down) and 2p (h1 partitioned: blackhole),
  each with a gap per volume and the longest pause of a qemu-io session (libiscsi) on ha3.
Usage: sudo .venv/bin/python bench/ha_gap.py [--down 30] [--hosts 3] [--scenarios 2]
(JIVA_HA_WHEELHOUSE=DIR ships a prebuilt engine wheelhouse instead of building the tree's.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.ha_harness import (
    QEMU_OFFSET,
    BackgroundWorkload,
    Cluster,
    QemuIoSession,
    eventually,
    longest_gap,
)


def measure(c: Cluster, inject, recovered) -> dict:
    """Run one scenario under the workload and a qemu-io session; return gap, failed writes,
    recovery time, checks, and qemu-io's longest pause and failed writes (`qemu`)."""
    wl = BackgroundWorkload(c.portal_host, 3260, history=c.history)
    wl.start()
    wl.wait_acks(50)
    qemu = QemuIoSession(c.vol.url, QEMU_OFFSET)
    qemu.start()
    qemu.wait_writes(5)
    t0 = time.monotonic()
    inject()
    recovered()
    t_rec = time.monotonic() - t0
    t1 = wl.wait_acks(200, timeout=120)
    q_end = qemu.wait_writes(10, timeout=120)
    out = {"gap": wl.gap(t0, t1), "failed": wl.errors_between(t0, t1), "recovery": t_rec}
    stats = wl.stop_and_verify()
    q = qemu.stop_and_verify()
    out["violations"] = len(stats["violations"])
    digests = c.replica_digests()
    out["identical"] = len(set(digests.values())) == 1
    out["qemu"] = {
        "gap": longest_gap(qemu.completions(), t0, q_end),
        "failed": len(q["errors"]),
        "recovery": t_rec,
        "violations": len(q["mismatches"]),
        "identical": "",
    }
    return out


def rebuild_of(c: Cluster, host: str, vol=None) -> dict:
    """last_rebuild of the replica on `host` (of volume `vol`, default ha3)."""
    st = c.status(vol.api if vol is not None else None) or {}
    for r in st.get("replicas", []):
        if r["address"].startswith(c.sb.address(host) + ":"):
            return r.get("last_rebuild") or {}
    return {}


def load() -> str:
    """The load average (1, 5, 15 min) as text."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure3(c: Cluster, fault: str) -> list:
    """3 hosts: take h1 (both controllers, a replica of each) off the network ('2': link down;
    '2p': blackhole) under a workload per volume and a qemu-io session on ha3, until every volume
    is served from another host; then bring h1 back and wait until its stale controllers are
    gone and every volume is healthy. Returns table rows, one per volume plus qemu-io's."""
    terms = {v.name: c.status(v.api)["term"] for v in c.vols}
    wls = {v.name: c.workload(v, seed=41 + i) for i, v in enumerate(c.vols)}
    for wl in wls.values():
        wl.start()
        wl.wait_acks(50)
    qemu = QemuIoSession(c.vol.url, QEMU_OFFSET)
    qemu.start()
    qemu.wait_writes(5)
    t0 = time.monotonic()
    print(f"{fault}: fault at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}",
          file=sys.stderr, flush=True)  # fmt: skip
    if fault == "2p":
        c.sb.blackhole("h1", True)
    else:
        c.sb.link("h1", False)
    try:
        new = c.wait_moved_off("h1", terms)
        t_rec = time.monotonic() - t0
        ends = {name: wl.wait_acks(100, timeout=120) for name, wl in wls.items()}
        q_end = qemu.wait_writes(10, timeout=120)
    finally:
        if fault == "2p":
            c.sb.blackhole("h1", False)
        else:
            c.sb.link("h1", True)
    eventually(
        lambda: all(c.stale_gone("h1", v) for v in c.vols),
        120,
        "stale controllers on h1 removed",
        detail=lambda: c.watch_log()[-4000:],
    )
    for v in c.vols:
        c.wait_healthy(120, v)
    stats = {name: wl.stop_and_verify() for name, wl in wls.items()}
    q = qemu.stop_and_verify()
    what = "partitioned (blackhole)" if fault == "2p" else "link down"
    rows = []
    for v in c.vols:
        digests = c.replica_digests(v)
        r = {
            "gap": wls[v.name].gap(t0, ends[v.name]),
            "failed": wls[v.name].errors_between(t0, ends[v.name]),
            "recovery": t_rec,
            "violations": len(stats[v.name]["violations"]),
            "identical": len(set(digests.values())) == 1,
        }
        rows.append([f"{fault} 3 hosts, h1 {what}: {v.name} -> {new[v.name]}", "< 10", r,
                     rebuild_of(c, "h1", v)])  # fmt: skip
    r = {
        "gap": longest_gap(qemu.completions(), t0, q_end),
        "failed": len(q["errors"]),
        "recovery": t_rec,
        "violations": len(q["mismatches"]),
        "identical": "",
    }
    rows.append([f"{fault} 3 hosts, h1 {what}: qemu-io on ha3 (pause)", "-", r, {}])
    return rows


def main() -> int:
    """Bring the cluster up, run the scenarios, print the table, tear down."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--down", type=float, default=30.0, help="seconds a replica host stays offline")
    ap.add_argument(
        "--hosts", type=int, choices=(3, 4), default=4, help="test hosts (layouts: see above)"
    )
    ap.add_argument(
        "--scenarios",
        help="comma-separated scenarios to run, e.g. '2' (default: all; 4 hosts: 1,3,4,2 in this "
        "order; 3 hosts: 2,2p)",
    )
    args = ap.parse_args()
    known = ["2", "2p"] if args.hosts == 3 else ["1", "3", "4", "2"]
    want = set((args.scenarios or ",".join(known)).split(","))
    if not want <= set(known):
        ap.error(f"--scenarios: unknown scenario in {args.scenarios!r} ({', '.join(known)})")
    print(f"load average before (1, 5, 15 min): {load()}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="jvhagap"))
    c = Cluster(base, hosts=args.hosts)
    rows = []
    try:
        c.deploy()
        for v in c.vols:
            c.wait_healthy(vol=v)
        if args.hosts == 3:
            for fault in [f for f in known if f in want]:
                if c.controller_host() != "h1":  # back to the pinned host (after the other fault)
                    r = c.play("site.yml")
                    assert r.rc == 0, r.output[-3000:]
                    for v in c.vols:
                        eventually(lambda v=v: c.portal_holders(v) == ["h1"], 60, "portal on h1")
                        c.wait_healthy(60, v)
                c.start_watch()
                c.wait_watch_run(1)
                rows += measure3(c, fault)
                c.stop_watch()
            return print_table(rows)
        if "1" in want:
            r = measure(c, lambda: c.kill_child("h4", "controller"), lambda: c.wait_healthy(60))
            rows.append(["1 controller kill -9 (supervisor)", "< 3", r, {}])
        if "3" in want:
            r = measure(c, lambda: c.kill_child("h2", "replica"), c.caught_up("h2"))
            rows.append(["3 replica kill -9 (supervisor)", "-", r, rebuild_of(c, "h2")])

        def link_cycle() -> None:
            c.sb.link("h3", False)
            time.sleep(args.down)
            c.sb.link("h3", True)

        if "4" in want:
            r = measure(c, link_cycle, c.caught_up("h3"))
            rows.append(
                [
                    f"4 replica host link down {args.down:g}s",
                    "< 2, 0 errors",
                    r,
                    rebuild_of(c, "h3"),
                ]
            )
        if "2" not in want:
            return print_table(rows)
        c.start_watch()
        c.wait_watch_run(1)  # the watch loop's first run (nothing to do) is over

        def moved() -> None:
            eventually(
                lambda: (
                    c.controller_host() not in (None, "h4")
                    and (c.status() or {}).get("state") == "serving"
                ),
                90,
                "controller moved",
                detail=lambda: c.watch_log()[-3000:],
            )

        r = measure(c, lambda: c.sb.link("h4", False), moved)
        rows.append(["2 controller host link down (watch + failover.yml)", "< 10", r, {}])
        c.stop_watch()
        if os.environ.get("JIVA_HA_GAP_KEEP_LOG"):
            Path(os.environ["JIVA_HA_GAP_KEEP_LOG"]).write_text(c.watch_log())
    finally:
        if os.environ.get("JIVA_HA_GAP_KEEP_LOG") and args.hosts == 3:
            Path(os.environ["JIVA_HA_GAP_KEEP_LOG"]).write_text(c.watch_log())
        c.close()
        shutil.rmtree(base, ignore_errors=True)
    return print_table(rows)


def print_table(rows: list) -> int:
    """Print the scenario table (with the load average, the gaps depend on it); return 0.
    A scenario measured with a qemu-io session gets a second row: its longest pause between
    completed writes and its failed writes."""
    table, expanded = [], []
    for row in rows:
        expanded.append(row)
        if "qemu" in row[2]:
            expanded.append([row[0] + ": qemu-io (pause)", "-", row[2]["qemu"], {}])
    for name, target, r, rb in expanded:
        table.append([
            name, target, f"{r['gap']:.2f}", r["failed"], f"{r['recovery']:.1f}", r["violations"],
            r["identical"], rb.get("kind", ""), rb.get("copied", ""), rb.get("seconds", ""),
        ])  # fmt: skip
    print(
        tabulate(
            table,
            headers=[
                "scenario",
                "target gap s",
                "gap s",
                "failed writes",
                "recovered after s",
                "data errors",
                "replicas identical",
                "catch-up",
                "bytes copied",
                "catch-up s",
            ],  # fmt: skip
        )
    )
    print(f"load average after (1, 5, 15 min): {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
