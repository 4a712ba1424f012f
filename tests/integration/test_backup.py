"""Backups end to end (issue 15, "Proof"): real `jiva replica` and `jiva controller` processes,
qemu-io as the initiator, the `jiva backup` and `jiva clone` commands as a user runs them.

A volume is written (patterns and random data), snapshotted and backed up; 1 MiB more is
written, a second snapshot is backed up and the store grows by about 1 MiB (the manifest's
counters and the store's size on disk); writes after the snapshot are not in the backup. The
backup restores into a NEW volume (its own controller and replicas) byte-identical to the
snapshot, read back over iSCSI with qemu-img; a clone of the snapshot is too. A byte flipped in
a block file makes the restore fail naming that file and chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from jiva_engine.initiator import Initiator
from jiva_engine.protocol.client import ReplicaClient
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("qemu-img")), reason="qemu-utils not installed"
)

MiB = 1 << 20
SIZE = 32 * MiB
TOKEN = "backup-test-token"


class Volume:
    """`jiva replica` processes (two by default) and a `jiva controller` (API with a token,
    iSCSI portal); bench/backup_bench.py uses it too."""

    def __init__(self, procs, root: Path, name: str, size: int = SIZE, replicas: int = 2) -> None:
        self.procs, self.name, self.size = procs, name, size
        root.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(replicas)]
        for i, port in enumerate(self.ports):
            procs.jiva("replica", "--volume", name, "--listen", f"127.0.0.1:{port}", "--dir",
                       str(root / f"r{i}"), "--size", str(size), name=f"{name}-r{i}")  # fmt: skip
            wait_port("127.0.0.1", port)
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.api_port, self.portal = free_port(), free_port()
        args = ["controller", "--volume", name, "--api", f"127.0.0.1:{self.api_port}",
                "--portal", f"127.0.0.1:{self.portal}", "--size", str(size),
                "--token-file", str(self.token_file)]  # fmt: skip
        for p in self.ports:
            args += ["--replica", f"127.0.0.1:{p}"]
        procs.jiva(*args, name=f"{name}-controller")
        wait_port("127.0.0.1", self.portal)

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.portal}/iqn.2026-11.org.jiva-py:{self.name}/0"

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.api}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    async def healthy(self) -> dict:
        def ok():
            try:
                st = self.call("GET", "/v1/volume")[1]
            except OSError:
                return None
            good = st["state"] == "serving" and all(r["mode"] == "RW" for r in st["replicas"])
            return st if good and len(st["replicas"]) == len(self.ports) else None

        return await eventually(ok, 30, f"volume {self.name} serving with every replica RW")

    async def snapshot(self, name: str) -> None:
        """Take snapshot `name`: through the API (POST /v1/snapshots) when the controller has
        it, else as its barrier does with no writer running: a flush, then SNAPSHOT on every
        replica."""
        code, doc = self.call("POST", "/v1/snapshots", {"name": name})
        if code == 201:
            return
        assert code in (404, 405), (code, doc)  # no snapshot API in this controller
        qemu_io(self.url, "flush")
        rec = {"id": uuid.uuid4().hex, "name": name, "created": time.time()}
        epoch = self.call("GET", "/v1/volume")[1]["epoch"]
        for port in self.ports:
            c = ReplicaClient("127.0.0.1", port, self.name)
            await c.connect()
            try:
                await c.snapshot(rec, epoch)
            finally:
                await c.close()

    def read_all(self, tmp: Path) -> bytes:
        """The whole volume, read over iSCSI with qemu-img."""
        out = tmp / f"{self.name}-{uuid.uuid4().hex[:6]}.img"
        p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", self.url, str(out)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        data = out.read_bytes()
        out.unlink()
        return data


def qemu_io(url: str, *cmds: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "failed" not in out, out
    return out


def jiva(*args: str) -> subprocess.CompletedProcess:
    """Run `jiva ARGS` as a user would (its own process), output captured."""
    return subprocess.run([*JIVA, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})  # fmt: skip


class Image:
    """What the volume should hold: the writes done through qemu-io, applied to a bytearray."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def pattern(self, vol: Volume, off: int, n: int, byte: int) -> None:
        qemu_io(vol.url, f"write -P {byte:#x} {off} {n}", "flush")
        self.data[off : off + n] = bytes([byte]) * n

    def random(self, vol: Volume, off: int, n: int, tmp: Path) -> None:
        src = tmp / f"rand-{off}"
        src.write_bytes(os.urandom(n))
        qemu_io(vol.url, f"write -s {src} {off} {n}", "flush")
        self.data[off : off + n] = src.read_bytes()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def manifest(store: Path, name: str) -> dict:
    return json.loads((store / "backups" / f"{name}.json").read_text())


