"""Snapshots, controller side (issue 15), with real `jiva replica` and `jiva controller`
processes: create/list/delete through the CLI and the API (token, refusals, the limit), the
write barrier under a checking writer (a snapshot holds exactly the writes acknowledged at the
barrier, identically on every replica), rebuilds carrying snapshots, and a controller killed in
the middle of a create or delete.

Snapshot contents are read from each replica directly (SNAP_READ), so "identical on every
replica" is checked copy by copy, not through the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jiva_engine.initiator import Initiator
from jiva_engine.protocol.client import ReplicaClient
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

MiB = 1 << 20
BLOCK = 4096
SIZE = 16 * MiB
VOL = "svol"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
TOKEN = "snap-token-0123456789"
LIMIT = 3


class Cluster:
    """Three replicas and a controller (API with a token, iSCSI portal) on 127.0.0.1."""

    def __init__(
        self, procs, root: Path, limit: int = LIMIT, extra: tuple[str, ...] = (), size: int = SIZE
    ) -> None:
        self.procs, self.root, self.limit, self.extra = procs, root, limit, extra
        self.size = size
        self.ports = [free_port() for _ in range(3)]
        self.dirs = [root / f"r{i}" for i in range(3)]
        self.rproc: list = [None] * 3
        self.starts = [0] * 3
        self.ctl_starts = 0
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        for i in range(3):
            self.start_replica(i)
        self.api, self.portal = free_port(), free_port()
        self.start_controller()

    def start_replica(self, i: int) -> None:
        self.starts[i] += 1
        self.rproc[i] = self.procs.jiva(
            "replica", "--volume", VOL, "--listen", f"127.0.0.1:{self.ports[i]}", "--dir",
            str(self.dirs[i]), "--size", str(self.size), name=f"r{i}-{self.starts[i]}",
        )  # fmt: skip
        wait_port("127.0.0.1", self.ports[i])

    def start_controller(self) -> None:
        self.ctl_starts += 1
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}", "--portal",
                f"127.0.0.1:{self.portal}", "--size", str(self.size), "--replica-timeout", "2",
                "--token-file", str(self.token_file), "--max-snapshots", str(self.limit),
                *self.extra]  # fmt: skip
        for p in self.ports:
            args += ["--replica", f"127.0.0.1:{p}"]
        self.ctl = self.procs.jiva(*args, name=f"controller-{self.ctl_starts}")
        wait_port("127.0.0.1", self.api)

    # ------------------------------------------------------------------ the API
    def http(
        self, method: str, path: str, body: dict | None = None, token: str | None = TOKEN
    ) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}", method=method)
        if body is not None:
            req.data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def status(self) -> dict:
        return self.http("GET", "/v1/volume")[1]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*JIVA, "snapshot", *args, "--api", f"127.0.0.1:{self.api}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    async def healthy(self, timeout: float = 60.0) -> dict:
        def ok():
            try:
                st = self.status()
            except (OSError, ValueError):
                return None
            good = st.get("state") == "serving" and all(r["mode"] == "RW" for r in st["replicas"])
            settled = not (st.get("snapshots") or {}).get("settling")
            return st if good and settled and len(st["replicas"]) == 3 else None

        return await eventually(ok, timeout, "the volume serving with 3 RW replicas")

    # ------------------------------------------------------------------ the replicas
    @contextlib.asynccontextmanager
    async def replica(self, i: int):
        c = ReplicaClient("127.0.0.1", self.ports[i], VOL)
        await c.connect()
        try:
            yield c
        finally:
            await c.close()

    async def snap_lists(self) -> list[list[dict]]:
        out = []
        for i in range(3):
            async with self.replica(i) as c:
                out.append(await c.snap_list())
        return out

    async def snap_data(self, i: int, sid: str) -> bytes:
        async with self.replica(i) as c:
            epoch = int((await c.info()).get("epoch") or 0)
            parts = [
                await c.snap_read(sid, off, 4 * MiB, epoch) for off in range(0, self.size, 4 * MiB)
            ]
        return b"".join(bytes(p) for p in parts)

    async def head_data(self, i: int) -> bytes:
        async with self.replica(i) as c:
            epoch = int((await c.info()).get("epoch") or 0)
            parts = [await c.read(off, 4 * MiB, epoch) for off in range(0, self.size, 4 * MiB)]
        return b"".join(bytes(p) for p in parts)


@pytest.fixture
def cluster(procs, tmp_path):
    return Cluster(procs, tmp_path)


def ids(lst: list[dict]) -> list[str]:
    return [s["id"] for s in lst]


def pattern(block: int, version: int) -> bytes:
    return struct.pack(">QQ", block, version) * (BLOCK // 16)


async def write_blocks(init: Initiator, blocks: dict[int, int]) -> None:
    for b, v in blocks.items():
        await init.write(b * BLOCK // 512, pattern(b, v))


async def test_create_list_delete_through_the_cli_and_the_api(cluster):
    cl = cluster
    st = await cl.healthy()
    assert st["snapshots"]["count"] == 0 and st["snapshots"]["limit"] == LIMIT
    tok = ["--token-file", str(cl.token_file)]

    # mutating calls need the token; listing does not
    assert cl.http("POST", "/v1/snapshots", {"name": "a"}, token=None)[0] == 401
    assert cl.http("POST", "/v1/snapshots", {"name": "a"}, token="wrong")[0] == 401
    assert cl.http("DELETE", "/v1/snapshots/a", token=None)[0] == 401
    r = cl.cli("create", "a")
    assert r.returncode == 1 and "401" in r.stderr

    r = cl.cli("create", "a", *tok)
    assert r.returncode == 0, r.stderr
    assert "snapshot a of volume svol taken" in r.stdout
    code, doc = cl.http("POST", "/v1/snapshots", {"name": "b"})
    assert code == 201 and doc["snapshot"]["name"] == "b" and len(doc["snapshot"]["id"]) == 32

    # refusals: bad name (400), name taken (409), then the limit (409, checked first)
    code, doc = cl.http("POST", "/v1/snapshots", {"name": "-bad name"})
    assert code == 400 and "invalid snapshot name" in doc["error"]
    assert cl.http("POST", "/v1/snapshots", {})[0] == 400
    code, doc = cl.http("POST", "/v1/snapshots", {"name": "a"})
    assert code == 409 and "exists" in doc["error"]
    assert cl.cli("create", "c", *tok).returncode == 0
    r = cl.cli("create", "d", *tok)
    assert r.returncode == 1 and "409" in r.stderr and "--max-snapshots 3" in r.stderr
    lists = await cl.snap_lists()
    assert [s["name"] for s in lists[0]] == ["a", "b", "c"]  # nothing changed by the refusal
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])

    r = cl.cli("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [s["name"] for s in doc["snapshots"]] == ["a", "b", "c"] and doc["limit"] == LIMIT
    for s in doc["snapshots"]:
        assert {"id", "name", "created", "size", "bytes", "unique"} <= set(s)
        assert s["size"] == SIZE and abs(s["created"] - time.time()) < 300
    r = cl.cli("list")
    assert r.returncode == 0 and "3 snapshot(s), limit 3" in r.stdout and "UNIQUE" in r.stdout
    assert cl.status()["snapshots"]["count"] == 3
    with urllib.request.urlopen(f"http://127.0.0.1:{cl.api}/metrics", timeout=5) as m:
        assert f'jiva_volume_snapshots{{volume="{VOL}"}} 3' in m.read().decode()

    # delete: through the CLI and the API; unknown names are 404
    r = cl.cli("delete", "b", *tok)
    assert r.returncode == 0 and "snapshot b of volume svol deleted" in r.stdout, r.stderr
    code, doc = cl.http("DELETE", "/v1/snapshots/a")
    assert code == 200 and doc["deleted"] == "a" and isinstance(doc["reclaimed"], int)
    code, doc = cl.http("DELETE", "/v1/snapshots/a")
    assert code == 404 and "no snapshot named 'a'" in doc["error"]
    r = cl.cli("delete", "nope", *tok)
    assert r.returncode == 1 and "404" in r.stderr
    lists = await cl.snap_lists()
    assert [s["name"] for s in lists[0]] == ["c"]
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])
    assert cl.status()["snapshots"]["count"] == 1
    assert cl.cli("create", "d", *tok).returncode == 0  # room again

    # usage errors; revert (no initiator is logged in), and of an unknown snapshot
    assert cl.cli("create").returncode == 2
    assert cl.cli("list", "x").returncode == 2
    r = cl.cli("revert", "c", *tok)
    assert r.returncode == 0 and "volume reverted to snapshot c" in r.stdout, r.stderr
    r = cl.cli("revert", "nope", *tok)
    assert r.returncode == 1 and "404" in r.stderr and "nope" in r.stderr, r.stderr


async def test_snapshot_holds_exactly_the_writes_acknowledged_at_the_barrier(cluster):
    """Writers keep rewriting blocks (each block one writer, versions increasing); every block
    of the snapshot holds a whole version no older than the last acknowledged before the create
    call and no newer than the last issued before it returned, and every replica's copy of the
    snapshot is identical (a write in flight is in every copy or in none)."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    nblocks = 96
    stride = SIZE // BLOCK // nblocks  # blocks spread over the volume (many regions)
    blocks = [i * stride for i in range(nblocks)]
    acked = dict.fromkeys(blocks, 0)
    issued = dict.fromkeys(blocks, 0)
    stop = asyncio.Event()

    async def writer(mine: list[int]) -> None:
        v = 0
        while not stop.is_set():
            v += 1
            for b in mine:
                issued[b] = v
                await init.write(b * BLOCK // 512, pattern(b, v))
                acked[b] = v

    tasks = [asyncio.ensure_future(writer(blocks[k::4])) for k in range(4)]
    try:
        await eventually(lambda: min(acked.values()) >= 2, 30, "every block written twice")
        results = []
        for name in ("s1", "s2", "s3"):
            low = dict(acked)
            code, doc = await asyncio.to_thread(cl.http, "POST", "/v1/snapshots", {"name": name})
            high = dict(issued)
            assert code == 201, doc
            results.append((doc["snapshot"]["id"], low, high))
            await eventually(lambda lo=dict(acked): any(acked[b] > lo[b] for b in blocks), 20,
                             "writes going on after the snapshot")  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await init.close()
    assert all(not t.exception() for t in tasks), [t.exception() for t in tasks]

    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2]) == [r[0] for r in results]
    for sid, low, high in results:
        copies = [await cl.snap_data(i, sid) for i in range(3)]
        assert copies[0] == copies[1] == copies[2], f"snapshot {sid}: replicas differ"
        data = copies[0]
        for b in blocks:
            got = data[b * BLOCK : (b + 1) * BLOCK]
            blk, ver = struct.unpack_from(">QQ", got)
            assert got == pattern(blk, ver) and blk == b, f"block {b} torn or misplaced"
            assert low[b] <= ver <= high[b], f"block {b}: version {ver} not in {low[b]}..{high[b]}"
        untouched = bytes(BLOCK)
        assert data[BLOCK : 2 * BLOCK] == untouched  # never written: zeroes


