"""Fencing after a failover: an old controller that lost its replicas and finds them claimed by a
newer controller fences itself instead of claiming them back, even when its own view change
(a higher version of its term) never reached a voter."""

from __future__ import annotations

import pytest

from jiva_engine.controller.volume import FENCED, SERVING, WAITING
from jiva_engine.protocol.voting import term_of
from tests.integration.test_engine import block, open_volume, replicas
from tests.waiting import eventually


@pytest.mark.asyncio
async def test_old_controller_with_unlanded_view_change_does_not_reclaim(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    old = await open_volume(reps)
    new = None
    try:
        await old.write(0, block(1))
        # the old controller's host is cut off: it proposed a view change to eject members,
        # the SET_META never landed anywhere, and it went back to waiting for its members
        coord = old.coord
        for p in coord.peers.values():
            await coord.drop_client(p)
        coord.mem.propose(coord.mem.members - {reps[2].id})
        coord.mem.lost_all("cut off from every voter")
        assert old.state == WAITING
        new = await open_volume(reps)  # the failover controller claims the next term
        assert term_of(new.epoch) == coord.mem.term + 1
        await new.write(4096, block(2))
        coord.wake.set()
        await eventually(lambda: old.state == FENCED, 10, "old controller fenced")
        assert "past our term" in old.reason
        # the new controller is untouched: still serving, data intact
        await new.write(8192, block(3))
        assert new.state == SERVING
        assert await new.read(0, 4096) == block(1)
        assert await new.read(4096, 4096) == block(2)
    finally:
        await old.close()
        if new:
            await new.close()
