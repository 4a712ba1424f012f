"""Fencing after a failover: an old controller that lost its replicas and finds them claimed by a
newer controller fences itself, even when its own epoch bump never reached a replica (so the new
controller's epoch equals the old one's local number)."""

from __future__ import annotations

import pytest

from jiva_engine.controller.volume import FENCED, SERVING, WAITING
from tests.integration.test_engine import block, open_volume, replicas, wait_for


@pytest.mark.asyncio
async def test_old_controller_with_unlanded_epoch_bump_does_not_reclaim(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    old = await open_volume(reps)
    new = None
    try:
        await old.write(0, block(1))
        # the old controller's host is cut off: it bumped its epoch to eject members, but the
        # SET_META never landed anywhere, and it went back to waiting for its members
        old.epoch += 1
        old.state = WAITING
        for m in old.members.values():
            await old._drop_client(m)
        new = await open_volume(reps)  # the failover controller claims newest + 1
        assert new.epoch == old.epoch  # the same number the old one holds locally
        await new.write(4096, block(2))
        old._wake.set()
        await wait_for(lambda: old.state == FENCED, 10, "old controller fenced")
        assert "above ours" in old.reason
        # the new controller is untouched: still serving, data intact
        await new.write(8192, block(3))
        assert new.state == SERVING
        assert await new.read(0, 4096) == block(1)
        assert await new.read(4096, 4096) == block(2)
    finally:
        await old.close()
        if new:
            await new.close()
