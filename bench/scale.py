"""Scale: many volumes on the local 3-node cluster, driven by the real playbooks.

Writes an inventory of three local "nodes" (loopback addresses, the local connection, supervised
daemons; the same shape as inventory/local) holding N volumes of 3 replicas each, in a temporary
folder, and measures:

- `site.yml` on the empty nodes (first deploy: wheel build, venv, every service), then again
  (a re-run that must change nothing), `health.yml`, and `teardown.yml` deleting the data;
- memory (RSS) per process kind and per volume, from /proc;
- CPU used by the idle cluster (no I/O), per process kind;
- 4K random writes at QD32 with qemu-img bench: one volume alone, then every volume at once
  (aggregate IOPS);
- the re-run's slowest tasks (Ansible's junit callback: time per task and host).

    .venv/bin/python bench/scale.py                  # 50 volumes (about 12 minutes)
    .venv/bin/python bench/scale.py --volumes 10     # a quick look

Prints a table and writes results/scale-<time>.json. Every daemon started is stopped by PID at the
end (also on failure or Ctrl-C), and the folder is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from run import RANDOM_STRIDE, Job, cpu_seconds, qemu_bench

from tests.sandbox import ROOT, local_inventory, run_playbook, stop_daemons

IQN_PREFIX = "iqn.2026-11.org.jiva-py:"
WRITE_4K = Job("4K rand write QD32", 4096, 32, True, RANDOM_STRIDE, 0)
KINDS = ("controller", "replica", "witness")


def daemons(base: Path) -> dict[str, list[tuple[int, int]]]:
    """Every supervised daemon under `base` by kind: (supervisor pid, child pid) pairs, from the
    daemon service manager's pidfiles (run_dir/KIND-VOLUME.pid and .pid.child)."""
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for pidfile in base.rglob("*.pid"):
        kind = pidfile.name.split("-", 1)[0]
        child = pidfile.with_name(pidfile.name + ".child")
        if kind in KINDS and child.exists():
            out[kind].append((int(pidfile.read_text()), int(child.read_text())))
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(procs: dict[str, list[tuple[int, int]]]) -> dict[str, float]:
    """Mean RSS (MiB) per process kind: each daemon kind, and its supervisors."""
    out: dict[str, float] = {}
    sups = [s for pairs in procs.values() for s, _ in pairs]
    for kind, pairs in procs.items():
        out[kind] = sum(rss_mib(c) for _, c in pairs) / len(pairs)
    out["supervisor"] = sum(rss_mib(s) for s in sups) / len(sups)
    return out


def idle_cpu(procs: dict[str, list[tuple[int, int]]], seconds: float) -> dict[str, float]:
    """Cores used per process kind over `seconds` of no I/O (sum over the kind's processes)."""
    groups = {kind: [c for _, c in pairs] for kind, pairs in procs.items()}
    groups["supervisor"] = [s for pairs in procs.values() for s, _ in pairs]
    before = {k: cpu_seconds(p) for k, p in groups.items()}
    time.sleep(seconds)
    return {k: (cpu_seconds(p) - before[k]) / seconds for k, p in groups.items()}


def iops(urls: list[str], count: int) -> float:
    """4K QD32 random writes, `count` per volume, on every URL at once: requests per second of
    wall time from the first start to the last end."""
    start = time.monotonic()
    with ThreadPoolExecutor(len(urls)) as pool:
        list(pool.map(lambda u: qemu_bench(u, WRITE_4K, count), urls))
    return count * len(urls) / (time.monotonic() - start)


