"""Test-host topology of the torture run (scripts/sandbox.py) and the replica-host faults.

Three network-namespace test hosts; replica i runs on h{i+1}, and the controller runs on one of
them too (h1 at first: the 3-host topology of the mission, where a host holds a replica AND the
controller). The controller binds its API to its host's address and its iSCSI portal to every
address of its host; the workload stays in the root namespace and logs in through a floating
portal address that is held by the controller's host and moves with the controller
(failover.py). Needs root.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from pathlib import Path

from tests.sandbox import Sandbox
from tests.torture.cluster import Cluster, Proc

# faults of a host that holds a replica but not the controller (controller-host faults:
# failover.CONTROLLER_HOST_FAULTS)
HOST_FAULTS = ("host-crash", "host-link-down", "host-blackhole")
API_PORT = 9800
PORTAL_PORT = 3260


class HostCluster(Cluster):
    """A Cluster whose replica i lives on test host h{i+1} and whose controller lives on one of
    those hosts behind a floating portal address; `close()` stops every process by PID and tears
    the hosts down."""

    def __init__(self, root: Path, replicas: int = 3, **kw) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("host faults need root (network namespaces)")
        self.sb = Sandbox(Path(tempfile.mkdtemp(prefix="jvtt", dir="/tmp")))
        self.sb.up(f"tt{os.getpid() % 100000}"[:8], replicas)
        try:
            self.host_of: list[str] = self.sb.hosts()[:replicas]
            placement = [(self.sb.address(h), self.netns(h)) for h in self.host_of]
            super().__init__(root, replicas=replicas, placement=placement, **kw)
        except BaseException:
            self.sb.down()
            raise
        self.api_port, self.portal_port = API_PORT, PORTAL_PORT
        self.portal_host = self.sb.free_address(1)  # the volume's floating portal address
        self.controllers: list[Proc] = []  # every controller started here, retired ones too
        self.ctl_host = self.host_of[0]
        self.controller = self._controller_on(self.ctl_host)

    # ------------------------------------------------------------------ topology
    def netns(self, host: str) -> tuple[str, ...]:
        """Command prefix that runs a program in the host's network namespace (same PID)."""
        return ("ip", "netns", "exec", self.sb.host(host)["netns"])

    @property
    def api_host(self) -> str:
        """The current controller's API address (its host's own address)."""
        return self.sb.address(self.ctl_host)

    def replica_on(self, host: str) -> Proc:
        """The replica process of a test host."""
        return self.replicas[self.host_of.index(host)]

    def _controller_on(self, host: str) -> Proc:
        addr = self.sb.address(host)
        args = [*self.controller_args, "--api", f"{addr}:{API_PORT}",
                "--portal", f"0.0.0.0:{PORTAL_PORT}"]  # fmt: skip
        p = Proc(f"controller-{host}", args, self.logdir, API_PORT, addr, self.netns(host))
        self.controllers.append(p)
        return p

    def start(self) -> None:
        """Portal address on the controller's host, every replica, then the controller."""
        self.sb.move_address(self.portal_host, self.ctl_host)
        super().start()

    def move_controller(self, host: str) -> Proc:
        """What failover.yml does when the controller's host is lost: move the portal address to
        `host` (removed from every other host, the root namespace's neighbour entry flushed) and
        start a controller there with the same replica list. Returns the old controller's
        process, which may still run (the caller fences and stops it when its host is back)."""
        old = self.controller
        self.sb.move_address(self.portal_host, host)
        self.ctl_host = host
        self.controller = self._controller_on(host)
        self.controller.start(wait=False)
        return old

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop every controller (retired ones included), then every replica, by PID."""
        for c in self.controllers:
            c.terminate()
        for r in self.replicas:
            r.terminate()

    def close(self) -> None:
        """Stop the processes, then remove the test hosts (netns, veths, bridge)."""
        try:
            self.stop()
        finally:
            self.sb.down()


async def inject_host_fault(kind: str, cl: HostCluster, rng: random.Random) -> None:
    """Crash a replica host (not the controller's), take its link down, or blackhole it; then
    undo it."""
    h = rng.choice([x for x in cl.host_of if x != cl.ctl_host])
    r = cl.replica_on(h)
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
