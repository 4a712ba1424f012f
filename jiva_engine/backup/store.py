"""A backup store: a folder (local disk, NFS, a mounted bucket) holding content-addressed,
checksummed blocks and one manifest per backup. Only plain file operations are used, and every
file is written atomically (temp file, fsync, rename, fsync the folder: `atomic_write`).

Layout (docs/BACKUPS.md):

    DIR/store.json                 {"format": 1, "kind": "jiva-backup-store", "created"}
    DIR/lock                       flock()ed: one writer at a time (create, delete, prune),
                                   readers (restore, verify) share it
    DIR/blocks/ab/<sha256 hex>     one chunk of a volume: "JVB1" + codec ("r" raw, "z" zlib)
                                   + payload; the name is the sha256 of the uncompressed chunk
    DIR/backups/<name>.json        the manifest: volume, size, snapshot, block size and
                                   {chunk index: sha256} for every chunk that is not all zeroes

A chunk is `block_size` bytes of the volume (the last one may be shorter). A block already in
the store is not written again, so a backup stores only what changed since any other backup in
the same store. Blocks are written (and fsynced) before the manifest that names them; a backup
that is interrupted leaves no manifest, only blocks nobody references, which the next delete,
prune or gc removes. A delete removes the manifest first (durably), then every block no manifest
references. Reading a block checks its sha256 (and size): a damaged or missing block raises
BadBlock naming the backup, the chunk, its offset and the file, never returns wrong data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jiva_engine.replica.store import _fsync_dir, atomic_write

FORMAT = 1
MiB = 1 << 20
DEFAULT_BLOCK_SIZE = MiB
ALIGN = 4096  # chunks are whole 4 KiB blocks of the volume (the last may be short)
MAX_BLOCK_SIZE = 16 * MiB  # the largest snapshot data request of the API
MAGIC = b"JVB1"
RAW, ZLIB = b"r", b"z"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HEX64 = re.compile(r"[0-9a-f]{64}")
SAMPLE = 64 * 1024  # compressed first, to decide whether compressing a chunk is worth it


class BackupError(Exception):
    """A backup store operation failed; the message says what and where, in one line."""


class BadBlock(BackupError):
    """A block of a backup is missing or damaged (its sha256 or size does not match)."""

    def __init__(self, backup: str, index: int, offset: int, path: Path, why: str) -> None:
        super().__init__(
            f"backup {backup}: chunk {index} (volume offset {offset}) is {why}: block file {path}"
        )
        self.backup, self.index, self.offset, self.path, self.why = backup, index, offset, path, why


class StoreBusy(BackupError):
    """Another process holds the store's lock."""


@functools.lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def is_zero(data: bytes | memoryview) -> bool:
    """True when every byte of `data` is zero (a hole, or explicit zeroes: never stored)."""
    return data == _zeros(len(data))


def _saves(data: bytes) -> bool:
    """Whether zlib level 1 saves at least an eighth of `data`."""
    return len(zlib.compress(data, 1)) < len(data) - len(data) // 8


def valid_name(name: str) -> bool:
    """A backup name is a plain file name: letters, digits, '.', '_', '-' (not first)."""
    return bool(NAME_RE.fullmatch(name))


