"""Benchmark `jiva target --file` against tgtd serving a same-size file, with qemu-img bench.

Starts tgtd (Debian `tgt`) in the foreground on a free port with its own control port, and
`jiva target` on another; runs the same qemu-img bench jobs against both and prints a table with
the ratio jiva/tgtd. Every process is started here and stopped by PID.

    .venv/bin/python bench/iscsi_bench.py [--size 1G] [--count-4k 100000] [--count-1m 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

from jiva_engine.util import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


def stop(p: subprocess.Popen) -> None:
    """SIGTERM the process by PID, SIGKILL if it lingers."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def start_tgtd(img: Path, port: int, log) -> tuple[subprocess.Popen, str]:
    """Run tgtd in the foreground on `port`, LUN 1 = img; returns (process, URL)."""
    ctl = str(20000 + port % 10000)
    p = subprocess.Popen(
        ["tgtd", "-f", "-C", ctl, "--iscsi", f"portal=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_port("127.0.0.1", port)
    iqn = "iqn.2026-11.org.jiva-py.bench:tgtd"
    adm = ["tgtadm", "-C", ctl, "--lld", "iscsi"]
    for args in (
        ["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
        ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(img)],
        ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"],
    ):
        subprocess.run(adm + args, check=True, capture_output=True)
    return p, f"iscsi://127.0.0.1:{port}/{iqn}/1"


def start_jiva(img: Path, port: int, size: str, log, uvloop: bool) -> tuple[subprocess.Popen, str]:
    """Run `jiva target --file img`; returns (process, URL)."""
    env = {**os.environ, "JIVA_NO_UVLOOP": "0" if uvloop else "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jiva_engine.cli",
            "target",
            "--file",
            str(img),
            "--size",
            size,
            "--portal",
            f"127.0.0.1:{port}",
            "--log-level",
            "WARNING",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=ROOT,
    )
    wait_port("127.0.0.1", port)
    return p, f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.jiva-py:{img.stem}/0"


def bench(url: str, size: str, count: int, write: bool) -> float:
    """Run one qemu-img bench job; returns seconds."""
    step = ["-S", size] if size != "4k" else []
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count), "-d", "32",
           "-s", size, *step, *(["-w"] if write else []), url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900).stdout
    m = re.search(r"Run completed in ([\d.]+) seconds", out)
    if not m:
        raise RuntimeError(f"unexpected qemu-img bench output: {out}")
    return float(m.group(1))


def main() -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="backing file size for both targets")
    ap.add_argument("--count-4k", type=int, default=100000, help="4K requests per job")
    ap.add_argument("--count-1m", type=int, default=2000, help="1M requests per job")
    ap.add_argument("--no-uvloop", action="store_true", help="run jiva on the stdlib loop")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per job and target, best kept [%(default)s]"
    )
    args = ap.parse_args()
    for tool in ("tgtd", "tgtadm", "qemu-img"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (Debian tgt / qemu-utils)", file=sys.stderr)
            return 2
    from jiva_engine.util import parse_size

    nbytes = parse_size(args.size)
    jobs = [
        ("4K write QD32", "4k", args.count_4k, True, "IOPS"),
        ("4K read QD32", "4k", args.count_4k, False, "IOPS"),
        ("1M seq write QD32", "1M", args.count_1m, True, "MB/s"),
        ("1M seq read QD32", "1M", args.count_1m, False, "MB/s"),
    ]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="jiva-bench-") as d:
        tmp = Path(d)
        log = open(tmp / "servers.log", "ab")  # noqa: SIM115 - closed below
        procs: list[subprocess.Popen] = []
        try:
            tgt_img = tmp / "tgt.img"
            with open(tgt_img, "wb") as f:
                f.truncate(nbytes)
            tp, turl = start_tgtd(tgt_img, free_port(), log)
            procs.append(tp)
            jp, jurl = start_jiva(tmp / "jiva.img", free_port(), args.size, log, not args.no_uvloop)
            procs.append(jp)
            for name, size, count, write, unit in jobs:
                # interleave the two targets and keep each one's best run: on a shared
                # machine the noise is one-sided (other load only ever slows a run down)
                for _ in range(max(1, args.repeat)):
                    for who, url in (("tgtd", turl), ("jiva", jurl)):
                        secs = bench(url, size, count, write)
                        per = count / secs if unit == "IOPS" else count * (1 << 20) / secs / 1e6
                        r = results.setdefault(name, {})
                        r[who] = max(r.get(who, 0.0), per)
                        r["unit"] = unit  # type: ignore[assignment]
        finally:
            for p in procs:
                stop(p)
            log.close()
    rows = []
    for name, r in results.items():
        rows.append([name, r["unit"], f"{r['tgtd']:.0f}", f"{r['jiva']:.0f}",
                     f"{r['jiva'] / r['tgtd']:.2f}"])  # fmt: skip
    print(tabulate(rows, headers=["job", "unit", "tgtd", "jiva", "jiva/tgtd"]))
    print(
        f"(best of {args.repeat}; qemu-img bench walks offsets sequentially with step = request"
        " size; -t none, QD32)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
