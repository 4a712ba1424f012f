"""Benchmark: 4 KiB random writes at queue depth 32 through the controller's volume object.

Starts local `jiva replica` processes (3, then 1 for reference), drives `controller.Volume`
in-process for N seconds each and prints IOPS and latency as a table; then times the full
rebuild of an empty third replica from two holding half the volume (rebuild throughput).
Usage: python bench/volume_bench.py [--seconds 10] [--qd 32] [--size 256M] [--bs 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from jiva_engine.controller.volume import Volume
from jiva_engine.util import free_port, parse_size, wait_port


def start_replicas(n: int, root: Path, size: int) -> tuple[list[subprocess.Popen], list[str]]:
    """Start n replica processes on loopback; return the processes and their addresses."""
    procs, addrs = [], []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        port = free_port()
        log = open(root / f"replica{n}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            [sys.executable, "-m", "jiva_engine.cli", "replica", "--volume", "bench",
             "--listen", f"127.0.0.1:{port}", "--dir", str(root / f"r{n}-{i}"), "--size", str(size)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(p)
        addrs.append(f"127.0.0.1:{port}")
        wait_port("127.0.0.1", port)
    return procs, addrs


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop by PID: SIGTERM, then SIGKILL after 10 s."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


async def drive(addrs: list[str], size: int, seconds: float, qd: int, bs: int) -> dict:
    """Run the random-write load against a volume over `addrs`; return the figures."""
    vol = Volume("bench", addrs, retry_interval=0.2)
    await vol.start()
    await vol.wait_serving(30)
    blocks = size // bs
    payload = os.urandom(bs)
    lat: list[float] = []
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        nonlocal done
        rnd = random.Random(seed)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            await vol.write(rnd.randrange(blocks) * bs, payload)
            lat.append(time.perf_counter() - t0)
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(qd)))
    elapsed = time.monotonic() - t0
    await vol.flush()
    await vol.close()
    lat.sort()
    return {
        "iops": done / elapsed,
        "mib_s": done * bs / elapsed / (1 << 20),
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
        "writes": done,
    }


async def rebuild(addrs: list[str], new: str, data: int) -> dict:
    """Write `data` bytes on the first replicas, add `new` empty, time its full rebuild."""
    vol = Volume("bench", addrs, retry_interval=0.2)
    await vol.start()
    await vol.wait_serving(30)
    buf = os.urandom(1 << 20)
    for off in range(0, data, 1 << 20):
        await vol.write(off, buf)
    await vol.add_replica(new)
    t0 = time.monotonic()
    while vol.members[new].mode != "RW":
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - t0
    info = vol.members[new].last_rebuild
    await vol.close()
    return {"seconds": elapsed, "copied": info["copied"], "kind": info["kind"]}


def main() -> int:
    """Run the benchmark against 3 replicas and 1 replica and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--bs", type=int, default=4096)
    args = ap.parse_args()
    size = parse_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jiva-bench-") as tmp:
        for n in (3, 1):
            procs, addrs = start_replicas(n, Path(tmp), size)
            try:
                r = asyncio.run(drive(addrs, size, args.seconds, args.qd, args.bs))
            finally:
                stop(procs)
            rows.append([f"{n} replica{'s' if n > 1 else ''}", args.bs, args.qd,
                         f"{r['iops']:.0f}", f"{r['mib_s']:.1f}", f"{r['p50_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", r["writes"]])  # fmt: skip
        procs, addrs = start_replicas(3, Path(tmp) / "rebuild", size)
        try:
            data = size // 2
            rb = asyncio.run(rebuild(addrs[:2], addrs[2], data))
        finally:
            stop(procs)
    print(
        tabulate(
            rows,
            headers=["volume", "block", "QD", "IOPS", "MiB/s", "p50 ms", "p99 ms", "writes"],
        )
    )
    print()
    print(
        tabulate(
            [
                [
                    rb["kind"],
                    f"{size >> 20} MiB",
                    f"{rb['copied'] >> 20} MiB",
                    f"{rb['seconds']:.2f}",
                    f"{rb['copied'] / rb['seconds'] / (1 << 20):.0f}",
                ]
            ],  # fmt: skip
            headers=["rebuild", "volume", "copied", "seconds", "MiB/s"],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
