"""Crash torture, short versions: ~20 process faults (kill -9 / SIGSTOP of replicas and the
controller, bit rot in a replica's data file), and (root) faults of test hosts, the controller's host included, under a
checksummed, versioned write workload through our own iSCSI initiator."""

from __future__ import annotations

import os
import random

import pytest

from tests.torture.failover import CONTROLLER_HOST_FAULTS
from tests.torture.hosts import HOST_FAULTS
from tests.torture.run import PROCESS_FAULTS, torture

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


async def test_torture_bit_rot_with_replica_crashes(tmp_path):
    """Bit rot (bytes of acknowledged blocks flipped in a random replica's data file, its page
    cache dropped) alternating with replica kill -9: the workload never reads bad data, the
    controller finds the damage when reading and repairs it, the replicas end identical."""
    seed = int(os.environ.get("JIVA_TORTURE_SEED", random.randrange(1 << 31)))
    kinds = ("replica-bitrot", "replica-kill9")
    rep = await torture(tmp_path, 4, seed, kinds=kinds, nblocks=512)
    print(rep.table())
    assert rep.violations == [], f"seed {seed}: {rep.violations[:5]}"
    assert rep.errors == [], f"seed {seed}: {rep.errors}"
    assert rep.rounds == 4 and dict(rep.faults) == {k: 2 for k in kinds}
    assert rep.replica_compares == 4
    # the damage was there, and the controller found every damaged block (and repaired it)
    assert rep.bitrot_flipped >= 2 and rep.bitrot_found == rep.bitrot_flipped, rep.table()


@needs_root
async def test_torture_short_host_faults(tmp_path):
    """Replicas and the controller on network-namespace test hosts (the controller beside a
    replica, behind a floating portal address): crash, link down and blackhole of a replica's
    host (1 each) and of the controller's host (2 each). The controller's host faults move the
    controller and the portal address to another host (as the failover play does) and must leave
    the old controller fenced, never acknowledging a write once the new one took over."""
    seed = int(os.environ.get("JIVA_TORTURE_SEED", random.randrange(1 << 31)))
    kinds = HOST_FAULTS + CONTROLLER_HOST_FAULTS * 2  # each kind once per pass over the list
    want = {k: kinds.count(k) for k in kinds}
    rep = await torture(tmp_path, len(kinds), seed, kinds=kinds, nblocks=512, hosts=True)
    print(rep.table())
    assert rep.violations == [], f"seed {seed}: {rep.violations[:5]}"
    assert rep.errors == [], f"seed {seed}: {rep.errors}"
    assert rep.rounds == len(kinds) and dict(rep.faults) == want
    assert rep.writes_acked > 100 and rep.replica_compares == len(kinds)
    f = rep.failover
    assert f is not None and f.failovers == 6 and len(f.serve_seconds) == 6
    # the 4 partitioned old controllers: probed during the partition and after it (no write
    # acknowledged), each fenced once its host was back
    assert f.probes == 8 and f.probe_write_refused == 8
    assert f.fenced_alone + f.fenced_after_io == 4
