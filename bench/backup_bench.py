"""Backup, restore and clone throughput (issue 15): real `jiva replica` and `jiva controller`
processes on this machine, random (incompressible) data written with qemu-img, then

  backup       `jiva backup create` of a snapshot into an empty store (every block new)
  incremental  a second backup of the same snapshot (every block already stored: read + hash)
  restore      `jiva backup restore` into a new volume (every block checked, then written)
  clone        `jiva clone` of the snapshot into that volume

each timed by the command itself (its summary line) and checked byte for byte at the end.
Usage: .venv/bin/python bench/backup_bench.py [--size 256] [--replicas 3] [--parallel 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_backup import Volume, jiva
from tests.procs import Procs

MiB = 1 << 20


def timed(*args: str) -> dict:
    p = jiva(*args, "--json")
    if p.returncode != 0:
        raise SystemExit(f"jiva {args[0]} {args[1]} failed: {p.stderr}")
    return json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="volume size in MiB (default 256)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per volume (default 3)")
    ap.add_argument("--parallel", default="4", help="requests in flight (default 4)")
    args = ap.parse_args()
    size = args.size * MiB
    root = Path(tempfile.mkdtemp(prefix="jiva-backup-bench-"))
    procs = Procs(root)
    rows = []
    try:
        src = Volume(procs, root / "src", "bsrc", size, args.replicas)
        asyncio.run(src.healthy())
        data = root / "random.img"
        data.write_bytes(os.urandom(size))
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(data),
                        src.url], check=True)  # fmt: skip
        asyncio.run(src.snapshot("s1"))
        store, tok, par = str(root / "store"), str(src.token_file), ["--parallel", args.parallel]
        for name, what in (("b1", "backup"), ("b2", "incremental (nothing new)")):
            doc = timed("backup", "create", "--api", src.api, "--snapshot", "s1", "--to", store,
                        "--name", name, "--token-file", tok, *par)  # fmt: skip
            rows.append([what, doc["read"] / MiB, doc["took"], doc["rate"] / MiB])
        dst = Volume(procs, root / "dst", "bdst", size, args.replicas)
        asyncio.run(dst.healthy())
        res = timed("backup", "restore", "--from", store, "--backup", "b1", "--api", dst.api,
                    "--token-file", str(dst.token_file), *par)  # fmt: skip
        rows.append(["restore", res["bytes"] / MiB, res["took"], res["rate"] / MiB])
        ok_restore = dst.read_all(root) == data.read_bytes()
        res = timed("clone", "--from-api", src.api, "--snapshot", "s1", "--api", dst.api,
                    "--token-file", str(dst.token_file), "--from-token-file", tok, *par)  # fmt: skip
        rows.append(["clone", res["bytes"] / MiB, res["took"], res["rate"] / MiB])
        ok_clone = dst.read_all(root) == data.read_bytes()
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.size} MiB of random data, {args.replicas} replicas per volume, "
          f"{os.cpu_count()} CPUs, --parallel {args.parallel}")  # fmt: skip
    print(tabulate(rows, ["", "MiB", "s", "MiB/s"], floatfmt=".1f"))
    print(f"restore byte-identical: {ok_restore}, clone byte-identical: {ok_clone}")
    return 0 if ok_restore and ok_clone else 1


if __name__ == "__main__":
    sys.exit(main())
