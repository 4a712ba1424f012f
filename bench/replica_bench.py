"""Micro-benchmark: one ReplicaClient against one local replica process, 4K random I/O at a queue depth.

Usage: python bench/replica_bench.py [--seconds 10] [--qd 32] [--bs 4096] [--size 1G]
       [--rw write|read] [--client protocol|streams]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient
from jiva_engine.util import parse_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_connect(port: int, volume: str) -> ReplicaClient:
    deadline = time.monotonic() + 15
    while True:
        c = ReplicaClient("127.0.0.1", port, volume, timeout=10)
        try:
            await c.connect()
            return c
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class StreamsClient:
    """Just enough of the protocol over asyncio Streams (readexactly), to compare with Protocol."""

    def __init__(self, port: int, volume: str) -> None:
        self.port, self.volume = port, volume
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 1

    async def connect(self) -> None:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        hdr = wire.HEADER.unpack(await self.r.readexactly(wire.HEADER_SIZE))
        await self.r.readexactly(hdr[3])  # HELLO
        self.reader = asyncio.ensure_future(self._read_loop())
        body = wire.dumps({"volume": self.volume, "mac": "", "cnonce": ""})
        await self._send(wire.AUTH, 0, 0, 0, body)

    async def _read_loop(self) -> None:
        rx = self.r.readexactly
        unpack = wire.HEADER.unpack
        while True:
            _m, _op, status, plen, rid, _o, _l, _e = unpack(await rx(wire.HEADER_SIZE))
            payload = await rx(plen) if plen else b""
            fut = self.pending.pop(rid)
            if status:
                fut.set_exception(RuntimeError(f"status {status}: {payload!r}"))
            else:
                fut.set_result(payload)

    def _send(self, op: int, off: int, ln: int, epoch: int, payload: bytes = b"") -> asyncio.Future:
        rid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.w.write(wire.pack_header(op, rid, len(payload), 0, off, ln, epoch) + payload)
        return fut

    def write(self, off: int, data: bytes, epoch: int) -> asyncio.Future:
        return self._send(wire.WRITE, off, 0, epoch, data)

    def read(self, off: int, n: int, epoch: int) -> asyncio.Future:
        return self._send(wire.READ, off, n, epoch)

    async def set_meta(self, **fields) -> None:
        await self._send(wire.SET_META, 0, 0, fields.get("epoch", 0), wire.dumps(fields))

    async def info(self) -> dict:
        return wire.loads(await self._send(wire.INFO, 0, 0, 1))

    async def close(self) -> None:
        self.reader.cancel()
        self.w.close()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(args: argparse.Namespace, port: int, pid: int) -> dict:
    size = parse_size(args.size)
    c = await _wait_connect(port, "bench")
    if args.client == "streams":
        await c.close()
        c = StreamsClient(port, "bench")
        await c.connect()
    await c.set_meta(epoch=1)
    bs = args.bs
    nblocks = size // bs
    buf = os.urandom(bs)
    if args.rw == "read":  # pre-fill so reads hit written data
        chunk = os.urandom(1 << 20)
        for base in range(0, size >> 20, 64):
            n = min(64, (size >> 20) - base)
            await asyncio.gather(*(c.write((base + i) << 20, chunk, 1) for i in range(n)))
    rnd = random.Random(1)
    done = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done
        write, read = c.write, c.read
        randrange = rnd.randrange
        while time.monotonic() < stop_at:
            off = randrange(nblocks) * bs
            if args.rw == "write":
                await write(off, buf, 1)
            else:
                await read(off, bs, 1)
            done += 1

    # warm-up (also lets the dirty map settle), then the measured run
    stop_at = time.monotonic() + min(2.0, args.seconds / 3)
    await asyncio.gather(*(worker() for _ in range(args.qd)))
    done = 0
    t0 = time.monotonic()
    cpu_r0, cpu_c0 = _cpu_seconds(pid), time.process_time()
    stop_at = t0 + args.seconds
    await asyncio.gather(*(worker() for _ in range(args.qd)))
    elapsed = time.monotonic() - t0
    cpu_r, cpu_c = _cpu_seconds(pid) - cpu_r0, time.process_time() - cpu_c0
    info = await c.info()
    await c.close()
    return {"ops": done, "elapsed": elapsed, "info": info, "cpu_r": cpu_r, "cpu_c": cpu_c}


def main() -> int:
    """Start a replica, drive it, print a table, stop the replica by PID."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--qd", type=int, default=32)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--size", default="1G")
    p.add_argument("--rw", choices=["write", "read"], default="write")
    p.add_argument("--dir", help="data directory (default: a temp dir, removed afterwards)")
    p.add_argument(
        "--client",
        choices=["protocol", "streams"],
        default="protocol",
        help="ReplicaClient (asyncio Protocol) or a minimal asyncio Streams client, to compare",
    )
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="jiva-bench-")
    port = _free_port()
    log = open(os.path.join(tmp, "replica.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jiva_engine.replica", "--volume", "bench", "--size", args.size]
        + ["--listen", f"127.0.0.1:{port}", "--dir", args.dir or os.path.join(tmp, "data")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        r = asyncio.run(_run(args, port, proc.pid))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    iops = r["ops"] / r["elapsed"]
    rows = [
        [
            f"{args.bs // 1024}K random {args.rw} ({args.client})",
            args.qd,
            f"{r['elapsed']:.1f}",
            r["ops"],
            f"{iops:,.0f}",
            f"{iops * args.bs / 1e6:.1f}",
            f"{r['cpu_r'] / r['ops'] * 1e6:.1f}",
            f"{r['cpu_c'] / r['ops'] * 1e6:.1f}",
        ]
    ]
    head = ["workload", "QD", "seconds", "ops", "IOPS", "MB/s", "replica CPU us/op"]
    print(tabulate(rows, headers=[*head, "client CPU us/op"]))
    st = r["info"]["stats"]
    print(f"replica: {st['reads_offloaded']} of {st['reads']} reads went to a worker thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
