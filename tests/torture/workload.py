"""The torture workload: 4 KiB blocks that carry their LBA, a sequence number and a CRC.

It writes through an `Initiator`, records which writes were acknowledged, and checks that every
block reads back at its latest acknowledged version or a later unacknowledged one.
"""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from dataclasses import dataclass, field

from jiva_engine.initiator import ConnectionLost, Initiator, IscsiError

BLOCK = 4096
MAGIC = b"JTRT"
_HDR = struct.Struct(">4sQQ")  # magic, lba (4K units), seq


def make_block(lba: int, seq: int) -> bytes:
    """One self-describing 4 KiB block: header, filler derived from (lba, seq), CRC32 at the end."""
    head = _HDR.pack(MAGIC, lba, seq)
    fill = (struct.pack(">QQ", lba ^ 0x5A5A5A5A, seq * 2654435761 & (2**64 - 1)) * 256)[
        : BLOCK - len(head) - 4
    ]
    body = head + fill
    return body + struct.pack(">I", zlib.crc32(body))


def parse_block(b: bytes) -> tuple[str, int, int]:
    """('zero'|'ok'|'torn', lba, seq) for one 4 KiB block read back."""
    if not any(b):
        return "zero", -1, 0
    magic, lba, seq = _HDR.unpack_from(b)
    (crc,) = struct.unpack_from(">I", b, BLOCK - 4)
    if magic != MAGIC or zlib.crc32(b[: BLOCK - 4]) != crc:
        return "torn", -1, 0
    return "ok", lba, seq


@dataclass
class Stats:
    """Counters the summary table prints."""

    writes_issued: int = 0
    writes_acked: int = 0
    writes_failed: int = 0
    reads_checked: int = 0
    blocks_verified: int = 0
    reconnects: int = 0
    violations: list[str] = field(default_factory=list)