async def test_backup_incremental_restore_clone_and_a_damaged_block(procs, tmp_path):
    src = Volume(procs, tmp_path / "src", "bsrc")
    await src.healthy()
    img = Image(SIZE)
    img.pattern(src, 0, 4 * MiB, 0x11)
    img.random(src, 8 * MiB, 3 * MiB, tmp_path)
    img.pattern(src, 13 * MiB + 4096, 2 * MiB, 0x22)  # not chunk-aligned
    img.random(src, SIZE - MiB, MiB, tmp_path)
    await src.snapshot("s1")
    s1 = bytes(img.data)
    store = tmp_path / "store"
    tok = str(src.token_file)

    p = jiva("backup", "create", "--api", src.api, "--snapshot", "s1", "--to", str(store),
             "--name", "b1", "--token-file", tok, "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    b1 = json.loads(p.stdout)
    assert b1["volume"] == "bsrc" and b1["size"] == SIZE and b1["snapshot"] == "s1"
    assert b1["bytes"] == 11 * MiB  # chunks 0-3, 8-10, 13-15, 31; holes not stored
    assert "MiB/s" in p.stderr
    print(p.stderr.strip().splitlines()[-1])

    img.pattern(src, 20 * MiB, MiB, 0x55)  # 1 MiB more
    await src.snapshot("s2")
    s2 = bytes(img.data)
    img.pattern(src, 0, MiB, 0x66)  # after the snapshot: in no backup
    before = du(store)
    p = jiva("backup", "create", "--api", src.api, "--snapshot", "s2", "--to", str(store),
             "--name", "b2", "--token-file", tok, "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    b2 = json.loads(p.stdout)
    assert b2["bytes"] == 12 * MiB and b2["blocks_new"] == 1 and b2["bytes_new"] == MiB
    grew = du(store) - before
    # the new chunk (compressed: a pattern) and the manifest: far below a second full copy
    assert 0 < b2["bytes_stored_new"] <= MiB + 64 and grew < MiB + 64 * 1024, grew
    assert manifest(store, "b2")["blocks"]["20"] not in manifest(store, "b1")["blocks"].values()

    p = jiva("backup", "list", "--from", str(store), "--json")
    assert [b["name"] for b in json.loads(p.stdout)["backups"]] == ["b1", "b2"]

    # restore into a NEW volume (own controller and replicas), a little larger
    dst = Volume(procs, tmp_path / "dst", "bdst", SIZE + 4 * MiB)
    await dst.healthy()
    qemu_io(dst.url, f"write -P 0xee 0 {SIZE + 4 * MiB}", "flush")  # what it held before
    init = Initiator("127.0.0.1", dst.portal, f"iqn.2026-11.org.jiva-py:{dst.name}")
    await init.connect()
    try:  # refused while an initiator is logged in, and nothing is written
        p = await asyncio.to_thread(
            jiva, "backup", "restore", "--from", str(store), "--backup", "b2", "--api", dst.api,
            "--token-file", str(dst.token_file),
        )  # fmt: skip
        assert p.returncode == 1 and "refused" in p.stderr and "logged in" in p.stderr, p.stderr
        held = await init.read(0, 8)
        assert held and held == b"\xee" * len(held)
    finally:
        await init.logout()
    p = jiva("backup", "restore", "--from", str(store), "--backup", "b2", "--api", dst.api,
             "--token-file", str(dst.token_file), "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    print(p.stderr.strip().splitlines()[-1])
    got = dst.read_all(tmp_path)
    assert got[:SIZE] == s2, "the restored volume differs from the snapshot"
    assert got[SIZE:] == bytes(4 * MiB)  # the space beyond the backup reads as zeroes
    st = dst.call("GET", "/v1/volume")[1]
    assert st.get("transfer", {}).get("result") in (None, "done"), st.get("transfer")

    # the older backup restores too (into the same volume again)
    p = jiva("backup", "restore", "--from", str(store), "--backup", "b1", "--api", dst.api,
             "--token-file", str(dst.token_file))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert dst.read_all(tmp_path)[:SIZE] == s1

    # a clone of snapshot s2 into another new volume
    cl = Volume(procs, tmp_path / "clone", "bclone")
    await cl.healthy()
    p = jiva("clone", "--from-api", src.api, "--snapshot", "s2", "--api", cl.api,
             "--token-file", str(cl.token_file), "--from-token-file", tok)  # fmt: skip
    assert p.returncode == 0, p.stderr
    print(p.stderr.strip().splitlines()[-1])
    assert cl.read_all(tmp_path) == s2

    # a byte flipped in one block file: the restore stops, naming it
    digest = manifest(store, "b2")["blocks"]["9"]  # random data: stored uncompressed
    block = store / "blocks" / digest[:2] / digest
    raw = bytearray(block.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    block.write_bytes(bytes(raw))
    p = jiva("backup", "verify", "--from", str(store), "--backup", "b2")
    assert p.returncode == 3 and str(block) in p.stderr
    p = jiva("backup", "restore", "--from", str(store), "--backup", "b2", "--api", dst.api,
             "--token-file", str(dst.token_file))  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    assert str(block) in p.stderr and "chunk 9" in p.stderr and f"offset {9 * MiB}" in p.stderr
    st = dst.call("GET", "/v1/volume")[1]
    assert str(st.get("transfer", {}).get("result", "")).startswith("failed"), st.get("transfer")
    # the volume accepts initiators again after the failed import
    qemu_io(dst.url, f"read 0 {MiB}")
