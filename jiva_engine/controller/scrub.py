"""Scrub (docs/ENGINE.md "Scrub"): one online pass over the whole volume comparing every current
member's copy of every 4 KiB block, repairing what can be repaired.

The pass goes chunk by chunk (CHUNK bytes of whole blocks). Each chunk is held in the range lock
while every RW member is asked for its CHECKSUMS at once, so writes to that chunk wait for it
(briefly) and every member's answer describes the same data. Per block, `decide()` says what to
do: copies failing their stored checksum are rewritten from a good copy; good copies that
disagree (a write that reached one disk wrong but was checksummed as written) are settled by a
strict majority of all the members; without a good copy, or without a majority, the block is
recorded as unrepaired (the volume reports itself degraded). Repairs go through the Repairer.

The pass is paced (`rate`, bytes of volume per second); one runs at a time; with an interval,
a new pass starts that long after the previous one finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jiva_engine.controller.pacing import Throttle
from jiva_engine.controller.peers import Peer
from jiva_engine.controller.repair import BLOCK
from jiva_engine.protocol.client import ReplicaError, ReplicaUnavailable
from jiva_engine.volume import VolumeError, VolumeMediumError

if TYPE_CHECKING:
    from jiva_engine.controller.volume import Volume

log = logging.getLogger(__name__)

MiB = 1 << 20
CHUNK = 1 * MiB  # bytes compared under one range lock
DEFAULT_RATE = 64 * MiB  # bytes of volume per second
CHUNK_RETRIES = 5  # attempts of one chunk whose members fail meanwhile
BAD = None  # a member's entry in decide(): its copy fails its stored checksum


class ScrubRunning(RuntimeError):
    """A scrub was asked for while one runs."""


@dataclass
class Verdict:
    """What to do about one block (see decide())."""

    repairs: list[tuple[str, str]] = field(default_factory=list)  # (member to rewrite, source)
    mismatched: bool = False  # good copies disagree
    unrepaired: str | None = None  # why the block stays bad


def decide(copies: Mapping[str, int | None]) -> Verdict:
    """Decide about one block from each member's copy: its checksum, or BAD (None) when the
    copy fails its stored checksum. Members are tried as sources in the mapping's order.

    - every good copy agrees: the bad copies are rewritten from the first good member;
    - good copies disagree: the value a strict majority of all the members hold wins and every
      other copy (bad or different) is rewritten from the first member holding it; with no
      strict majority the block is mismatched and unrepaired;
    - no good copy: unrepaired.
    """
    good = {m: s for m, s in copies.items() if s is not None}
    if not good:
        return Verdict(unrepaired=f"no good copy (bad on {', '.join(copies)})")
    values = set(good.values())
    mismatched = len(values) > 1
    if not mismatched:
        (winner,) = values
    else:
        votes = {v: sum(1 for s in good.values() if s == v) for v in values}
        best = max(votes, key=lambda v: votes[v])
        if 2 * votes[best] <= len(copies):
            held = ", ".join(
                f"{m}={s:08x}" if s is not None else f"{m}=bad" for m, s in copies.items()
            )
            return Verdict(mismatched=True, unrepaired=f"copies disagree with no majority ({held})")
        winner = best
    src = next(m for m, s in good.items() if s == winner)
    repairs = [(m, src) for m, s in copies.items() if s != winner]
    return Verdict(repairs=repairs, mismatched=mismatched)


def merge_blocks(blocks: Sequence[int], ln_of: Any) -> list[tuple[int, int]]:
    """(offset, length) runs of ascending block offsets, adjacent ones merged; `ln_of(off)` is a
    block's length (the last block of the volume may be short)."""
    runs: list[tuple[int, int]] = []
    for o in blocks:
        n = ln_of(o)
        if runs and runs[-1][0] + runs[-1][1] == o:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((o, n))
    return runs


class _Failed(Exception):
    """The pass cannot go on (the message says why)."""