async def test_a_rebuild_carries_the_snapshots(cluster):
    """r2 is away while snapshots are taken (and one it had is deleted); when it returns its
    snapshot list differs: it is reset and every snapshot re-created, then the head copied.
    Afterwards every replica lists the same snapshots with the same contents and heads."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 4096, 97)})
        assert cl.http("POST", "/v1/snapshots", {"name": "old"})[0] == 201
        cl.procs.kill(cl.rproc[2], signal.SIGKILL)
        await eventually(lambda: cl.status()["replicas"][2]["mode"] == "ERR", 20, "r2 ejected")
        await write_blocks(init, {b: 2 for b in range(0, 4096, 89)})
        assert cl.http("POST", "/v1/snapshots", {"name": "s1"})[0] == 201
        await write_blocks(init, {b: 3 for b in range(5, 4096, 61)})
        await init.command(struct.pack(">BBIBHB", 0x42, 0, 0, 0, 24, 0),
                           data_out=struct.pack(">HH4xQII", 22, 16, 200 * 8, 64, 0))  # fmt: skip
        assert cl.http("POST", "/v1/snapshots", {"name": "s2"})[0] == 201
        assert cl.http("DELETE", "/v1/snapshots/old")[0] == 200
        await write_blocks(init, {b: 4 for b in range(7, 4096, 41)})
        cl.start_replica(2)
        await cl.healthy(90)
        await write_blocks(init, {b: 5 for b in range(3, 4096, 201)})  # writes after it joined
    finally:
        await init.close()
    st = cl.status()
    last = st["replicas"][2]["last_rebuild"]
    assert last and last["kind"] == "full" and last.get("snapshots") == 2, last
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])
    assert [s["name"] for s in lists[2]] == ["s1", "s2"]
    assert [(s["name"], s["created"]) for s in lists[2]] == [
        (s["name"], s["created"]) for s in lists[0]
    ]
    for s in lists[0]:
        copies = [await cl.snap_data(i, s["id"]) for i in range(3)]
        assert copies[0] == copies[2] and copies[1] == copies[2], f"snapshot {s['name']} differs"
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == heads[1] == heads[2]


async def test_a_returning_replica_with_the_same_snapshots_catches_up_with_drop(cluster):
    """r1 has the same snapshot as the others and misses writes and unmaps: an incremental
    rebuild; the holes it copies must keep reading through to its layer (DROP, not UNMAP)."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 4096, 3)})
        assert cl.http("POST", "/v1/snapshots", {"name": "base"})[0] == 201
        cl.procs.kill(cl.rproc[1], signal.SIGKILL)
        await eventually(lambda: cl.status()["replicas"][1]["mode"] == "ERR", 20, "r1 ejected")
        await write_blocks(init, {b: 2 for b in range(0, 2048, 5)})
        cl.start_replica(1)
        await cl.healthy(90)
    finally:
        await init.close()
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == heads[1] == heads[2]
    for b in range(0, 4096, 3):  # blocks written before the snapshot, not since: still there
        if b < 2048 and b % 5 == 0:
            continue
        assert heads[1][b * BLOCK : (b + 1) * BLOCK] == pattern(b, 1), f"block {b} lost"
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])
    sid = lists[0][0]["id"]
    copies = [await cl.snap_data(i, sid) for i in range(3)]
    assert copies[0] == copies[1] == copies[2]


