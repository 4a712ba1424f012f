"""`make bench`: jiva-py against tgtd in one run, with qemu-img bench, plus rebuild/resync/restart times.

Starts tgtd (Debian `tgt`, a sparse file), `jiva target --file`, a 1-replica and a 3-replica volume
(all local, loopback), drives each with the same qemu-img bench jobs, prints one table (IOPS, MB/s,
ratio to tgtd of the same run), then measures a 1 GiB full rebuild, a replica's return after 10 s
away and a controller restart. Writes JSON + PNG under results/. Every process is ours, by PID.

    .venv/bin/python bench/run.py            # full run: >= 10 s per job, 3 repetitions, median
    BENCH_QUICK=1 .venv/bin/python bench/run.py   # 3 s jobs, 1 repetition
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iscsi_bench import free_port, start_tgtd, wait_port

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
# 4K "random": qemu-img bench only walks with a fixed step, wrapping modulo (size - bufsize);
# a stride of 7919 blocks (prime, coprime with 2**18 - 1) visits every 4K block of 1 GiB in a
# scattered order, so consecutive requests are ~31 MiB apart.
RANDOM_STRIDE = 7919 * 4096


@dataclass
class Job:
    """One qemu-img bench job."""

    name: str
    bs: int
    qd: int
    write: bool
    step: int
    first_guess: int  # requests of the calibration probe


JOBS = [
    Job("1M seq write", MiB, 32, True, MiB, 200),
    Job("1M seq read", MiB, 32, False, MiB, 200),
    Job("64K seq write", 64 << 10, 32, True, 64 << 10, 1000),
    Job("64K seq read", 64 << 10, 32, False, 64 << 10, 1000),
    Job("4K rand write QD32", 4096, 32, True, RANDOM_STRIDE, 3000),
    Job("4K rand read QD32", 4096, 32, False, RANDOM_STRIDE, 3000),
    Job("4K rand write QD1", 4096, 1, True, RANDOM_STRIDE, 1000),
    Job("4K rand read QD1", 4096, 1, False, RANDOM_STRIDE, 1000),
]

# Issue 6 targets: (target, job) -> minimum ratio to tgtd.
GOALS = {
    ("vol-3r", "4K rand write QD32"): 0.30,
    ("vol-3r", "4K rand read QD32"): 0.40,
    ("vol-3r", "1M seq write"): 0.60,
    ("vol-3r", "1M seq read"): 0.70,
    ("file", "4K rand write QD32"): 0.5,
    ("file", "4K rand read QD32"): 0.5,
    ("file", "4K rand write QD1"): 0.5,
    ("file", "4K rand read QD1"): 0.5,
    ("file", "1M seq write"): 0.8,
    ("file", "1M seq read"): 0.8,
}


# Issue 17: (target, job) -> most CPU time per I/O, summed over the target's processes (us).
CPU_GOALS = {("vol-3r", "4K rand write QD32"): 150.0}


def cpu_goal(target: str, job: str, cpu_us: float | None) -> str:
    """The CPU-per-I/O goal cell of a row ("" when there is none)."""
    goal = CPU_GOALS.get((target, job))
    if goal is None or cpu_us is None:
        return ""
    return f"<= {goal:.0f} {'ok' if cpu_us <= goal else 'MISS'}"


class Procs:
    """The processes this run started; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop_all
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start one process in its own session, output to the shared log."""
        p = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        """Stop one process by PID."""
        if p.poll() is None:
            os.kill(p.pid, sig)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    def stop_all(self) -> None:
        """Stop every process still running, newest first (one failure does not stop the rest)."""
        for p in reversed(self.procs):
            try:
                self.stop(p, signal.SIGKILL if p.args[0] == "tgtd" else signal.SIGTERM)
            except (OSError, subprocess.SubprocessError) as e:
                print(f"bench: could not stop pid {p.pid}: {e}", file=sys.stderr)
        self.log.close()


@contextlib.contextmanager
def bench_session(prefix: str, who: str) -> Iterator[tuple[Path, Procs]]:
    """A temporary folder and the processes of one bench run: SIGTERM/SIGHUP (timeout, a closed
    terminal) unwind like Ctrl-C, a failure prints the tail of the servers' log (`who` names
    the bench), and every process started is stopped at the end, by PID."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        tmp = Path(d)
        procs = Procs(tmp / "servers.log")
        try:
            yield tmp, procs
        except Exception:
            tail = (tmp / "servers.log").read_text(errors="replace")[-3000:]
            print(f"{who}: failed; last server log lines:\n{tail}", file=sys.stderr)
            raise
        finally:
            procs.stop_all()


