"""Unit attention conditions pending per I_T nexus (SAM-5 §5.14)."""

from __future__ import annotations

from jiva_engine.scsi.command import NexusKey

Asc = tuple[int, int]  # (ASC, ASCQ)


class UnitAttentions(dict[NexusKey, list[Asc]]):
    """For each known I_T nexus, the unit attentions it has yet to be told, oldest first."""

    def nexus_added(self, key: NexusKey) -> None:
        """A new I_T nexus: it starts without stale unit attentions."""
        self[key] = []

    def forget(self, key: NexusKey) -> None:
        """Drop the nexus and what was pending for it."""
        self.pop(key, None)

    def add(self, key: NexusKey, asc: Asc) -> None:
        """Queue `asc` for one nexus (once: a condition already pending is not repeated)."""
        q = self.setdefault(key, [])
        if asc not in q:
            q.append(asc)

    def add_all(self, asc: Asc) -> None:
        """Queue `asc` for every known nexus."""
        for key in list(self):
            self.add(key, asc)

    def take(self, key: NexusKey) -> Asc | None:
        """Take the oldest condition pending for `key`, None if there is none."""
        q = self.get(key)
        return q.pop(0) if q else None

    def pending(self, key: NexusKey) -> bool:
        """True if a condition is pending for `key`."""
        return bool(self.get(key))