def slowest_tasks(junit_dir: Path, top: int) -> list[tuple[str, float, float]]:
    """(task, seconds summed over hosts, longest host) of the junit files in `junit_dir`."""
    total: dict[str, float] = defaultdict(float)
    longest: dict[str, float] = defaultdict(float)
    for f in junit_dir.glob("*.xml"):
        for case in ET.parse(f).getroot().iter("testcase"):
            name = case.get("name", "")
            task = name.split("] ", 1)[-1].split(": ", 1)[-1]  # "[host] play: role : task""
            t = float(case.get("time", 0))
            total[task] += t
            longest[task] = max(longest[task], t)
    ranked = sorted(total, key=lambda k: -total[k])[:top]
    return [(k, total[k], longest[k]) for k in ranked]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--volumes", type=int, default=50, help="volumes to deploy (default 50)")
    ap.add_argument("--size", default="32M", help="size of each volume (default 32M)")
    ap.add_argument("--writes", type=int, default=3000,
                    help="4K writes per volume in the IOPS jobs (default 3000)")  # fmt: skip
    ap.add_argument("--idle", type=float, default=10, help="seconds of idle CPU sampling")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running and its folder")
    args = ap.parse_args()
    if not 1 <= args.volumes <= 250:
        ap.error("--volumes: 1 to 250 (one loopback portal address each)")
    for tool in ("qemu-img",):
        if not shutil.which(tool):
            print(
                f"scale: {tool} is not installed (make bench installs qemu-utils)", file=sys.stderr
            )
            return 2

    # a loopback /16 of its own: nodes on NET.0.1-3, portals on NET.1.i
    net = f"127.{random.randint(64, 250)}"
    base = Path(tempfile.mkdtemp(prefix="jiva-scale-"))
    volumes = [{"name": f"s{i:03d}", "size": args.size, "replicas": 3,
                "portal": f"{net}.1.{i}:3260"} for i in range(1, args.volumes + 1)]  # fmt: skip
    inv = local_inventory(base, [f"{net}.0.{i}" for i in (1, 2, 3)], volumes)
    cfg, home = ROOT / "ansible.cfg", base / "ansible-home"
    urls = [f"iscsi://{v['portal']}/{IQN_PREFIX}{v['name']}/0" for v in volumes]
    figures: dict = {"volumes": args.volumes, "size": args.size, "replicas": 3,
                     "started": time.strftime("%Y%m%d-%H%M%S"), "load_before": os.getloadavg()}  # fmt: skip
    print(f"scale: {args.volumes} volumes of {args.size} x 3 replicas in {base}", flush=True)

    def playbook(name: str, key: str, *extra: str, junit: Path | None = None) -> None:
        os.environ.pop("ANSIBLE_CALLBACKS_ENABLED", None)
        if junit is not None:
            os.environ.update(ANSIBLE_CALLBACKS_ENABLED="junit", JUNIT_OUTPUT_DIR=str(junit),
                              JUNIT_TASK_CLASS="yes")  # fmt: skip
        run = run_playbook(name, cfg, home, "-i", str(inv), *extra, timeout=3600)
        if run.rc != 0:
            raise RuntimeError(f"{name} failed (rc {run.rc}):\n{run.output[-4000:]}")
        figures[key] = round(run.seconds, 1)
        figures[key + "_changed"] = run.changed()
        print(f"  {key}: {run.seconds:.1f} s, changed={run.changed()}", flush=True)

    try:
        playbook("site.yml", "deploy")
        playbook("site.yml", "rerun", junit=base / "junit")
        playbook("health.yml", "health")
        procs = daemons(base)
        figures["processes"] = {k: len(v) for k, v in procs.items()}
        figures["rss_mib"] = memory(procs)
        figures["idle_cores"] = idle_cpu(procs, args.idle)
        print(f"  memory and idle CPU: {figures['rss_mib']} {figures['idle_cores']}", flush=True)
        figures["iops_one"] = iops(urls[:1], args.writes)
        figures["iops_all"] = iops(urls, args.writes)
        print(f"  4K write QD32: one {figures['iops_one']:.0f}, all {figures['iops_all']:.0f}")
        figures["rerun_tasks"] = slowest_tasks(base / "junit", 8)
        if not args.keep:
            playbook("teardown.yml", "teardown", "-e", "jiva_teardown_delete_data=true")
    finally:
        if not args.keep:
            stop_daemons(base)
            shutil.rmtree(base, ignore_errors=True)
    figures["load_after"] = os.getloadavg()
    report(figures)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    path = out / f"scale-{figures['started']}.json"
    path.write_text(json.dumps(figures, indent=1))
    print(f"results: {path}" + (f"; cluster left running in {base}" if args.keep else ""))
    return 0


def report(f: dict) -> None:
    """The scale table, per volume where it divides."""
    n = f["volumes"]
    rss, cores = f["rss_mib"], f["idle_cores"]
    per_volume = sum(rss[k] * f["processes"][k] for k in f["processes"]) / n
    per_volume += rss["supervisor"] * sum(f["processes"].values()) / n
    rows = [
        ("site.yml, first deploy", f"{f['deploy']:.0f} s", f"{f['deploy'] / n:.2f} s"),
        ("site.yml re-run", f"{f['rerun']:.0f} s (changed={f['rerun_changed']})",
         f"{f['rerun'] / n:.2f} s"),
        ("health.yml", f"{f['health']:.1f} s", f"{f['health'] / n:.2f} s"),
        ("teardown.yml, data deleted", f"{f['teardown']:.0f} s" if "teardown" in f else "(kept)",
         f"{f['teardown'] / n:.2f} s" if "teardown" in f else ""),
        ("RSS", " ".join(f"{k} {v:.1f}" for k, v in rss.items()) + " MiB", f"{per_volume:.0f} MiB"),
        ("idle CPU (cores)", " ".join(f"{k} {v:.3f}" for k, v in cores.items()),
         f"{sum(cores.values()) / n * 1000:.1f} ms/s"),
        ("4K write QD32 IOPS", f"one volume {f['iops_one']:.0f}, all at once {f['iops_all']:.0f}",
         f"{f['iops_all'] / n:.0f}"),
    ]  # fmt: skip
    print(tabulate(rows, headers=[f"{n} volumes x 3 replicas", "figure", "per volume"]))
    print(tabulate([(t[:70], f"{s:.1f}", f"{m:.1f}") for t, s, m in f["rerun_tasks"]],
                   headers=["re-run's slowest tasks", "s (all hosts)", "s (one host)"]))  # fmt: skip
    print(f"load average before {f['load_before'][0]:.1f}, after {f['load_after'][0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
