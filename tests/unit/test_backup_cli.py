"""`jiva backup` and `jiva clone` against a stand-in controller API that keeps the volume in
memory and follows the HTTP contract of issue 15 (snapshot extents/data, the exclusive import):
create, list, incremental size, restore byte-identical, refusals (target smaller, initiators
logged in), a damaged block named by a failed restore, clone, prune, requests in flight."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from aiohttp import web

from jiva_engine.backup.store import BackupStore
from jiva_engine.cli import main
from jiva_engine.util import free_port
from tests.procs import JIVA
from tests.waiting import eventually_sync

MiB, BLOCK = 1 << 20, 4096
TOKEN = "s3cret-token"


class FakeVolume:
    """One volume's controller API: a head and frozen snapshots, all in memory."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self.head = bytearray(size)
        self.snaps: dict[str, bytes] = {}
        self.importing: dict | None = None
        self.imports: list[dict] = []  # begin/end documents received
        self.logged_in = False
        self.inflight = self.max_inflight = 0
        self.reads = 0
        self.bad: list[int] = []  # blocks with no good copy on any replica (422)
        self.stall_after: int | None = None  # data reads beyond this many never answer
        self.release: asyncio.Event | None = None
        self.port = free_port()
        self.api = f"127.0.0.1:{self.port}"

    def snapshot(self, name: str) -> None:
        self.snaps[name] = bytes(self.head)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * MiB)
        r = app.router
        r.add_get("/v1/volume", self.status)
        r.add_get("/v1/snapshots", self.list_snaps)
        r.add_get("/v1/snapshots/{name}/extents", self.extents)
        r.add_get("/v1/snapshots/{name}/data", self.data)
        r.add_post("/v1/import", self.import_)
        r.add_put("/v1/import/data", self.import_data)
        return app

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(text=json.dumps({"error": "token"}))

    @staticmethod
    def _err(code: int, msg: str) -> web.Response:
        return web.json_response({"error": msg}, status=code)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "size": self.size, "state": "serving"})

    async def list_snaps(self, request: web.Request) -> web.Response:
        snaps = [{"id": f"id-{n}", "name": n, "created": 1.0} for n in self.snaps]
        return web.json_response({"snapshots": snaps, "limit": 64})

    async def extents(self, request: web.Request) -> web.Response:
        self._auth(request)
        img = self.snaps.get(request.match_info["name"])
        if img is None:
            return self._err(404, "no such snapshot")
        runs: list[list[int]] = []
        zero = bytes(BLOCK)
        for off in range(0, self.size, BLOCK):
            if img[off : off + BLOCK] != zero:
                if runs and runs[-1][0] + runs[-1][1] == off:
                    runs[-1][1] += BLOCK
                else:
                    runs.append([off, BLOCK])
        return web.json_response({"size": self.size, "extents": runs})

    async def data(self, request: web.Request) -> web.Response:
        self._auth(request)
        img = self.snaps.get(request.match_info["name"])
        if img is None:
            return self._err(404, "no such snapshot")
        off, n = int(request.query["offset"]), int(request.query["length"])
        if n > 16 * MiB or off % BLOCK or off + n > self.size:
            return self._err(400, "bad range")
        self.reads += 1
        for b in self.bad:
            if off <= b < off + n:
                return web.json_response(
                    {"error": f"snapshot s1: no good copy of {b}+4096", "bad": [[b, BLOCK]]},
                    status=422,
                )
        if self.stall_after is not None and self.reads > self.stall_after:
            self.release = self.release or asyncio.Event()
            await self.release.wait()  # until the test ends
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(0.002)  # a replica round trip: lets requests overlap
            return web.Response(body=img[off : off + n], content_type="application/octet-stream")
        finally:
            self.inflight -= 1

    async def import_(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        self.imports.append(body)
        if body.get("action") == "begin":
            if self.logged_in:
                return self._err(409, "an initiator is logged in (iqn.1994-05.com.example:x)")
            if self.importing:
                return self._err(409, "an import runs")
            self.importing = body
            return web.json_response({"import": body})
        if body.get("action") == "end":
            self.importing = None
            return web.json_response({"import": "ended"})
        return self._err(400, "action?")

    async def import_data(self, request: web.Request) -> web.Response:
        self._auth(request)
        if not self.importing:
            return self._err(409, "no import runs")
        off = int(request.query["offset"])
        if request.query.get("zero"):
            n = int(request.query["length"])
            self.head[off : off + n] = bytes(n)
        else:
            data = await request.read()
            self.head[off : off + len(data)] = data
        return web.json_response({"done": True})


class Servers:
    """The fake APIs served from a thread of their own (the CLI runs its own event loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        self.volumes: list[FakeVolume] = []

    def add(self, vol: FakeVolume) -> FakeVolume:
        self.volumes.append(vol)

        async def start() -> None:
            runner = web.AppRunner(vol.app())
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", vol.port).start()
            self.runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return vol

    def close(self) -> None:
        async def stop() -> None:
            for v in self.volumes:
                if v.release:
                    v.release.set()
            for r in self.runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def servers():
    s = Servers()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def token(tmp_path):
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    return str(p)


def jiva(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def fill(vol: FakeVolume, seed: int = 1) -> None:
    rnd = random.Random(seed)
    for off in (0, 3 * MiB + 8192, 7 * MiB):
        vol.head[off : off + MiB] = rnd.randbytes(MiB)
    vol.head[10 * MiB : 10 * MiB + 100 * BLOCK] = b"\x5a" * (100 * BLOCK)


def test_backup_incremental_and_restore_byte_identical(servers, token, tmp_path, capsys):
    src = servers.add(FakeVolume("src", 12 * MiB))
    fill(src)
    src.snapshot("s1")
    store = str(tmp_path / "store")
    rc, out, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1",
                        "--to", store, "--name", "b1", "--token-file", token, "--json")  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["volume"] == "src" and doc["snapshot"] == "s1" and doc["snapshot_id"] == "id-s1"
    assert doc["chunks"] == 5 and doc["bytes_new"] == 5 * MiB  # chunks 0, 3, 4, 7 and 10
    assert "MiB/s" in err and "backup b1 of src@s1" in err
    assert src.max_inflight > 1, "one request at a time"

    src.head[5 * MiB : 6 * MiB] = random.Random(9).randbytes(MiB)  # 1 MiB more
    src.snapshot("s2")
    rc, out, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s2",
                        "--to", store, "--name", "b2", "--token-file", token, "--json")  # fmt: skip
    assert rc == 0, err
    doc2 = json.loads(out)
    assert doc2["bytes_new"] == MiB and doc2["blocks_new"] == 1
    assert MiB <= doc2["bytes_stored_new"] < MiB + 100

    rc, out, err = jiva(capsys, "backup", "list", "--from", store, "--json")
    listed = json.loads(out)
    assert [b["name"] for b in listed["backups"]] == ["b1", "b2"] and listed["blocks"] == 6
    rc, out, err = jiva(capsys, "backup", "list", "--from", store)
    assert rc == 0 and "b2" in out and "src" in out and "6 blocks" in out

    dst = servers.add(FakeVolume("dst", 16 * MiB))  # larger: its tail is unmapped
    dst.head[:] = b"\xee" * len(dst.head)  # what was there before
    rc, out, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b2",
                        "--api", dst.api, "--token-file", token, "--json")  # fmt: skip
    assert rc == 0, err
    assert bytes(dst.head[: 12 * MiB]) == src.snaps["s2"]
    assert bytes(dst.head[12 * MiB :]) == bytes(4 * MiB)
    assert json.loads(out)["bytes"] == 6 * MiB and "every block checked" in err
    assert [i["action"] for i in dst.imports] == ["begin", "end"] and "error" not in dst.imports[1]
    assert dst.imports[0]["total"] == 16 * MiB and "b2" in dst.imports[0]["source"]

    rc, out, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b1",
                        "--api", dst.api, "--token-file", token)  # fmt: skip
    assert rc == 0 and bytes(dst.head[: 12 * MiB]) == src.snaps["s1"]


def test_restore_refusals_leave_the_target_untouched(servers, token, tmp_path, capsys):
    src = servers.add(FakeVolume("src", 8 * MiB))
    fill(src)
    src.snapshot("s1")
    store = str(tmp_path / "store")
    assert jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1", "--to", store,
                "--name", "b1", "--token-file", token)[0] == 0  # fmt: skip
    small = servers.add(FakeVolume("small", 4 * MiB))
    rc, _, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b1",
                      "--api", small.api, "--token-file", token)  # fmt: skip
    assert rc == 1 and "smaller than backup b1" in err and small.imports == []
    busy = servers.add(FakeVolume("busy", 8 * MiB))
    busy.logged_in = True
    rc, _, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b1",
                      "--api", busy.api, "--token-file", token)  # fmt: skip
    assert rc == 1 and "refused" in err and "initiator is logged in" in err
    assert bytes(busy.head) == bytes(8 * MiB)
    rc, _, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b1",
                      "--api", busy.api)  # fmt: skip
    assert rc == 1 and "401" in err
    rc, _, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "nope",
                      "--api", busy.api, "--token-file", token)  # fmt: skip
    assert rc == 1 and "no backup nope" in err and "partial" not in err


def test_a_damaged_block_fails_the_restore_naming_it(servers, token, tmp_path, capsys):
    src = servers.add(FakeVolume("src", 8 * MiB))
    fill(src)
    src.snapshot("s1")
    store = tmp_path / "store"
    assert jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1", "--to",
                str(store), "--name", "b1", "--token-file", token)[0] == 0  # fmt: skip
    doc = json.loads((store / "backups" / "b1.json").read_text())
    path = store / "blocks" / doc["blocks"]["7"][:2] / doc["blocks"]["7"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    rc, out, err = jiva(capsys, "backup", "verify", "--from", str(store), "--backup", "b1")
    assert rc == 3 and str(path) in err and "chunk 7" in err
    dst = servers.add(FakeVolume("dst", 8 * MiB))
    rc, _, err = jiva(capsys, "backup", "restore", "--from", str(store), "--backup", "b1",
                      "--api", dst.api, "--token-file", token)  # fmt: skip
    assert rc == 3, err
    assert str(path) in err and f"volume offset {7 * MiB}" in err and "partial restore" in err
    assert bytes(dst.head[7 * MiB : 8 * MiB]) != src.snaps["s1"][7 * MiB : 8 * MiB]
    assert dst.imports[-1]["action"] == "end"
    assert str(path) in dst.imports[-1]["error"]
    # checked first: nothing written at all
    dst2 = servers.add(FakeVolume("dst2", 8 * MiB))
    rc, _, err = jiva(capsys, "backup", "restore", "--from", str(store), "--backup", "b1",
                      "--api", dst2.api, "--token-file", token, "--check-first")  # fmt: skip
    assert rc == 3 and str(path) in err and dst2.imports == [] and "partial" not in err


def test_clone_copies_a_snapshot_into_another_volume(servers, token, tmp_path, capsys):
    src = servers.add(FakeVolume("src", 12 * MiB))
    fill(src)
    src.snapshot("s1")
    src.head[:MiB] = bytes(MiB)  # written after the snapshot: not in the clone
    dst = servers.add(FakeVolume("dst", 12 * MiB))
    dst.head[:] = b"\x01" * len(dst.head)
    rc, out, err = jiva(capsys, "clone", "--from-api", src.api, "--snapshot", "s1",
                        "--api", dst.api, "--token-file", token, "--json")  # fmt: skip
    assert rc == 0, err
    assert bytes(dst.head) == src.snaps["s1"] and "readable now" in err
    assert json.loads(out)["bytes"] == 5 * MiB
    small = servers.add(FakeVolume("small", 8 * MiB))
    rc, _, err = jiva(capsys, "clone", "--from-api", src.api, "--snapshot", "s1",
                      "--api", small.api, "--token-file", token)  # fmt: skip
    assert rc == 1 and "at least as large" in err and small.imports == []
    rc, _, err = jiva(capsys, "clone", "--from-api", src.api, "--snapshot", "nope",
                      "--api", dst.api, "--token-file", token)  # fmt: skip
    assert rc == 1 and "404" in err and "no such snapshot" in err


def test_prune_and_delete_through_the_cli(servers, token, tmp_path, capsys):
    src = servers.add(FakeVolume("src", 4 * MiB))
    store = str(tmp_path / "store")
    for i in range(4):
        src.head[i * MiB : (i + 1) * MiB] = bytes([i + 1]) * MiB
        src.snapshot(f"s{i}")
        rc, _, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", f"s{i}",
                          "--to", store, "--name", f"b{i}", "--token-file", token)  # fmt: skip
        assert rc == 0, err
    rc, out, _ = jiva(capsys, "backup", "prune", "--from", store, "--volume", "src", "--keep", "2",
                      "--json")  # fmt: skip
    res = json.loads(out)
    assert rc == 0 and res["deleted"] == ["b0", "b1"] and res["kept"] == ["b2", "b3"]
    assert res["blocks_removed"] == 0  # b2 and b3 still use every block
    rc, out, _ = jiva(capsys, "backup", "delete", "--from", store, "--backup", "b2")
    assert rc == 0 and "deleted: b2" in out and "removed 0 blocks" in out
    rc, out, _ = jiva(capsys, "backup", "delete", "--from", store, "--backup", "b3")
    assert rc == 0 and "removed 4 blocks" in out
    rc, _, err = jiva(capsys, "backup", "prune", "--from", store, "--volume", "src", "--keep", "0")
    assert rc == 2 and "--keep" in err
    rc, _, err = jiva(capsys, "backup", "list", "--from", str(tmp_path / "none"))
    assert rc == 1 and "not a backup store" in err
    rc, _, err = jiva(capsys, "backup", "restore", "--from", store, "--backup", "b3",
                      "--api", "nohost:")  # fmt: skip
    assert rc == 2 and "nohost" in err
    rc, _, err = jiva(capsys, "clone", "--from-api", "x:99999", "--snapshot", "s", "--api", src.api)
    assert rc == 2 and "invalid port" in err
    rc, _, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s0", "--to",
                      store, "--name", "../b", "--token-file", token)  # fmt: skip
    assert rc == 2 and "invalid backup name" in err


def test_request_planning():
    """Chunks the extents touch, runs of consecutive chunks per request, the zero runs."""
    from jiva_engine.backup.transfer import groups, touched, zero_runs

    assert touched([(0, 4096), (MiB - 4096, 8192), (5 * MiB, MiB)], 7 * MiB, MiB) == [0, 1, 5]
    assert touched([(6 * MiB, 4 * MiB)], 7 * MiB, MiB) == [6]  # clipped to the size
    assert groups([0, 1, 2, 3, 4, 7, 8], 4) == [(0, 4), (4, 1), (7, 2)]
    assert zero_runs(0, 40 * MiB, [(MiB, MiB), (3 * MiB, MiB)], 16 * MiB) == [
        (0, MiB), (2 * MiB, MiB), (4 * MiB, 16 * MiB), (20 * MiB, 16 * MiB), (36 * MiB, 4 * MiB)
    ]  # fmt: skip


def test_a_backup_killed_midway_leaves_no_manifest_and_no_harm(servers, token, tmp_path, capsys):
    """kill -9 of `jiva backup create` while it writes blocks: no backup appears, the store
    and the backups in it are intact, the name can be used again, a gc removes the orphans."""
    src = servers.add(FakeVolume("src", 24 * MiB))
    src.head[:] = random.Random(3).randbytes(24 * MiB)
    src.snapshot("s1")
    store = tmp_path / "store"
    assert jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1", "--to",
                str(store), "--name", "b0", "--token-file", token)[0] == 0  # fmt: skip
    src.head[: 16 * MiB] = random.Random(4).randbytes(16 * MiB)
    src.snapshot("s2")
    src.reads, src.stall_after = 0, 2  # two requests (8 MiB) answered, then it hangs
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([*JIVA, "backup", "create", "--api", src.api, "--snapshot", "s2",
                          "--to", str(store), "--name", "b1", "--token-file", token],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)  # fmt: skip
    try:
        st = BackupStore(store)
        eventually_sync(lambda: st.usage()["blocks"] >= 24 + 8, 30, "8 new blocks stored")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    assert st.names() == ["b0"] and st.verify("b0") == []
    res = st.gc()
    assert res["blocks_removed"] == 8 and st.usage()["blocks"] == 24
    src.stall_after = None
    rc, out, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s2",
                        "--to", str(store), "--name", "b1", "--token-file", token, "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["blocks_new"] == 16 and st.verify("b1") == []


def test_a_volume_size_that_is_not_whole_chunks(servers, token, tmp_path, capsys):
    """The last chunk is short: restored exactly, and the larger target's space after it is
    unmapped, up to its end (a clone too)."""
    size = 5 * MiB + 3 * BLOCK
    src = servers.add(FakeVolume("src", size))
    src.head[:] = random.Random(5).randbytes(size)
    src.snapshot("s1")
    store = str(tmp_path / "store")
    rc, out, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1",
                        "--to", store, "--name", "b1", "--token-file", token, "--json")  # fmt: skip
    assert rc == 0 and json.loads(out)["chunks"] == 6, err
    for cmd in (["backup", "restore", "--from", store, "--backup", "b1"],
                ["clone", "--from-api", src.api, "--snapshot", "s1"]):  # fmt: skip
        dst = servers.add(FakeVolume("dst", 8 * MiB))
        dst.head[:] = b"\xee" * len(dst.head)
        rc, _, err = jiva(capsys, *cmd, "--api", dst.api, "--token-file", token)
        assert rc == 0, err
        assert bytes(dst.head[:size]) == src.snaps["s1"], cmd
        assert bytes(dst.head[size:]) == bytes(8 * MiB - size), cmd


def test_a_snapshot_block_with_no_good_copy_fails_the_backup(servers, token, tmp_path, capsys):
    """The API answers 422 for a block bad on every replica: no backup is made, and the
    message is the controller's (naming the block)."""
    src = servers.add(FakeVolume("src", 8 * MiB))
    fill(src)
    src.snapshot("s1")
    src.bad = [7 * MiB + 5 * BLOCK]
    store = tmp_path / "store"
    rc, _, err = jiva(capsys, "backup", "create", "--api", src.api, "--snapshot", "s1",
                      "--to", str(store), "--name", "b1", "--token-file", token)  # fmt: skip
    assert rc == 1 and "422" in err and f"no good copy of {7 * MiB + 5 * BLOCK}" in err
    assert BackupStore(store).names() == []