def jiva(*args: str) -> list[str]:
    """argv of the `jiva` CLI run by this interpreter."""
    return [sys.executable, "-m", "jiva_engine.cli", *args]


def api_get(api: str, path: str = "/v1/volume") -> dict:
    """GET a JSON document from a controller API."""
    with urllib.request.urlopen(f"http://{api}{path}", timeout=5) as r:
        return json.loads(r.read())


def api_post(api: str, path: str, body: dict) -> dict:
    """POST JSON to a controller API."""
    req = urllib.request.Request(
        f"http://{api}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_until(pred, timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll pred() until true; returns seconds waited, raises TimeoutError naming `what`."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by these processes (every thread), from /proc: the scheduler's
    nanosecond count (/proc/PID/task/TID/schedstat), else user + system time from
    /proc/PID/stat, whose 10 ms ticks are too coarse for an idle process's few ms per second."""
    try:
        return sum(
            int(f.read_text().split()[0]) / 1e9
            for pid in pids
            for f in Path(f"/proc/{pid}/task").glob("*/schedstat")
        )
    except (OSError, ValueError, IndexError):
        pass
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:  # comm may hold spaces: fields after its ")"
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


class JivaVolume:
    """A replicated volume: N `jiva replica` processes and one `jiva controller` with a portal."""

    def __init__(self, procs: Procs, root: Path, name: str, size: int, n: int) -> None:
        self.procs, self.root, self.name, self.size = procs, root, name, size
        self.replicas: list[tuple[str, subprocess.Popen | None]] = []
        for _ in range(n):
            self.replicas.append((self._replica_addr(), None))
        self.api = f"127.0.0.1:{free_port()}"
        self.portal_port = free_port()
        self.controller: subprocess.Popen | None = None
        self.url = f"iscsi://127.0.0.1:{self.portal_port}/iqn.2026-11.org.jiva-py:{name}/0"

    def pids(self) -> list[int]:
        """PIDs of the controller and every replica running now."""
        procs = [self.controller, *(p for _, p in self.replicas)]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def _replica_addr(self) -> str:
        return f"127.0.0.1:{free_port()}"

    def start_replica(self, i: int) -> None:
        """Start (or restart) replica i with its data directory."""
        addr, _ = self.replicas[i]
        d = self.root / f"{self.name}-r{i}"
        p = self.procs.start(
            jiva("replica", "--volume", self.name, "--listen", addr, "--dir", str(d),
                 "--size", str(self.size))
        )  # fmt: skip
        self.replicas[i] = (addr, p)
        wait_port("127.0.0.1", int(addr.rsplit(":", 1)[1]))

    def add_replica_slot(self) -> int:
        """A new (empty) replica, not yet known to the controller; returns its index."""
        self.replicas.append((self._replica_addr(), None))
        self.start_replica(len(self.replicas) - 1)
        return len(self.replicas) - 1

    def start_controller(self, members: list[int] | None = None) -> None:
        """Start the controller on the given replicas (default all)."""
        idx = range(len(self.replicas)) if members is None else members
        reps = [a for i in idx for a in ("--replica", self.replicas[i][0])]
        self.controller = self.procs.start(
            jiva("controller", "--volume", self.name, "--api", self.api, *reps,
                 "--portal", f"127.0.0.1:{self.portal_port}", "--size", str(self.size),
                 "--log-level", "WARNING")
        )  # fmt: skip

    def wait_serving(self, timeout: float = 60) -> float:
        """Wait for state serving with the portal listening; seconds waited."""
        t = wait_until(lambda: api_get(self.api)["state"] == "serving", timeout, "serving")
        wait_port("127.0.0.1", self.portal_port, timeout)
        return t

    def start(self) -> None:
        """Replicas, then the controller; wait until it serves."""
        for i in range(len(self.replicas)):
            self.start_replica(i)
        self.start_controller()
        self.wait_serving()

    def take_snapshots(self, n: int) -> None:
        """`n` snapshots, each after 64 MiB more of the volume was written (spread over it), so
        reads meet blocks of every layer and writes land on a head over a chain of `n`."""
        span = self.size // n
        for i in range(n):
            off = i * span
            cmd = ["qemu-io", "-f", "raw", "-c", f"write -P {i + 1} {off} {min(64 * MiB, span)}",
                   self.url]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            api_post(self.api, "/v1/snapshots", {"name": f"bench-{i}"})

    def mode(self, i: int) -> str | None:
        """Mode of replica i in the controller's status (None if unknown)."""
        for r in api_get(self.api)["replicas"]:
            if r["address"] == self.replicas[i][0]:
                return r["mode"]
        return None

    def replica_status(self, i: int) -> dict:
        """Status entry of replica i."""
        return next(r for r in api_get(self.api)["replicas"] if r["address"] == self.replicas[i][0])


def qemu_bench(url: str, job: Job, count: int, timeout: float = 900) -> float:
    """Run one qemu-img bench job; returns its run time in seconds."""
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count), "-d", str(job.qd),
           "-s", str(job.bs), "-S", str(job.step), *(["-w"] if job.write else []), url]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"qemu-img bench failed ({r.returncode}): {r.stdout}{r.stderr}")
    return float(m.group(1))


