"""The iSCSI target: configuration, the listening server, its sessions and resets.

`start_target(volume, host, port, config)` serves `volume` as LUN 0 and returns a TargetServer;
each accepted connection is a TargetProtocol (protocol.py over connection.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jiva_engine.iscsi.login import AuthConfig
from jiva_engine.iscsi.protocol import TargetProtocol
from jiva_engine.iscsi.session import Session
from jiva_engine.scsi.command import NexusKey
from jiva_engine.scsi.device import TargetDevice
from jiva_engine.volume import BlockVolume

log = logging.getLogger(__name__)

IQN_PREFIX = "iqn.2026-11.org.jiva-py:"

# asked before a normal session's login completes: None accepts it, a text refuses it (Service
# Unavailable) and says why (a snapshot revert or an import needs the volume to itself)
LoginGate = Callable[[], str | None]


@dataclass
class TargetConfig(AuthConfig):
    """How the target presents itself and whom it lets in (the login machine's AuthConfig:
    name, CHAP, allowed initiators, portal group tag) plus the connections' timers."""

    nop_interval: float = 10.0  # seconds of silence before a NOP-In keepalive (0 = never)
    nop_timeout: float = 30.0  # no answer to a keepalive for this long: drop the connection
    login_timeout: float = 30.0  # a connection must finish login within this
    idle_timeout: float = 0.0  # full-feature sessions silent this long are dropped (0 = never)


class TargetServer:
    """The listening target: owns the SCSI target device, the connections and the sessions."""

    def __init__(
        self, volume: BlockVolume, config: TargetConfig, login_gate: LoginGate | None = None
    ) -> None:
        """Prepare (not yet listening)."""
        self.volume = volume
        self.config = config
        self.login_gate = login_gate
        self.device = TargetDevice(volume, target_name=config.iqn)
        self.device.lu.on_fenced = self.drop_all
        self.conns: set[TargetProtocol] = set()
        self.sessions_by_isid: dict[NexusKey, Session] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._tsih = 0
        self.server: asyncio.Server | None = None

    @property
    def sessions(self) -> int:
        """Number of logged-in normal (non-discovery) sessions."""
        return sum(1 for s in self.sessions_by_isid.values() if not s.discovery)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in a task, keeping a reference until it finishes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def next_tsih(self) -> int:
        """A fresh nonzero TSIH."""
        self._tsih = self._tsih % 0xFFFF + 1
        return self._tsih

    def session_started(self, s: Session) -> None:
        """Register a session; a new login with the same I_T nexus reinstates (drops) the old."""
        old = self.sessions_by_isid.get(s.nexus.key)
        if old is not None:
            old.conn.abort()
            if not old.discovery:
                self.device.lu.nexus_lost(old.nexus)
        self.sessions_by_isid[s.nexus.key] = s
        if not s.discovery:
            self.device.lu.nexus_added(s.nexus)

    def session_ended(self, s: Session) -> None:
        """The connection of `s` is gone (unless a reinstatement replaced it already)."""
        if self.sessions_by_isid.get(s.nexus.key) is s:
            del self.sessions_by_isid[s.nexus.key]
            if not s.discovery:
                self.device.lu.nexus_lost(s.nexus)

    def portals(self, local: tuple[str, int]) -> list[str]:
        """TargetAddress values for SendTargets: the address the initiator reached us on."""
        host, port = local
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]

    async def abort_all(self) -> None:
        """Abort every task on every connection (LUN / target reset)."""
        await asyncio.gather(*(c.abort_tasks(list(c.tasks.values())) for c in list(self.conns)))

    def drop_all(self) -> None:
        """Drop every connection (cold reset, fenced volume)."""
        for c in list(self.conns):
            c.abort()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self.server is not None:
            self.server.close()
        self.drop_all()
        self.device.close()
        if self.server is not None:
            await self.server.wait_closed()


async def start_target(
    volume: BlockVolume,
    host: str,
    port: int,
    config: TargetConfig,
    login_gate: LoginGate | None = None,
) -> TargetServer:
    """Serve `volume` as LUN 0 of target `config.iqn` on host:port; returns the running server.
    `login_gate`, when given, may refuse normal-session logins (see LoginGate)."""
    ts = TargetServer(volume, config, login_gate)
    loop = asyncio.get_running_loop()
    ts.server = await loop.create_server(lambda: TargetProtocol(ts), host, port, reuse_address=True)
    log.info("iSCSI target %s listening on %s:%d", config.iqn, host, ts.address[1])
    return ts
