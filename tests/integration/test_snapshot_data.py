"""Snapshot data in and out of a volume (issue 15, part "snapio"), end to end with real
`jiva replica` and `jiva controller` processes and a real initiator (qemu-io over libiscsi):
a snapshot's extents and data read through the API equal what was written before it, however
the volume changed since; revert is refused while an initiator is logged in and, once allowed,
makes the volume read the snapshot's content again; an import writes data and keeps initiators
out while it runs; every call needs the API token.

The snapshot itself is taken here by sending SNAPSHOT to every replica after a flush (what the
controller's barrier does, with no writer running), so these tests need only the replica side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from jiva_engine.protocol.client import ReplicaClient
from tests.procs import free_port, wait_port
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils not installed")

MiB = 1 << 20
K = 4096
SIZE = 16 * MiB
VOL = "svol"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
TOKEN = "snapshot-data-token"
# written before the snapshot: (offset, length, pattern byte)
BEFORE = [(0, MiB, 0x11), (4 * MiB, MiB, 0x22)]


class Cluster:
    """Two `jiva replica` processes and a `jiva controller` (API with a token, iSCSI portal)."""

    def __init__(self, procs, root: Path, replicas: int = 2, size: int = SIZE) -> None:
        self.procs, self.root, self.size = procs, root, size
        self.starts = 0
        self.ports = [free_port() for _ in range(replicas)]
        self.dirs = [root / f"r{i}" for i in range(replicas)]
        for i, port in enumerate(self.ports):
            procs.jiva("replica", "--volume", VOL, "--listen", f"127.0.0.1:{port}", "--dir",
                       str(self.dirs[i]), "--size", str(size), name=f"r{i}")  # fmt: skip
            wait_port("127.0.0.1", port)
        (root / "token").write_text(TOKEN + "\n")
        self.api, self.portal = free_port(), free_port()
        self.start_controller()

    def start_controller(self) -> None:
        self.starts += 1
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}", "--portal",
                f"127.0.0.1:{self.portal}", "--size", str(self.size), "--token-file",
                str(self.root / "token")]  # fmt: skip
        for p in self.ports:
            args += ["--replica", f"127.0.0.1:{p}"]
        name = "controller" if self.starts == 1 else f"controller-{self.starts}"
        self.ctl = self.procs.jiva(*args, name=name)
        wait_port("127.0.0.1", self.portal)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.portal}/{IQN}/0"

    def call(
        self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
        token: bool = True,
    ) -> tuple[int, bytes, str]:  # fmt: skip
        """(HTTP status, body, content type) of one API call."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}", data=data,
                                     method=method)  # fmt: skip
        if token:
            req.add_header("Authorization", f"Bearer {TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def json(self, method: str, path: str, body: object = None, **kw) -> tuple[int, dict]:
        status, data, _ = self.call(method, path, body, **kw)
        return status, json.loads(data)

    def status(self) -> dict:
        return self.json("GET", "/v1/volume")[1]

    def metrics(self) -> str:
        return self.call("GET", "/metrics")[1].decode()

    async def healthy(self) -> dict:
        def ok():
            try:
                st = self.status()
            except OSError:
                return None
            good = st["state"] == "serving" and all(r["mode"] == "RW" for r in st["replicas"])
            return st if good and len(st["replicas"]) == len(self.ports) else None

        return await eventually(ok, 30, "the volume serving with every replica RW")

    async def snapshot(self, name: str) -> str:
        """SNAPSHOT on every replica (after a flush; no writer runs): its id."""
        qemu_io(self.url, "flush")
        rec = {"id": uuid.uuid4().hex, "name": name, "created": time.time()}
        epoch = self.status()["epoch"]
        for port in self.ports:
            c = ReplicaClient("127.0.0.1", port, VOL)
            await c.connect()
            try:
                await c.snapshot(rec, epoch)
            finally:
                await c.close()
        return rec["id"]


def qemu_io(url: str, *cmds: str, ok: bool = True) -> str:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    if ok:
        assert p.returncode == 0 and "failed" not in out, out
    return out


class LoggedIn:
    """A long-lived qemu-io process: logged in to the volume until `quit()`."""

    PROMPT = b"qemu-io> "

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        self.out = b""
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while self.PROMPT not in self.out:  # the prompt comes once the volume is open
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"qemu-io did not log in: {self.out!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                self.out += os.read(self.proc.stdout.fileno(), 65536)

    def quit(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def cluster(procs, tmp_path):
    return Cluster(procs, tmp_path)


@pytest.fixture
def logged_in():
    sessions: list[LoggedIn] = []

    def start(url: str) -> LoggedIn:
        s = LoggedIn(url)
        sessions.append(s)
        return s

    yield start
    for s in sessions:
        s.quit()


def covers(runs: list[list[int]], o: int, n: int) -> bool:
    return sum(max(0, min(a + b, o + n) - max(a, o)) for a, b in runs) == n


async def test_snapshot_data_and_revert(cluster, logged_in):
    """Written, snapshotted, overwritten: the snapshot's extents and data are what was written
    before it; revert is refused (409) while qemu-io is logged in and, once it left, makes the
    volume read the snapshot's content (the write made after it reads as zeroes again)."""
    cl = cluster
    await cl.healthy()
    qemu_io(cl.url, *(f"write -P {p:#x} {o} {n}" for o, n, p in BEFORE))
    await cl.snapshot("s1")
    qemu_io(cl.url, "write -P 0x99 0 512k", f"write -P 0x77 {8 * MiB} {MiB}",
            f"discard {4 * MiB} 256k", "flush")  # fmt: skip
    await cl.snapshot("s2")  # newer than s1: kept by the revert, its view unchanged

    # export: extents and data
    st, ext = cl.json("GET", "/v1/snapshots/s1/extents")
    assert st == 200 and ext["size"] == SIZE, ext
    for o, n, _p in BEFORE:
        assert covers(ext["extents"], o, n), ext
    assert not covers(ext["extents"], 8 * MiB, K), ext  # written after the snapshot
    for o, n, p in BEFORE:
        st, data, ctype = cl.call("GET", f"/v1/snapshots/s1/data?offset={o}&length={n}")
        assert st == 200 and ctype == "application/octet-stream"
        assert data == bytes([p]) * n
    st, data, _ = cl.call("GET", f"/v1/snapshots/s1/data?offset={8 * MiB}&length={MiB}")
    assert st == 200 and data == bytes(MiB)
    assert cl.status()["transfer"]["kind"] == "export"
    # refusals: no token, bad range, unknown snapshot
    for method, path in [("GET", "/v1/snapshots/s1/extents"), ("POST", "/v1/snapshots/s1/revert"),
                         ("GET", "/v1/snapshots/s1/data?offset=0&length=4096")]:  # fmt: skip
        assert cl.call(method, path, token=False)[0] == 401
    assert cl.call("GET", "/v1/snapshots/s1/data?offset=100&length=4096")[0] == 400
    assert cl.call("GET", f"/v1/snapshots/s1/data?offset=0&length={17 * MiB}")[0] == 400
    assert cl.call("GET", "/v1/snapshots/nope/data?offset=0&length=4096")[0] == 404
    assert cl.call("POST", "/v1/snapshots/nope/revert")[0] == 404

    # revert: refused with an initiator logged in
    guest = logged_in(cl.url)
    st, body = cl.json("POST", "/v1/snapshots/s1/revert")
    assert st == 409 and "logged in" in body["error"], body
    guest.quit()
    st, body = await eventually(
        lambda: (r := cl.json("POST", "/v1/snapshots/s1/revert"))[0] != 409 and r,
        30, "revert accepted once the initiator logged out",
    )  # fmt: skip
    assert st == 200 and body["reverted"] == "s1", body
    # changed since: 512k overwritten, 256k discarded, 1M written
    assert body["bytes"] >= 512 * 1024 + 256 * 1024 + MiB, body
    tr = cl.status()["transfer"]
    assert tr["kind"] == "revert" and tr["result"] == "done" and tr["done"] == tr["total"], tr
    out = qemu_io(cl.url, *(f"read -P {p:#x} {o} {n}" for o, n, p in BEFORE),
                  f"read -P 0 {8 * MiB} {MiB}")  # fmt: skip
    assert out.count(f"read {MiB}/{MiB} bytes") == 3, out
    assert 'jiva_transfer_bytes_total{volume="svol",kind="revert"}' in cl.metrics()
    # every snapshot is kept, and still reads the same (s2: what was written after s1)
    st, data, _ = cl.call("GET", f"/v1/snapshots/s1/data?offset=0&length={MiB}")
    assert st == 200 and data == b"\x11" * MiB
    for o, n, p in [(0, 512 * 1024, 0x99), (8 * MiB, MiB, 0x77), (4 * MiB, 256 * 1024, 0)]:
        st, data, _ = cl.call("GET", f"/v1/snapshots/s2/data?offset={o}&length={n}")
        assert st == 200 and data == bytes([p]) * n, (o, n)


async def test_import_writes_data_and_keeps_initiators_out(cluster, logged_in):
    """An import begins only with no initiator logged in; while it runs, logins are refused
    (Service Unavailable, the reason in the controller's log); its data and zeroed ranges are
    what the volume reads afterwards."""
    cl = cluster
    await cl.healthy()
    qemu_io(cl.url, f"write -P 0x5a {2 * MiB} {MiB}", "flush")
    begin = {"action": "begin", "source": "test backup b1", "total": 4 * MiB}
    assert cl.call("POST", "/v1/import", begin, token=False)[0] == 401
    assert cl.call("PUT", "/v1/import/data?offset=0", raw=b"x" * K, token=False)[0] == 401
    st, body = cl.json("PUT", "/v1/import/data?offset=0", raw=b"\x01" * K)
    assert st == 409 and "no import is running" in body["error"], body

    st, body = cl.json("POST", "/v1/import", {**begin, "total": SIZE + MiB})
    assert st == 409 and "smaller" in body["error"], body
    guest = logged_in(cl.url)
    st, body = cl.json("POST", "/v1/import", begin)
    assert st == 409 and "logged in" in body["error"], body
    guest.quit()
    st, body = await eventually(
        lambda: (r := cl.json("POST", "/v1/import", begin))[0] != 409 and r,
        30, "import accepted once the initiator logged out",
    )  # fmt: skip
    assert st == 201 and body["import"]["kind"] == "import", body
    st, body = cl.json("POST", "/v1/import", begin)
    assert st == 409 and "is running" in body["error"], body

    # logins refused while it runs
    out = qemu_io(cl.url, "read 0 4k", ok=False)
    assert "read 4096/4096" not in out, out
    assert "0x0301: import from test backup b1 is running" in cl.procs.log("controller")

    for i in range(2):
        st, body = cl.json("PUT", f"/v1/import/data?offset={i * MiB}", raw=bytes([0x61 + i]) * MiB)
        assert st == 200 and body["written"] == MiB, body
    st, body = cl.json("PUT", f"/v1/import/data?offset={2 * MiB}&length={MiB}&zero=1")
    assert st == 200 and body["zeroed"] == MiB, body
    assert cl.call("PUT", "/v1/import/data?offset=100", raw=b"x" * 100)[0] == 400
    tr = cl.status()["transfer"]
    assert tr["kind"] == "import" and tr["state"] == "running" and tr["done"] == 3 * MiB, tr
    st, body = cl.json("POST", "/v1/import", {"action": "end"})
    assert st == 200 and body["import"]["result"] == "done", body
    assert cl.status()["transfer"]["result"] == "done"

    out = qemu_io(cl.url, f"read -P 0x61 0 {MiB}", f"read -P 0x62 {MiB} {MiB}",
                  f"read -P 0 {2 * MiB} {MiB}")  # fmt: skip
    assert out.count(f"read {MiB}/{MiB} bytes") == 3, out
    assert f'jiva_transfer_bytes_total{{volume="{VOL}",kind="import"}} {3 * MiB}' in cl.metrics()


async def test_revert_completes_when_run_again_after_a_controller_crash(procs, tmp_path):
    """kill -9 of the controller in the middle of a revert, then a new controller: the volume
    serves (a mix of old and new blocks, as after any crash during writes), and the revert run
    again completes it: the volume reads the snapshot's content."""
    size = 96 * MiB
    cl = Cluster(procs, tmp_path, size=size)
    await cl.healthy()
    qemu_io(cl.url, f"write -P 0x31 0 {64 * MiB}")
    await cl.snapshot("s1")
    qemu_io(cl.url, f"write -P 0x42 0 {64 * MiB}", f"write -P 0x53 {64 * MiB} {16 * MiB}", "flush")
    first = asyncio.create_task(asyncio.to_thread(cl.call, "POST", "/v1/snapshots/s1/revert"))

    def midway():
        tr = cl.status()["transfer"]
        return tr and tr["kind"] == "revert" and 0 < tr["done"] < tr["total"] and tr

    tr = await eventually(midway, 30, "the revert under way", poll=0.01)
    procs.kill(cl.ctl)  # SIGKILL
    with contextlib.suppress(OSError):
        await first  # its connection is gone with the controller
    assert tr["total"] == 80 * MiB, tr
    cl.start_controller()
    await cl.healthy()
    st, body = cl.json("POST", "/v1/snapshots/s1/revert")
    assert st == 200 and body["bytes"] == 80 * MiB, body
    out = qemu_io(cl.url, f"read -P 0x31 0 {64 * MiB}", f"read -P 0 {64 * MiB} {16 * MiB}")
    assert out.count("read ") == 2 and "failed" not in out, out


def flip(path: Path, offset: int, at: int = 1000) -> None:
    """Invert 3 bytes inside the block at `offset` of the file, then drop its page cache."""
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 3, offset + at)
        os.pwrite(fd, bytes(b ^ 0xFF for b in old), offset + at)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_export_reads_a_bad_snapshot_block_from_the_other_replica(cluster):
    """A block of the snapshot's layer damaged on one replica: the export still returns the
    written data (read from the other replica); damaged on both: 422 naming the block."""
    cl = cluster
    await cl.healthy()
    qemu_io(cl.url, f"write -P 0x11 0 {MiB}")
    sid = await cl.snapshot("s1")
    qemu_io(cl.url, f"write -P 0x99 {2 * MiB} 64k", "flush")  # the head moves on
    bad = 3 * K
    flip(cl.dirs[0] / "snapshots" / f"{sid}.img", bad)
    for _ in range(2):  # each member is asked first once
        st, data, _ = cl.call("GET", f"/v1/snapshots/s1/data?offset=0&length={MiB}")
        assert st == 200 and data == b"\x11" * MiB
    assert cl.status()["integrity"]["checksum_errors"] >= 1
    flip(cl.dirs[1] / "snapshots" / f"{sid}.img", bad)
    st, body = cl.json("GET", f"/v1/snapshots/s1/data?offset=0&length={MiB}")
    assert st == 422 and body["bad"] == [[bad, K]], body
    assert f"byte {bad}" in body["error"]
    st, data, _ = cl.call("GET", f"/v1/snapshots/s1/data?offset={4 * K}&length={64 * K}")
    assert st == 200 and data == b"\x11" * 64 * K  # the blocks around it still read
