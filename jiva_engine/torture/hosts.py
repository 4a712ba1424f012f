"""Host faults for the torture run: replicas on network-namespace test hosts (scripts/sandbox.py).

Each replica runs inside its own test host's network namespace; the controller and the workload
stay in the root namespace and reach the replicas over the sandbox bridge. Needs root.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import tempfile
from pathlib import Path

from jiva_engine.torture.cluster import Cluster

HOST_FAULTS = ("host-crash", "host-link-down", "host-blackhole")
_ROOT = Path(__file__).resolve().parents[2]


def load_sandbox():  # noqa: ANN201 - the class from scripts/sandbox.py
    """Import the project's test-host harness (scripts/sandbox.py) by path."""
    spec = importlib.util.spec_from_file_location("jiva_sandbox", _ROOT / "scripts" / "sandbox.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.Sandbox


class HostCluster(Cluster):
    """A Cluster whose replica i lives on test host h{i+1}; `close()` tears the hosts down."""

    def __init__(self, root: Path, replicas: int = 3, **kw) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("host faults need root (network namespaces)")
        sandbox_cls = load_sandbox()
        self.sb = sandbox_cls(Path(tempfile.mkdtemp(prefix="jvtt", dir="/tmp")))
        self.sb.up(f"tt{os.getpid() % 100000}"[:8], replicas)
        try:
            self.host_of: list[str] = self.sb.hosts()[:replicas]
            placement = [
                (self.sb.address(h), ("ip", "netns", "exec", self.sb.host(h)["netns"]))
                for h in self.host_of
            ]
            super().__init__(root, replicas=replicas, placement=placement, **kw)
        except BaseException:
            self.sb.down()
            raise

    def close(self) -> None:
        """Stop the processes, then remove the test hosts (netns, veths, bridge)."""
        try:
            self.stop()
        finally:
            self.sb.down()


async def inject_host_fault(kind: str, cl: HostCluster, rng: random.Random) -> None:
    """Crash a replica's whole host, take its link down, or blackhole it; then undo it."""
    i = rng.randrange(len(cl.replicas))
    h, r = cl.host_of[i], cl.replicas[i]
    loop = asyncio.get_running_loop()
    if kind == "host-crash":
        await loop.run_in_executor(None, cl.sb.kill_host, h)  # every process of the host
        r.reap()
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        cl.sb.start_host(h)  # "reboot": init, mounts, sshd
        await loop.run_in_executor(None, cl.sb.wait_ssh, h)
        r.start(wait=False)  # the supervisor starts the replica again
    elif kind == "host-link-down":
        cl.sb.link(h, False)
        await asyncio.sleep(rng.uniform(0.3, 4.0))
        cl.sb.link(h, True)
    elif kind == "host-blackhole":
        cl.sb.blackhole(h, True)
        await asyncio.sleep(rng.uniform(0.3, 4.0))
        cl.sb.blackhole(h, False)
    else:
        raise ValueError(f"unknown host fault {kind!r}")
