"""A witness's folder: one meta.json with the voter fields, nothing else (no data, no maps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jiva_engine.protocol import voting
from jiva_engine.replica.store import DATA, META, StoreError, atomic_write

FORMAT = 1


class WitnessStore:
    """The durable voter record of one volume's witness (docs/ENGINE.md "Witness")."""

    def __init__(self, path: str | Path, volume: str) -> None:
        self.dir = Path(path)
        self.volume = volume
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.dir}: {e.strerror}") from None
        if (self.dir / DATA).exists():
            raise StoreError(f"{self.dir} holds a replica's data ({DATA}); refusing to use it")
        self.meta = self._load_or_init()

    def _load_or_init(self) -> dict[str, Any]:
        path = self.dir / META
        if not path.exists():
            meta = {"format": FORMAT, "kind": "witness", "volume": self.volume}
            meta.update(voting.fresh_fields())
            atomic_write(path, json.dumps(meta, indent=1).encode())
            return meta
        try:
            meta = json.loads(path.read_text())
            kind, vol = meta.get("kind"), meta["volume"]
            int(meta["epoch"])
            str(meta["id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{path} is unreadable ({e}); refusing to touch {self.dir}") from None
        if kind != "witness":
            raise StoreError(f"{self.dir} holds a {kind or 'replica'}'s metadata, not a witness's")
        if vol != self.volume:
            raise StoreError(
                f"{self.dir} belongs to the witness of volume {vol!r}; refusing to use it for "
                f"volume {self.volume!r}"
            )
        if meta.get("format") != FORMAT:
            raise StoreError(f"{path} has unsupported format {meta.get('format')!r}")
        return meta

    @property
    def id(self) -> str:
        """This witness's voter id."""
        return str(self.meta["id"])

    def snapshot(self) -> bytes:
        """meta.json contents to persist (taken in the loop thread)."""
        return json.dumps(self.meta, indent=1).encode()

    def persist(self, data: bytes) -> None:
        """Atomically replace meta.json (worker thread)."""
        atomic_write(self.dir / META, data)
