"""Crash torture, short version: ~20 process faults (kill -9 / SIGSTOP of replicas and the
controller) under a checksummed, versioned write workload through our own iSCSI initiator."""

from __future__ import annotations

import os
import random

import pytest

from jiva_engine.torture.hosts import HOST_FAULTS
from jiva_engine.torture.run import PROCESS_FAULTS, torture

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="test hosts need root (netns)")


async def test_torture_short_process_faults(tmp_path):
    seed = int(os.environ.get("JIVA_TORTURE_SEED", random.randrange(1 << 31)))
    faults = int(os.environ.get("JIVA_TORTURE_FAULTS", "20"))
    rep = await torture(tmp_path, faults, seed, nblocks=1024)
    print(rep.table())
    assert rep.violations == [], f"seed {seed}: {rep.violations[:5]}"
    assert rep.errors == [], f"seed {seed}: {rep.errors}"
    assert rep.rounds == faults, f"seed {seed}: only {rep.rounds} rounds completed"
    assert set(rep.faults) == set(PROCESS_FAULTS) and sum(rep.faults.values()) == faults
    # the faults really hit the workload: writes were acknowledged and some were lost in flight
    assert rep.writes_acked > 1000 and rep.blocks_verified == faults * 1024
    assert rep.replica_compares == faults and rep.reconnects >= 1


@needs_root
async def test_torture_short_host_faults(tmp_path):
    """Replicas on network-namespace test hosts: host crash, link down, blackhole (2 each)."""
    seed = int(os.environ.get("JIVA_TORTURE_SEED", random.randrange(1 << 31)))
    rep = await torture(tmp_path, 6, seed, kinds=HOST_FAULTS, nblocks=512, hosts=True)
    print(rep.table())
    assert rep.violations == [], f"seed {seed}: {rep.violations[:5]}"
    assert rep.errors == [], f"seed {seed}: {rep.errors}"
    assert rep.rounds == 6 and dict(rep.faults) == {k: 2 for k in HOST_FAULTS}
    assert rep.writes_acked > 100 and rep.replica_compares == 6
