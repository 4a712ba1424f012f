"""Rebuild under load (issue 17): foreground 4K random writes QD32, idle and during a full rebuild.

For pacing on and off: a 2-replica volume of `--size` (default 1 GiB), filled; `--seconds` of
4K random writes at QD32 through the project's iSCSI initiator (every latency recorded), then
an empty third replica is added and the same load runs until its full rebuild completes; then
an empty fourth replica is rebuilt with no foreground I/O (pacing must not slow an idle
rebuild). Prints IOPS, p50/p99 latency and their ratio to idle, the rebuild's time and MiB/s.
Every process is ours, stopped by PID. Reuses bench/run.py's helpers.

    .venv/bin/python bench/rebuild_load.py [--size 1G] [--seconds 10] [--pacing on,off]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    JivaVolume,
    Job,
    Procs,
    api_get,
    api_post,
    bench_session,
    jiva,
    loadavg,
    qemu_bench,
    say,
    wait_until,
)

from jiva_engine.initiator import Initiator

MiB = 1 << 20
BS = 4096
QD = 32


class PacedVolume(JivaVolume):
    """A bench volume whose controller gets extra options (`--rebuild-pacing off`)."""

    def __init__(self, *args, extra: tuple[str, ...] = (), **kw) -> None:
        super().__init__(*args, **kw)
        self.extra = extra

    def start_controller(self, members: list[int] | None = None) -> None:
        idx = range(len(self.replicas)) if members is None else members
        reps = [a for i in idx for a in ("--replica", self.replicas[i][0])]
        self.controller = self.procs.start(
            jiva("controller", "--volume", self.name, "--api", self.api, *reps,
                 "--portal", f"127.0.0.1:{self.portal_port}", "--size", str(self.size),
                 "--log-level", "WARNING", *self.extra)
        )  # fmt: skip


def percentile(lat: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of non-empty `lat`."""
    s = sorted(lat)
    return s[min(len(s) - 1, max(0, int(q / 100 * len(s) + 0.5) - 1))]


async def load(vol: JivaVolume, until, seed: int) -> tuple[list[float], float]:
    """4K random writes at QD32 until `until()` (a coroutine function) returns; every latency,
    and the seconds the load ran."""
    ini = Initiator("127.0.0.1", vol.portal_port, f"iqn.2026-11.org.jiva-py:{vol.name}")
    await ini.connect()
    lat: list[float] = []
    stop = asyncio.Event()
    blocks = vol.size // BS
    data = random.Random(seed).randbytes(BS)

    async def worker(i: int) -> None:
        rnd = random.Random(seed * 100 + i)
        while not stop.is_set():
            lba = rnd.randrange(blocks) * (BS // 512)
            t0 = time.perf_counter()
            await ini.write(lba, data)
            lat.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(worker(i)) for i in range(QD)]
    try:
        await until()
    finally:
        stop.set()
        took = time.monotonic() - t0
        await asyncio.gather(*tasks, return_exceptions=True)
        await ini.logout()
    return lat, took


def figures(lat: list[float], seconds: float) -> dict:
    return {
        "iops": len(lat) / seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
    }


async def rebuilt(vol: JivaVolume, i: int, samples: list[dict]) -> None:
    """Return once replica i is RW; keep the status samples (rate, ETA, pacer) meanwhile."""
    while True:
        st = await asyncio.to_thread(api_get, vol.api)
        rep = next((r for r in st["replicas"] if r["address"] == vol.replicas[i][0]), None)
        if rep and rep["mode"] == "RW":
            return
        samples.append({"rebuild": rep and rep["rebuild"], "pacing": st.get("rebuild_pacing")})
        await asyncio.sleep(0.25)


def add_replica(vol: JivaVolume) -> int:
    i = vol.add_replica_slot()
    api_post(vol.api, "/v1/replicas", {"address": vol.replicas[i][0]})
    return i


def rebuild_figures(vol: JivaVolume, i: int) -> dict:
    """The last rebuild of replica i (its own timing), and how often any replica was ejected
    (a write timing out on a swamped replica ejects it: its rebuild starts over)."""
    lr = vol.replica_status(i)["last_rebuild"] or {}
    secs = lr.get("seconds") or 0.0
    ejected = sum(r["errors"] for r in api_get(vol.api, "/v1/stats")["replicas"].values())
    return {"seconds": secs, "mib_s": lr.get("copied", 0) / MiB / secs if secs else 0.0,
            "ejections": ejected}  # fmt: skip