def _doc_sum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class BackupStore:
    """One backup folder. `create=True` makes the folder a store if it is not one yet."""

    def __init__(self, root: str | Path, create: bool = False) -> None:
        self.root = Path(root)
        self.blocks_dir = self.root / "blocks"
        self.backups_dir = self.root / "backups"
        marker = self.root / "store.json"
        if create and not marker.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            for d in (self.blocks_dir, self.backups_dir):
                d.mkdir(exist_ok=True)
            _fsync_dir(self.root)
            info = {"format": FORMAT, "kind": "jiva-backup-store", "created": time.time()}
            atomic_write(marker, json.dumps(info, indent=1).encode() + b"\n")
        try:
            info = json.loads(marker.read_text())
        except FileNotFoundError:
            raise BackupError(f"{self.root} is not a backup store (no store.json)") from None
        except (OSError, ValueError) as e:
            raise BackupError(f"cannot read {marker}: {e}") from None
        if not isinstance(info, dict) or info.get("kind") != "jiva-backup-store":
            raise BackupError(f"{marker} does not describe a jiva backup store")
        if info.get("format") != FORMAT:
            raise BackupError(f"{self.root}: backup store format {info.get('format')} unknown")

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, exclusive: bool, what: str = "", timeout: float = 0.0) -> Iterator[None]:
        """Hold the store's lock: exclusive for a writer (create, delete, prune, gc), shared for
        a reader (restore, verify). Waits up to `timeout` seconds, then StoreBusy naming the
        holder. A read-only store (no lock file can be made) is read without a lock."""
        path = self.root / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            if exclusive or e.errno not in (errno.EROFS, errno.EACCES):
                raise BackupError(f"cannot open the store lock {path}: {e.strerror}") from None
            fd = -1
        if fd < 0:
            yield
            return
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        raise StoreBusy(
                            f"backup store {self.root} is in use"
                            + (f" ({holder})" if holder else " (by a restore or verify)")
                            + (f"; waited {timeout:g} s" if timeout else "")
                        ) from None
                    time.sleep(0.2)
            if exclusive:  # say who holds it, for the message of the next one
                os.ftruncate(fd, 0)
                os.pwrite(
                    fd,
                    f"{what or 'writer'}, pid {os.getpid()} on {socket.gethostname()}\n".encode(),
                    0,
                )
            try:
                yield
            finally:
                if exclusive:  # nobody writes now
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ blocks
    def block_path(self, digest: str) -> Path:
        return self.blocks_dir / digest[:2] / digest

    def has_block(self, digest: str) -> bool:
        return self.block_path(digest).exists()

    def put_block(self, digest: str, data: bytes, compress: bool = True) -> int:
        """Store `data` (whose sha256 is `digest`) unless the store holds it already; the bytes
        the store grew by (0 when it was there)."""
        path = self.block_path(digest)
        if path.exists():
            return 0
        payload = MAGIC + RAW + data
        # compress when it helps; a sample tells cheaply (random or encrypted data does not
        # compress, and zlib costs ~25 ms per MiB of it)
        if compress and _saves(data[:SAMPLE]):
            packed = zlib.compress(data, 1)
            if len(packed) < len(data) - len(data) // 8:
                payload = MAGIC + ZLIB + packed
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.blocks_dir)
        atomic_write(path, payload)
        return len(payload)

    def get_block(self, digest: str, length: int) -> bytes:
        """The block's data, checked against its name (sha256) and `length`. ValueError saying
        what is wrong (FileNotFoundError when it is missing)."""
        raw = self.block_path(digest).read_bytes()
        if raw[:4] != MAGIC or raw[4:5] not in (RAW, ZLIB):
            raise ValueError("damaged (not a block file: bad header)")
        data = raw[5:]
        if raw[4:5] == ZLIB:
            try:
                data = zlib.decompress(data)
            except zlib.error:
                raise ValueError("damaged (its compressed data does not decompress)") from None
        if len(data) != length:
            raise ValueError(f"damaged (holds {len(data)} bytes, the backup expects {length})")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError("damaged (its sha256 does not match its name)")
        return data

    def blocks(self) -> Iterator[tuple[str, Path]]:
        """(digest, path) of every block file in the store."""
        if not self.blocks_dir.is_dir():
            return
        for sub in sorted(self.blocks_dir.iterdir()):
            if sub.is_dir():
                for f in sub.iterdir():
                    if HEX64.fullmatch(f.name):
                        yield f.name, f

    def usage(self) -> dict[str, int]:
        """{"blocks": count, "bytes": their size on disk} of the whole store."""
        n = size = 0
        for _, p in self.blocks():
            with contextlib.suppress(FileNotFoundError):
                size += p.stat().st_size
                n += 1
        return {"blocks": n, "bytes": size}

    # ------------------------------------------------------------------ manifests
    def manifest_path(self, name: str) -> Path:
        if not valid_name(name):
            raise BackupError(f"invalid backup name {name!r} (letters, digits, '.', '_', '-')")
        return self.backups_dir / f"{name}.json"

    def names(self) -> list[str]:
        if not self.backups_dir.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in self.backups_dir.iterdir()
            if p.name.endswith(".json") and valid_name(p.name[: -len(".json")])
        )

    def manifest(self, name: str) -> dict[str, Any]:
        """The manifest of backup `name`, checked (its own sha256, its fields)."""
        path = self.manifest_path(name)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise BackupError(f"no backup {name} in {self.root}") from None
        except (OSError, ValueError) as e:
            raise BackupError(f"backup {name}: cannot read its manifest {path}: {e}") from None
        if not isinstance(doc, dict) or doc.get("sha256") != _doc_sum(doc):
            raise BackupError(f"backup {name}: its manifest {path} is damaged (sha256 mismatch)")
        if doc.get("format") != FORMAT:
            raise BackupError(f"backup {name}: manifest format {doc.get('format')} unknown")
        bs, size, blocks = doc.get("block_size"), doc.get("size"), doc.get("blocks")
        if not (isinstance(bs, int) and isinstance(size, int) and isinstance(blocks, dict)):
            raise BackupError(f"backup {name}: its manifest {path} lacks size/block_size/blocks")
        return doc

    def backups(self) -> list[dict[str, Any]]:
        """A summary of every backup, oldest first (a damaged manifest is listed with "error")."""
        out = []
        for name in self.names():
            try:
                doc = self.manifest(name)
            except BackupError as e:
                out.append({"name": name, "error": str(e)})
                continue
            out.append({k: v for k, v in doc.items() if k not in ("blocks", "sha256")})
        out.sort(key=lambda d: (d.get("created") or 0, d["name"]))
        return out

    def writer(self, name: str, volume: str, size: int, **kw: Any) -> BackupWriter:
        """A new backup `name` (hold the exclusive lock while it is written)."""
        return BackupWriter(self, name, volume, size, **kw)

    def read_chunk(self, doc: dict[str, Any], index: int) -> bytes | None:
        """Chunk `index` of the backup whose manifest is `doc`, checked; None for a chunk that
        is all zeroes (not stored). BadBlock when its block is missing or damaged."""
        bs, size = doc["block_size"], doc["size"]
        digest = doc["blocks"].get(str(index))
        if digest is None:
            return None
        off = index * bs
        length = min(bs, size - off)
        path = self.block_path(str(digest))
        if not HEX64.fullmatch(str(digest)) or length <= 0:
            raise BadBlock(doc["name"], index, off, path, "named wrongly in the manifest")
        try:
            return self.get_block(digest, length)
        except FileNotFoundError:
            raise BadBlock(doc["name"], index, off, path, "missing") from None
        except OSError as e:
            raise BadBlock(doc["name"], index, off, path, f"unreadable ({e.strerror})") from None
        except ValueError as e:
            raise BadBlock(doc["name"], index, off, path, str(e)) from None

    def verify(self, name: str) -> list[BadBlock]:
        """Check every block of backup `name`; the bad ones (an empty list: it restores)."""
        doc = self.manifest(name)
        bad = []
        for key in sorted(doc["blocks"], key=int):
            try:
                self.read_chunk(doc, int(key))
            except BadBlock as e:
                bad.append(e)
        return bad

    # ------------------------------------------------------------------ delete, prune, gc
    def delete(self, name: str, timeout: float = 0.0) -> dict[str, Any]:
        """Delete backup `name`: its manifest first (durably), then every block no other
        manifest references. {"deleted", "blocks_removed", "bytes_freed"}."""
        with self.lock(True, f"backup delete {name}", timeout):
            self._unlink_manifest(name)
            freed = self._gc()
        return {"deleted": [name], **freed}

    def prune(self, volume: str, keep: int, timeout: float = 0.0) -> dict[str, Any]:
        """Keep the newest `keep` backups of `volume`, delete the older ones (as `delete`)."""
        if keep < 1:
            raise BackupError("--keep must be at least 1 (delete the last backup with delete)")
        with self.lock(True, f"backup prune {volume}", timeout):
            mine = [d for d in self.backups() if d.get("volume") == volume and "error" not in d]
            old = [d["name"] for d in mine[: max(0, len(mine) - keep)]]
            for name in old:
                self._unlink_manifest(name)
            freed = self._gc()
        return {"deleted": old, "kept": [d["name"] for d in mine[len(old) :]], **freed}

    def gc(self, timeout: float = 0.0) -> dict[str, int]:
        """Remove blocks no manifest references and temp files an interrupted writer left."""
        with self.lock(True, "backup gc", timeout):
            return self._gc()

    def _unlink_manifest(self, name: str) -> None:
        path = self.manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise BackupError(f"no backup {name} in {self.root}") from None
        _fsync_dir(self.backups_dir)  # gone for good before any of its blocks goes

    def _gc(self) -> dict[str, int]:
        used: set[str] = set()
        for name in self.names():
            try:
                doc = self.manifest(name)
            except BackupError as e:  # never guess what a damaged manifest references
                raise BackupError(f"not removing any block: {e}") from None
            used.update(str(h) for h in doc["blocks"].values())
        removed = freed = 0
        for digest, path in list(self.blocks()):
            if digest not in used:
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
                    removed += 1
        for d in [self.backups_dir, *(p for p in self.blocks_dir.glob("??") if p.is_dir())]:
            for tmp in d.glob(".*.tmp"):  # an interrupted atomic_write
                with contextlib.suppress(FileNotFoundError):
                    freed += tmp.stat().st_size
                    tmp.unlink()
        return {"blocks_removed": removed, "bytes_freed": freed}


