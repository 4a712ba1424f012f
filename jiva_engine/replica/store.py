"""A replica's on-disk store (DESIGN.md §2): sparse data file, atomic meta.json, region bitmaps.

The write-intent map `dirty.map` and the change maps `missed-E.map` cost a metadata write only
when a region goes 0->1; they are cleared lazily after the data has been fdatasync'ed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from jiva_engine.protocol import voting, wire
from jiva_engine.replica import checksums
from jiva_engine.replica.checksums import BLOCK, BSHIFT, MASK, ZERO_SUM, BlockSums
from jiva_engine.replica.layers import DIR as LAYER_DIR
from jiva_engine.replica.layers import MAX_LAYERS, Layer, Layers, runs_of

log = logging.getLogger(__name__)

# 1: membership by address, "uuid"; 2: voter id, view_epoch, voters; 3: per-block checksums in
# volume.crc (computed from the data when a format-2 folder is opened)
FORMAT = 3
CHECKSUMS = "crc32c/4096"
SECTOR = wire.SECTOR
META = "meta.json"
DATA = "volume.img"
DIRTY = "dirty.map"
MISSED_MIN = 4096  # finest change-map granularity
MISSED_MAX_BITS = 32 << 20  # one change map stays <= 4 MiB of bits
# a grow keeps the granularity of change maps that exist (their bits keep their meaning on disk):
# they may grow up to 8 times the usual size, no further
MISSED_GROW_MAX_BITS = 8 * MISSED_MAX_BITS
MAX_SIZE = 1 << 50  # the largest volume a replica grows to (1 PiB: a 128 MiB dirty map)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _fallocate = None


class StoreError(Exception):
    """The DIR cannot be used (belongs to another volume/size, unreadable meta, ...)."""


class SnapshotError(Exception):
    """A snapshot request that cannot be carried out (unknown id, duplicate name, limit)."""


DROP = object()  # `apply` data meaning "the head keeps nothing of its own here" (wire DROP)


def missed_name(since: int) -> str:
    """File name of the change map started at epoch `since`."""
    return f"missed-{since}.map"


def bits_to_bytes(regions: set[int] | frozenset[int], nregions: int) -> bytes:
    """Serialise a set of region numbers as a little-endian-bit bitmap."""
    buf = bytearray((nregions + 7) // 8)
    for r in regions:
        buf[r >> 3] |= 1 << (r & 7)
    return bytes(buf)


def bytes_to_bits(data: bytes, nregions: int) -> set[int]:
    """Parse a bitmap written by bits_to_bytes (bits past nregions are ignored)."""
    out: set[int] = set()
    for i, b in enumerate(data):
        if b:
            for j in range(8):
                if b & (1 << j):
                    r = (i << 3) | j
                    if r < nregions:
                        out.add(r)
    return out


def missed_granularity(size: int) -> int:
    """Smallest power of two >= 4 KiB whose change map for `size` bytes fits in 4 MiB of bits."""
    g = MISSED_MIN
    while (size + g - 1) // g > MISSED_MAX_BITS:
        g <<= 1
    return g


def set_bits(buf: bytearray, a: int, b: int) -> None:
    """Set bits [a, b) of a little-endian-bit bitmap (whole bytes in one slice assignment)."""
    while a < b and a & 7:
        buf[a >> 3] |= 1 << (a & 7)
        a += 1
    full = (b - a) >> 3
    if full:
        i = a >> 3
        buf[i : i + full] = b"\xff" * full
        a += full << 3
    while a < b:
        buf[a >> 3] |= 1 << (a & 7)
        a += 1


def bit_runs(buf: bytes | bytearray, nbits: int) -> list[list[int]]:
    """[first, count] runs of set bits (bits past nbits ignored)."""
    runs: list[list[int]] = []
    nbytes = len(buf)
    i = 0
    while i < nbytes:
        if not buf[i]:
            i += 1
            continue
        b = buf[i]
        if b == 0xFF:
            first = i << 3
            if runs and runs[-1][0] + runs[-1][1] == first:
                runs[-1][1] += 8
            else:
                runs.append([first, 8])
        else:
            for j in range(8):
                if b & (1 << j):
                    r = (i << 3) | j
                    if runs and runs[-1][0] + runs[-1][1] == r:
                        runs[-1][1] += 1
                    else:
                        runs.append([r, 1])
        i += 1
    if runs and runs[-1][0] + runs[-1][1] > nbits:
        runs[-1][1] = nbits - runs[-1][0]
        if runs[-1][1] <= 0:
            runs.pop()
    return runs


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file atomically and durably: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


MAX_RUNS = 100_000  # EXTENTS answers stay well under the frame payload limit


def coarsen(runs: list[list[int]], gran: int, start: int, end: int) -> list[list[int]]:
    """Widen runs to `gran`-aligned chunks (clipped to [start, end)) and merge what touches."""
    out: list[list[int]] = []
    for off, ln in runs:
        a = max(start, off - off % gran)
        b = min(end, -(-(off + ln) // gran) * gran)
        if out and a <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], b - out[-1][0])
        else:
            out.append([a, b - a])
    return out


def union_runs(x: list[list[int]], y: list[list[int]], end: int) -> list[list[int]]:
    """Sorted, merged [offset, length] runs covering both lists (clipped to `end`)."""
    out: list[list[int]] = []
    for o, n in sorted(x + y):
        e = min(end, o + n)
        if e <= o:
            continue
        if out and o <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], e - out[-1][0])
        else:
            out.append([o, e - o])
    return out


def migrate_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: the folder's uuid becomes its voter id; the stored membership becomes the
    accepted view (its entries stay addresses, which controllers match by address); change maps
    keep no list of excluded members (controllers then use the older epoch rule for them)."""
    out = dict(meta)
    out["format"] = 2
    out["kind"] = "replica"
    out["id"] = str(out.pop("uuid", None) or voting.new_id())
    out["view_epoch"] = out["member_epoch"] = int(out.get("epoch") or 0)
    out["voters"] = {}
    for key, default in (("membership", []), ("tracking", []), ("rebuilding", False)):
        out.setdefault(key, default)  # early format-1 folders did not have them yet
    return out


