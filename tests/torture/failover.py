"""Controller-host faults of the torture run, and the recovery playbooks/failover.yml would do.

The controller's host also holds a replica (hosts.py). It crashes (controller and replica die
together), loses its link, or is blackholed (partitioned: the controller keeps its local replica
and loses the other two). After a detection delay the harness does what the failover play does
for an unreachable controller host: it starts a controller with the same replica list on another
live test host and moves the floating portal address there; the workload, in the root
namespace, logs in again through that address. Checked on every such fault:

- the new controller serves while the old host is still down or partitioned (two of three
  voters are a majority), and the workload gets writes acknowledged through it;
- partitioned (link down, blackhole): the old controller, probed from inside its host
  (probe.py), acknowledges no write and serves no read older than what the new controller
  acknowledged; after its host is back it acknowledges nothing either, and its API says
  `fenced` (the harness then stops it by PID, as the play's stale-controller step does);
- a block written only through the old controller never becomes visible
  (`check_probe_blocks`, run with the round's verification); the replica images are compared
  after every round anyway, so a probe write left on the old host's replica shows up there.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jiva_engine.initiator import Initiator
from tests.torture.cluster import api_status
from tests.torture.hosts import API_PORT, PORTAL_PORT, HostCluster
from tests.torture.workload import BLOCK, Workload, parse_block

CONTROLLER_HOST_FAULTS = ("ctlhost-crash", "ctlhost-link-down", "ctlhost-blackhole")
PROBE_SEQ = 1 << 48  # sequence numbers of probe writes start here (the workload's stay below)
PROBE_TIMEOUT = 2.5  # seconds the probe waits for each command
SERVE_TIMEOUT = 60.0  # fault -> new controller serving, at most
ACK_TIMEOUT = 30.0  # new controller serving -> a workload write acknowledged through it
FENCE_SELF = 5.0  # old host back -> its controller says fenced on its own (else probed first)
FENCE_TIMEOUT = 20.0  # ... or, at the latest, this long after the probe's I/O reached it


@dataclass
class FailoverStats:
    """What the controller-host faults did (the run's summary table prints it)."""

    failovers: int = 0
    serve_seconds: list[float] = field(default_factory=list)  # fault -> new controller serving
    probes: int = 0  # probes of an old controller (during the partition and after it)
    probe_write_refused: int = 0
    probe_read_refused: int = 0
    probe_read_current: int = 0  # the old controller served a read, and it was not stale
    fenced_alone: int = 0  # old controller fenced itself once its host was back
    fenced_after_io: int = 0  # ... fenced by the probe's I/O (STALE_EPOCH from a voter)
    partition_states: Counter = field(default_factory=Counter)  # old controller's API then
    probe_blocks: list[int] = field(default_factory=list)  # written only via old controllers


async def _wait_serving(cl: HostCluster, timeout: float) -> dict:
    """The new controller serves (with a majority of the replicas RW)."""
    end = time.monotonic() + timeout
    st = None
    while time.monotonic() < end:
        st = await cl.status()
        if st and st.get("state") == "serving":
            rw = sum(r["mode"] == "RW" for r in st["replicas"])
            if rw >= len(cl.replicas) // 2 + 1:
                return st
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"the new controller on {cl.ctl_host} did not serve within {timeout:.0f}s while the old "
        f"host was down: {st and (st.get('state'), st.get('reason'))}"
    )


async def _acked_after(wl: Workload, mark: int, timeout: float) -> int:
    """Wait until the workload has a write issued after `mark` acknowledged; return its block."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        newer = [(s, lba) for lba, s in wl.acked.items() if s > mark]
        if newer:
            return max(newer)[1]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no write acknowledged through the new controller within {timeout:.0f}s")


async def _old_state(cl: HostCluster, host: str, want: str, timeout: float) -> str:
    """Poll the old controller's API (its host's address) until it says `want`; the last state."""
    end = time.monotonic() + timeout
    state = "unreachable"
    while True:
        st = await api_status(cl.sb.address(host), API_PORT, timeout=1.0)
        state = st.get("state", "?") if st else "unreachable"
        if state == want or time.monotonic() >= end:
            return state
        await asyncio.sleep(0.2)


async def run_probe(
    cl: HostCluster, host: str, write_lba: int, seq: int, read_lba: int | None
) -> dict:
    """Run probe.py inside `host`'s network namespace against the controller there."""
    addr = cl.sb.address(host)
    cmd = [*cl.netns(host), sys.executable, "-m", "tests.torture.probe",
           "--portal", f"{addr}:{PORTAL_PORT}", "--iqn", cl.iqn, "--api", f"{addr}:{API_PORT}",
           "--write-lba", str(write_lba), "--seq", str(seq),
           "--timeout", str(PROBE_TIMEOUT)]  # fmt: skip
    if read_lba is not None:
        cmd += ["--read-lba", str(read_lba)]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],  # the checkout: `-m tests.torture.probe`
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT * 4 + 20)
    except TimeoutError:
        os.kill(proc.pid, signal.SIGKILL)  # by PID: only the probe we started
        await proc.wait()
        raise TimeoutError(f"the probe of the old controller on {host} hung") from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"the probe on {host} failed (exit {proc.returncode}): {tail}") from None


