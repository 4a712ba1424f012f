"""Put several `make bench` result files side by side: one row per job and target, one column
per run (ratio to tgtd of that run), the median across runs, the CPU time per I/O, and the
recovery figures with load.

    .venv/bin/python bench/summarize.py results/bench-A.json results/bench-B.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tabulate import tabulate


def load(paths: list[str]) -> list[dict]:
    """The result documents, oldest first."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    return sorted(docs, key=lambda d: d["meta"]["started"])


def ratio_rows(docs: list[dict], targets: list[str]) -> list[list]:
    """job, target, ratio per run, median ratio, goal."""
    rows = []
    for job in docs[0]["jobs"]:
        for t in targets:
            if t == "tgtd":
                continue
            got = [d["jobs"].get(job, {}).get(t, {}).get("ratio") for d in docs]
            vals = [g for g in got if g is not None]
            if not vals:
                continue
            goal = next(
                (d["jobs"][job][t].get("goal") for d in docs if t in d["jobs"].get(job, {})), None
            )
            med = statistics.median(vals)
            verdict = "" if goal is None else ("ok" if med >= goal else "MISS")
            rows.append(
                [job, t, *[f"{g:.2f}" if g is not None else "-" for g in got], f"{med:.2f}",
                 f">= {goal:.2f} {verdict}" if goal is not None else ""]
            )  # fmt: skip
    return rows


def cpu_rows(docs: list[dict], targets: list[str]) -> list[list]:
    """job, target, CPU us per I/O per run (runs older than the CPU column show "-"), median."""
    rows = []
    for job in docs[0]["jobs"]:
        for t in targets:
            got = [d["jobs"].get(job, {}).get(t, {}).get("cpu_us") for d in docs]
            vals = [g for g in got if g is not None]
            if vals:
                cells = [f"{g:.1f}" if g is not None else "-" for g in got]
                rows.append([job, t, *cells, f"{statistics.median(vals):.1f}"])
    return rows


def recovery_rows(docs: list[dict]) -> list[list]:
    """Rebuild MiB/s, replica-back seconds (and bytes), controller restart seconds per run."""

    def cell(d: dict, key: str) -> str:
        r = (d.get("recovery") or {}).get(key)
        if not r:
            return "-"
        if key == "full_rebuild":
            return f"{r['mib_s']:.0f} MiB/s"
        if key == "replica_back":
            return f"{r['seconds']:.2f} s ({(r.get('copied') or 0) / 2**20:.0f} MiB)"
        return f"{r['seconds']:.2f} s"

    names = {
        "full_rebuild": ("full rebuild of 1 GiB", ">= 300 MiB/s"),
        "replica_back": ("replica back after 10 s away", "<= 3 s"),
        "controller_restart": ("controller kill -9 until I/O", ""),
    }
    return [[what, *[cell(d, k) for d in docs], goal] for k, (what, goal) in names.items()]


def main() -> int:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="bench-*.json files written by bench/run.py")
    args = ap.parse_args()
    docs = load(args.results)
    targets = docs[0]["targets"]
    runs = [d["meta"]["started"] for d in docs]
    print(tabulate(ratio_rows(docs, targets), headers=["job", "target", *runs, "median", "goal"]))
    print()
    if cpu := cpu_rows(docs, targets):
        print("CPU time per I/O (us, user + system, every process of the target)")
        print(tabulate(cpu, headers=["job", "target", *runs, "median"]))
        print()
    print(tabulate(recovery_rows(docs), headers=["recovery", *runs, "goal"]))
    print()
    loads = [
        [
            d["meta"]["started"],
            f"{d['meta']['load_start'][0]:.2f}",
            f"{d['meta']['load_end'][0]:.2f}",
        ]
        for d in docs
    ]
    print(tabulate(loads, headers=["run", "load at start", "load at end"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
