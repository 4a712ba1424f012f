"""Benchmark: what one slow replica costs a 3-replica volume, with lag ejection on and off.

4 KiB random writes at queue depth 32 through the controller's volume object (in-process, as
bench/volume_bench.py) over 3 local `jiva replica` processes, in three runs of N seconds: all
healthy; one replica slowed by SIGSTOP bursts (stopped --stop-ms out of every --period-ms) with
the lag detector on (the defaults); the same with it off. Prints IOPS, p50/p99/max latency,
lag ejections and the time the slowed replica spent out of the membership.
Usage: python bench/slow_replica.py [--seconds 20] [--stop-ms 50] [--period-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.volume_bench import start_replicas, stop
from jiva_engine.controller.lag import LagPolicy
from jiva_engine.controller.volume import Volume

SIZE = 256 << 20
BS = 4096


async def bursts(pid: int, stop_s: float, period_s: float, until: asyncio.Event) -> None:
    """SIGSTOP `pid` for stop_s out of every period_s until `until` is set (then SIGCONT)."""
    try:
        while not until.is_set():
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(stop_s)
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(period_s - stop_s)
    finally:
        os.kill(pid, signal.SIGCONT)


async def drive(
    addrs: list[str], seconds: float, qd: int, policy: LagPolicy, slow_pid: int | None, a: Any
) -> dict:
    vol = Volume("bench", addrs, retry_interval=0.2, slow_replica=policy)
    await vol.start()
    await vol.wait_serving(30)
    payload = os.urandom(BS)
    blocks = SIZE // BS
    lat: list[float] = []
    stop_at = time.monotonic() + seconds
    out_s = 0.0
    ended = asyncio.Event()
    slow_addr = addrs[1]

    async def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            await vol.write(rnd.randrange(blocks) * BS, payload)
            lat.append(time.perf_counter() - t0)

    async def watch() -> None:
        nonlocal out_s
        while not ended.is_set():
            await asyncio.sleep(0.1)
            if vol.members[slow_addr].mode != "RW":
                out_s += 0.1

    tasks = [asyncio.ensure_future(watch())]
    if slow_pid is not None:
        tasks.append(
            asyncio.ensure_future(bursts(slow_pid, a.stop_ms / 1e3, a.period_ms / 1e3, ended))
        )
    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(qd)))
    elapsed = time.monotonic() - t0
    ended.set()
    await asyncio.gather(*tasks)
    st = vol.stats
    await vol.close()
    lat.sort()
    return {
        "iops": len(lat) / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
        "max_ms": lat[-1] * 1e3,
        "lag_ejections": int(st["lag_ejections"]),
        "out_s": out_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--stop-ms", type=float, default=50.0)
    ap.add_argument("--period-ms", type=float, default=200.0)
    a = ap.parse_args()
    # healthy first and last: the baseline is their mean (a shared machine drifts)
    runs = [
        ("3 healthy replicas", LagPolicy(), False),
        ("1 slowed, lag detector off", LagPolicy(floor=0.0), True),
        ("1 slowed, lag detector on", LagPolicy(), True),
        ("3 healthy replicas (again)", LagPolicy(), False),
    ]
    results = []
    for label, policy, slow in runs:
        with tempfile.TemporaryDirectory(prefix="jiva-slowbench-") as d:
            procs, addrs = start_replicas(3, Path(d), SIZE)
            try:
                pid = procs[1].pid if slow else None
                r = asyncio.run(drive(addrs, a.seconds, a.qd, policy, pid, a))
            finally:
                stop(procs)
        results.append((label, r))
        print(label, r, flush=True)
    base = (results[0][1]["iops"] + results[-1][1]["iops"]) / 2
    rows = [
        [label, f"{r['iops']:.0f}", f"{100 * r['iops'] / base:.0f}%", f"{r['p50_ms']:.1f}",
         f"{r['p99_ms']:.1f}", f"{r['max_ms']:.0f}", r["lag_ejections"], f"{r['out_s']:.1f}"]
        for label, r in results
    ]  # fmt: skip
    print(
        f"4 KiB random writes, QD{a.qd}, {a.seconds:g} s per run; slowed = SIGSTOP"
        f" {a.stop_ms:g} ms of every {a.period_ms:g} ms; load {os.getloadavg()[0]:.1f}"
    )
    print(
        tabulate(
            rows,
            headers=["run", "IOPS", "vs healthy", "p50 ms", "p99 ms", "max ms", "lag ej.", "out s"],
        )
    )


if __name__ == "__main__":
    main()