class Scrubber:
    """The scrub of one Volume: `start()` a pass, `status()`, periodic passes with `interval`."""

    def __init__(self, volume: Volume, rate: float | None = None, interval: float | None = None):
        self.volume = volume
        self.rate = rate or DEFAULT_RATE  # bytes/s
        self.interval = interval or None  # seconds between passes (None: no periodic scrub)
        st = volume.io_stats
        for k in ("scrubs_done", "scrub_blocks_checked", "scrub_mismatched", "scrub_bytes"):
            st.setdefault(k, 0)
        self.passes = 0
        self.task: asyncio.Task | None = None
        self._periodic: asyncio.Task | None = None
        self._created = time.monotonic()
        self._finished_mono: float | None = None
        self._wake = asyncio.Event()
        self.cur: dict[str, Any] = self._fresh(0, self.rate)
        self.last: dict[str, Any] | None = None  # the last pass that ended

    # ------------------------------------------------------------------ views
    @staticmethod
    def _fresh(total: int, rate: float) -> dict[str, Any]:
        return {
            "done_bytes": 0,
            "total_bytes": total,
            "blocks_checked": 0,
            "mismatched": 0,
            "repaired": 0,
            "unrepaired": 0,
            "started": None,
            "finished": None,
            "result": None,
            "rate_mib_s": round(rate / MiB, 3),
        }

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def status(self) -> dict[str, Any]:
        """The "scrub" part of the status JSON: the running (else the last) pass."""
        cur = self.cur
        total = cur["total_bytes"]
        last = self.last or {}
        nxt = None
        if self.interval and not self.running:
            base = self._finished_mono if self._finished_mono is not None else self._created
            nxt = round(time.time() + max(0.0, base + self.interval - time.monotonic()), 3)
        return {
            "running": self.running,
            "pass": self.passes,
            "progress": round(min(1.0, cur["done_bytes"] / total), 4) if total else 0.0,
            **cur,
            "last_result": last.get("result"),
            "last_started": last.get("started"),
            "last_finished": last.get("finished"),
            "interval_seconds": self.interval,
            "next_at": nxt,
        }

    # ------------------------------------------------------------------ control
    def start(self, rate: float | None = None) -> dict[str, Any]:
        """Start a pass in the background (ScrubRunning if one runs); its status."""
        if self.running:
            raise ScrubRunning(
                f"a scrub of volume {self.volume.name} is already running"
                f" ({100 * self.status()['progress']:.0f}% done)"
            )
        self.passes += 1
        self.cur = self._fresh(self.volume.size, rate or self.rate)
        self.cur["started"] = round(time.time(), 3)
        self.task = asyncio.get_running_loop().create_task(self._pass(rate or self.rate))
        return self.status()

    async def run(self, rate: float | None = None) -> dict[str, Any]:
        """One pass, awaited (ScrubRunning if one runs); its final status."""
        self.start(rate)
        assert self.task is not None
        await asyncio.shield(self.task)
        return self.status()

    def begin(self) -> None:
        """Start the periodic scrubs (with an interval)."""
        if self.interval and self._periodic is None:
            self._created = time.monotonic()  # the first pass is one interval after the start
            self._periodic = asyncio.get_running_loop().create_task(self._every())

    async def close(self) -> None:
        """Stop the periodic scrubs and cancel a running pass."""
        for t in (self._periodic, self.task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t

    async def _every(self) -> None:
        assert self.interval
        while True:
            base = self._finished_mono if self._finished_mono is not None else self._created
            left = base + self.interval - time.monotonic()
            if left > 0 or self.running or not self.volume.coord.open:
                # only a pass's end (which wakes this) moves `left`: sleep until it is due;
                # due while a pass runs or I/O is held, look again every second
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left if left > 0 else 1.0)
                continue
            log.info("volume %s: periodic scrub (every %gs)", self.volume.name, self.interval)
            with contextlib.suppress(ScrubRunning):
                await self.run()

    # ------------------------------------------------------------------ the pass
    async def _pass(self, rate: float) -> None:
        vol, cur = self.volume, self.cur
        throttle = Throttle(rate)
        seen_clean: dict[int, str] = {}  # unrepaired records whose block this pass found good
        log.info("volume %s: scrub started (%.0f MiB/s)", vol.name, rate / MiB)
        try:
            off = 0
            while off < vol.size:
                ln = min(CHUNK, vol.size - off)
                await throttle.take(ln)
                await self._chunk(off, ln, seen_clean)
                off += ln
                cur["done_bytes"] = off
                cur["total_bytes"] = max(cur["total_bytes"], vol.size)
                vol.io_stats["scrub_bytes"] += ln
            for o, why in seen_clean.items():
                if vol.repairer.unrepaired.get(o) is why:
                    del vol.repairer.unrepaired[o]
            if cur["unrepaired"]:
                result = "unrepaired"
            elif cur["repaired"] or cur["mismatched"]:
                result = "repaired"
            else:
                result = "clean"
        except asyncio.CancelledError:
            result = "cancelled"
            self._end(result)
            raise
        except (_Failed, VolumeError) as e:
            result = f"failed: {e}"
        except Exception as e:  # never lost silently: the status says why
            log.exception("volume %s: scrub failed", vol.name)
            result = f"failed: {type(e).__name__}: {e}"
        self._end(result)

    def _end(self, result: str) -> None:
        cur, vol = self.cur, self.volume
        cur["result"] = result
        cur["finished"] = round(time.time(), 3)
        self.last = dict(cur)
        self._finished_mono = time.monotonic()
        vol.io_stats["scrubs_done"] += 1
        self._wake.set()
        level = logging.WARNING if result not in ("clean", "repaired") else logging.INFO
        log.log(level, "volume %s: scrub %s: %d block copies checked, %d mismatched, %d repaired,"
                " %d unrepaired", vol.name, result, cur["blocks_checked"], cur["mismatched"],
                cur["repaired"], cur["unrepaired"])  # fmt: skip

    async def _chunk(self, off: int, ln: int, seen_clean: dict[int, str]) -> None:
        """Compare (and repair) one chunk under its range lock; members that fail are reported
        and the chunk is done again with the others."""
        vol = self.volume
        for _attempt in range(CHUNK_RETRIES):
            await vol._admit(True)  # waits out a view change; fails after the hold
            members = vol.rw_members()
            if not members:
                raise _Failed("no current replica")
            failed: list[tuple[Peer, BaseException]] = []
            async with vol.ranges.hold(off, ln):
                epoch = vol.coord.mem.epoch
                answers = await asyncio.gather(
                    *(m.link.checksums(off, ln, epoch) for m in members), return_exceptions=True
                )
                for m, a in zip(members, answers, strict=True):
                    if isinstance(a, BaseException):
                        if not isinstance(a, (ReplicaError, ReplicaUnavailable)):
                            raise a
                        failed.append((m, a))
                if not failed:
                    await self._settle(off, ln, members, answers, seen_clean)  # type: ignore[arg-type]
                    return
            log.warning("volume %s: scrub at %d: %s", vol.name, off,
                        "; ".join(f"{m.address}: {e}" for m, e in failed))  # fmt: skip
            await vol.coord.failures(failed)
        raise _Failed(f"members kept failing at byte {off}")

    async def _settle(
        self,
        off: int,
        ln: int,
        members: list[Peer],
        answers: list[dict[str, Any]],
        seen_clean: dict[int, str],
    ) -> None:
        vol, cur, rep = self.volume, self.cur, self.volume.repairer
        nblocks = -(-ln // BLOCK)
        by_addr = {m.address: m for m in members}
        sums: list[list[int]] = []
        bad: list[set[int]] = []
        for m, a in zip(members, answers, strict=True):
            s = a.get("sums") or []
            if len(s) != nblocks:
                raise _Failed(f"replica {m.address} answered {len(s)} checksums for {nblocks}")
            sums.append(s)
            bad.append({int(b) - off // BLOCK for b in a.get("bad") or []})
        cur["blocks_checked"] += nblocks * len(members)
        vol.io_stats["scrub_blocks_checked"] += nblocks * len(members)
        repairs: dict[tuple[str, str], list[int]] = {}
        lost: dict[str, list[int]] = {}  # member -> blocks with no good copy anywhere
        end = off + ln
        for i in range(nblocks):
            copies = {
                m.address: (None if i in bad[j] else int(sums[j][i])) for j, m in enumerate(members)
            }
            o = off + i * BLOCK
            if all(s is not None for s in copies.values()) and len(set(copies.values())) == 1:
                if o in rep.unrepaired:
                    seen_clean[o] = rep.unrepaired[o]
                continue
            v = decide(copies)
            if v.mismatched:
                cur["mismatched"] += 1
                vol.io_stats["scrub_mismatched"] += 1
            if v.unrepaired is not None:
                cur["unrepaired"] += 1
                if v.mismatched:  # (no good copy: recorded by the Repairer below)
                    log.error("volume %s: block at byte %d (LBA %d): %s", vol.name, o, o // 512,
                              v.unrepaired)  # fmt: skip
                    rep.unrepaired[o] = v.unrepaired
                    vol.io_stats["checksum_errors"] += sum(s is None for s in copies.values())
                    continue
                for addr in copies:
                    lost.setdefault(addr, []).append(o)
                continue
            for target, src in v.repairs:
                repairs.setdefault((target, src), []).append(o)

        def ln_of(o: int) -> int:
            return min(BLOCK, end - o)

        before = vol.io_stats["blocks_repaired"]
        for (target, src), blocks in repairs.items():
            try:
                await rep.repair(by_addr[target], merge_blocks(blocks, ln_of), locked=True,
                                 sources=[by_addr[src]])  # fmt: skip
            except VolumeMediumError:
                # the source went bad meanwhile: the Repairer recorded which blocks
                cur["unrepaired"] += sum(1 for o in blocks if o in rep.unrepaired)
        for target, blocks in lost.items():
            # counts the bad copies and records the blocks as unrepaired (no source to try)
            with contextlib.suppress(VolumeMediumError):
                await rep.repair(by_addr[target], merge_blocks(blocks, ln_of), locked=True,
                                 sources=[])  # fmt: skip
        cur["repaired"] += int(vol.io_stats["blocks_repaired"] - before)
