"""What an idle volume costs: CPU per process kind while nothing does I/O.

Starts one 3-replica volume on loopback the way the Ansible service layer runs it without
systemd (every `jiva` process under `python -m jiva_engine.supervise`), waits until it serves,
then reads the CPU time of every process from /proc over an idle span and prints milliseconds
of CPU per second per process (per kind: controller, replica, supervisor).

    PYTHONPATH=. .venv/bin/python bench/idle_cpu.py [--seconds 20] [--replicas 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import JivaVolume, MiB, Procs, bench_session, cpu_seconds, wait_until


class SupervisedProcs(Procs):
    """Procs whose every process runs under a supervisor (stopping the supervisor stops it)."""

    def __init__(self, log: Path, run_dir: Path, controller_args: list[str]) -> None:
        super().__init__(log)
        self.run_dir = run_dir
        self.controller_args = controller_args  # added to `jiva controller ...`
        self.pidfiles: dict[int, Path] = {}  # supervisor pid -> its pidfile

    def start(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        name = f"svc{len(self.procs)}"
        pidfile = self.run_dir / f"{name}.pid"
        sup = [sys.executable, "-m", "jiva_engine.supervise", "--name", name,
               "--pidfile", str(pidfile), "--log", self.log.name, "--"]  # fmt: skip
        if "controller" in argv:
            argv = argv + self.controller_args
        p = super().start(sup + argv, env)
        self.pidfiles[p.pid] = pidfile
        child = Path(f"{pidfile}.child")
        wait_until(child.exists, 30, f"{name}'s child")
        return p

    def child(self, sup_pid: int) -> int:
        """The pid of the process a supervisor runs."""
        return int(Path(f"{self.pidfiles[sup_pid]}.child").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="idle span measured")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="idle seconds before measuring")
    ap.add_argument(
        "--scrub-interval", default="7d", help="the controller's (default 7d, as the Ansible role)"
    )
    args = ap.parse_args()
    with bench_session("jiva-idle-", "idle_cpu") as (tmp, plain):
        plain.log.close()
        procs = SupervisedProcs(tmp / "servers.log", tmp, ["--scrub-interval", args.scrub_interval])
        try:
            vol = JivaVolume(procs, tmp, "idle", 64 * MiB, args.replicas)
            vol.start()
            assert vol.controller is not None
            kinds = {
                "controller": [procs.child(vol.controller.pid)],
                "replica": [procs.child(p.pid) for _, p in vol.replicas if p is not None],
                "supervisor": [p.pid for p in procs.procs],
            }
            time.sleep(args.settle)  # start-up work (the claim, the first syncs) is over
            before = {k: cpu_seconds(v) for k, v in kinds.items()}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            span = time.monotonic() - t0
            after = {k: cpu_seconds(v) for k, v in kinds.items()}
        finally:
            procs.stop_all()
    print(f"idle CPU over {span:.1f} s, one volume with {args.replicas} replicas")
    print(f"{'kind':<12}{'procs':>6}{'ms/s each':>12}{'ms/s total':>12}")
    total = 0.0
    for k, pids in kinds.items():
        ms = (after[k] - before[k]) * 1000 / span
        total += ms
        print(f"{k:<12}{len(pids):>6}{ms / len(pids):>12.2f}{ms:>12.2f}")
    print(f"{'all':<12}{sum(map(len, kinds.values())):>6}{'':>12}{total:>12.2f}")


if __name__ == "__main__":
    main()