async def test_a_controller_crash_in_a_create_or_delete_is_settled_at_restart(cluster):
    """Leave what a kill -9 in the middle of a create (a snapshot on one replica only) and of a
    delete (a snapshot gone from one replica only) leaves; the restarted controller settles
    both (deletes them everywhere) before it creates, deletes or rebuilds anything. Then a real
    kill -9 during a delete: the lists agree after the restart and the delete can be done."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 4096, 7)})
        assert cl.http("POST", "/v1/snapshots", {"name": "keep"})[0] == 201
        assert cl.http("POST", "/v1/snapshots", {"name": "half-deleted"})[0] == 201
        await write_blocks(init, {b: 2 for b in range(0, 4096, 11)})
    finally:
        await init.close()
    cl.procs.kill(cl.ctl, signal.SIGKILL)
    before = [await cl.head_data(i) for i in range(3)]
    lists = await cl.snap_lists()
    half = next(s["id"] for s in lists[0] if s["name"] == "half-deleted")
    infos = []
    for i in range(3):
        async with cl.replica(i) as c:
            infos.append(await c.info())
    # the restart resynchronises dirty regions from the member with the smallest id: give that
    # one the half-created snapshot (its head is then empty), so the copy must not DROP holes
    first = min(range(3), key=lambda i: str(infos[i].get("id") or infos[i].get("uuid")))
    other = (first + 1) % 3
    async with cl.replica(first) as c:  # a create that reached one replica only
        epoch = int((await c.info()).get("epoch") or 0)
        await c.snapshot({"id": "f" * 32, "name": "half-created", "created": 1.0}, epoch)
    async with cl.replica(other) as c:  # a delete that finished on another only
        epoch = int((await c.info()).get("epoch") or 0)
        for _ in range(10000):
            if (await c.snap_delete(half, epoch))["done"]:
                break
    for i in range(3):  # the first region dirty everywhere (the same data rewritten)
        async with cl.replica(i) as c:
            epoch = int((await c.info()).get("epoch") or 0)
            await c.write(7 * BLOCK, pattern(7, 1), epoch)
            await c.flush(epoch)
    cl.start_controller()
    await cl.healthy(60)
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == before[0] and heads[1] == before[0] and heads[2] == before[0]

    async def agreed():
        lists = await cl.snap_lists()
        return lists if ids(lists[0]) == ids(lists[1]) == ids(lists[2]) else None

    lists = await eventually(agreed, 60, "the snapshot lists agreeing on every replica")
    assert [s["name"] for s in lists[0]] == ["keep"]
    assert cl.status()["snapshots"]["count"] == 1

    # a real kill -9 while a delete runs (whichever step it reaches)
    fut = asyncio.ensure_future(asyncio.to_thread(cl.http, "DELETE", "/v1/snapshots/keep"))
    await eventually(lambda: fut.done() or cl.status()["snapshots"]["busy"] == "delete", 20,
                     "the delete running")  # fmt: skip
    cl.procs.kill(cl.ctl, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await fut
    cl.start_controller()
    await cl.healthy(60)
    lists = await eventually(agreed, 60, "the snapshot lists agreeing after the kill")
    if lists[0]:
        code, doc = cl.http("DELETE", "/v1/snapshots/keep")
        assert code == 200, doc
    lists = await eventually(agreed, 30, "the lists agreeing after the delete")
    assert lists[0] == []
    # and a create/kill -9/restart: the snapshot is on all replicas or on none
    fut = asyncio.ensure_future(asyncio.to_thread(cl.http, "POST", "/v1/snapshots", {"name": "x"}))
    await eventually(lambda: fut.done() or cl.status()["snapshots"]["busy"] == "create", 20,
                     "the create running")  # fmt: skip
    cl.procs.kill(cl.ctl, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await fut
    cl.start_controller()
    await cl.healthy(60)
    lists = await eventually(agreed, 60, "the lists agreeing after a create was killed")
    assert [s["name"] for s in lists[0]] in ([], ["x"])


async def test_a_member_failing_the_barrier_is_ejected_and_rejoins_with_the_snapshot(cluster):
    """r2 stops answering (SIGSTOP) when a snapshot is taken: it fails the barrier's FLUSH or
    SNAPSHOT, is ejected as for a failed write, and the snapshot is taken on the others; when it
    answers again it is rebuilt and ends with the same snapshot, byte for byte."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 4096, 13)})
        cl.procs.kill(cl.rproc[2], signal.SIGSTOP)
        try:
            code, doc = await asyncio.to_thread(cl.http, "POST", "/v1/snapshots", {"name": "s"})
            assert code == 201, doc
            assert cl.status()["replicas"][2]["mode"] != "RW"
            await write_blocks(init, {b: 2 for b in range(0, 4096, 17)})
        finally:
            cl.procs.kill(cl.rproc[2], signal.SIGCONT)
        await cl.healthy(90)
    finally:
        await init.close()
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2]) and [s["name"] for s in lists[0]] == [
        "s"
    ]
    copies = [await cl.snap_data(i, lists[0][0]["id"]) for i in range(3)]
    assert copies[0] == copies[1] == copies[2]
    assert copies[0][13 * BLOCK : 14 * BLOCK] == pattern(13, 1)
    assert copies[0][17 * BLOCK : 18 * BLOCK] == bytes(BLOCK)  # written after it
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == heads[1] == heads[2]