async def _probe_old(
    cl: HostCluster, wl: Workload, host: str, read_lba: int, st: FailoverStats, where: str
) -> dict:
    """Probe the old controller on `host` and record what it must not have done."""
    # a block above the workload's, not probed before (they wrap round in a long run)
    write_lba = wl.nblocks + len(st.probe_blocks) % (cl.size_bytes // BLOCK - wl.nblocks)
    st.probe_blocks.append(write_lba)
    want = wl.acked.get(read_lba, 0)  # acknowledged by the new controller before the probe
    res = await run_probe(cl, host, write_lba, PROBE_SEQ + len(st.probe_blocks), read_lba)
    st.probes += 1
    with open(cl.logdir / "probes.log", "a") as f:  # what each probe saw, for the post-mortem
        stamp = time.strftime("%H:%M:%S")
        f.write(f"{stamp} {where}: write block {write_lba}, read block {read_lba} "
                f"(acked seq {want}): {json.dumps(res)}\n")  # fmt: skip
    bad = wl.stats.violations
    w = res.get("write")
    if w == "acked":
        bad.append(
            f"{where}: the old controller on {host} acknowledged a write (block {write_lba}) "
            f"after the new controller on {cl.ctl_host} took over ({res})"
        )
    else:
        st.probe_write_refused += 1
    r = res.get("read")
    if isinstance(r, dict):
        if r.get("kind") != "ok" or r.get("lba") != read_lba or int(r.get("seq", 0)) < want:
            bad.append(
                f"{where}: the old controller on {host} served a stale read of block {read_lba}: "
                f"{r}, the new controller acknowledged seq {want} before the probe"
            )
        else:
            st.probe_read_current += 1
    else:
        st.probe_read_refused += 1
    return res


async def inject_controller_host_fault(
    kind: str, cl: HostCluster, wl: Workload, rng: random.Random, st: FailoverStats
) -> None:
    """One controller-host fault with the failover play's recovery (see the module doc)."""
    loop = asyncio.get_running_loop()
    old_host, old = cl.ctl_host, cl.controller
    replica = cl.replica_on(old_host)
    # every random draw up front: a replay with the same seed does the same, whatever the timing
    detect = rng.uniform(0.5, 2.5)  # the watch loop notices, the play gets going
    new_host = rng.choice([h for h in cl.host_of if h != old_host])
    longer = rng.uniform(0.0, 2.0)  # the old host stays away a little longer
    where = f"{kind} {old_host}->{new_host}"
    t0 = time.monotonic()
    if kind == "ctlhost-crash":
        await loop.run_in_executor(None, cl.sb.kill_host, old_host)  # controller + replica
        old.reap()
        replica.reap()
    elif kind == "ctlhost-link-down":
        cl.sb.link(old_host, False)
    elif kind == "ctlhost-blackhole":
        cl.sb.blackhole(old_host, True)
    else:
        raise ValueError(f"unknown controller-host fault {kind!r}")
    try:
        await asyncio.sleep(detect)
        await loop.run_in_executor(None, cl.move_controller, new_host)
        st.failovers += 1
        await _wait_serving(cl, SERVE_TIMEOUT)
        st.serve_seconds.append(time.monotonic() - t0)
        lba = await _acked_after(wl, wl.seq, ACK_TIMEOUT)
        if kind != "ctlhost-crash":
            res = await _probe_old(cl, wl, old_host, lba, st, f"{where}, partitioned")
            st.partition_states[res.get("state_after", "?")] += 1
        await asyncio.sleep(longer)
    finally:  # the host comes back whatever happened (a failed round still cleans up)
        if kind == "ctlhost-crash":
            cl.sb.start_host(old_host)  # "reboot": init, mounts, sshd; no controller there now
            await loop.run_in_executor(None, cl.sb.wait_ssh, old_host)
            replica.start(wait=False)  # its supervisor (or the play) starts the replica again
        elif kind == "ctlhost-link-down":
            cl.sb.link(old_host, True)
        else:
            cl.sb.blackhole(old_host, False)
    if kind == "ctlhost-crash":
        return
    # the old host is back with its controller still running: it must be fenced
    state = await _old_state(cl, old_host, "fenced", FENCE_SELF)
    fenced_alone = state == "fenced"
    newest = max(wl.acked, key=wl.acked.__getitem__) if wl.acked else None
    if newest is not None:
        await _probe_old(cl, wl, old_host, newest, st, f"{where}, host back")
    if fenced_alone:
        st.fenced_alone += 1
    else:
        state = await _old_state(cl, old_host, "fenced", FENCE_TIMEOUT)
        if state == "fenced":
            st.fenced_after_io += 1
        else:
            wl.stats.violations.append(
                f"{where}: the old controller on {old_host} is not fenced after its host came "
                f"back (its API says {state!r})"
            )
    old.terminate()  # what failover.yml does with a stale controller: stop it (by PID)


async def check_probe_blocks(init: Initiator, wl: Workload, st: FailoverStats) -> None:
    """Blocks written only through superseded controllers must read back as zeroes."""
    await wl.ensure_connected()
    for lba in sorted(set(st.probe_blocks)):
        data = await init.read(lba * (BLOCK // 512), BLOCK // 512)
        kind, got_lba, seq = parse_block(data)
        if kind != "zero":
            wl.stats.violations.append(
                f"block {lba}, written only through a superseded controller (never "
                f"acknowledged), became visible: {kind} lba {got_lba} seq {seq}"
            )