class ReplicaStore:
    """One volume's blocks and metadata in DIR; single-threaded use from the event loop.

    Only `write_bitmaps`, `write_meta` and `datasync` are meant to run in a worker thread, on
    snapshots taken in the loop thread.
    """

    def __init__(
        self, path: str | Path, volume: str, size: int, region_size: int = wire.DEFAULT_REGION
    ) -> None:
        self.dir = Path(path)
        self.volume = volume
        self.size = size  # the size asked for until meta.json is read, then the recorded one
        if size <= 0 or size % SECTOR:
            raise StoreError(f"size {size} must be a positive multiple of {SECTOR} bytes")
        if region_size < SECTOR or region_size & (region_size - 1):
            raise StoreError(f"region size {region_size} must be a power of two >= {SECTOR}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.dir}: {e.strerror}") from None
        self.meta, found = self._load_or_init_meta(region_size)
        self.size = int(self.meta["size"])  # <= the size asked for: grown at the end
        self.region_size = int(self.meta["region_size"])
        self.shift = self.region_size.bit_length() - 1
        self.nregions = (self.size + self.region_size - 1) >> self.shift
        self._recover_snapshot_op()
        self.fd = self._open_data()
        try:
            self.sums = BlockSums(self.dir, self.size)
        except OSError as e:
            os.close(self.fd)
            raise StoreError(f"cannot open {self.dir / checksums.NAME}: {e.strerror}") from None
        self.layers = Layers(self.dir / LAYER_DIR, BlockSums.blocks(self.size))
        self.drops = 0  # DROPs so far: a block a merge already copied may have been punched
        try:
            self._open_layers()
        except (OSError, KeyError, ValueError, TypeError) as e:
            self.layers.close()
            os.close(self.fd)
            self.sums.close()
            raise StoreError(f"{self.dir}: cannot open the snapshot layers: {e}") from None
        # region bitmaps held as sets; files mirror them (written on 0->1, lazily on clear)
        self.dirty: set[int] = self._load_map(DIRTY)
        self.sticky: set[int] = set(self.dirty)  # left by a crash: only CLEAR_DIRTY clears them
        # change maps: one bit per `mgran` bytes (finer than regions), held as bytearrays.
        # Their bits are set after the data write and reach the disk with the next bitmap
        # write; that is safe because the region's write-intent bit is durable first, every
        # region dirty at load is treated as wholly changed, and change maps are written
        # before dirty.map whenever bits are cleared.
        # format 1 shipped with region-granular change maps first, 4 KiB ones later (with
        # `missed_granularity`): the former are widened to chunks at open, then format 2 is written
        old_gran = found == 1 and "missed_granularity" not in self.meta
        self.mgran = int(self.meta.get("missed_granularity") or missed_granularity(self.size))
        self.mshift = self.mgran.bit_length() - 1
        self.nchunks = (self.size + self.mgran - 1) >> self.mshift
        self.missed: dict[int, bytearray] = {}
        # per change map, the regions dirty when it started (writes possibly in flight then);
        # dropped by SET_META drop_seed once the controller has re-sent its in-flight writes
        self.seeds: dict[int, set[int]] = {}
        # per change map, the ids of the members removed when it started (None: older format)
        self.excluded: dict[int, list[str] | None] = {}
        for t in self.meta.get("tracking", []):
            since = int(t["since"])
            self.seeds[since] = {int(r) for r in t.get("seed") or []}
            self.excluded[since] = t.get("excluded")
            if (self.dir / missed_name(since)).exists():
                self.missed[since] = self._load_missed(missed_name(since), old_gran)
            else:  # lost change map: the only safe answer is "everything changed"
                log.warning("%s missing: treating every region as changed", missed_name(since))
                self.missed[since] = self._all_changed()
        for m in self.missed.values():  # bits of dirty regions may not have reached the disk
            for r in self.dirty:
                self._mark_region(m, r)
        self.undurable: set[int] = set()  # set in memory, not yet on disk
        self._dropped: set[int] = set()  # change maps to delete at the next bitmap write
        self.last_write: dict[int, int] = {}  # region -> write sequence number of its last write
        self.wseq = 0
        self.prev_clear_seq = 0
        self.closed = False
        if found < 2:
            self.meta = migrate_v1(self.meta)
            self.meta["missed_granularity"] = self.mgran
            if old_gran and self.missed:  # maps at the new granularity before meta names it
                self.persist_bitmaps()
        self.rehashed = self._check_sums(found)
        if found < FORMAT:
            self.meta["format"] = FORMAT
            self.meta["checksums"] = CHECKSUMS
            self.write_meta(self.meta_snapshot())
            log.info("%s migrated from format %d to %d (replica id %s)", self.dir / META, found,
                     FORMAT, self.meta["id"])  # fmt: skip
        if self.meta.get("clean", True):
            self.meta["clean"] = False
            self.write_meta(self.meta_snapshot())
        if size > self.size:  # started with a larger --size: the folder grows (never shrinks)
            recorded = self.size
            why = self.check_grow(size)
            if why is not None:
                os.close(self.fd)
                raise StoreError(f"{self.dir}: {why}")
            self.grow(size)
            log.info("%s grown from %d to %d bytes (--size)", self.dir, recorded, size)

    # ------------------------------------------------------------------ open / meta
    def _load_or_init_meta(self, region_size: int) -> tuple[dict[str, Any], int]:
        """meta.json as found (or a new one) and its format (migrated by the caller)."""
        meta_path = self.dir / META
        data_path = self.dir / DATA
        self._fresh = not meta_path.exists()
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if isinstance(meta, dict) and meta.get("kind", "replica") != "replica":
                    raise StoreError(
                        f"{self.dir} holds a {meta.get('kind')}'s metadata, not a replica's; "
                        "refusing to use it"
                    )
                vol, size = meta["volume"], int(meta["size"])
                int(meta["region_size"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StoreError(
                    f"{meta_path} is unreadable ({e}); refusing to touch {self.dir}"
                ) from None
            if vol != self.volume:
                raise StoreError(
                    f"{self.dir} belongs to volume {vol!r} of size {size} bytes; refusing to "
                    f"use it for volume {self.volume!r} of size {self.size} bytes"
                )
            if size > self.size:
                raise StoreError(
                    f"{self.dir} belongs to volume {vol!r} of size {size} bytes; refusing to "
                    f"shrink it to {self.size} bytes (a volume only grows)"
                )
            if meta.get("format") not in (1, 2, FORMAT):
                raise StoreError(f"{meta_path} has unsupported format {meta.get('format')!r}")
            # a longer data file is a grow interrupted before meta recorded it (_open_data cuts
            # it back); a shorter one lost data behind our back
            if data_path.exists() and data_path.stat().st_size < size:
                raise StoreError(
                    f"{data_path} is {data_path.stat().st_size} bytes but meta says {size}; "
                    "refusing to use it"
                )
            return meta, int(meta["format"])
        if data_path.exists() and data_path.stat().st_size != self.size:
            raise StoreError(
                f"{data_path} exists with size {data_path.stat().st_size}, not {self.size}, and "
                f"{self.dir} has no {META}; refusing to use it"
            )
        meta = {
            "format": FORMAT,
            "kind": "replica",
            "volume": self.volume,
            "size": self.size,
            "sector_size": SECTOR,
            **voting.fresh_fields(),
            "clean": True,
            "region_size": region_size,
            "checksums": CHECKSUMS,
            "missed_granularity": missed_granularity(self.size),
            "tracking": [],
            "rebuilding": False,
        }
        atomic_write(meta_path, json.dumps(meta, indent=1).encode())
        return meta, FORMAT

    def _open_data(self) -> int:
        path = self.dir / DATA
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        have = os.fstat(fd).st_size
        if have != self.size:
            if have > self.size:  # a grow extends the data file before meta records the size
                log.warning("%s is %d bytes but meta says %d: a grow was interrupted before it "
                            "was recorded; cutting the file back (nothing past %d bytes was "
                            "ever acknowledged)", path, have, self.size, self.size)  # fmt: skip
            os.ftruncate(fd, self.size)  # sparse
            os.fsync(fd)
            _fsync_dir(self.dir)
        return fd

    def _check_sums(self, found: int) -> int:
        """Make the checksum entries match the data where they cannot be trusted: every
        allocated block of a folder from before checksums (or whose volume.crc was lost), and
        the regions dirty at open (a crash may have left a block's data and its entry from
        different writes; the controller resynchronises those regions from its peers, so a
        torn write never reads as corrupt). Returns how many bytes were hashed."""
        full = found < FORMAT or self.sums.created
        if full:
            if found == FORMAT and not self._fresh:
                log.warning("%s was missing: computing every block's checksum from the data "
                            "(damage already there is found only by a scrub comparing "
                            "replicas)", self.sums.path)  # fmt: skip
            self.sums.reset()  # (a migration interrupted before may have left entries)
            spans = [(0, self.size)]
        else:
            shift = self.shift
            spans = [(r << shift, min(self.size, (r + 1) << shift) - (r << shift))
                     for r in sorted(self.dirty)]  # fmt: skip
        done = 0
        for off, ln in spans:
            # holes read as zeroes (entry 0), e.g. an unmap whose cleared entries were lost;
            # only the allocated parts are read and hashed
            allocated = self._extents(off, ln)
            if not full:
                self._clear_holes(off, ln, allocated)
            for eo, el in allocated:
                done += self.rehash(eo, el)
        if done:
            self.sums.sync()
            log.info("%s: checksums computed from the data for %d bytes", self.dir, done)
        return done

    def _clear_holes(self, off: int, ln: int, allocated: list[list[int]]) -> None:
        """Entries of the holes of a range: 0 (nothing of the head's own), except explicit
        zeroes (an unmap under snapshots), which a hole matches."""
        first = off >> BSHIFT
        entries = list(self.sums.get(first, (ln + MASK) >> BSHIFT))
        keep = bytearray(len(entries))
        for eo, el in allocated:
            for b in range(eo >> BSHIFT, (eo + el + MASK) >> BSHIFT):
                if 0 <= b - first < len(keep):
                    keep[b - first] = 1
        new = [e if keep[i] or e == ZERO_SUM else 0 for i, e in enumerate(entries)]
        if new != entries:
            self.sums.put(first, new)

    def rehash(self, offset: int, length: int) -> int:
        """Set the checksum entries of the blocks of a range from the data as it is."""
        a = offset & ~MASK
        end = min(self.size, (offset + length + MASK) & ~MASK)
        step = 4 << 20
        for pos in range(a, end, step):
            n = min(step, end - pos)
            self.sums.put(pos >> BSHIFT, checksums.block_sums(self.pread(pos, n)))
        return end - a

    def _load_map(self, name: str) -> set[int]:
        path = self.dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return set()
        if len(data) != (self.nregions + 7) // 8:
            # torn or truncated (the file is always rewritten at its full length): bits may be
            # missing, and a lost dirty bit means serving data this replica does not have
            log.warning("%s has %d bytes, not %d: treating every region as dirty",
                        path, len(data), (self.nregions + 7) // 8)  # fmt: skip
            return set(range(self.nregions))
        return bytes_to_bits(data, self.nregions)

    def _all_changed(self) -> bytearray:
        buf = bytearray((self.nchunks + 7) // 8)
        set_bits(buf, 0, self.nchunks)
        return buf

    def _mark_region(self, m: bytearray, r: int) -> None:
        a = (r << self.shift) >> self.mshift
        b = min(self.nchunks, ((r + 1) << self.shift) >> self.mshift)
        set_bits(m, a, max(a + 1, b))

    def _load_missed(self, name: str, old_gran: bool) -> bytearray:
        """A change map file; region-granular (older format) maps are widened to chunks."""
        path = self.dir / name
        data = path.read_bytes()
        if old_gran:
            if len(data) != (self.nregions + 7) // 8:
                log.warning("%s is torn: treating every region as changed", path)
                return self._all_changed()
            buf = bytearray((self.nchunks + 7) // 8)
            for r in bytes_to_bits(data, self.nregions):
                self._mark_region(buf, r)
            return buf
        if len(data) != (self.nchunks + 7) // 8:
            log.warning("%s has %d bytes, not %d: treating every region as changed",
                        path, len(data), (self.nchunks + 7) // 8)  # fmt: skip
            return self._all_changed()
        return bytearray(data)

    def note_missed(self, offset: int, length: int) -> None:
        """Record a write/unmap in every change map (call only when self.missed is non-empty)."""
        a = offset >> self.mshift
        b = (offset + length - 1 >> self.mshift) + 1
        for m in self.missed.values():
            if b == a + 1:
                m[a >> 3] |= 1 << (a & 7)
            else:
                set_bits(m, a, b)

    def missed_runs(self, since: int, max_runs: int = MAX_RUNS) -> list[list[int]]:
        """Byte [offset, length] runs changed since epoch `since` (seed regions included).

        Coarsened (runs widened to aligned chunks) when there are more than `max_runs`.
        """
        m = self.missed[since]
        seed = self.seeds.get(since)
        if seed:
            m = bytearray(m)
            for r in seed:
                self._mark_region(m, r)
        g = self.mgran
        runs = [[a * g, min(self.size, (a + n) * g) - a * g] for a, n in bit_runs(m, self.nchunks)]
        gran = self.mgran * 2
        while len(runs) > max_runs:
            runs = coarsen(runs, gran, 0, self.size)
            gran *= 2
        return runs

    @property
    def epoch(self) -> int:
        """The stored epoch: data ops from a lower epoch are refused."""
        return int(self.meta["epoch"])

    @property
    def id(self) -> str:
        """This replica's voter id (made when the folder was created)."""
        return str(self.meta["id"])

    @property
    def mode(self) -> str:
        """ "WO" while the replica has no valid data (never in a view, or being rebuilt)."""
        return "WO" if not self.meta.get("view_epoch") or self.meta.get("rebuilding") else "RW"

    def meta_snapshot(self) -> bytes:
        """meta.json contents for write_meta (taken in the loop thread)."""
        return json.dumps(self.meta, indent=1).encode()

    def write_meta(self, data: bytes) -> None:
        """Atomically replace meta.json (thread-safe given a snapshot)."""
        atomic_write(self.dir / META, data)

    # ------------------------------------------------------------------ voter and mode state
    def claim(self, epoch: int, owner: Any = None) -> None:
        """Promise a controller term to `owner` (VoteError unless above the stored epoch);
        persist after."""
        voting.check_claim(self.meta, epoch)
        voting.apply_claim(self.meta, epoch, owner)

    def accept(self, body: dict[str, Any]) -> None:
        """Take a SET_META's epoch and view (VoteError when stale or malformed)."""
        voting.check_accept(self.meta, body)
        voting.apply_accept(self.meta, body)

    def set_clean(self, clean: bool) -> None:
        self.meta["clean"] = clean

    def set_rebuilding(self, rebuilding: bool) -> None:
        """SET_MODE: "WO" (being rebuilt: no valid data until told "RW") or "RW"."""
        self.meta["rebuilding"] = rebuilding

    def pin_dirty(self) -> int:
        """Keep every region dirty now until CLEAR_DIRTY (a writing controller vanished, or lost
        its quorum, with writes that may be here and not on its peers). Returns how many regions
        this pinned that were not pinned yet."""
        kept = len(self.dirty - self.sticky)
        self.sticky |= self.dirty
        return kept

    def clearing_due(self) -> bool:
        """True when some dirty region may be cleared lazily (not pinned)."""
        return bool(self.dirty - self.sticky)

    def info(self) -> dict[str, Any]:
        """The store's part of an INFO answer: meta, tracking epochs, mode, dirty state."""
        out = dict(self.meta)
        out["tracking"] = sorted(self.missed)
        out["mode"] = self.mode
        out["dirty"] = bool(self.dirty)
        out["dirty_regions"] = len(self.dirty)
        out["snapshots"] = self.layers.ids()
        return out

    def dirty_report(self) -> dict[str, Any]:
        """DIRTY_MAP: dirty regions and the change maps (byte runs, excluded ids)."""
        return {
            "region_size": self.region_size,
            "dirty": sorted(self.dirty),
            "missed_granularity": self.mgran,
            "missed": {str(e): self.missed_runs(e) for e in self.missed},
            "excluded": {str(e): self.excluded.get(e) for e in self.missed},
        }

    # ------------------------------------------------------------------ data path
    def check_range(self, offset: int, length: int) -> str | None:
        """Return why (offset, length) is not a valid I/O range, or None."""
        if length <= 0:
            return f"length {length} must be positive"
        if offset % SECTOR or length % SECTOR:
            return f"offset {offset} and length {length} must be multiples of {SECTOR}"
        if offset < 0 or offset + length > self.size:
            return f"range {offset}+{length} is past the end of the volume ({self.size} bytes)"
        return None

    def needs_intent(self, ranges: list[tuple[int, int]]) -> bool:
        """True when some region of the (offset, length) ranges is not durably dirty yet: a
        write/unmap there must wait for `mark` + a bitmap write (the write-intent rule, §2)."""
        shift = self.shift
        dirty = self.dirty
        und = self.undurable
        for offset, length in ranges:
            for r in range(offset >> shift, ((offset + length - 1) >> shift) + 1):
                if r not in dirty or r in und:
                    return True
        return False

    def mark(self, ranges: list[tuple[int, int]]) -> None:
        """Mark the ranges' regions dirty in memory (change maps: see note_write/note_missed).

        The new bits are `undurable` until a bitmap write covers them; the data write must wait.
        """
        shift = self.shift
        for offset, length in ranges:
            for r in range(offset >> shift, ((offset + length - 1) >> shift) + 1):
                if r not in self.dirty:
                    self.dirty.add(r)
                    self.undurable.add(r)

    def write_if_durable(self, offset: int, data: bytes | memoryview) -> bool:
        """The fast path of a write inside one region that is already durably dirty: apply it
        and return True; otherwise (or on a short/failed pwrite) do nothing and return False,
        and the caller takes the general path (mark, wait for the bitmap, `apply`)."""
        n = len(data)
        shift = self.shift
        r = offset >> shift
        if (
            (offset | n) & MASK
            or (offset + n - 1) >> shift != r
            or r not in self.dirty
            or r in self.undurable
        ):
            return False
        sums = checksums.block_sums(data)
        try:
            if os.pwrite(self.fd, data, offset) != n:
                self.sums.put(offset >> BSHIFT, sums)  # some of it may have landed
                return False
        except OSError:
            return False
        self.sums.put(offset >> BSHIFT, sums)
        if self.missed:
            self.note_missed(offset, n)
        self.wseq = seq = self.wseq + 1
        self.last_write[r] = seq
        return True

    def apply(self, ranges: list[tuple[int, int]], data: bytes | memoryview | None) -> None:
        """Apply a write (the ranges' data, concatenated) or an unmap (data None) whose regions
        are durably dirty (`needs_intent` is False). OSError when the disk fails."""
        pos = 0
        for offset, length in ranges:
            if data is None:
                self.punch(offset, length)
            elif data is DROP:
                self.drop(offset, length)
            else:
                self.pwrite(offset, data[pos : pos + length] if len(ranges) > 1 else data)
                pos += length
            self.note_write(offset, length)

    def poison(self, ranges: list[tuple[int, int]]) -> None:
        """Record whole blocks (just written with zeroes) as failing their checksum: a copy of
        blocks that have no good copy anywhere (a rebuild) keeps them bad, not zero."""
        for offset, length in ranges:
            n = (length + MASK) >> BSHIFT
            self.sums.put(offset >> BSHIFT, [checksums.POISON] * n)

    def note_write(self, offset: int, length: int) -> None:
        """Record the write sequence of the regions touched (lazy clearing), and change maps."""
        if self.missed:
            self.note_missed(offset, length)
        self.wseq = seq = self.wseq + 1
        shift = self.shift
        r0 = offset >> shift
        r1 = (offset + length - 1) >> shift
        lw = self.last_write
        lw[r0] = seq
        while r0 < r1:
            r0 += 1
            lw[r0] = seq

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        """Apply a write to the data file and its blocks' checksums (the caller made its regions
        durably dirty first). A block only partly written is merged with its old contents; if
        those failed their check, the block keeps its old checksum, so it still reads as corrupt
        and the controller repairs it from a good copy (never blessing the damage)."""
        end = offset + len(data)
        if not (offset & MASK or (end & MASK and end != self.size)):
            sums = checksums.block_sums(data)
            self._pwrite(offset, data)
            self.sums.put(offset >> BSHIFT, sums)
            return
        first, last = offset >> BSHIFT, (end - 1) >> BSHIFT
        edges: dict[int, bytearray | None] = {}  # block -> merged new contents; None: was corrupt
        for b in {first, last}:
            start = b << BSHIFT
            if offset <= start and (end >= start + BLOCK or end == self.size):
                continue  # wholly written
            old = bytearray(self.pread(start, min(BLOCK, self.size - start)))
            if self.verify(start, old):
                edges[b] = None
                continue
            lo, hi = max(offset, start), min(end, start + len(old))
            old[lo - start : hi - start] = data[lo - offset : hi - offset]
            edges[b] = old
        self._pwrite(offset, data)
        mv = memoryview(data)
        inner_a = (first + (first in edges)) << BSHIFT
        inner_b = min(self.size, (last + 1 - (last in edges)) << BSHIFT)
        if inner_b > inner_a:
            self.sums.put(inner_a >> BSHIFT, checksums.block_sums(
                mv[inner_a - offset : inner_b - offset]))  # fmt: skip
        for b, merged in edges.items():
            if merged is None:
                log.warning(
                    "%s: block %d failed its checksum before a partial write; it keeps "
                    "the old checksum until the controller repairs it",
                    self.dir,
                    b,
                )
            else:
                if self.layers and not self.sums.get(b, 1)[0]:
                    # the rest of the block came from a layer: the head gets all of it
                    self._pwrite(b << BSHIFT, merged)
                self.sums.put(b, checksums.block_sums(merged))

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        fd = self.fd
        n = os.pwrite(fd, data, offset)
        if n != len(data):
            view = memoryview(data)
            while n < len(view):
                n += os.pwrite(fd, view[n:], offset + n)

    def pread(self, offset: int, length: int) -> bytes:
        """Read a range (holes read as zeroes)."""
        data = os.pread(self.fd, length, offset)
        if len(data) != length:  # only if the file was truncated behind our back
            data += bytes(length - len(data))
        return data

    def preadv(self, ranges: list[tuple[int, int]]) -> bytearray:
        """Several ranges read into one buffer, concatenated (holes read as zeroes)."""
        data = bytearray(sum(n for _, n in ranges))
        pos = 0
        with memoryview(data) as mv:
            for offset, length in ranges:
                got = os.preadv(self.fd, (mv[pos : pos + length],), offset)
                if got < length:  # past EOF (truncated behind our back): zeroes
                    mv[pos + got : pos + length] = bytes(length - got)
                pos += length
        return data

    def span(self, offset: int, length: int) -> tuple[int, int]:
        """The whole blocks [a, b) holding a range (b clipped to the end of the volume)."""
        return offset & ~MASK, min(self.size, (offset + length + MASK) & ~MASK)

    def verify(self, a: int, data: bytearray) -> list[int]:
        """Block numbers of `data` (read at block-aligned `a`) that fail their checksum.

        A failing block is read again here, in the loop thread, where no write is half-applied
        (a read done in a worker thread may have met a write landing meanwhile): a good re-read
        replaces it in `data`. Only blocks that fail again are returned."""
        if self.layers:
            return self._verify_layered(a, data)
        return self._recheck(a, data, self.sums.bad(a, data))

    def _verify_layered(self, a: int, data: bytearray) -> list[int]:
        """verify under snapshots: the head's present blocks are checked as without; the others
        are filled from the layers (checked against the layer's entries)."""
        first = a >> BSHIFT
        entries = self.sums.get(first, (len(data) + MASK) >> BSHIFT)
        if 0 not in entries:
            return self._recheck(a, data, self.sums.bad(a, data))
        absent = [first + i for i, e in enumerate(entries) if not e]
        bad = self.layers.fill(a, data, absent)
        if len(absent) < len(entries):
            mine = [first + i for i, e in enumerate(entries) if e]
            for b0, n in runs_of(mine):
                s0 = (b0 << BSHIFT) - a
                part = data[s0 : s0 + (n << BSHIFT)]
                wrong = self._recheck(b0 << BSHIFT, part, self.sums.bad(b0 << BSHIFT, part))
                data[s0 : s0 + len(part)] = part
                bad += wrong
        return sorted(bad)

    def _recheck(self, a: int, data: bytearray, bad: list[int]) -> list[int]:
        """The blocks of `bad` that fail again when re-read from the head (see verify)."""
        if not bad:
            return bad
        still = []
        for b in bad:
            s = b << BSHIFT
            fresh = self.pread(s, min(BLOCK, self.size - s))
            if self.sums.bad(s, fresh):
                still.append(b)
            else:
                data[s - a : s - a + len(fresh)] = fresh
        return still

    def read_verified(self, ranges: list[tuple[int, int]]) -> tuple[bytearray, list[int]]:
        """Several ranges' data, concatenated, and the blocks among them that fail their check
        (their data must not be served)."""
        out = bytearray()
        bad: list[int] = []
        for offset, length in ranges:
            a, b = self.span(offset, length)
            data = self.preadv([(a, b - a)])
            bad += self.verify(a, data)
            out += data if (a, b) == (offset, offset + length) else data[
                offset - a : offset - a + length]  # fmt: skip
        return out, bad

    def block_runs(self, blocks: list[int]) -> list[list[int]]:
        """[offset, length] byte runs of block numbers (clipped to the volume)."""
        runs: list[list[int]] = []
        for b in sorted(set(blocks)):
            if runs and runs[-1][0] + runs[-1][1] == b << BSHIFT:
                runs[-1][1] += BLOCK
            else:
                runs.append([b << BSHIFT, BLOCK])
        if runs and runs[-1][0] + runs[-1][1] > self.size:
            runs[-1][1] = self.size - runs[-1][0]
        return runs

    def punch(self, offset: int, length: int) -> None:
        """Deallocate a range (it reads as zeroes): whole blocks are punched and their
        checksums cleared; parts of blocks are written with zeroes (see pwrite)."""
        end = offset + length
        a = (offset + MASK) & ~MASK
        b = end if end == self.size else end & ~MASK
        if b <= a:
            self.pwrite(offset, bytes(length))
            return
        if a > offset:
            self.pwrite(offset, bytes(a - offset))
        if end > b:
            self.pwrite(b, bytes(end - b))
        self._punch(a, b - a)
        n = ((b - a) + MASK) >> BSHIFT
        if self.layers:  # a hole would read through to the layers: zeroes are stated
            self.sums.put(a >> BSHIFT, [ZERO_SUM] * n)
        else:
            self.sums.clear(a >> BSHIFT, n)

    def drop(self, offset: int, length: int) -> None:
        """The head keeps nothing of its own in whole blocks [offset, offset+length): punched,
        entries 0, so they read through to the layers (zeroes when there are none)."""
        a = offset & ~MASK
        b = min(self.size, (offset + length + MASK) & ~MASK)
        if b > a:
            self.drops += 1  # a merge into the head in progress scans again (delete_step)
            self._punch(a, b - a)
            self.sums.clear(a >> BSHIFT, ((b - a) + MASK) >> BSHIFT)

    def _punch(self, offset: int, length: int) -> None:
        """PUNCH_HOLE|KEEP_SIZE, or write zeroes where that is unsupported."""
        if _fallocate is not None:
            rc = _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
            if rc == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(err, os.strerror(err))
        zero = bytes(min(length, 1 << 20))
        pos, end = offset, offset + length
        while pos < end:
            n = min(len(zero), end - pos)
            self._pwrite(pos, zero[:n] if n < len(zero) else zero)
            pos += n

    def extents(self, offset: int, length: int, max_runs: int = MAX_RUNS) -> list[list[int]]:
        """Allocated [offset, length] runs inside the range, found with SEEK_DATA/SEEK_HOLE.

        A very fragmented file is answered coarser (runs widened to aligned chunks of a region
        or more) so the answer stays under `max_runs`: over-reporting allocation is safe.
        """
        runs = self._extents(offset, length)
        if self.layers:  # the view's allocation: what the head or any layer holds
            a, end = offset >> BSHIFT, min(self.size, offset + length)
            count = ((end + MASK) >> BSHIFT) - a
            blocks = [[b << BSHIFT, n << BSHIFT] for b, n in self.sums.present_runs(a, count)]
            blocks += [[b << BSHIFT, n << BSHIFT] for b, n in self.layers.held_runs(a, count)]
            runs = union_runs(runs, blocks, end)
        gran = self.region_size
        while len(runs) > max_runs:
            runs = coarsen(runs, gran, offset, offset + length)
            gran *= 2
        return runs

    def _extents(self, offset: int, length: int) -> list[list[int]]:
        end = min(offset + length, self.size)
        runs: list[list[int]] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            runs.append([data, hole - data])
            pos = hole
        return runs

    def datasync(self) -> None:
        """fdatasync the data file and its checksums (run in a worker thread)."""
        os.fdatasync(self.fd)
        self.sums.sync()

    # ------------------------------------------------------------------ bitmaps
    def bitmap_snapshot(self) -> dict[str, Any]:
        """Capture the bitmaps for write_bitmaps (loop thread)."""
        return {
            "dirty": bits_to_bytes(self.dirty, self.nregions),
            "missed": {e: bytes(m) for e, m in self.missed.items()},
            "drop": set(self._dropped),
            "regions": set(self.undurable),
        }

    def write_bitmaps(self, snap: dict[str, Any]) -> None:
        """Write and fsync the bitmap files of a snapshot (worker thread)."""
        # change maps first: a dirty bit may be cleared only once the chunk bits it covers
        # are on disk (a crash in between leaves the region dirty = wholly changed)
        for name, data in [(missed_name(e), d) for e, d in snap["missed"].items()] + [
            (DIRTY, snap["dirty"])
        ]:
            path = self.dir / name
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.dir)
        for e in snap["drop"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / missed_name(e))
        if snap["drop"]:
            _fsync_dir(self.dir)

    def bitmaps_written(self, snap: dict[str, Any]) -> None:
        """The snapshot is on disk: its regions are durably dirty (loop thread)."""
        self.undurable -= snap["regions"]
        self._dropped -= snap["drop"]

    def persist_bitmaps(self) -> None:
        """Synchronous snapshot + write (tests, startup, shutdown)."""
        snap = self.bitmap_snapshot()
        self.write_bitmaps(snap)
        self.bitmaps_written(snap)

    def begin_clear(self) -> tuple[set[int], int]:
        """Pick dirty regions idle since the previous clear; call before syncing the data."""
        prev = self.prev_clear_seq
        lw = self.last_write
        cand = {r for r in self.dirty - self.sticky - self.undurable if lw.get(r, 0) <= prev}
        self.prev_clear_seq = self.wseq
        return cand, self.wseq

    def finish_clear(self, cand: set[int], seq: int) -> bool:
        """After the data sync: clear candidates not written since begin_clear. True if changed."""
        lw = self.last_write
        gone = {r for r in cand if lw.get(r, 0) <= seq and r in self.dirty}
        if not gone:
            return False
        self.dirty -= gone
        for r in gone:
            lw.pop(r, None)
        return True

    def clear_regions(self, regions: list[int] | None, seq: int) -> None:
        """CLEAR_DIRTY after a data sync: drop the given (or all) bits, sticky ones included."""
        lw = self.last_write
        targets = set(self.dirty) if regions is None else set(regions) & self.dirty
        gone = {r for r in targets if lw.get(r, 0) <= seq and r not in self.undurable}
        self.dirty -= gone
        self.sticky -= gone

    def start_tracking(self, since: int, excluded: list[str] | None = None) -> None:
        """Start a change map "written since epoch `since`", seeded with the dirty regions, for
        the members `excluded` (ids) removed at that epoch."""
        if since in self.missed:
            return
        if not self.missed and not self._dropped:  # the first map: the granularity of its size
            self._set_granularity(missed_granularity(self.size))
        self.missed[since] = bytearray((self.nchunks + 7) // 8)
        self.seeds[since] = set(self.dirty)
        self.excluded[since] = list(excluded or [])
        self._dropped.discard(since)
        self._tracking_meta()

    def _tracking_meta(self) -> None:
        out = []
        for e in sorted(self.missed):
            t: dict[str, Any] = {"since": e, "seed": sorted(self.seeds.get(e) or ())}
            if self.excluded.get(e) is not None:
                t["excluded"] = self.excluded[e]
            out.append(t)
        self.meta["tracking"] = out

    def drop_seed(self, since_list: list[int]) -> None:
        """Forget the start-up seed of change maps (the controller re-sent its in-flight writes,
        so the chunk bits now record them); persisted with the next meta write."""
        for e in since_list:
            if e in self.seeds:
                self.seeds[e] = set()
        self._tracking_meta()

    def stop_tracking(self, since_list: list[int]) -> None:
        """Drop change maps (their files go at the next bitmap write)."""
        for e in since_list:
            if self.missed.pop(e, None) is not None:
                self._dropped.add(e)
            self.seeds.pop(e, None)
            self.excluded.pop(e, None)
        self._tracking_meta()

    # ------------------------------------------------------------------ snapshots
    def _recover_snapshot_op(self) -> None:
        """Finish or undo a snapshot whose creation a crash interrupted (meta "snapshot_op"),
        before the head is opened. The head is renamed into the layer before the new head is
        made, so: no layer data file yet -> nothing moved, undo; else finish the move and
        record the snapshot (a controller that got no answer retries or deletes it)."""
        op = self.meta.get("snapshot_op")
        if not op:
            return
        rec = op["create"]
        img, crc = Layer.paths(self.dir / LAYER_DIR, str(rec["id"]))
        head_img, head_crc = self.dir / DATA, self.dir / checksums.NAME
        if not img.exists():
            crc.unlink(missing_ok=True)
            log.warning("%s: snapshot %r was interrupted before it froze the data: undone",
                        self.dir, rec.get("name"))  # fmt: skip
        else:
            if not crc.exists():
                os.replace(head_crc, crc)
            for path in (head_img, head_crc):
                if not path.exists():
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                    os.close(fd)
            _fsync_dir(img.parent)
            _fsync_dir(self.dir)
            self.meta.setdefault("snapshots", []).append(rec)
            log.warning("%s: snapshot %r was interrupted after it froze the data: completed",
                        self.dir, rec.get("name"))  # fmt: skip
        del self.meta["snapshot_op"]
        self.write_meta(self.meta_snapshot())

    def _open_layers(self) -> None:
        """Open the layers meta.json lists and remove files of layers it does not list (a
        delete or reset interrupted after its meta write)."""
        recs = self.meta.get("snapshots") or []
        ldir = self.layers.dir
        for rec in recs:
            self.layers.list.append(Layer(ldir, rec))
        if ldir.is_dir():
            keep = {f"{r['id']}.img" for r in recs} | {f"{r['id']}.crc" for r in recs}
            for path in ldir.iterdir():
                if path.name not in keep:
                    log.info("%s: removing %s (a layer no snapshot uses)", self.dir, path.name)
                    path.unlink()
        self.layers.rebuild_index()

    def snapshot_list(self) -> list[dict[str, Any]]:
        """SNAP_LIST: every snapshot, oldest first, with the bytes its layer takes and the bytes
        a delete frees (blocks its child holds too)."""
        out = []
        layers = self.layers.list
        for i, layer in enumerate(layers):
            mine = layer.present()
            child = layers[i + 1].sums if i + 1 < len(layers) else self.sums
            unique = sum(1 for b in mine if b < BlockSums.blocks(child.size)
                         and child.get(b, 1)[0])  # fmt: skip
            out.append({**layer.rec, "bytes": layer.allocated(), "unique": unique << BSHIFT})
        return out

    def check_snapshot(self, rec: Any) -> str | None:
        """Why SNAPSHOT `rec` cannot be taken, or None."""
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("id"), str)
            or not isinstance(rec.get("name"), str)
            or not isinstance(rec.get("created"), (int, float))
        ):
            return 'needs {"id": text, "name": text, "created": seconds}'
        if not rec["id"].isalnum() or len(rec["id"]) > 64:
            return f"snapshot id {rec['id']!r} must be 1-64 letters and digits"
        if self.meta.get("snapshot_op"):
            return "another snapshot is being taken"
        for layer in self.layers.list:
            if rec["id"] == layer.id or rec["name"] == layer.rec["name"]:
                return f"snapshot {rec['name']!r} (id {rec['id']}) exists already"
        if len(self.layers) >= MAX_LAYERS:
            return f"this replica holds {MAX_LAYERS} snapshots, the most it can"
        return None

    def snapshot_intent(self, rec: dict[str, Any]) -> None:
        """First step of SNAPSHOT: record the intent (the caller makes meta durable, after the
        head's data is synced)."""
        self.meta["snapshot_op"] = {
            "create": {k: rec[k] for k in ("id", "name", "created")} | {"size": self.size}
        }

    def snapshot_freeze(self) -> None:
        """Second step: the head becomes the newest layer and a new, empty head starts."""
        rec = self.meta["snapshot_op"]["create"]
        ldir = self.layers.dir
        ldir.mkdir(exist_ok=True)
        held = self.sums.present(0, BlockSums.blocks(self.size))
        os.fdatasync(self.fd)  # writes that came after the caller's sync
        self.sums.sync()
        img, crc = Layer.paths(ldir, str(rec["id"]))
        os.rename(self.dir / DATA, img)
        os.rename(self.dir / checksums.NAME, crc)
        old_fd, old_sums = self.fd, self.sums
        old_sums.path = crc
        self.fd = os.open(self.dir / DATA, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, self.size)
        self.sums = BlockSums(self.dir, self.size)
        _fsync_dir(ldir)
        _fsync_dir(self.dir)
        self.layers.push(Layer.adopt(rec, old_fd, old_sums), held)

    def snapshot_commit(self) -> None:
        """Last step: the snapshot is listed (the caller makes meta durable)."""
        rec = self.meta.pop("snapshot_op")["create"]
        self.meta.setdefault("snapshots", []).append(rec)

    def _merge_target(self, pos: int) -> tuple[BlockSums, int, Layer | None]:
        """The child of the layer at `pos`: its checksum entries, data fd, and layer (None: the
        head)."""
        layers = self.layers.list
        if pos < len(layers):
            child = layers[pos]
            return child.sums, child.fd, child
        return self.sums, self.fd, None

    def merge_plan(self, snap_id: str, cursor: int, most: int) -> tuple[int, list[int], int]:
        """SNAP_DELETE, one chunk: (position, blocks of the layer its child does not hold, next
        cursor; -1 when the layer is done), scanning from block `cursor`."""
        pos = self.layers.position(snap_id)
        layer = self.layers.list[pos - 1]
        sums, _fd, _child = self._merge_target(pos)
        end = min(layer.nblocks, cursor + most)
        limit = BlockSums.blocks(sums.size)
        todo = [b for b in layer.present(cursor, end - cursor)
                if b < limit and not sums.get(b, 1)[0]]  # fmt: skip
        return pos, todo, (end if end < layer.nblocks else -1)

    def merge_copy(self, pos: int, blocks: list[int]) -> list[tuple[int, bytes, tuple[int, ...]]]:
        """Read the blocks of layer `pos` to merge: (first, data, entries) per run (a worker
        thread may run this; layers do not change meanwhile)."""
        layer = self.layers.list[pos - 1]
        out = []
        for b, n in runs_of(blocks):
            s = b << BSHIFT
            ln = min(layer.size, (b + n) << BSHIFT) - s
            out.append((b, layer.read(s, ln), layer.sums.get(b, n)))
        return out

    def merge_write(self, pos: int, runs: list[tuple[int, bytes, tuple[int, ...]]]) -> list[int]:
        """Write merged data into the child (into the head only where it still holds nothing of
        its own: a write that landed meanwhile wins). Returns the blocks written; their entries
        follow once the data is durable (`merge_entries`), so a crash in between leaves them
        reading through to the layer, which still exists."""
        sums, fd, _child = self._merge_target(pos)
        done: list[int] = []
        for first, data, _entries in runs:
            n = len(_entries)
            free = [first + i for i, e in enumerate(sums.get(first, n)) if not e]
            for b, c in runs_of(free):
                o = (b - first) << BSHIFT
                piece = data[o : o + (c << BSHIFT)]
                if piece:
                    os.pwrite(fd, piece, b << BSHIFT)
                done += range(b, b + c)
        return done

    def merge_sync(self, pos: int) -> None:
        """fdatasync the child's data (worker thread)."""
        _sums, fd, _child = self._merge_target(pos)
        os.fdatasync(fd)

    def merge_entries(
        self, pos: int, runs: list[tuple[int, bytes, tuple[int, ...]]], written: list[int]
    ) -> None:
        """The entries of merged blocks, where the child still holds nothing of its own: the
        layer's entries as they are (a bad block stays bad)."""
        sums, _fd, _child = self._merge_target(pos)
        entry = {}
        for first, _data, entries in runs:
            for i, e in enumerate(entries):
                entry[first + i] = e
        for b in written:
            if not sums.get(b, 1)[0]:
                sums.put(b, [entry[b]])

    def delete_commit(self, snap_id: str) -> Layer:
        """Every block of the layer is in its child: forget the snapshot (the caller makes the
        child's entries and meta durable, then removes the layer's files with `drop_layer`)."""
        pos = self.layers.position(snap_id)
        layer = self.layers.list.pop(pos - 1)
        self.meta["snapshots"] = [r for r in self.meta.get("snapshots", []) if r["id"] != snap_id]
        self.layers.rebuild_index()
        return layer

    def drop_layer(self, layer: Layer) -> None:
        layer.close()
        for path in Layer.paths(self.layers.dir, layer.id):
            path.unlink(missing_ok=True)

    def snap_read(self, snap_id: str, offset: int, length: int) -> tuple[bytearray, list[int]]:
        """SNAP_READ: a range of the volume as of snapshot `snap_id` and its bad blocks."""
        pos = self.layers.position(snap_id)
        a, b = self.span(offset, length)
        data = bytearray(b - a)
        bad = self.layers.fill(a, data, list(range(a >> BSHIFT, (b + MASK) >> BSHIFT)), pos)
        if (a, b) != (offset, offset + length):
            data = data[offset - a : offset - a + length]
        return data, bad

    def snap_extents(
        self, offset: int, length: int, to: str | None, since: str | None
    ) -> list[list[int]]:
        """SNAP_EXTENTS: runs of the blocks present in a layer newer than `since`, up to `to`
        (None: the head included)."""
        lo = self.layers.position(since) if since is not None else 0
        hi = self.layers.position(to) if to is not None else len(self.layers) + 1
        if lo >= hi:
            raise SnapshotError(f"snapshot {since} is not older than {to}")
        first = offset >> BSHIFT
        count = ((min(self.size, offset + length) + MASK) >> BSHIFT) - first
        held: list[list[int]] = []
        for p in range(lo + 1, hi + 1):
            sums = self.layers.list[p - 1].sums if p <= len(self.layers) else self.sums
            held += [[b << BSHIFT, n << BSHIFT] for b, n in sums.present_runs(first, count)]
        return union_runs([], held, min(self.size, offset + length))

    def snap_reset(self) -> list[Layer]:
        """SNAP_RESET, first step: no snapshot, and the replica marked as being rebuilt (the
        caller makes meta durable, then calls `empty_head` and removes the returned layers'
        files with `drop_layer`: a crash in between leaves a replica a full rebuild fixes)."""
        gone = self.layers.list
        self.layers.list = []
        self.layers.rebuild_index()
        self.meta["snapshots"] = []
        self.meta["rebuilding"] = True
        return gone

    def empty_head(self) -> None:
        """Every block of the head dropped (it reads as zeroes: there is no layer)."""
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, self.size)
        self.sums.reset()

    # ------------------------------------------------------------------ growing
    def check_grow(self, size: Any) -> str | None:
        """Why the volume cannot grow to `size` bytes, or None (also when it is that size)."""
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % SECTOR:
            return f"size {size!r} must be a positive multiple of {SECTOR} bytes"
        if size < self.size:
            return (
                f"refusing to shrink volume {self.volume!r} from {self.size} to {size} bytes "
                "(a volume only grows)"
            )
        if size > MAX_SIZE:
            return f"size {size} is above the largest volume a replica holds ({MAX_SIZE} bytes)"
        if self.missed and (size + self.mgran - 1) >> self.mshift > MISSED_GROW_MAX_BITS:
            return (
                f"cannot grow to {size} bytes while change maps exist (a replica is away): at "
                f"their {self.mgran}-byte granularity each would take more than "
                f"{MISSED_GROW_MAX_BITS >> 23} MiB; grow once every replica is back"
            )
        return None

    def extend(self, size: int) -> bool:
        """The first step of a grow: the data file is extended (sparse: the new part reads as
        zeroes) and the bitmaps sized for `size`. meta.json keeps the old size until
        `commit_size`, called once the extension is durable: a crash in between leaves a data
        file longer than meta says, cut back at open. StoreError when `check_grow` refuses
        (nothing changed); OSError from the filesystem (nothing changed); False when the volume
        has that size already."""
        why = self.check_grow(size)
        if why is not None:
            raise StoreError(why)
        if size == self.size:
            return False
        os.ftruncate(self.fd, size)
        self.sums.resize(size)  # a short last block was checked padded with zeroes: still right
        self.layers.resize(BlockSums.blocks(size))
        self.size = size
        self.nregions = (size + self.region_size - 1) >> self.shift
        if not self.missed and not self._dropped:  # no change map a granularity change misreads
            self._set_granularity(missed_granularity(size))
        else:  # existing maps keep their granularity and get zero bits for the new chunks
            self.nchunks = (size + self.mgran - 1) >> self.mshift
            need = (self.nchunks + 7) // 8
            for m in self.missed.values():
                m.extend(bytes(need - len(m)))
        return True

    def commit_size(self) -> None:
        """Record the size `extend` reached (once the data file's extension is durable); it is
        persisted with the next meta write."""
        self.meta["size"] = self.size

    def grow(self, size: int) -> bool:
        """A whole grow, synchronously (at open; tests): extend, sync the data file, record the
        size, write the bitmaps at their new length, then meta. False when already that size."""
        if not self.extend(size):
            return False
        self.datasync()
        self.commit_size()
        self.persist_bitmaps()
        self.write_meta(self.meta_snapshot())
        return True

    def _set_granularity(self, gran: int) -> None:
        """Change maps one bit per `gran` bytes from now on (only while none exists)."""
        self.mgran = gran
        self.mshift = gran.bit_length() - 1
        self.nchunks = (self.size + gran - 1) >> self.mshift
        self.meta["missed_granularity"] = gran

    # ------------------------------------------------------------------ shutdown / writes for tests
    def write(self, offset: int, data: bytes | None, length: int = 0) -> None:
        """Synchronous write (or unmap: data None, `length` bytes) with the intent protocol:
        tests and tools; the server does the same in steps without blocking its loop."""
        ranges = [(offset, len(data) if data is not None else length)]
        if self.needs_intent(ranges):
            self.mark(ranges)
            self.persist_bitmaps()
        self.apply(ranges, data)

    def close(self, clean: bool = True) -> None:
        """Stop using the store; on a clean close sync, clear the runtime dirty bits, mark clean."""
        if self.closed:
            return
        self.closed = True
        try:
            if clean:
                self.datasync()
                self.dirty = set(self.sticky)
                self.persist_bitmaps()
                self.meta["clean"] = not self.dirty
                self.write_meta(self.meta_snapshot())
        finally:
            os.close(self.fd)
            self.sums.close()
            self.layers.close()
