"""What the controller knows about each voter address: a replica or a witness."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from jiva_engine.controller.backend import Backend
from jiva_engine.protocol.client import ReplicaUnavailable

RW, WO, ERR = "RW", "WO", "ERR"  # replica modes: member, being rebuilt, failed/unreachable
REPLICA, WITNESS = "replica", "witness"


def meta_of(info: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata part of an INFO answer (accepts flat or {"meta": {...}} layouts)."""
    if not info:
        return {}
    meta = info.get("meta")
    return meta if isinstance(meta, dict) else info


@dataclass(eq=False)
class Peer:
    """One voter address. Replicas have a mode (RW/WO/ERR); a witness is reachable or not."""

    address: str
    kind: str = REPLICA
    id: str | None = None  # voter id, learned when connected (kept across reconnections)
    configured: bool = False  # given on the command line (else learned from a view or the API)
    mode: str = ERR
    client: Backend | None = None
    epoch: int = 0
    rebuild: dict[str, Any] | None = None  # done, total, rate, eta_seconds
    last_error: str | None = "not connected yet"
    last_rebuild: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    connecting: bool = False
    rebuild_task: asyncio.Task | None = None
    reads: int = 0
    writes: int = 0
    errors: int = 0
    lag_ejections: int = 0  # ejected for lagging far behind its peers (lag.py)
    latency: dict[str, Any] = field(default_factory=dict)  # recent answer times (lag.py)

    @property
    def witness(self) -> bool:
        return self.kind == WITNESS

    @property
    def key(self) -> str:
        """Its voter id, or `addr:HOST:PORT` until it has answered once."""
        return self.id or f"addr:{self.address}"

    @property
    def link(self) -> Backend:
        """The connection; ReplicaUnavailable when there is none (dropped meanwhile)."""
        if self.client is None:
            raise ReplicaUnavailable(f"{self.kind} {self.address}: not connected")
        return self.client

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def size(self) -> int:
        """The size a replica recorded, as its last INFO or GROW answer said (0: not known)."""
        return int(meta_of(self.info).get("size") or 0)

    def view(self) -> dict[str, Any]:
        """The replica/witness entry of the status JSON (DESIGN.md §5)."""
        out: dict[str, Any] = {
            "address": self.address,
            "id": self.id,
            "epoch": self.epoch,
            "last_error": self.last_error,
        }
        if self.witness:
            out["state"] = "ok" if self.connected else "unreachable"
            return out
        out["mode"] = self.mode
        out["rebuild"] = dict(self.rebuild) if self.rebuild is not None else None
        out["last_rebuild"] = dict(self.last_rebuild) if self.last_rebuild else None
        out["lag_ejections"] = self.lag_ejections
        out["latency"] = dict(self.latency) if self.mode == RW else None
        return out
