"""Moving volume data through controllers' management APIs (docs/BACKUPS.md): a snapshot into a
backup store (`jiva backup create`), a backup into a volume (`jiva backup restore`), a snapshot
of one volume into another (`jiva clone`).

Reads use `GET /v1/snapshots/{name}/extents` and `.../data?offset&length`; writes go through
the exclusive import of the target (`POST /v1/import` begin/end, `PUT /v1/import/data`), which
the controller refuses while initiators are logged in. A few requests are in flight at once
(asyncio + aiohttp), so a transfer is not one round trip per chunk; hashing, compressing and
checking blocks run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from jiva_engine.api.client import ApiError, api_base
from jiva_engine.backup.store import (
    DEFAULT_BLOCK_SIZE,
    BackupError,
    BackupStore,
    is_zero,
)

MiB = 1 << 20
PARALLEL = 4  # requests in flight
COPY_CHUNK = MiB  # a clone copies the MiBs the snapshot's extents touch (several a request)
READ_MAX = 4 * MiB  # a backup reads up to this much (of consecutive chunks) in one request
WRITE_MAX = 4 * MiB  # a restore writes up to this much in one request (the API takes 16 MiB)
ZERO_MAX = 1 << 30  # an unmap request covers at most this much (a few seconds of the API's)


class Refused(BackupError):
    """The transfer was refused before anything was written (target too small, in use)."""


class ImportFailed(BackupError):
    """A restore or clone failed after its import began: the target holds part of the copy
    (`cause`: what failed, a BadBlock for a damaged backup)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class Api:
    """An asynchronous client of one controller's management API (bearer token, no proxy)."""

    def __init__(self, api: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.base, self.where, self.ssl = api_base(api)
        self.token, self.timeout = token, timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=2 * PARALLEL + 2, ssl=self.ssl or True),
            trust_env=False,  # the API is on the storage network: never through a proxy
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        raw: bool = False,
    ) -> Any:
        """One request; its JSON answer (the bytes with `raw`). ApiError with the API's own
        message when it refuses, or saying it cannot be reached."""
        assert self._session is not None, "use `async with Api(...)`"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            async with self._session.request(
                method, self.base + path, params=params, json=body, data=data, headers=headers
            ) as resp:
                got = await resp.read()
                status, reason = resp.status, resp.reason
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            why = str(e) or type(e).__name__
            raise ApiError(f"cannot reach the API at {self.where}: {why}") from None
        if status >= 400:
            why, doc = reason or "", None
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(got)
                why = doc["error"]
            if doc is None and got:
                why = got.decode(errors="replace").strip()[:300]
            raise ApiError(
                f"API {self.where} answered HTTP {status} to {method} {path}: {why}", status, doc
            )
        if raw:
            return got
        try:
            return json.loads(got) if got else {}
        except ValueError:
            raise ApiError(f"API {self.where} did not answer {method} {path} with JSON") from None

    # ------------------------------------------------------------------ the calls used here
    async def status(self) -> dict[str, Any]:
        doc = await self.call("GET", "/v1/volume")
        if not isinstance(doc, dict) or not isinstance(doc.get("size"), int):
            raise ApiError(f"API {self.where} answered GET /v1/volume with an unexpected document")
        return doc

    async def snapshot(self, name: str) -> dict[str, Any] | None:
        """The snapshot's entry of GET /v1/snapshots (id, created, ...), None if not listed."""
        doc = await self.call("GET", "/v1/snapshots")
        listed = doc.get("snapshots") if isinstance(doc, dict) else None
        for s in listed if isinstance(listed, list) else []:
            if isinstance(s, dict) and s.get("name") == name:
                return s
        return None

    async def extents(self, snapshot: str) -> tuple[int, list[tuple[int, int]]]:
        """(volume size, [(offset, length)] of the blocks present in the snapshot's view)."""
        path = f"/v1/snapshots/{quote(snapshot, safe='')}/extents"
        doc = await self.call("GET", path)
        try:
            size = int(doc["size"])
            runs = [(int(o), int(n)) for o, n in doc["extents"]]
        except (KeyError, TypeError, ValueError):
            raise ApiError(
                f"API {self.where} answered GET {path} with an unexpected document"
            ) from None
        return size, runs

    async def read(self, snapshot: str, offset: int, length: int) -> bytes:
        """`length` bytes of the snapshot's view at `offset` (checked by the replicas)."""
        path = f"/v1/snapshots/{quote(snapshot, safe='')}/data"
        data = await self.call("GET", path, {"offset": offset, "length": length}, raw=True)
        if len(data) != length:
            raise ApiError(
                f"API {self.where}: GET {path} at offset {offset} answered {len(data)} bytes,"
                f" not {length}"
            )
        return bytes(data)

    async def import_begin(self, source: str, total: int) -> None:
        await self.call(
            "POST", "/v1/import", body={"action": "begin", "source": source, "total": total}
        )

    async def import_end(self, error: str | None = None) -> None:
        """End the import (the controller flushes every member); `error`: the reason this
        side gives up (the import's result is then "failed: ...")."""
        body: dict[str, Any] = {"action": "end"}
        if error is not None:
            body["error"] = error
        await self.call("POST", "/v1/import", body=body)

    async def write(self, offset: int, data: bytes) -> None:
        await self.call("PUT", "/v1/import/data", {"offset": offset}, data=data)

    async def zero(self, offset: int, length: int) -> None:
        params = {"offset": offset, "length": length, "zero": 1}
        await self.call("PUT", "/v1/import/data", params)


