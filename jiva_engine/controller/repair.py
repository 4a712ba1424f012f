"""Read repair (docs/ENGINE.md "Checksums"): blocks a replica reports as failing their checksum
are read from another current member and written back to it.

Shared by the read path, the scrub and the rebuild copy. A repair holds the range lock of the
blocks it rewrites (unless its caller already does), so no write to them runs in between and
the copy it writes back is the one every member holds. When no member has a good copy the
blocks stay recorded as unrepaired (the volume reports itself degraded) and the reader gets
`VolumeMediumError` naming the first bad byte.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from jiva_engine.controller.peers import Peer
from jiva_engine.controller.rangelock import RangeLock
from jiva_engine.protocol.client import BadBlocks, ReplicaError, ReplicaUnavailable
from jiva_engine.volume import VolumeMediumError

if TYPE_CHECKING:
    from jiva_engine.controller.coordinator import Coordinator

log = logging.getLogger(__name__)

BLOCK = 4096


def blocks_of(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split byte runs into (offset, length) blocks of at most BLOCK bytes."""
    out = []
    for off, ln in runs:
        for o in range(off, off + ln, BLOCK):
            out.append((o, min(BLOCK, off + ln - o)))
    return out


class Repairer:
    """Finds good copies of bad blocks and writes them back; counts what it did."""

    def __init__(self, coord: Coordinator, ranges: RangeLock, stats: dict[str, float]) -> None:
        self.coord = coord
        self.ranges = ranges
        self.stats = stats
        stats.setdefault("checksum_errors", 0)  # bad block copies reported by replicas
        stats.setdefault("blocks_repaired", 0)  # bad block copies rewritten from a good one
        self.unrepaired: dict[int, str] = {}  # block offset -> why no good copy was found

    def forget(self, offset: int, length: int) -> None:
        """A write or unmap replaced the range on every member: no unrepaired block is left."""
        if self.unrepaired:  # (a block only partly written stays bad on the replicas)
            end = offset + length
            for o in [o for o in self.unrepaired if offset <= o and o + BLOCK <= end]:
                del self.unrepaired[o]

    async def repair(
        self,
        bad: Peer,
        runs: list[tuple[int, int]],
        locked: bool = False,
        sources: list[Peer] | None = None,
    ) -> None:
        """Rewrite the bad runs on `bad` from another current member (`sources`, default the
        RW members). Raises VolumeMediumError after trying every block when some block has no
        good copy anywhere (the others are repaired)."""
        self.stats["checksum_errors"] += sum(-(-n // BLOCK) for _, n in runs)
        first_lost: int | None = None
        for off, ln in runs:
            lock = contextlib.nullcontext() if locked else self.ranges.hold(off, ln)
            async with lock:
                lost = await self._repair_run(bad, off, ln, sources)
            if lost is not None and first_lost is None:
                first_lost = lost
        if first_lost is not None:
            raise VolumeMediumError(
                first_lost, f"block at byte {first_lost} has no good copy on any replica"
            )

    async def _repair_run(
        self, bad: Peer, off: int, ln: int, sources: list[Peer] | None
    ) -> int | None:
        """Repair one run (whole if a source has it all good, else block by block); returns
        the offset of the first block no source had good, or None."""
        if await self._copy_from_any(bad, off, ln, sources):
            return None
        if ln <= BLOCK:
            return self._lost(bad, off, ln)
        first = None
        for o, n in blocks_of([(off, ln)]):
            if not await self._copy_from_any(bad, o, n, sources):
                lost = self._lost(bad, o, n)
                first = lost if first is None else first
        return first

    def _lost(self, bad: Peer, off: int, ln: int) -> int:
        why = f"no good copy (bad on {bad.address} and every other current member)"
        for o, _n in blocks_of([(off, ln)]):
            if o not in self.unrepaired:
                log.error("volume %s: block at byte %d (LBA %d) is corrupt on every replica",
                          self.coord.name, o, o // 512)  # fmt: skip
            self.unrepaired[o] = why
        return off

    async def _copy_from_any(
        self, bad: Peer, off: int, ln: int, sources: list[Peer] | None
    ) -> bool:
        coord = self.coord
        for src in sources if sources is not None else coord.rw_peers():
            if src is bad or src.client is None:
                continue
            epoch = coord.mem.epoch
            try:
                data = await src.link.read(off, ln, epoch)
            except BadBlocks:
                continue  # bad there too: another source, or block by block
            except (ReplicaError, ReplicaUnavailable) as e:
                await coord.failures([(src, e)])
                continue
            try:
                await bad.link.write(off, data, epoch)
            except (ReplicaError, ReplicaUnavailable) as e:
                await coord.failures([(bad, e)])
                return True  # it left the membership: nothing to repair there any more
            self.stats["blocks_repaired"] += -(-ln // BLOCK)
            for o, _n in blocks_of([(off, ln)]):
                self.unrepaired.pop(o, None)
            log.warning("volume %s: repaired %d byte(s) at %d on %s from %s", coord.name, ln,
                        off, bad.address, src.address)  # fmt: skip
            return True
        return False