def calibrate(url: str, job: Job, seconds: float) -> int:
    """Request count that makes `job` last about `seconds` on this target (also a warm-up)."""
    count = job.first_guess
    while True:
        t = qemu_bench(url, job, count)
        if t >= 0.5 or count > 10_000_000:
            break
        count *= 4
    return max(job.qd, int(count / t * seconds * 1.2))


T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress line with the seconds since start."""
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def loadavg() -> float:
    """1-minute load average."""
    return round(os.getloadavg()[0], 2)


def run_jobs(
    targets: dict[str, str],
    pids: dict[str, list[int]],
    seconds: float,
    reps: int,
    only: list[str] | None,
) -> dict:
    """Every job on every target; reps interleaved so every ratio compares the same minute.

    Also the CPU time per I/O summed over every process of the target (`pids`): a figure that
    stays stable on a busy machine where IOPS do not."""
    counts: dict[tuple[str, str], int] = {}
    raw: dict[str, dict[str, list[dict]]] = {}
    jobs = [j for j in JOBS if not only or j.name in only]
    for rep in range(reps):
        for job in jobs:
            for tname, url in targets.items():
                key = (tname, job.name)
                if key not in counts:
                    counts[key] = calibrate(url, job, seconds)
                la = loadavg()
                n = counts[key]
                cpu0 = cpu_seconds(pids[tname])
                t = qemu_bench(url, job, n)
                for _ in range(3):  # shorter than asked (load changed): again, longer
                    if t >= seconds:
                        break
                    n = counts[key] = int(n / t * seconds * 1.2)
                    cpu0 = cpu_seconds(pids[tname])
                    t = qemu_bench(url, job, n)
                cpu_us = (cpu_seconds(pids[tname]) - cpu0) / n * 1e6
                iops = n / t
                raw.setdefault(job.name, {}).setdefault(tname, []).append(
                    {"count": n, "seconds": t, "iops": iops, "mb_s": iops * job.bs / 1e6,
                     "cpu_us": cpu_us, "load": la}
                )  # fmt: skip
                say(f"rep {rep + 1}/{reps} {job.name:<20} {tname:<10} {iops:10.0f} IOPS "
                    f"{iops * job.bs / 1e6:8.1f} MB/s {cpu_us:7.1f} us CPU/IO  {t:5.1f} s  "
                    f"load {la}")  # fmt: skip
    results: dict = {}
    for job in jobs:
        base = statistics.median(r["iops"] for r in raw[job.name]["tgtd"])
        for tname in targets:
            runs = raw[job.name][tname]
            med = statistics.median(r["iops"] for r in runs)
            results.setdefault(job.name, {})[tname] = {
                "iops": med,
                "mb_s": med * job.bs / 1e6,
                "cpu_us": statistics.median(r["cpu_us"] for r in runs),
                "ratio": med / base,
                "goal": GOALS.get((tname, job.name)),
                "runs": runs,
            }
    return results


def measure_rebuild(
    procs: Procs, root: Path, size: int, seconds_away: float, qd32_rate: float
) -> dict:
    """1 GiB full rebuild, a replica back after `seconds_away` of 4K writes, controller restart."""
    out: dict = {}
    vol = JivaVolume(procs, root, "rb", size, 2)
    vol.start()
    # fill the whole volume (1M sequential writes, exactly once) so the rebuild copies `size`
    fill = Job("fill", MiB, 32, True, MiB, 0)
    t = qemu_bench(vol.url, fill, size // MiB)
    out["fill_mb_s"] = size / t / 1e6
    # full rebuild of an empty third replica
    i = vol.add_replica_slot()
    t0 = time.monotonic()
    api_post(vol.api, "/v1/replicas", {"address": vol.replicas[i][0]})
    wait_until(lambda: vol.mode(i) == "RW", 600, "the rebuilt replica to become RW")
    wall = time.monotonic() - t0
    lr = vol.replica_status(i)["last_rebuild"] or {}
    copied = lr.get("copied", 0)
    secs = lr.get("seconds") or wall
    out["full_rebuild"] = {"kind": lr.get("kind"), "copied": copied, "seconds": secs,
                           "wall_seconds": wall, "mib_s": copied / MiB / secs, "load": loadavg()}  # fmt: skip
    # a replica away for `seconds_away` of 4K random writes QD32, then back
    addr, p = vol.replicas[i]
    procs.stop(p, signal.SIGKILL)
    wr = Job("4K rand write QD32", 4096, 32, True, RANDOM_STRIDE, 0)
    t = qemu_bench(vol.url, wr, max(1000, int(qd32_rate * seconds_away)))
    t0 = time.monotonic()
    vol.start_replica(i)
    wait_until(lambda: vol.mode(i) == "RW", 300, "the returning replica to become RW", 0.02)
    back = time.monotonic() - t0
    lr = vol.replica_status(i)["last_rebuild"] or {}
    out["replica_back"] = {"away_seconds": t, "seconds": back, "kind": lr.get("kind"),
                           "copied": lr.get("copied"), "regions": lr.get("regions"),
                           "load": loadavg()}  # fmt: skip
    # controller crash (kill -9) and restart: until a 4K write through iSCSI succeeds
    assert vol.controller is not None
    t0 = time.monotonic()
    procs.stop(vol.controller, signal.SIGKILL)
    vol.start_controller()
    probe = ["qemu-io", "-f", "raw", "-c", "write -P 7 0 4k", vol.url]
    wait_until(
        lambda: (
            subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
            and vol.mode(0) == "RW"
        ),
        120,
        "I/O through the restarted controller",
        0.02,
    )
    out["controller_restart"] = {"seconds": time.monotonic() - t0, "load": loadavg()}
    return out


def chart(results: dict, path: Path, targets: list[str]) -> bool:
    """PNG bar chart of the ratios to tgtd; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    jobs = list(results)
    others = [t for t in targets if t != "tgtd"]
    fig, ax = plt.subplots(figsize=(11, 5))
    w = 0.8 / len(others)
    for k, t in enumerate(others):
        xs = [j + k * w for j in range(len(jobs))]
        ax.bar(xs, [results[j][t]["ratio"] for j in jobs], w, label=t)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="tgtd = 1.0")
    ax.set_xticks([j + w * (len(others) - 1) / 2 for j in range(len(jobs))])
    ax.set_xticklabels(jobs, rotation=25, ha="right")
    ax.set_ylabel("ratio to tgtd (same run)")
    ax.set_title("jiva-py vs tgtd, qemu-img bench (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    """Start everything, run the jobs and the recovery measurements, print and save the results."""
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0 if quick else 10.0, help="per job")
    ap.add_argument("--reps", type=int, default=1 if quick else 3, help="repetitions (median)")
    ap.add_argument("--size", default="1G", help="size of every target (default 1G)")
    ap.add_argument("--targets", default="tgtd,file,vol-1r,vol-3r,vol-3r-10s",
                    help="comma-separated (vol-3r-10s: 3 replicas under 10 snapshots)")  # fmt: skip
    ap.add_argument("--jobs", help="comma-separated job names (default all)")
    ap.add_argument("--no-recovery", action="store_true", help="skip rebuild/return/restart")
    ap.add_argument("--no-uvloop", action="store_true", help="run jiva on the stdlib loop")
    ap.add_argument("--results", default=str(ROOT / "results"), help="output folder")
    args = ap.parse_args()
    for tool in ("tgtd", "tgtadm", "qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make bench installs tgt, qemu-utils)",
                  file=sys.stderr)  # fmt: skip
            return 2
    from jiva_engine.util import parse_size

    size = parse_size(args.size)
    wanted = args.targets.split(",")
    if "tgtd" not in wanted:
        wanted.insert(0, "tgtd")
    only = args.jobs.split(",") if args.jobs else None
    env_loop = {"JIVA_NO_UVLOOP": "1" if args.no_uvloop else "0"}
    os.environ.update(env_loop)
    started = time.strftime("%Y%m%d-%H%M%S")
    meta = {"started": started, "quick": quick, "seconds": args.seconds, "reps": args.reps,
            "size": size, "uvloop": not args.no_uvloop, "load_start": os.getloadavg(),
            "cpus": os.cpu_count()}  # fmt: skip
    print(f"bench: {len(wanted)} targets, {args.seconds:g} s jobs, {args.reps} repetition(s), "
          f"load {meta['load_start'][0]:.2f}", flush=True)  # fmt: skip
    recovery: dict = {}
    try:
        with bench_session("jiva-perf-", "bench") as (tmp, procs):
            targets: dict[str, str] = {}
            pids: dict[str, list[int]] = {}
            img = tmp / "tgt.img"
            with open(img, "wb") as f:
                f.truncate(size)
            tgtd, targets["tgtd"] = start_tgtd(img, free_port(), procs.log)
            procs.procs.append(tgtd)
            pids["tgtd"] = [tgtd.pid]
            if "file" in wanted:
                port = free_port()
                ft = procs.start(jiva("target", "--file", str(tmp / "file.img"), "--size",
                                      str(size), "--portal", f"127.0.0.1:{port}", "--log-level",
                                      "WARNING"))  # fmt: skip
                pids["file"] = [ft.pid]
                wait_port("127.0.0.1", port)
                targets["file"] = f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.jiva-py:file/0"
            for n in (1, 3):
                if f"vol-{n}r" in wanted:
                    v = JivaVolume(procs, tmp, f"vol{n}r", size, n)
                    v.start()
                    targets[f"vol-{n}r"] = v.url
                    pids[f"vol-{n}r"] = v.pids()
            if "vol-3r-10s" in wanted:
                v = JivaVolume(procs, tmp, "vol3r10s", size, 3)
                v.start()
                v.take_snapshots(10)
                targets["vol-3r-10s"] = v.url
                pids["vol-3r-10s"] = v.pids()
            say("targets up: " + ", ".join(targets))
            results = run_jobs(targets, pids, args.seconds, args.reps, only)
            if not args.no_recovery:
                q = results.get("4K rand write QD32", {}).get("vol-3r", {}).get("iops", 3000)
                recovery = measure_rebuild(procs, tmp, size, 10.0, q)
                say("recovery measured")
    finally:
        say("stopped")
    meta["load_end"] = os.getloadavg()
    report(results, recovery, meta, list(targets), Path(args.results))
    return 0


def report(results: dict, recovery: dict, meta: dict, targets: list[str], outdir: Path) -> None:
    """Print the tables; write JSON and the chart."""
    rows = []
    for job, per in results.items():
        for t in targets:
            r = per[t]
            goal = r["goal"]
            mark = "" if goal is None else f">= {goal:.2f} {'ok' if r['ratio'] >= goal else 'MISS'}"
            cpu = r.get("cpu_us")
            rows.append([job if t == "tgtd" else "", t, f"{r['iops']:,.0f}", f"{r['mb_s']:,.1f}",
                         f"{r['ratio']:.2f}", "-" if cpu is None else f"{cpu:,.1f}",
                         cpu_goal(t, job, cpu), mark])  # fmt: skip
    print()
    print(tabulate(rows, headers=["job", "target", "IOPS", "MB/s", "x tgtd", "CPU us/IO",
                                  "CPU goal", "goal"],
                   colalign=("left", "left", "right", "right", "right", "right", "left",
                             "left")))  # fmt: skip
    print(f"(median of {meta['reps']} x {meta['seconds']:g} s; 4K rand = stride {RANDOM_STRIDE // 4096}"
          f" blocks mod size; seq = step = block size; all QD32 unless named; CPU us/IO = user +"
          f" system time of every process of the target / requests)")  # fmt: skip
    if "vol-3r" in targets and "vol-3r-10s" in targets:  # issue 15: at most 10 % on writes
        cost = [[job, f"{per['vol-3r-10s']['iops'] / per['vol-3r']['iops']:.2f}"]
                for job, per in results.items() if per["vol-3r"]["iops"]]  # fmt: skip
        print()
        print(tabulate(cost, headers=["job", "10 snapshots / none (IOPS, 3 replicas)"]))
    if recovery:
        fr, rb, cr = (
            recovery["full_rebuild"],
            recovery["replica_back"],
            recovery["controller_restart"],
        )
        rrows = [
            ["full rebuild 1 replica", f"{fr['copied'] / MiB:,.0f} MiB in {fr['seconds']:.2f} s",
             f"{fr['mib_s']:.0f} MiB/s", "ok" if fr["mib_s"] >= 300 else "MISS (>= 300 MiB/s)"],
            ["replica back after 10 s away", f"{rb['kind']}, {(rb['copied'] or 0) / MiB:,.0f} MiB "
             f"({rb['regions']} regions)", f"{rb['seconds']:.2f} s",
             "ok" if rb["seconds"] <= 3 else "MISS (<= 3 s)"],
            ["controller kill -9 + restart", "until a 4K write via iSCSI succeeds",
             f"{cr['seconds']:.2f} s", ""],
        ]  # fmt: skip
        print()
        print(tabulate(rrows, headers=["recovery", "what", "figure", "goal"]))
    print(f"load average: start {meta['load_start'][0]:.2f}, end {meta['load_end'][0]:.2f} "
          f"({meta['cpus']} CPUs)")  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    stem = outdir / f"bench-{meta['started']}"
    doc = {"meta": meta, "targets": targets, "jobs": results, "recovery": recovery}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    shutil.copyfile(stem.with_suffix(".json"), outdir / "bench-latest.json")
    if chart(results, stem.with_suffix(".png"), targets):
        shutil.copyfile(stem.with_suffix(".png"), outdir / "bench-latest.png")
        print(f"results: {stem}.json, {stem}.png")
    else:
        print(f"results: {stem}.json (no chart: pip install '.[bench]' for matplotlib)")


if __name__ == "__main__":
    sys.exit(main())
