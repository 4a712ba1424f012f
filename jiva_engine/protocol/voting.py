"""What every voter of a volume (a replica or a witness) stores and how it answers CLAIM/SET_META.

A voter keeps, durably (docs/ENGINE.md, "Quorum"):
- `epoch`: the highest epoch it has promised or accepted. It refuses every request (data or
  control) that carries a lower one; that is how an old controller is fenced.
- the last **view** it accepted: `view_epoch`, `membership` (ids of the current copies) and
  `voters` ({id: last known address} of the volume's voters); a replica also keeps
  `member_epoch`, the last view that named it a member (how new its data is).

An epoch is `term << 32 | version`: a controller claims the volume with a new term (version 0,
CLAIM, accepted only if strictly greater than what the voter promised: two controllers can never
both hold one term), then changes views inside its term by raising the version (SET_META,
accepted if not lower). Ordering views by epoch is therefore ordering them by (term, version).

This module holds the rules only; the replica store and the witness store own the dict.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TERM_SHIFT = 32
VERSION_MASK = (1 << TERM_SHIFT) - 1


def make_epoch(term: int, version: int = 0) -> int:
    """The epoch of view `version` of controller term `term`."""
    return term << TERM_SHIFT | version


def term_of(epoch: int) -> int:
    """The controller term an epoch belongs to."""
    return epoch >> TERM_SHIFT


def version_of(epoch: int) -> int:
    """The view number inside its term (0 = the claim itself)."""
    return epoch & VERSION_MASK


def epoch_text(epoch: int | None) -> str:
    """`term.version` for people (tables, logs)."""
    if epoch is None:
        return "-"
    return f"{term_of(epoch)}.{version_of(epoch)}"


def new_id() -> str:
    """A fresh voter id (made once, when a replica's or witness's folder is created)."""
    return str(uuid.uuid4())


def fresh_fields() -> dict[str, Any]:
    """The voter part of a new folder's metadata."""
    return {
        "id": new_id(),
        "epoch": 0,
        "view_epoch": 0,
        "member_epoch": 0,
        "membership": [],
        "voters": {},
    }


class VoteError(Exception):
    """A CLAIM/SET_META this voter must refuse; `stale` is True for an epoch below its own."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


def host_identity() -> str:
    """This host as a process-namespace: boot id + PID-namespace inode (two test hosts on one
    machine have different PID namespaces; a reboot changes the boot id)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{boot}:{ns}"


def owner_gone(owner: Any, here: str) -> bool:
    """True when `owner` ({"host", "pid", ...}, a controller's identity) ran in this host's PID
    namespace and no process has its PID any more: it is certainly dead. A reused PID reads as
    alive (wrongly, but on the safe side)."""
    if not isinstance(owner, dict) or owner.get("host") != here:
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and pid > 0 and not os.path.exists(f"/proc/{pid}")


def lease_holders_gone(answers: Iterable[dict[str, Any]], here: str, me: Any) -> bool:
    """Q8's shortcut, from the CLAIM answers of a claim: True when every controller that may
    still hold a read lease is certainly dead, so there is no lease to wait out.

    Each answer names (`talkers`) the controllers that spoke to that voter in the last LEASE
    seconds; any lease still running rests on answers of a majority, so at least one promise
    names its holder. `me` (this controller's own identity: its earlier connections) does not
    count. A voter that does not say (an older version), or a talker that gave no identity, or
    one alive or on another host, means waiting."""
    for answer in answers:
        talkers = answer.get("talkers")
        if not isinstance(talkers, list):
            return False
        if not all(t == me or owner_gone(t, here) for t in talkers):
            return False
    return True


def identity(value: Any) -> dict[str, Any] | None:
    """A controller identity as sent in AUTH/CLAIM bodies, or None when malformed/absent."""
    if isinstance(value, dict) and isinstance(value.get("host"), str):
        return value
    return None


