"""The torture loop: workload running, one random fault per round, recovery, then verification.

`python -m tests.torture.run --faults 200 --seed N` (or `make torture`) prints a summary
table and the seed; the same seed replays the same fault sequence. With `--hosts` (root) the
replicas and the controller run on network-namespace test hosts (hosts.py), and host faults
(hosts.py) and controller-host faults with failover (failover.py) join the process faults.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from jiva_engine.initiator import ConnectionLost, Initiator, IscsiError
from tests.torture.cluster import Cluster
from tests.torture.failover import (
    CONTROLLER_HOST_FAULTS,
    FailoverStats,
    check_probe_blocks,
    inject_controller_host_fault,
)
from tests.torture.hosts import HOST_FAULTS, HostCluster, inject_host_fault
from tests.torture.workload import BLOCK, Workload, parse_block

PROCESS_FAULTS = (
    "replica-kill9",
    "replica-sigstop",
    "controller-kill9",
    "controller-sigstop",
    "replica+controller-kill9",
    "replica-bitrot",
)
BITROT_MAX = 8  # blocks a bit-rot fault damages (at least 1)


@dataclass
class Report:
    """What a torture run did and found."""

    seed: int
    faults: Counter = field(default_factory=Counter)
    rounds: int = 0
    writes_issued: int = 0
    writes_acked: int = 0
    writes_failed: int = 0
    reads_checked: int = 0
    blocks_verified: int = 0
    replica_compares: int = 0
    reconnects: int = 0
    bitrot_flipped: int = 0  # blocks damaged on a replica's disk by bit-rot faults
    bitrot_found: int = 0  # ... of which the controller found bad when reading (then repaired)
    failover: FailoverStats | None = None  # with test hosts: the controller-host faults
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The summary table (faults by kind, then totals)."""
        rows = [[f"faults: {k}", v] for k, v in sorted(self.faults.items())]
        rows += [
            ["faults: total", sum(self.faults.values())],
            ["writes issued", self.writes_issued],
            ["writes acknowledged", self.writes_acked],
            ["writes failed (not acknowledged)", self.writes_failed],
            ["online reads checked", self.reads_checked],
            ["blocks verified", self.blocks_verified],
            ["replica byte-compares (all equal)", self.replica_compares],
            ["initiator reconnects", self.reconnects],
            [
                "bit-rot blocks flipped / found bad and repaired",
                f"{self.bitrot_flipped} / {self.bitrot_found}",
            ],
            *self._failover_rows(),
            ["violations", len(self.violations)],
            ["recovery failures", len(self.errors)],
            ["seconds", f"{self.seconds:.1f}"],
            ["seed", str(self.seed)],
        ]
        return tabulate(
            rows, headers=["torture", "count"], tablefmt="github", disable_numparse=True
        )

    def _failover_rows(self) -> list[list]:
        f = self.failover
        if f is None:
            return []
        secs = sorted(f.serve_seconds)
        serve = f"{secs[len(secs) // 2]:.1f} / {secs[-1]:.1f}" if secs else "-"  # median / max
        states = ", ".join(f"{k} {v}" for k, v in sorted(f.partition_states.items())) or "-"
        return [
            ["controller failovers (portal moved)", f.failovers],
            ["fault -> new controller serving, s (median / max)", serve],
            ["old controller's state while partitioned", states],
            ["probes of an old controller", f.probes],
            ["  probe writes refused (none acknowledged)", f.probe_write_refused],
            [
                "  probe reads refused / served current",
                f"{f.probe_read_refused} / {f.probe_read_current}",
            ],
            [
                "old controllers fenced: by themselves / after probe I/O",
                f"{f.fenced_alone} / {f.fenced_after_io}",
            ],
        ]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _settle(cl: Cluster, wl: Workload, init: Initiator) -> None:
    """With the workload paused: wait until every replica is RW under one epoch across a
    SYNCHRONIZE CACHE (a fault can still eject a replica after it first looked healthy, e.g. a
    link that came back before the replica timeout fired), so the images can be compared."""
    for _ in range(20):
        before = await cl.wait_healthy()
        await wl.ensure_connected()
        try:
            await init.sync_cache()
        except (IscsiError, OSError):
            continue
        await asyncio.sleep(0.2)
        after = await cl.wait_healthy()
        if after["epoch"] == before["epoch"]:
            return
    raise TimeoutError("the volume never settled with every replica RW")


def _describe_diff(images: list[Path], wl: Workload, limit: int = 4) -> str:
    """Which 4 KiB blocks differ between replica images, and what each replica holds there."""
    datas = [p.read_bytes() for p in images]
    out: list[str] = []
    ndiff = 0
    for off in range(0, len(datas[0]), BLOCK):
        blocks = [d[off : off + BLOCK] for d in datas]
        if all(b == blocks[0] for b in blocks):
            continue
        ndiff += 1
        if len(out) < limit:
            lba = off // BLOCK
            seen = [parse_block(b) for b in blocks]
            out.append(f"block {lba} (acked seq {wl.acked.get(lba, 0)}): {seen}")
    return f"{ndiff} blocks differ; " + "; ".join(out)