async def test_snapshots_are_refused_while_a_rebuild_runs(procs, tmp_path):
    cl = Cluster(procs, tmp_path, extra=("--rebuild-rate", "1"))
    await cl.healthy()
    assert cl.http("POST", "/v1/snapshots", {"name": "before"})[0] == 201
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        cl.procs.kill(cl.rproc[2], signal.SIGKILL)
        await eventually(lambda: cl.status()["replicas"][2]["mode"] == "ERR", 20, "r2 ejected")
        for off in range(0, 8 * MiB, MiB):  # 8 regions to copy at 1 MiB/s
            await init.write(off // 512, b"\x5a" * MiB)
    finally:
        await init.close()
    cl.start_replica(2)
    await eventually(lambda: cl.status()["replicas"][2]["mode"] == "WO", 30, "r2 rebuilding")
    code, doc = cl.http("POST", "/v1/snapshots", {"name": "during"})
    assert code == 409 and "rebuilt" in doc["error"], doc
    code, doc = cl.http("DELETE", "/v1/snapshots/before")
    assert code == 409 and "rebuilt" in doc["error"], doc
    await cl.healthy(90)
    assert cl.http("POST", "/v1/snapshots", {"name": "after"})[0] == 201
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])
    assert [s["name"] for s in lists[0]] == ["before", "after"]