class BackupWriter:
    """Writes one backup: `add` chunks (any order, from several threads), then `commit` writes
    the manifest. Nothing is visible as a backup before `commit`."""

    def __init__(
        self,
        store: BackupStore,
        name: str,
        volume: str,
        size: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        compress: bool = True,
        **meta: Any,
    ) -> None:
        if block_size <= 0 or block_size % ALIGN or block_size > MAX_BLOCK_SIZE:
            raise BackupError(f"block size {block_size}: a multiple of 4 KiB up to 16 MiB")
        if size <= 0:
            raise BackupError(f"volume size {size} is not positive")
        self.store, self.name, self.volume, self.size = store, name, volume, size
        self.block_size, self.compress, self.meta = block_size, compress, meta
        if store.manifest_path(name).exists():
            raise BackupError(f"backup {name} exists already in {store.root}")
        self.started = time.time()
        self.blocks: dict[int, str] = {}
        self._claimed: set[str] = set()
        self._mu = threading.Lock()
        self.bytes_new = self.bytes_stored_new = self.blocks_new = 0

    @property
    def chunks(self) -> int:
        return -(-self.size // self.block_size)

    def extent(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index` in the volume."""
        off = index * self.block_size
        return off, min(self.block_size, self.size - off)

    def add(self, index: int, data: bytes) -> int:
        """Record chunk `index` (its full length); store its block unless the store has it.
        The bytes the store grew by."""
        off, length = self.extent(index)
        if not 0 <= index < self.chunks or len(data) != length:
            raise BackupError(f"chunk {index}: {len(data)} bytes, expected {length} at {off}")
        if is_zero(data):
            with self._mu:
                self.blocks.pop(index, None)
            return 0
        digest = hashlib.sha256(data).hexdigest()
        with self._mu:
            self.blocks[index] = digest
            mine = digest not in self._claimed  # a block repeated in this backup: write it once
            self._claimed.add(digest)
        if not mine:
            return 0
        grew = self.store.put_block(digest, data, self.compress)
        if grew:
            with self._mu:
                self.bytes_new += length
                self.bytes_stored_new += grew
                self.blocks_new += 1
        return grew

    def commit(self, **extra: Any) -> dict[str, Any]:
        """Write the manifest (atomically): from now on the backup exists. Its document."""
        path = self.store.manifest_path(self.name)
        if path.exists():
            raise BackupError(f"backup {self.name} exists already in {self.store.root}")
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "volume": self.volume,
            "size": self.size,
            **self.meta,
            **extra,
            "created": time.time(),
            "took": round(time.time() - self.started, 3),
            "block_size": self.block_size,
            "hash": "sha256",
            "compression": "zlib-1" if self.compress else "none",
            "chunks": len(self.blocks),
            "bytes": sum(self.extent(i)[1] for i in self.blocks),
            "blocks_new": self.blocks_new,
            "bytes_new": self.bytes_new,
            "bytes_stored_new": self.bytes_stored_new,
            "blocks": {str(i): self.blocks[i] for i in sorted(self.blocks)},
        }
        doc["sha256"] = _doc_sum(doc)
        atomic_write(path, json.dumps(doc, indent=1).encode() + b"\n")
        return doc