def _flip_blocks(path: Path, lbas: list[int], rng: random.Random) -> None:
    """Invert a few bytes inside each 4 KiB block on disk, then drop the file's page cache
    (after fsync), so the replica reads the damage from the disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        for lba in lbas:
            pos = lba * BLOCK + rng.randrange(BLOCK - 4)
            old = os.pread(fd, 4, pos)
            os.pwrite(fd, bytes(b ^ 0xFF for b in old), pos)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def _integrity(cl: Cluster) -> dict:
    st = await cl.status()
    if not st or "integrity" not in st:
        raise RuntimeError(f"no integrity counters from the controller: {st}")
    return st["integrity"]


async def _bitrot(cl: Cluster, wl: Workload, rng: random.Random, rep: Report | None) -> None:
    """Bit rot on one replica's disk while the workload runs: bytes of a few acknowledged blocks
    flipped in its data file. The writers leave those blocks alone meanwhile (a rewrite would
    hide the damage), the online reader does not: every read must return good data. Then each
    damaged block is read until every replica holds it alike again (read repair), so the
    round's verification and image compare hold, and the controller must have found each one."""
    before = await _integrity(cl)
    i = rng.randrange(len(cl.replicas))
    idle = sorted(lba for lba in wl.acked if lba not in wl.locked)  # no write of it in flight
    lbas = rng.sample(idle, min(len(idle), rng.randint(1, BITROT_MAX)))
    wl.frozen.update(lbas)
    try:
        _flip_blocks(cl.image(i), lbas, rng)
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # the workload reads (and writes) meanwhile
        images = [cl.image(j) for j in range(len(cl.replicas))]
        for lba in lbas:
            while lba in wl.locked:
                await asyncio.sleep(0.01)
            wl.locked.add(lba)
            try:
                await _read_until_repaired(wl, lba, images, i)
            finally:
                wl.locked.discard(lba)
    finally:
        wl.frozen.difference_update(lbas)
    after = await _integrity(cl)
    if after["unrepaired_blocks"]:
        raise RuntimeError(f"bit rot on one replica left unrepaired blocks: {after}")
    if rep is not None:
        rep.bitrot_flipped += len(lbas)
        rep.bitrot_found += after["checksum_errors"] - before["checksum_errors"]