async def one_mode(procs: Procs, root: Path, size: int, seconds: float, pacing: str) -> dict:
    vol = PacedVolume(procs, root, f"rl{pacing}", size, 2, extra=("--rebuild-pacing", pacing))
    vol.start()
    t = qemu_bench(vol.url, Job("fill", MiB, 32, True, MiB, 0), size // MiB)
    say(f"pacing {pacing}: filled {size // MiB} MiB in {t:.1f} s")

    async def for_seconds() -> None:
        await asyncio.sleep(seconds)

    lat, took = await load(vol, for_seconds, 1)
    idle = figures(lat, took)
    say(f"pacing {pacing}: idle {idle['iops']:.0f} IOPS, p99 {idle['p99_ms']:.2f} ms")
    i = add_replica(vol)
    samples: list[dict] = []
    lat, took = await load(vol, lambda: rebuilt(vol, i, samples), 2)
    during = figures(lat, took)
    during.update(rebuild_figures(vol, i))
    during["to_rw"] = took  # from the add to RW (retries included)
    allowed = [s["pacing"]["allowed_rate"] for s in samples if s["pacing"]]
    limited = [a for a in allowed if a]
    during["min_allowed_mib_s"] = min(limited) / MiB if limited else None
    etas = [s["rebuild"]["eta_seconds"] for s in samples if (s["rebuild"] or {}).get("eta_seconds")]
    during["first_eta_s"] = etas[0] if etas else None
    say(f"pacing {pacing}: during rebuild {during['iops']:.0f} IOPS, p99 "
        f"{during['p99_ms']:.2f} ms, rebuild {during['seconds']:.1f} s")  # fmt: skip
    j = add_replica(vol)  # no foreground I/O: full speed
    await asyncio.to_thread(
        wait_until, lambda: vol.mode(j) == "RW", 600, "the idle rebuild", 0.05
    )  # fmt: skip
    quiet = rebuild_figures(vol, j)
    say(f"pacing {pacing}: idle rebuild {quiet['mib_s']:.0f} MiB/s")
    return {"idle": idle, "during": during, "idle_rebuild": quiet, "load": loadavg()}


def report(res: dict) -> str:
    rows = []
    for mode, r in res.items():
        idle, d, q = r["idle"], r["during"], r["idle_rebuild"]
        rows.append([f"pacing {mode}: idle", f"{idle['iops']:.0f}", f"{idle['p50_ms']:.2f}",
                     f"{idle['p99_ms']:.2f}", "", "", "", "", "", "", f"{q['seconds']:.1f}",
                     f"{q['mib_s']:.0f}", r["load"]])  # fmt: skip
        rows.append([f"pacing {mode}: during rebuild", f"{d['iops']:.0f}", f"{d['p50_ms']:.2f}",
                     f"{d['p99_ms']:.2f}", f"{d['iops'] / idle['iops']:.2f}",
                     f"{d['p99_ms'] / idle['p99_ms']:.2f}", f"{d['seconds']:.1f}",
                     f"{d['mib_s']:.0f}", f"{d['to_rw']:.1f}", d["ejections"], "", "",
                     r["load"]])  # fmt: skip
    headers = ["4K rand write QD32", "IOPS", "p50 ms", "p99 ms", "IOPS/idle", "p99/idle",
               "rebuild s", "rebuild MiB/s", "add to RW s", "ejections", "idle rebuild s", "idle rebuild MiB/s", "load"]  # fmt: skip
    return tabulate(rows, headers=headers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="volume size (default 1G)")
    ap.add_argument("--seconds", type=float, default=10.0, help="idle measurement (default 10)")
    ap.add_argument("--pacing", default="on,off", help="modes to run (default on,off)")
    args = ap.parse_args()
    from jiva_engine.util import parse_size

    size = parse_size(args.size)
    print(f"rebuild_load: {size // MiB} MiB, load {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    res: dict = {}
    with bench_session("jiva-rebuild-load-", "rebuild_load") as (tmp, procs):
        for mode in args.pacing.split(","):
            res[mode] = asyncio.run(one_mode(procs, tmp, size, args.seconds, mode))
            for p in list(procs.procs):  # the next mode starts on an idle machine
                procs.stop(p)
    print(report(res))
    for mode, r in res.items():
        d = r["during"]
        print(f"pacing {mode}: lowest allowed rate {d['min_allowed_mib_s']} MiB/s, "
              f"first ETA {d['first_eta_s']} s, load {r['load']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
