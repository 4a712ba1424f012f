"""Real jiva processes for the torture run (replicas + controller on 127.0.0.1), stopped by PID.

Recovery is what the product's supervisor does: a dead process is started again with the same
arguments; the controller rejoins restarted replicas by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from jiva_engine.util import free_port, parse_size, wait_port

JIVA = [sys.executable, "-m", "jiva_engine.cli"]


async def api_status(host: str, port: int, timeout: float = 2.0) -> dict | None:
    """GET /v1/volume of a controller's API, or None when it does not answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
            s.get(f"http://{host}:{port}/v1/volume") as r,
        ):
            return await r.json()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


class Proc:
    """One restartable process with a fixed command line and a log file per start."""

    def __init__(
        self,
        name: str,
        args: list[str],
        logdir: Path,
        port: int,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.name, self.args, self.logdir, self.port = name, args, logdir, port
        self.host, self.prefix = host, list(prefix)  # e.g. ip netns exec NS (same PID: exec)
        self.p: subprocess.Popen | None = None
        self.starts = 0
        self.stopped = False  # SIGSTOPped

    def start(self, wait: bool = True) -> None:
        """Start (again) and wait for its port."""
        self.starts += 1
        log = open(self.logdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the process
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== torture: start {self.starts} of {self.name} at {stamp}\n".encode())
        log.flush()
        self.p = subprocess.Popen(
            [*self.prefix, *JIVA, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if wait:
            wait_port(self.host, self.port, timeout=20.0)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.p is not None and self.p.poll() is None

    def _signal(self, sig: int) -> bool:
        """Send `sig` to the process (by PID) if it runs; True if it did."""
        if self.p is None or self.p.poll() is not None:
            return False
        os.kill(self.p.pid, sig)
        return True

    def kill(self) -> None:
        """kill -9 by PID and reap."""
        self._signal(signal.SIGKILL)
        self.reap()

    def reap(self) -> None:
        """Wait for a process that was killed (by us or with its whole host)."""
        if self.p is not None:
            self.p.wait(timeout=10)
        self.stopped = False

    def sigstop(self) -> None:
        """Freeze the process (SIGSTOP)."""
        if self._signal(signal.SIGSTOP):
            self.stopped = True

    def sigcont(self) -> None:
        """Let a frozen process run again."""
        self._signal(signal.SIGCONT)
        self.stopped = False

    def terminate(self) -> None:
        """SIGTERM, then SIGKILL after 5 s (by PID)."""
        if self.p is None or not self._signal(signal.SIGCONT):
            return
        self._signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.p.wait(timeout=5)


class Cluster:
    """N replica processes (local or on test hosts) and one controller with an iSCSI portal
    (local here; hosts.HostCluster puts it on a test host behind a floating portal address)."""

    def __init__(
        self,
        root: Path,
        volume: str = "torture",
        replicas: int = 3,
        size: str = "32M",
        replica_timeout: float = 1.0,
        sync_interval: float = 2.5,
        writer_silence: float = 1.0,
        secret: str | None = "torture-replica-secret",
        placement: list[tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        """`placement[i]` = (address, command prefix) puts replica i on a test host (else local).

        `sync_interval` (the replicas' lazy dirty-bit clearing) must stay above `replica_timeout`
        plus `writer_silence` (docs/ENGINE.md, Known limits): a write that reached some replicas
        and not others must still be dirty there when its controller ejects the others, pins
        it, or is found silent (cut off).
        """
        if sync_interval <= replica_timeout + writer_silence:
            raise ValueError(
                "sync_interval must be above replica_timeout + writer_silence (ENGINE.md)"
            )
        self.root = root
        self.volume = volume
        self.size_bytes = parse_size(size)
        self.logdir = root / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        extra: list[str] = []
        if secret:
            sf = root / "replica.secret"
            sf.write_text(secret + "\n")
            os.chmod(sf, 0o600)
            extra = ["--secret-file", str(sf)]
        self.replicas: list[Proc] = []
        for i in range(replicas):
            host, prefix = placement[i] if placement else ("127.0.0.1", ())
            port = free_port() if host == "127.0.0.1" else 9700
            d = root / f"r{i}"
            args = ["replica", "--volume", volume, "--listen", f"{host}:{port}", "--dir", str(d),
                    "--size", size, "--sync-interval", str(sync_interval),
                    "--writer-silence", str(writer_silence), *extra]  # fmt: skip
            self.replicas.append(Proc(f"r{i}", args, self.logdir, port, host, prefix))
        # what every controller of the volume is started with, wherever it runs (the failover
        # play starts the new one with the same replica list)
        self.controller_args = ["controller", "--volume", volume, "--replica-timeout",
                                str(replica_timeout), *extra]  # fmt: skip
        for r in self.replicas:
            self.controller_args += ["--replica", f"{r.host}:{r.port}"]
        self.api_port = free_port()
        self.portal_host, self.portal_port = "127.0.0.1", free_port()
        args = [*self.controller_args, "--api", f"127.0.0.1:{self.api_port}",
                "--portal", f"127.0.0.1:{self.portal_port}"]  # fmt: skip
        self.controller = Proc("controller", args, self.logdir, self.portal_port)
        self.iqn = f"iqn.2026-11.org.jiva-py:{volume}"

    @property
    def api_host(self) -> str:
        """Where the (current) controller's management API answers."""
        return "127.0.0.1"

    def start(self) -> None:
        """Start every replica, then the controller."""
        for r in self.replicas:
            r.start()
        self.controller.start()

    def stop(self) -> None:
        """Stop every process by PID (controller first)."""
        self.controller.terminate()
        for r in self.replicas:
            r.terminate()

    def image(self, i: int) -> Path:
        """The data file of replica i."""
        return self.root / f"r{i}" / "volume.img"

    async def status(self) -> dict | None:
        """GET /v1/volume of the current controller, or None when the API does not answer."""
        return await api_status(self.api_host, self.api_port)

    async def wait_healthy(self, timeout: float = 90.0) -> dict:
        """Wait until the volume serves with every replica RW; raise TimeoutError otherwise."""
        import asyncio

        end = time.monotonic() + timeout
        st: dict | None = None
        while time.monotonic() < end:
            st = await self.status()
            if (
                st
                and st.get("state") == "serving"
                and len(st["replicas"]) == len(self.replicas)
                and all(r["mode"] == "RW" for r in st["replicas"])
            ):
                return st
            await asyncio.sleep(0.1)
        raise TimeoutError(f"volume not healthy after {timeout}s: {st}")