async def _read_until_repaired(wl: Workload, lba: int, images: list[Path], i: int) -> None:
    """Read one block through the initiator (reads rotate over the replicas) until the copies
    on disk are alike; every read is checked."""
    for _ in range(100):
        try:
            await wl.ensure_connected()
            data = await wl.init.read(lba * (BLOCK // 512), BLOCK // 512)
        except (ConnectionLost, IscsiError, OSError):
            await asyncio.sleep(0.1)
            continue
        wl.check(lba, data, "read after bit rot")
        copies = set()
        for img in images:
            with open(img, "rb") as f:
                f.seek(lba * BLOCK)
                copies.add(f.read(BLOCK))
        if len(copies) == 1:
            return
    raise RuntimeError(f"bit-rot block {lba} on r{i} never repaired by 100 reads")


async def _inject(
    kind: str,
    cl: Cluster,
    wl: Workload,
    rng: random.Random,
    fst: FailoverStats | None,
    rep: Report | None = None,
) -> None:
    """Apply one fault, keep it for a random time, then recover as the supervisor would (or,
    for the controller's host, as the failover play would)."""
    if kind in CONTROLLER_HOST_FAULTS:
        if not isinstance(cl, HostCluster) or fst is None:
            raise ValueError(f"fault {kind!r} needs test hosts (--hosts)")
        return await inject_controller_host_fault(kind, cl, wl, rng, fst)
    down = rng.uniform(0.0, 2.0)
    if kind in HOST_FAULTS:
        if not isinstance(cl, HostCluster):
            raise ValueError(f"fault {kind!r} needs test hosts (--hosts)")
        await inject_host_fault(kind, cl, rng)
    elif kind == "replica-kill9":
        r = rng.choice(cl.replicas)
        r.kill()
        await asyncio.sleep(down)
        r.start(wait=False)
    elif kind == "replica-sigstop":
        r = rng.choice(cl.replicas)
        r.sigstop()
        await asyncio.sleep(rng.uniform(0.2, 3.0))  # below and above --replica-timeout
        r.sigcont()
    elif kind == "controller-kill9":
        cl.controller.kill()
        await asyncio.sleep(down)
        cl.controller.start(wait=False)
    elif kind == "controller-sigstop":
        cl.controller.sigstop()
        await asyncio.sleep(rng.uniform(0.2, 3.0))
        cl.controller.sigcont()
    elif kind == "replica-bitrot":
        await _bitrot(cl, wl, rng, rep)
    elif kind == "replica+controller-kill9":
        r = rng.choice(cl.replicas)
        cl.controller.kill()
        r.kill()
        await asyncio.sleep(down)
        r.start(wait=False)
        cl.controller.start(wait=False)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")


async def torture(
    root: Path,
    faults: int,
    seed: int,
    kinds: tuple[str, ...] | None = None,
    nblocks: int = 2048,
    progress: bool = False,
    hosts: bool = False,
) -> Report:
    """Run `faults` rounds against a fresh 3-replica volume under `root`; returns the report.

    With `hosts` the replicas and the controller run on network-namespace test hosts (the
    controller beside a replica, behind a floating portal address), and faults of a replica's
    host and of the controller's host (crash, link down, blackhole) join the process faults.
    """
    if kinds is None:
        kinds = PROCESS_FAULTS + (HOST_FAULTS + CONTROLLER_HOST_FAULTS if hosts else ())
    rng = random.Random(seed)
    rep = Report(seed=seed)
    fst = rep.failover = FailoverStats() if hosts else None
    t0 = time.monotonic()
    cl = HostCluster(root) if hosts else Cluster(root)
    try:
        cl.start()
    except BaseException:
        cl.close() if isinstance(cl, HostCluster) else cl.stop()
        raise
    init = Initiator(cl.portal_host, cl.portal_port, cl.iqn, timeout=8.0)
    wl = Workload(init, nblocks, random.Random(seed + 1))
    try:
        await cl.wait_healthy()
        await init.reconnect(deadline=30)
        wl.start()
        # every kind at least once, in a seeded order, then random kinds
        plan = list(kinds) * (faults // len(kinds))
        plan += [rng.choice(kinds) for _ in range(faults - len(plan))]
        rng.shuffle(plan)
        for i, kind in enumerate(plan):
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            rep.faults[kind] += 1
            try:
                await _inject(kind, cl, wl, rng, fst, rep)
                await cl.wait_healthy()
                await wl.pause()
                await wl.verify_all()
                if fst is not None:
                    await check_probe_blocks(init, wl, fst)
                await _settle(cl, wl, init)
            except (TimeoutError, IscsiError, OSError, RuntimeError) as e:
                # the volume did not recover (or stopped answering): a failure of the run,
                # reported like a violation so the summary and the seed still get printed
                rep.errors.append(f"round {i} ({kind}): no recovery: {type(e).__name__}: {e}")
                break
            digests = {_digest(cl.image(j)) for j in range(len(cl.replicas))}
            rep.replica_compares += 1
            if len(digests) != 1:
                wl.stats.violations.append(
                    f"round {i} ({kind}): replicas differ after recovery: "
                    + _describe_diff([cl.image(j) for j in range(len(cl.replicas))], wl)
                )
            rep.rounds += 1
            if progress:
                s = wl.stats
                print(
                    f"round {i + 1}/{faults} {kind}: acked {s.writes_acked} failed "
                    f"{s.writes_failed} verified {s.blocks_verified} violations "
                    f"{len(s.violations)}",
                    flush=True,
                )
            if wl.stats.violations:
                break
            wl.resume()
    finally:
        await wl.stop()
        await init.close()
        cl.close() if isinstance(cl, HostCluster) else cl.stop()
        s = wl.stats
        rep.writes_issued, rep.writes_acked, rep.writes_failed = (
            s.writes_issued,
            s.writes_acked,
            s.writes_failed,
        )
        rep.reads_checked, rep.blocks_verified = s.reads_checked, s.blocks_verified
        rep.reconnects, rep.violations = s.reconnects, s.violations
        rep.seconds = time.monotonic() - t0
    return rep


async def _until_sigterm(run: Coroutine[Any, Any, Report]) -> Report:
    """Run the torture; SIGTERM cancels it, so its processes and test hosts are cleaned up."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """CLI of the torture run: prints the summary table; exit 1 on any violation."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--faults", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--blocks", type=int, default=2048, help="4 KiB blocks the workload uses")
    p.add_argument("--kinds", help="comma-separated fault kinds (default: all available)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    p.add_argument(
        "--hosts",
        action="store_true",
        help="replicas and the controller on network-namespace test hosts, adding host and "
        "controller-host faults with failover (needs root)",
    )
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"torture seed {seed} (replay with --seed {seed})", flush=True)
    root = Path(tempfile.mkdtemp(prefix="jiva-torture-"))
    kinds = tuple(a.kinds.split(",")) if a.kinds else None
    ok = False
    try:
        rep = asyncio.run(
            _until_sigterm(
                torture(
                    root,
                    a.faults,
                    seed,
                    nblocks=a.blocks,
                    progress=True,
                    hosts=a.hosts,
                    kinds=kinds,
                )
            )
        )
        ok = not (rep.violations or rep.errors)
    except asyncio.CancelledError:
        print("torture stopped by SIGTERM; its processes and test hosts are gone", flush=True)
        return 143
    finally:
        if a.keep or not ok:
            print(f"work directory kept (logs, replica data): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(rep.table())
    for v in rep.violations[:20]:
        print("VIOLATION:", v)
    for e in rep.errors:
        print("RECOVERY FAILURE:", e)
    return 1 if rep.violations or rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