class Progress:
    """A progress line on stderr (bytes, %, MiB/s, ETA): rewritten in place at most 4 times a
    second on a terminal, a new line every 5 s otherwise; `finish` prints the summary line."""

    def __init__(self, what: str, total: int = 0, quiet: bool = False) -> None:
        self.what, self.total, self.done = what, total, 0
        self.stream: TextIO = sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self._shown = self.t0
        self._dirty = False

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown >= (0.25 if self.tty else 5.0):
            self._shown = now
            self._show(self.line())

    @property
    def took(self) -> float:
        return max(time.monotonic() - self.t0, 1e-6)

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done / self.took

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.what}: {self.done / MiB:.1f} of {self.total / MiB:.1f} MiB ({pct:.1f}%),"
            f" {rate / MiB:.1f} MiB/s, ETA {_duration(eta)}"
        )

    def _show(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            print("\r" + text + "\033[K", end="", file=self.stream, flush=True)
            self._dirty = True
        else:
            print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        """Take the progress line off the terminal (before an error message)."""
        if self._dirty and not self.quiet:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._dirty = False

    def finish(self, summary: str) -> None:
        if self.quiet:
            return
        if self._dirty:
            print("\r\033[K", end="", file=self.stream)
        print(summary, file=self.stream, flush=True)


def _duration(s: float) -> str:
    s = int(s + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


async def run_jobs(
    jobs: Iterable[Any], work: Callable[[Any], Awaitable[None]], parallel: int
) -> None:
    """Run `work(job)` for every job with `parallel` of them in flight; the first failure
    cancels the rest and is raised as itself."""
    it = iter(jobs)

    async def worker() -> None:
        for job in it:  # the workers share the iterator: each takes the next job
            await work(job)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, parallel)):
                tg.create_task(worker())
    except ExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, ExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def touched(runs: Iterable[tuple[int, int]], size: int, chunk: int) -> list[int]:
    """The indices of the `chunk`-sized pieces of a `size`-byte volume that the runs touch."""
    out: set[int] = set()
    for off, n in runs:
        end = min(off + n, size)
        if n > 0 and off < end:
            out.update(range(off // chunk, (end - 1) // chunk + 1))
    return sorted(out)


def zero_runs(
    start: int, end: int, skip: Iterable[tuple[int, int]], most: int = ZERO_MAX
) -> list[tuple[int, int]]:
    """[start, end) minus the `skip` ranges (sorted), as runs of at most `most` bytes."""
    out: list[tuple[int, int]] = []
    pos = start

    def emit(a: int, b: int) -> None:
        while a < b:
            n = min(most, b - a)
            out.append((a, n))
            a += n

    for off, n in skip:
        if off > pos:
            emit(pos, min(off, end))
        pos = max(pos, off + n)
    emit(pos, end)
    return out


# ---------------------------------------------------------------------- the three transfers
async def create_backup(
    api: Api,
    store: BackupStore,
    snapshot: str,
    name: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compress: bool = True,
    parallel: int = PARALLEL,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write snapshot `snapshot` of the volume behind `api` to `store` as backup `name` (the
    caller holds the store's exclusive lock); its manifest."""
    st = await api.status()
    size, runs = await api.extents(snapshot)
    info: dict[str, Any] = {}
    with contextlib.suppress(ApiError):  # the snapshot's id and time, for the manifest only
        info = await api.snapshot(snapshot) or {}
    meta = {
        "snapshot": snapshot,
        "snapshot_id": info.get("id"),
        "snapshot_created": info.get("created"),
        "source": api.where,
    }
    w = store.writer(
        name, str(st.get("name")), size, block_size=block_size, compress=compress, **meta
    )
    todo = touched(runs, size, block_size)
    prog = progress or Progress(f"backup {name}", quiet=True)
    prog.total = sum(w.extent(i)[1] for i in todo)
    loop = asyncio.get_running_loop()

    async def one(job: tuple[int, int]) -> None:
        first, count = job
        off = w.extent(first)[0]
        n = sum(w.extent(i)[1] for i in range(first, first + count))
        data = await api.read(snapshot, off, n)  # consecutive chunks in one request

        async def add(i: int) -> None:  # hash, compress, write + fsync: in a thread each
            o, ln = w.extent(i)
            await loop.run_in_executor(None, w.add, i, data[o - off : o - off + ln])
            prog.add(ln)

        await asyncio.gather(*(add(i) for i in range(first, first + count)))

    await run_jobs(groups(todo, max(1, READ_MAX // block_size)), one, parallel)
    return w.commit(read=prog.done, rate=round(prog.rate))


async def restore_backup(
    api: Api,
    store: BackupStore,
    name: str,
    parallel: int = PARALLEL,
    progress: Progress | None = None,
    check_first: bool = False,
) -> dict[str, Any]:
    """Write backup `name` into the volume behind `api` (the caller holds the store's shared
    lock): every block checked before it is written, chunks of zeroes (and the target's
    space beyond the backup) unmapped. Refused when the target is smaller or the controller
    refuses the import (initiators logged in). BadBlock stops it at the first damaged block."""
    doc = store.manifest(name)
    st = await api.status()
    size, target = int(doc["size"]), int(st["size"])
    if target < size:
        raise Refused(
            f"volume {st.get('name')} ({target} bytes) is smaller than backup {name}"
            f" ({size} bytes): grow it (jiva grow) or restore into a larger volume"
        )
    loop = asyncio.get_running_loop()
    if check_first:
        bad = await loop.run_in_executor(None, store.verify, name)
        if bad:
            raise bad[0]
    bs = int(doc["block_size"])
    present = sorted(int(k) for k in doc["blocks"])
    data_jobs = [("data", g) for g in groups(present, max(1, WRITE_MAX // bs))]
    written_runs = [(i * bs, min(bs, size - i * bs)) for i in present]  # the last may be short
    zero_jobs = [("zero", o, n) for o, n in zero_runs(0, target, written_runs)]
    prog = progress or Progress(f"restore {name}", quiet=True)
    prog.total = int(doc.get("bytes") or sum(min(bs, size - i * bs) for i in present))
    source = f"backup {name} ({doc.get('volume')}@{doc.get('snapshot')}) from {store.root}"
    try:
        await api.import_begin(source, target)
    except ApiError as e:
        raise Refused(f"the target refused the restore: {e}") from None
    written = 0

    async def one(job: tuple) -> None:
        nonlocal written
        if job[0] == "zero":
            await api.zero(job[1], job[2])
            return
        first, count = job[1]
        data = await loop.run_in_executor(None, _read_chunks, store, doc, first, count)
        for k in range(0, len(data), WRITE_MAX):
            await api.write(first * bs + k, data[k : k + WRITE_MAX])
        written += len(data)
        prog.add(len(data))

    await _import(api, [*data_jobs, *zero_jobs], one, parallel)
    return {
        "restored": name,
        "volume": st.get("name"),
        "size": size,
        "target_size": target,
        "bytes": written,
        "took": round(prog.took, 3),
        "rate": round(prog.rate),
    }


def groups(indices: list[int], most: int) -> list[tuple[int, int]]:
    """Sorted chunk indices as (first, count) runs of consecutive ones, at most `most` long."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i and out[-1][1] < most:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def _read_chunks(store: BackupStore, doc: dict[str, Any], first: int, count: int) -> bytes:
    """Chunks first..first+count-1 of a backup (all present), each checked, joined."""
    parts = [store.read_chunk(doc, i) for i in range(first, first + count)]
    return b"".join(p for p in parts if p is not None)


async def clone(
    src: Api,
    snapshot: str,
    dst: Api,
    parallel: int = PARALLEL,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Copy snapshot `snapshot` of the volume behind `src` into the volume behind `dst` (at
    least as large; the rest of it is unmapped). Readable when this returns."""
    src_st = await src.status()
    size, runs = await src.extents(snapshot)
    st = await dst.status()
    target = int(st["size"])
    if target < size:
        raise Refused(
            f"volume {st.get('name')} ({target} bytes) is smaller than volume"
            f" {src_st.get('name')} ({size} bytes): it must be at least as large"
        )
    todo = touched(runs, size, COPY_CHUNK)
    data_jobs = [("data", g) for g in groups(todo, WRITE_MAX // COPY_CHUNK)]
    zero_jobs = [
        ("zero", o, n)
        for o, n in zero_runs(
            0, target, [(i * COPY_CHUNK, min(COPY_CHUNK, size - i * COPY_CHUNK)) for i in todo]
        )
    ]
    prog = progress or Progress("clone", quiet=True)
    prog.total = sum(min(COPY_CHUNK, size - i * COPY_CHUNK) for i in todo)
    source = f"clone of {src_st.get('name')}@{snapshot} from {src.where}"
    try:
        await dst.import_begin(source, target)
    except ApiError as e:
        raise Refused(f"the target refused the clone: {e}") from None
    copied = 0

    async def one(job: tuple) -> None:
        nonlocal copied
        if job[0] == "zero":
            await dst.zero(job[1], job[2])
            return
        first, count = job[1]
        off = first * COPY_CHUNK
        n = min(count * COPY_CHUNK, size - off)
        data = await src.read(snapshot, off, n)
        if is_zero(data):
            await dst.zero(off, n)
        else:
            await dst.write(off, data)
            copied += n
        prog.add(n)

    await _import(dst, [*data_jobs, *zero_jobs], one, parallel)
    return {
        "cloned": f"{src_st.get('name')}@{snapshot}",
        "volume": st.get("name"),
        "size": size,
        "target_size": target,
        "bytes": copied,
        "took": round(prog.took, 3),
        "rate": round(prog.rate),
    }


async def _import(
    api: Api, jobs: list, work: Callable[[Any], Awaitable[None]], parallel: int
) -> None:
    """Run the jobs of an import that has begun, then end it (also when a job failed: the
    controller then knows the volume holds a partial copy, and accepts logins again)."""
    try:
        await run_jobs(jobs, work, parallel)
    except BaseException as e:
        with contextlib.suppress(Exception):
            await api.import_end(error=str(e) or type(e).__name__)
        if isinstance(e, Exception):
            raise ImportFailed(e) from e
        raise
    try:
        await api.import_end()
    except ApiError as e:  # the flush at the end failed: the copy may not be durable
        raise ImportFailed(e) from e