def check_claim(meta: dict[str, Any], epoch: Any) -> None:
    """Raise VoteError unless `epoch` may be promised (strictly above the stored epoch)."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= 0:
        raise VoteError(f"CLAIM: bad epoch {epoch!r}")
    if epoch <= int(meta["epoch"]):
        raise VoteError(
            f"CLAIM of epoch {epoch_text(epoch)} refused: epoch {epoch_text(meta['epoch'])} "
            "is already promised here",
            stale=True,
        )


def apply_claim(meta: dict[str, Any], epoch: int, owner: Any = None) -> None:
    """Promise `epoch` (after check_claim) to `owner` ({"host", "pid"} of the claiming
    controller, or None); the caller persists meta before answering."""
    meta["epoch"] = epoch
    meta["owner"] = identity(owner)


def check_accept(meta: dict[str, Any], body: dict[str, Any]) -> None:
    """Validate the voter fields of a SET_META body (epoch, membership, voters)."""
    epoch = body.get("epoch")
    members = body.get("membership")
    voters = body.get("voters")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise VoteError(f"SET_META: bad epoch {epoch!r}")
    if members is not None and (
        not isinstance(members, list) or not all(isinstance(m, str) for m in members)
    ):
        raise VoteError("SET_META: membership must be a list of replica ids")
    if voters is not None and (
        not isinstance(voters, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in voters.items())
    ):
        raise VoteError("SET_META: voters must map voter ids to addresses")
    if (members is not None or voters is not None) and epoch is None:
        raise VoteError("SET_META: a membership or voter list needs its epoch")
    if epoch is not None and epoch < int(meta["epoch"]):
        raise VoteError(
            f"request epoch {epoch_text(epoch)} is older than this voter's epoch "
            f"{epoch_text(meta['epoch'])}",
            stale=True,
        )


def apply_accept(meta: dict[str, Any], body: dict[str, Any]) -> None:
    """Take the epoch and, when given, the view of a checked SET_META body."""
    epoch = body.get("epoch")
    if epoch is None:
        return
    meta["epoch"] = epoch
    if body.get("membership") is not None:
        meta["view_epoch"] = epoch
        meta["membership"] = list(body["membership"])
        if meta.get("id") in meta["membership"]:
            # the last view that names this voter a member: what a replica's data is as new as
            # (a returning replica catches up from the change map started after it)
            meta["member_epoch"] = epoch
        if body.get("voters") is not None:
            meta["voters"] = dict(body["voters"])


def record(meta: dict[str, Any]) -> dict[str, Any]:
    """The voter fields of an INFO/CLAIM/SET_META answer."""
    return {
        "id": meta["id"],
        "epoch": meta["epoch"],
        "view_epoch": meta.get("view_epoch", 0),
        "member_epoch": meta.get("member_epoch", 0),
        "membership": list(meta.get("membership") or []),
        "voters": dict(meta.get("voters") or {}),
        "owner": meta.get("owner"),
    }


def quiet_seconds(now: float, others: list[float | None], closed: float | None) -> float | None:
    """Seconds since any other controller connection last sent something (None: never).

    A CLAIM answer carries it: the new controller waits until the old one's read lease
    (`LEASE` s from its last answered majority round) must have run out (ENGINE.md rule Q8).
    """
    times = [t for t in [*others, closed] if t is not None]
    return max(0.0, now - max(times)) if times else None


class Talkers:
    """What a voter remembers of the controllers that spoke to it, for its CLAIM answers (Q8):
    when the last closed connection last spoke, and who spoke in the last LEASE seconds
    (identities from AUTH/CLAIM, None for a client that gave none). The voter's servers own
    one each; open connections are passed in as (last active, identity)."""

    def __init__(self) -> None:
        self.last_closed: float | None = None
        self._recent: list[tuple[float, dict[str, Any] | None]] = []  # closed, < LEASE ago

    def closed(self, now: float, active: float | None, owner: dict[str, Any] | None) -> None:
        """A connection closed; `active` is when it last sent something (None: never did)."""
        if active is None:
            return
        self.last_closed = max(self.last_closed or 0.0, active)
        self._recent = [(t, o) for t, o in self._recent if now - t < LEASE]
        self._recent.append((active, owner))

    def claim_fields(
        self, now: float, others: Iterable[tuple[float | None, dict[str, Any] | None]]
    ) -> dict[str, Any]:
        """`quiet` and `talkers` of a CLAIM answer; `others` = every other open connection."""
        others = list(others)
        recent = [*self._recent, *((t, o) for t, o in others if t is not None)]
        return {
            "quiet": quiet_seconds(now, [t for t, _ in others], self.last_closed),
            "talkers": [o for t, o in recent if now - t < LEASE],
        }


LEASE = 2.0  # seconds a controller may serve reads after a majority last answered it


__all__ = [
    "LEASE",
    "TERM_SHIFT",
    "Talkers",
    "VoteError",
    "apply_accept",
    "apply_claim",
    "check_accept",
    "check_claim",
    "epoch_text",
    "fresh_fields",
    "host_identity",
    "identity",
    "lease_holders_gone",
    "make_epoch",
    "new_id",
    "owner_gone",
    "quiet_seconds",
    "record",
    "term_of",
    "version_of",
]
