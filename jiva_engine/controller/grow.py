"""Growing a volume online (docs/ENGINE.md "Growing a volume"): every replica that takes writes
first, then the size the controller serves.

A replica records its size in its meta.json (GROW: persisted before it answers), so the size
outlives the controller: a controller serves the largest of its `--size` and the sizes its
current members recorded, and grows a member or a returning replica smaller than that before it
copies anything to it or sends it writes. Sizes only grow; a replica larger than the volume is
used as it is (the space past the volume's end stays unused until a grow reaches it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from jiva_engine.controller.peers import RW, WO, Peer
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaError, ReplicaUnavailable

if TYPE_CHECKING:
    from jiva_engine.controller.coordinator import Coordinator

log = logging.getLogger(__name__)


class GrowRefused(Exception):
    """The volume cannot grow now, or not to that size; the message says why. The size served
    did not change (replicas already grown keep their larger size, which is harmless)."""


async def fit(p: Peer, size: int) -> None:
    """Grow replica `p` to `size` bytes unless it recorded that much already (ReplicaError /
    ReplicaUnavailable when it refuses or cannot be reached)."""
    if p.size >= size:
        return
    before = p.size
    p.info = await p.link.grow(size)
    log.info("replica %s grown from %d to %d bytes", p.address, before, size)


class Grower:
    """Carries out `POST /v1/volume/grow`: grows every RW and WO replica, then the size served.

    Safe under writes: a write is checked against the size served when it arrives, so nothing
    is sent past the old end before every replica that takes writes has grown (and recorded it);
    writes inside the old size are not held. The coordinator's `sizing` lock keeps a returning
    replica from starting to take writes during a grow (it is grown first, under that lock).
    """

    def __init__(self, coord: Coordinator, admit: Callable[[bool], Awaitable[None]]) -> None:
        self.coord = coord
        self.admit = admit  # the I/O path's admission: waits for a committed view (bounded)

    async def grow(self, size: int) -> int:
        """Grow the volume to `size` bytes; returns the size it had. ValueError for a size that
        is not a positive multiple of 512; GrowRefused for a smaller size, a volume that does
        not serve, or a replica that refused; VolumeNotReady / VolumeFenced from admission."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % wire.SECTOR:
            raise ValueError(f"size {size!r} must be a positive multiple of {wire.SECTOR} bytes")
        coord = self.coord
        async with coord.sizing:
            old = coord.size
            if size < old:
                raise GrowRefused(
                    f"volume {coord.name} is {old} bytes: refusing to shrink it to {size} bytes "
                    "(a volume only grows)"
                )
            if not coord.serving():
                raise GrowRefused(
                    f"volume {coord.name} does not serve ({coord.mem.phase.value}: "
                    f"{coord.mem.reason}); grow it once it serves"
                )
            while True:
                await self.admit(False)  # a committed view (a view change is waited out)
                small = [p for p in coord.replicas() if p.mode in (RW, WO) and p.size < size]
                if not small:
                    break
                res = await asyncio.gather(*(fit(p, size) for p in small), return_exceptions=True)
                failed: list[tuple[Peer, BaseException]] = []
                for p, r in zip(small, res, strict=True):
                    if not isinstance(r, BaseException):
                        continue
                    if isinstance(r, ReplicaError) and r.status != wire.STALE_EPOCH:
                        raise GrowRefused(f"replica {p.address} refused to grow: {r.message}")
                    if not isinstance(r, (ReplicaError, ReplicaUnavailable)):
                        raise r
                    failed.append((p, r))
                if failed:  # they leave the membership (rule 3) and are grown when they
                    await coord.failures(failed)  # return; a newer epoch fences us (raises)
            if size > old:
                coord.resize(size)
        return old