class Workload:
    """Concurrent writers (and checking readers) over `nblocks` 4 KiB blocks of the LUN.

    Writers never overlap (a block is locked while a write or check of it is in flight), so the
    acknowledged order of each block is exact: `acked[lba]` is the newest acknowledged sequence,
    `issued[lba]` every sequence ever sent for it (acknowledged or not).
    """

    def __init__(self, init: Initiator, nblocks: int, rng: random.Random, writers: int = 6) -> None:
        self.init = init
        self.nblocks = nblocks
        self.rng = rng
        self.writers = writers
        self.acked: dict[int, int] = {}
        self.issued: dict[int, set[int]] = {}
        self.locked: set[int] = set()
        self.frozen: set[int] = set()  # not written meanwhile (still read): bit-rot blocks
        self.seq = 0
        self.stats = Stats()
        self._run = asyncio.Event()
        self._idle = asyncio.Event()
        self._active = 0
        self._stop = False
        self._tasks: list[asyncio.Task] = []
        self._conn_lock = asyncio.Lock()

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the writer and reader tasks."""
        self._run.set()
        self._tasks = [asyncio.create_task(self._writer()) for _ in range(self.writers)]
        self._tasks.append(asyncio.create_task(self._reader()))

    async def pause(self) -> None:
        """Stop issuing I/O and wait until nothing is in flight."""
        self._run.clear()
        while self._active:
            self._idle.clear()
            await self._idle.wait()

    def resume(self) -> None:
        """Issue I/O again."""
        self._run.set()

    async def stop(self) -> None:
        """Stop every task."""
        self._stop = True
        await self.pause()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ensure_connected(self) -> None:
        """Log in again after a connection loss (one task does it, the others wait)."""
        async with self._conn_lock:
            if not self.init.connected:
                await self.init.reconnect(deadline=120)
                self.stats.reconnects += 1

    # ------------------------------------------------------------------ I/O tasks
    def _pick(self) -> list[int] | None:
        for _ in range(20):
            n = self.rng.choice((1, 1, 1, 2, 4, 8))
            start = self.rng.randrange(0, self.nblocks - n + 1)
            lbas = list(range(start, start + n))
            if not self.locked.intersection(lbas) and not self.frozen.intersection(lbas):
                return lbas
        return None

    async def _enter(self) -> bool:
        await self._run.wait()
        if self._stop:
            return False
        self._active += 1
        return True

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()

    async def _writer(self) -> None:
        while not self._stop:
            if not await self._enter():
                return
            lbas = None
            try:
                if not self.init.connected:
                    await self.ensure_connected()
                lbas = self._pick()
                if lbas is None:
                    await asyncio.sleep(0)
                    continue
                self.locked.update(lbas)
                seqs = []
                for lba in lbas:
                    self.seq += 1
                    seqs.append(self.seq)
                    self.issued.setdefault(lba, set()).add(self.seq)
                data = b"".join(make_block(lba, s) for lba, s in zip(lbas, seqs, strict=True))
                self.stats.writes_issued += 1
                try:
                    await self.init.write(lbas[0] * (BLOCK // 512), data)
                except (ConnectionLost, IscsiError, OSError):
                    self.stats.writes_failed += 1
                    await asyncio.sleep(0.05)
                else:
                    self.stats.writes_acked += 1
                    for lba, s in zip(lbas, seqs, strict=True):
                        self.acked[lba] = s
            except (TimeoutError, OSError, IscsiError):
                await asyncio.sleep(0.1)
            finally:
                if lbas:
                    self.locked.difference_update(lbas)
                self._leave()

    async def _reader(self) -> None:
        """Check random written blocks while faults happen (reads must never go back in time)."""
        while not self._stop:
            if not await self._enter():
                return
            lba = None
            try:
                if not self.acked or not self.init.connected:
                    await asyncio.sleep(0.05)
                    continue
                lba = self.rng.choice(list(self.acked))
                if lba in self.locked:
                    lba = None
                    continue
                self.locked.add(lba)
                try:
                    data = await self.init.read(lba * (BLOCK // 512), BLOCK // 512)
                except (ConnectionLost, IscsiError, OSError):
                    await asyncio.sleep(0.05)
                    continue
                self.check(lba, data, "online read")
                self.stats.reads_checked += 1
            finally:
                if lba is not None:
                    self.locked.discard(lba)
                self._leave()

    # ------------------------------------------------------------------ verification
    def check(self, lba: int, data: bytes, where: str) -> None:
        """Record a violation if this block is torn, foreign or older than its last ack."""
        kind, got_lba, seq = parse_block(data)
        want = self.acked.get(lba, 0)
        issued = self.issued.get(lba, set())
        if kind == "torn":
            self.stats.violations.append(f"{where}: block {lba} is torn (bad magic/CRC)")
        elif kind == "zero":
            if want:
                self.stats.violations.append(
                    f"{where}: block {lba} reads zeroes, acknowledged seq {want}"
                )
        elif got_lba != lba or seq not in issued:
            self.stats.violations.append(
                f"{where}: block {lba} holds a foreign block (lba {got_lba}, seq {seq})"
            )
        elif seq < want:
            self.stats.violations.append(
                f"{where}: block {lba} went back to seq {seq}, acknowledged seq {want}"
            )

    async def verify_all(self, chunk: int = 64) -> int:
        """Read every block (workload paused) and check it; returns blocks verified."""
        n = 0
        lba = 0
        while lba < self.nblocks:
            cnt = min(chunk, self.nblocks - lba)
            for attempt in range(5):
                try:
                    await self.ensure_connected()
                    data = await self.init.read(lba * (BLOCK // 512), cnt * (BLOCK // 512))
                    break
                except (TimeoutError, ConnectionLost, IscsiError, OSError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
            for i in range(cnt):
                self.check(lba + i, data[i * BLOCK : (i + 1) * BLOCK], "verify")
            n += cnt
            lba += cnt
        self.stats.blocks_verified += n
        return n