async def test_a_replica_killed_during_a_delete_or_a_create_ends_with_the_same_snapshots(cluster):
    """SIGKILL of a replica while a delete runs, then of another while a create runs: each is
    ejected (or the operation was done before), and once back every replica lists the same
    snapshots with the same contents."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 4096, 5)})
        assert cl.http("POST", "/v1/snapshots", {"name": "a"})[0] == 201
        await write_blocks(init, {b: 2 for b in range(0, 4096, 3)})
        assert cl.http("POST", "/v1/snapshots", {"name": "b"})[0] == 201
        await write_blocks(init, {b: 3 for b in range(0, 4096, 7)})
        for victim, method, path, body, want in [
            (1, "DELETE", "/v1/snapshots/a", None, 200),
            (0, "POST", "/v1/snapshots", {"name": "c"}, 201),
        ]:
            fut = asyncio.ensure_future(asyncio.to_thread(cl.http, method, path, body))
            await asyncio.sleep(0)
            cl.procs.kill(cl.rproc[victim], signal.SIGKILL)
            code, doc = await fut
            assert code == want, doc
            await write_blocks(init, {b: 4 + victim for b in range(1, 4096, 9)})
            cl.start_replica(victim)
            await cl.healthy(90)
    finally:
        await init.close()
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2])
    assert [s["name"] for s in lists[0]] == ["b", "c"]
    for s in lists[0]:
        copies = [await cl.snap_data(i, s["id"]) for i in range(3)]
        assert copies[0] == copies[1] == copies[2], f"snapshot {s['name']} differs"
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == heads[1] == heads[2]


async def test_a_rebuild_reads_snapshot_blocks_bad_on_its_source_from_another_member(cluster):
    """Two blocks of a snapshot's layer rot, one on r0 and one on r1, in the same copy span:
    r2, rebuilt with that snapshot, still gets both blocks right (each read from the member
    where it is good)."""
    cl = cluster
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN)
    await init.connect()
    try:
        await write_blocks(init, {b: 1 for b in range(0, 64)})
        cl.procs.kill(cl.rproc[2], signal.SIGKILL)
        await eventually(lambda: cl.status()["replicas"][2]["mode"] == "ERR", 20, "r2 ejected")
        code, doc = cl.http("POST", "/v1/snapshots", {"name": "s"})
        assert code == 201, doc
        sid = doc["snapshot"]["id"]
        for i, block in ((0, 10), (1, 20)):  # bit rot in the layers, not in the heads
            with open(cl.dirs[i] / "snapshots" / f"{sid}.img", "r+b") as f:
                f.seek(block * BLOCK + 100)
                f.write(b"\xff\xfe")
        await write_blocks(init, {b: 2 for b in range(100, 110)})
        cl.start_replica(2)
        await cl.healthy(90)
    finally:
        await init.close()
    data = await cl.snap_data(2, sid)
    for b in range(64):
        assert data[b * BLOCK : (b + 1) * BLOCK] == pattern(b, 1), f"block {b}"
    lists = await cl.snap_lists()
    assert ids(lists[0]) == ids(lists[1]) == ids(lists[2]) == [sid]


async def test_a_controller_killed_in_a_long_delete_completes_it_after_restart(procs, tmp_path):
    """A snapshot whose layer holds most of a 192 MiB volume takes several SNAP_DELETE steps to
    merge: the controller is killed while they run; after the restart the replicas agree, the
    delete can be completed, and the volume's data is what was written."""
    size = 192 * MiB
    cl = Cluster(procs, tmp_path, size=size)
    await cl.healthy()
    init = Initiator("127.0.0.1", cl.portal, IQN, timeout=60)
    await init.connect()
    chunk = MiB

    def data_at(off: int) -> bytes:
        return struct.pack(">Q", off) * (chunk // 8)

    try:
        offsets = list(range(0, size - 16 * MiB, chunk))

        async def fill(mine: list[int]) -> None:
            for off in mine:
                await init.write(off // 512, data_at(off))

        await asyncio.gather(*(fill(offsets[k::4]) for k in range(4)))
    finally:
        await init.close()
    assert cl.http("POST", "/v1/snapshots", {"name": "big"})[0] == 201
    fut = asyncio.ensure_future(asyncio.to_thread(cl.http, "DELETE", "/v1/snapshots/big"))
    await eventually(lambda: fut.done() or cl.status()["snapshots"]["busy"] == "delete", 20,
                     "the delete running")  # fmt: skip
    cl.procs.kill(cl.ctl, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await fut
    cl.start_controller()
    await cl.healthy(120)

    async def agreed():
        lists = await cl.snap_lists()
        return lists if ids(lists[0]) == ids(lists[1]) == ids(lists[2]) else None

    lists = await eventually(agreed, 120, "the snapshot lists agreeing after the kill")
    if lists[0]:
        code, doc = cl.http("DELETE", "/v1/snapshots/big")
        assert code == 200, doc
    lists = await eventually(agreed, 60, "the lists agreeing after the delete")
    assert lists[0] == []
    heads = [await cl.head_data(i) for i in range(3)]
    assert heads[0] == heads[1] == heads[2]
    for off in offsets[::7]:
        assert heads[0][off : off + chunk] == data_at(off), f"data at {off} lost"
