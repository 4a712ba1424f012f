"""The real `jiva replica` process over real TCP: data path, auth, fencing, bad input, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jiva_engine.protocol import auth, wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError, ReplicaUnavailable
from tests.procs import free_port
from tests.waiting import eventually, holds

MiB = 1 << 20
REPLICA = [sys.executable, "-m", "jiva_engine.cli", "replica"]  # the real `jiva replica`


class Replica:
    """A replica process started through the `procs` fixture (stopped by PID at teardown)."""

    def __init__(self, procs, d: Path, volume="vol1", size="64M", secret=None, interval=None):
        self.procs, self.dir, self.volume, self.size = procs, d, volume, size
        self.port = free_port()
        self.secret_file = None
        if secret is not None:
            self.secret_file = d.parent / f"{d.name}.secret"
            self.secret_file.write_text(secret + "\n")
        self.interval = interval
        self.n = 0
        self.proc = None

    def args(self) -> list[str]:
        a = ["--volume", self.volume, "--listen", f"127.0.0.1:{self.port}", "--dir", str(self.dir)]
        a += ["--size", self.size]
        if self.secret_file:
            a += ["--secret-file", str(self.secret_file)]
        if self.interval:
            a += ["--sync-interval", str(self.interval)]
        return a

    def start(self) -> Replica:
        self.n += 1
        self.name = f"replica-{self.dir.name}-{self.n}"
        self.proc = self.procs.start(REPLICA + self.args(), self.name)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def log(self) -> str:
        return self.procs.log(self.name)

    def client(self, **kw) -> ReplicaClient:
        kw.setdefault("volume", self.volume)
        return ReplicaClient("127.0.0.1", self.port, **kw)

    async def connect(self, **kw) -> ReplicaClient:
        c = self.client(**kw)
        await c.connect()
        return c

    def disk(self, offset: int, length: int) -> bytes:
        with open(self.dir / "volume.img", "rb") as f:
            f.seek(offset)
            return f.read(length)


def _recv_frame(sock: socket.socket) -> wire.Frame | None:
    buf = b""
    while len(buf) < wire.HEADER_SIZE:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    plen = wire.HEADER.unpack_from(buf)[3]
    while len(buf) < wire.HEADER_SIZE + plen:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    frames, _ = wire.split_frames(buf[: wire.HEADER_SIZE + plen])
    return frames[0]


def _closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def replica(procs, tmp_path):
    return Replica(procs, tmp_path / "r1").start()


async def test_pipelined_writes_and_reads_match_the_data_file(replica):
    c = replica.client()
    assert not c.connected
    await c.connect()
    assert c.connected
    await c.set_meta(epoch=1, membership=[f"127.0.0.1:{replica.port}"])
    rnd = random.Random(7)
    expect: dict[int, bytes] = {}
    futs = []
    for _ in range(3000):  # many land on the same blocks: only issue order gives the right answer
        off = rnd.randrange(512) * 4096
        data = rnd.randbytes(4096)
        futs.append(c.write(off, data, 1))
        expect[off] = data
    big = rnd.randbytes(3 * MiB)  # a multi-region write
    futs.append(c.write(40 * MiB - 4096, big, 1, fua=True))
    await asyncio.gather(*futs)
    got = await asyncio.gather(*(c.read(off, 4096, 1) for off in expect))
    assert got == list(expect.values())
    assert await c.read(40 * MiB - 4096, 3 * MiB, 1) == big
    await c.flush(1)
    for off, data in expect.items():
        assert replica.disk(off, 4096) == data
    assert replica.disk(40 * MiB - 4096, 3 * MiB) == big
    info = await c.info()
    assert info["stats"]["writes"] == 3001
    assert info["stats"]["bytes_written"] == 3000 * 4096 + 3 * MiB
    assert info["epoch"] == 1 and info["mode"] == "RW" and info["dirty"] is True
    await c.close()


async def test_same_block_write_order_survives_interleaved_flushes(replica):
    c = await replica.connect()
    futs = []
    for i in range(500):
        futs.append(c.write(8192, i.to_bytes(4, "big") * 128, 0, fua=(i % 7 == 0)))
        if i % 50 == 0:
            futs.append(c.flush(0))
    await asyncio.gather(*futs)
    assert await c.read(8192, 512, 0) == (499).to_bytes(4, "big") * 128
    await c.close()


async def test_order_kept_when_first_writes_to_new_regions_wait_for_the_dirty_map(replica):
    # a first write to a fresh region waits for a dirty-map fsync; writes sent after it (here in
    # separate sends, so they arrive while the replica waits) must not overtake it or what
    # is queued behind it
    c = await replica.connect()
    await c.write(0, b"\0" * 512, 0)
    futs = []
    for k in range(1, 40):
        futs.append(c.write(k * MiB, b"\x01" * 512, 0))  # fresh region k: must wait
        futs.append(c.write(k * MiB, b"\xee" * 512, 0))  # same block, queued behind it
        futs.append(c.write(0, (2 * k).to_bytes(2, "big") * 256, 0))  # queued behind it
        await asyncio.sleep(0)  # send now
        futs.append(c.write(0, (2 * k + 1).to_bytes(2, "big") * 256, 0))  # a later send
        await asyncio.sleep(0)
    await asyncio.gather(*futs)
    for k in range(1, 40):
        assert replica.disk(k * MiB, 512) == b"\xee" * 512
    assert replica.disk(0, 512) == (79).to_bytes(2, "big") * 256
    await c.close()


async def test_unmap_reads_zeroes_and_extents_shrink(replica):
    c = await replica.connect()
    await c.write(0, b"\x5a" * (2 * MiB), 0)
    assert await c.extents(0, 64 * MiB) == [[0, 2 * MiB]]
    await c.unmap(MiB, MiB, 0)
    assert await c.read(MiB, MiB, 0) == bytes(MiB)
    assert await c.read(0, 512, 0) == b"\x5a" * 512
    assert await c.extents(0, 64 * MiB) == [[0, MiB]]
    assert replica.disk(MiB, 4096) == bytes(4096)
    await c.close()


async def test_out_of_range_and_unaligned_io_is_einval_and_writes_nothing(replica):
    c = await replica.connect()
    size = 64 * MiB
    cases = [
        c.write(size - 512, b"x" * 1024, 0),  # runs past the end
        c.write(size, b"x" * 512, 0),
        c.write(100, b"x" * 512, 0),  # unaligned offset
        c.write(0, b"x" * 100, 0),  # unaligned length
        c.read(size - 512, 1024, 0),
        c.unmap(size - 512, 4096, 0),
        c.read(0, wire.MAX_IO + 512, 0),
    ]
    for fut in cases:
        with pytest.raises(ReplicaError) as ei:
            await fut
        assert ei.value.status == wire.EINVAL
        assert "refused" in ei.value.message
    assert await c.read(size - 512, 512, 0) == bytes(512)
    assert await c.extents(0, size) == []  # nothing at all was written
    assert await c.read(0, 512, 0) == bytes(512)  # connection still usable
    await c.close()


async def test_stale_epoch_is_refused_and_persisted(replica):
    new = await replica.connect()
    meta = await new.set_meta(epoch=5, membership=["a:1", "b:2"])
    assert meta["epoch"] == 5
    old = await replica.connect()
    for fut in (
        old.write(0, b"o" * 512, 4),
        old.read(0, 512, 4),
        old.flush(4),
        old.unmap(0, 512, 4),
    ):
        with pytest.raises(ReplicaError) as ei:
            await fut
        assert ei.value.status == wire.STALE_EPOCH
    with pytest.raises(ReplicaError) as ei:
        await old.set_meta(epoch=4)
    assert ei.value.status == wire.STALE_EPOCH
    assert replica.disk(0, 512) == bytes(512)
    await new.write(0, b"n" * 512, 5)
    await new.close()
    await old.close()
    os.kill(replica.proc.pid, signal.SIGKILL)  # no clean shutdown: SET_META was durable already
    replica.proc.wait(10)
    replica.start()
    c = await replica.connect()
    info = await c.info()
    assert info["epoch"] == 5 and info["membership"] == ["a:1", "b:2"]
    with pytest.raises(ReplicaError) as ei:
        await c.write(0, b"o" * 512, 4)
    assert ei.value.status == wire.STALE_EPOCH
    assert replica.disk(0, 512) == b"n" * 512
    await c.close()


async def test_wrong_secret_is_refused_and_nothing_is_written(procs, tmp_path):
    r = Replica(procs, tmp_path / "r", secret="right-secret").start()
    with pytest.raises(ReplicaError) as ei:
        await r.connect(secret="wrong-secret")
    assert ei.value.status == wire.AUTH_FAILED
    with pytest.raises(ReplicaError) as ei:
        await r.connect()  # no secret at all
    assert ei.value.status == wire.AUTH_REQUIRED
    # raw: a bad AUTH immediately followed by a pipelined WRITE; and a WRITE with no AUTH
    with socket.create_connection(("127.0.0.1", r.port)) as s:
        hello = _recv_frame(s)
        body = json.loads(hello.payload)
        assert hello.op == wire.HELLO and body["auth"] is True and body["volume"] == "vol1"
        cn = auth.new_nonce()
        bad = auth.client_mac(b"guess", "vol1", body["nonce"], cn)
        req = {"volume": "vol1", "mac": bad, "cnonce": cn}
        s.sendall(
            wire.encode(wire.AUTH, 1, wire.dumps(req))
            + wire.encode(wire.WRITE, 2, b"E" * 4096, offset=0)
        )
        resp = _recv_frame(s)
        assert (resp.req_id, resp.status) == (1, wire.AUTH_FAILED)
        assert _closed(s)
    with socket.create_connection(("127.0.0.1", r.port)) as s:
        _recv_frame(s)
        s.sendall(wire.encode(wire.WRITE, 9, b"E" * 4096, offset=0))
        resp = _recv_frame(s)
        assert (resp.req_id, resp.status) == (9, wire.AUTH_REQUIRED)
    assert r.disk(0, 4096) == bytes(4096)
    good = await r.connect(secret="right-secret")
    assert (await good.info())["stats"]["writes"] == 0
    await good.write(0, b"G" * 512, 0)
    assert r.disk(0, 512) == b"G" * 512
    await good.close()
    assert "right-secret" not in r.log()
    assert "authentication of 127.0.0.1" in r.log()


async def test_client_with_secret_refuses_replica_without_one(replica):
    with pytest.raises(ReplicaError) as ei:
        await replica.connect(secret="s")
    assert ei.value.status == wire.AUTH_FAILED


async def test_wrong_volume_is_refused(replica):
    with pytest.raises(ReplicaError) as ei:
        await replica.connect(volume="vol2")
    assert ei.value.status == wire.WRONG_VOLUME
    # a raw client that ignores HELLO and insists gets WRONG_VOLUME and is disconnected
    with socket.create_connection(("127.0.0.1", replica.port)) as s:
        _recv_frame(s)
        s.sendall(
            wire.encode(wire.AUTH, 1, wire.dumps({"volume": "vol2", "mac": "", "cnonce": ""}))
        )
        assert _recv_frame(s).status == wire.WRONG_VOLUME
        assert _closed(s)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 40,  # bad magic
        wire.HEADER.pack(wire.MAGIC, wire.WRITE, 0, wire.MAX_PAYLOAD + 1, 1, 0, 0, 0),  # oversized
        "bad-json",
    ],
)
async def test_malformed_frame_closes_only_that_connection(replica, garbage):
    good = await replica.connect()
    await good.write(0, b"1" * 512, 0)
    with socket.create_connection(("127.0.0.1", replica.port)) as s:
        _recv_frame(s)
        if garbage == "bad-json":
            s.sendall(wire.encode(wire.AUTH, 1, b"{not json"))
        else:
            s.sendall(garbage)
        assert _closed(s)
        peer_port = s.getsockname()[1]
    await good.write(512, b"2" * 512, 0)
    assert await good.read(0, 1024, 0) == b"1" * 512 + b"2" * 512
    other = await replica.connect()  # and new connections are still accepted
    await other.ping()
    await other.close()
    await good.close()
    lines = [ln for ln in replica.log().splitlines() if "malformed frame" in ln]
    assert len(lines) == 1 and f"127.0.0.1:{peer_port}" in lines[0]
    assert "Traceback" not in replica.log()


async def test_set_meta_with_bad_json_closes_connection(replica):
    c = await replica.connect()
    fut = c._send(wire.SET_META, payload=b"{oops")
    with pytest.raises(ReplicaUnavailable):
        await fut
    c2 = await replica.connect()
    with pytest.raises(ReplicaError) as ei:
        await c2.set_meta(epoch="seven")
    assert ei.value.status == wire.EINVAL
    with pytest.raises(ReplicaError) as ei:
        await c2.set_meta(bogus=1)
    assert ei.value.status == wire.EINVAL
    await c2.close()


async def test_request_timeout_fails_pending_requests(replica):
    c = await replica.connect(timeout=0.5)
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        futs = [c.write(i * 512, b"t" * 512, 0) for i in range(10)]
        for fut in futs:
            with pytest.raises(ReplicaUnavailable, match="timeout"):
                await fut
        assert 0.4 < time.monotonic() - t0 < 3
        with pytest.raises(ReplicaUnavailable):
            await c.ping()
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    c2 = await replica.connect()
    await c2.ping()
    await c2.close()


async def test_tracking_mode_and_rebuild_stats(replica):
    c = await replica.connect()
    info = await c.info()
    assert info["mode"] == "WO" and info["epoch"] == 0  # new replica: no data yet
    await c.set_meta(epoch=2, membership=[info["id"]])  # a view names it: it holds data
    await c.write(3 * MiB, b"d" * 512, 2)  # dirty before tracking starts
    await c.set_meta(epoch=3, start_tracking=True)
    assert (replica.dir / "missed-3.map").exists()
    await c.write(9 * MiB, b"m" * 512, 3)
    await c.write(20 * MiB, b"r" * 4096, 3, rebuild=True)
    dm = await c.dirty_map()
    assert dm["region_size"] == MiB and dm["missed_granularity"] == 4096
    # region 3 (dirty when tracking started) whole, the later writes as 4 KiB chunks
    want = [[3 * MiB, MiB], [9 * MiB, 4096], [20 * MiB, 4096]]
    assert dm["missed"] == {"3": want}
    assert set(dm["dirty"]) == {3, 9, 20}
    info = await c.info()
    assert info["tracking"] == [3] and info["stats"]["rebuild_bytes_written"] == 4096
    assert (await c.set_mode("WO"))["mode"] == "WO"
    await c.close()
    os.kill(replica.proc.pid, signal.SIGTERM)
    assert replica.proc.wait(10) == 0
    replica.start()
    c = await replica.connect()
    info = await c.info()
    assert info["mode"] == "WO" and info["epoch"] == 3 and info["tracking"] == [3]
    assert (await c.dirty_map())["missed"] == {"3": want}
    with pytest.raises(ReplicaError) as ei:
        await c.set_mode("RW")  # this client has not shown epoch 3 yet: fenced
    assert ei.value.status == wire.STALE_EPOCH
    assert (await c.set_mode("RW", epoch=3))["mode"] == "RW"
    await c.set_meta(epoch=3, drop_seed=[3])  # the controller re-sent its in-flight writes
    assert (await c.dirty_map())["missed"] == {"3": want[1:]}  # written before tracking
    with pytest.raises(ReplicaError) as ei:
        await c.set_meta(epoch=3, drop_seed="all")
    assert ei.value.status == wire.EINVAL and "drop_seed" in ei.value.message
    await c.set_meta(epoch=3, stop_tracking=[3])
    assert not (replica.dir / "missed-3.map").exists()
    assert (await c.dirty_map())["missed"] == {}
    await c.close()


async def test_sigterm_is_a_clean_shutdown(replica):
    c = await replica.connect()
    await c.write(5 * MiB, b"x" * 4096, 0)
    assert (await c.dirty_map())["dirty"] == [5]
    await c.close()
    os.kill(replica.proc.pid, signal.SIGTERM)
    assert replica.proc.wait(10) == 0
    meta = json.loads((replica.dir / "meta.json").read_text())
    assert meta["clean"] is True
    assert not any((replica.dir / "dirty.map").read_bytes())
    assert "stopped cleanly" in replica.log()


async def test_kill_9_during_writes_leaves_in_flight_regions_dirty(procs, tmp_path):
    interval = 0.3
    r = Replica(procs, tmp_path / "r", interval=interval).start()
    c = await r.connect(timeout=5)
    # regions 40..43 written once, then idle: the lazy clearing must drop them
    await asyncio.gather(*(c.write(reg * MiB, b"i" * 4096, 0) for reg in range(40, 44)))
    await c.flush(0)
    deadline = time.monotonic() + 10
    while set((await c.dirty_map())["dirty"]) & set(range(40, 44)):
        assert time.monotonic() < deadline, "idle dirty regions were never cleared"
        await asyncio.sleep(interval)
    # hot regions 0..15: many writers, each write carrying a unique tag; every writer always
    # has one write outstanding, so the kill (the loop is blocked meanwhile) catches 32 in flight
    acked: dict[int, float] = {}
    issued: list[tuple[int, bytes, float]] = []  # (offset, data, time)
    answered: dict[int, float] = {}  # index in issued -> when the answer was seen
    seq = 0

    async def writer(k: int) -> None:
        nonlocal seq
        rnd = random.Random(k)
        while True:
            seq += 1
            reg = rnd.randrange(16)
            off = reg * MiB + rnd.randrange(256) * 4096
            idx = len(issued)
            issued.append((off, seq.to_bytes(8, "big") * 512, time.monotonic()))
            try:
                await c.write(off, issued[idx][1], 0)
            except ReplicaUnavailable:
                return
            answered[idx] = acked[reg] = time.monotonic()

    tasks = [asyncio.ensure_future(writer(k)) for k in range(32)]
    await asyncio.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(r.proc.pid, signal.SIGKILL)
    r.proc.wait(10)
    await asyncio.gather(*tasks)
    in_flight = [
        (off, data)
        for i, (off, data, t) in enumerate(issued)
        if t < killed_at and answered.get(i, killed_at + 1) > killed_at
    ]
    assert len(in_flight) == 32
    r.start()
    c2 = await r.connect()
    dirty = set((await c2.dirty_map())["dirty"])
    recent = {reg for reg, t in acked.items() if killed_at - t < interval}
    assert recent, "writes were acknowledged right before the kill"
    assert recent <= dirty
    landed = [off for off, data in in_flight if r.disk(off, 4096) == data]
    assert {off // MiB for off in landed} <= dirty  # in-flight writes that reached the file
    assert not dirty & set(range(40, 44))
    assert dirty <= set(range(16))
    info = await c2.info()
    assert info["clean"] is False and info["dirty"] is True

    # a crash's dirty bits survive the lazy clearing until CLEAR_DIRTY
    async def still_dirty() -> bool:
        return set((await c2.dirty_map())["dirty"]) == dirty

    await holds(still_dirty, 3 * interval, "the crash's dirty bits")
    await c2.clear_dirty(sorted(dirty))
    assert (await c2.dirty_map())["dirty"] == []
    await c2.close()


@pytest.mark.parametrize("volume,size", [("vol2", "64M"), ("vol1", "32M")])
def test_dir_of_another_volume_or_size_is_refused(procs, tmp_path, volume, size):
    r = Replica(procs, tmp_path / "r").start()
    os.kill(r.proc.pid, signal.SIGTERM)
    r.proc.wait(10)
    out = subprocess.run(
        REPLICA
        + ["--volume", volume, "--size", size, "--dir", str(r.dir)]
        + ["--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "belongs to volume 'vol1' of size 67108864 bytes" in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--size", "12Q"], "invalid size"),
        (["--listen", "127.0.0.1"], "needs a port"),
        (["--secret-file", "/nonexistent/secret"], "cannot read secret file"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, args, msg):
    base = {"--volume": "v", "--size": "1M", "--dir": str(tmp_path / "d")}
    base["--listen"] = f"127.0.0.1:{free_port()}"
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = [x for kv in base.items() for x in kv]
    out = subprocess.run(REPLICA + argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert msg in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_random_frames_never_take_the_process_down(replica):
    rnd = random.Random(1234)
    for conn in range(30):
        with socket.create_connection(("127.0.0.1", replica.port)) as s:
            _recv_frame(s)
            if conn % 3:  # most connections authenticate first, so data ops are reached
                s.sendall(wire.encode(wire.AUTH, 1, wire.dumps({"volume": "vol1", "cnonce": ""})))
            frames = []
            for i in range(50):
                op = rnd.choice([0, *range(1, 14), 14, 99, 255])
                payload = rnd.choice([b"", rnd.randbytes(rnd.randrange(1, 2048)), b"{}", b"[]"])
                off = rnd.choice([0, 512, 4096, rnd.randrange(2**64), 64 * MiB - 512])
                ln = rnd.choice([0, 512, 1, rnd.randrange(2**64), wire.MAX_IO + 512])
                ep = rnd.choice([0, 0, 1, rnd.randrange(2**64)])
                frames.append(wire.encode(op, i + 2, payload, offset=off, length=ln, epoch=ep))
            if conn % 5 == 0:
                frames.append(rnd.randbytes(100))  # and plain junk
            s.sendall(b"".join(frames))
            s.shutdown(socket.SHUT_WR)
            _closed(s, 10)
    assert replica.proc.poll() is None

    async def still_serving() -> dict:
        c = await replica.connect()
        await c.write(0, b"ok" * 256, max(0, (await c.info())["epoch"]))
        info = await c.info()
        await c.close()
        return info

    info = asyncio.run(still_serving())
    assert info["connections"] == 1
    assert replica.disk(0, 512) == b"ok" * 256
    log = replica.log()
    assert "Traceback" not in log and "internal error" not in log


async def test_writer_disconnect_pins_dirty_regions_until_clear_dirty(procs, tmp_path):
    interval = 0.2
    r = Replica(procs, tmp_path / "r", interval=interval).start()
    reader = await r.connect()
    w1 = await r.connect()
    await w1.write(3 * MiB, b"a" * 512, 0)
    await w1.write(7 * MiB, b"b" * 512, 0)
    await reader.read(0, 512, 0)  # a connection that only reads pins nothing
    await reader.close()

    async def cleared() -> bool:  # idle regions are cleared while it is alive
        return (await w1.dirty_map())["dirty"] == []

    await eventually(cleared, 20 * interval, "idle regions cleared")
    await w1.close()  # orderly close (BYE): nothing pinned
    # a writer that vanishes without BYE (a killed controller): region 5 may be missing on
    # its peers, so it stays dirty
    with socket.create_connection(("127.0.0.1", r.port)) as s:
        _recv_frame(s)
        s.sendall(wire.encode(wire.AUTH, 1, wire.dumps({"volume": "vol1", "cnonce": ""})))
        assert _recv_frame(s).status == wire.OK
        s.sendall(wire.encode(wire.WRITE, 2, b"c" * 512, offset=5 * MiB))
        assert _recv_frame(s).status == wire.OK
    c = await r.connect()

    async def pinned() -> bool:
        return (await c.dirty_map())["dirty"] == [5]

    await holds(pinned, 6 * interval, "the vanished writer's dirty region")
    assert r.log().count("kept until CLEAR_DIRTY") == 1
    await c.clear_dirty([5])
    assert (await c.dirty_map())["dirty"] == []
    await c.close()


async def test_write_all_fans_out_and_reports_each_replica(procs, tmp_path):
    from jiva_engine.protocol.client import flush_all, unmap_all, write_all

    r1 = Replica(procs, tmp_path / "a").start()
    r2 = Replica(procs, tmp_path / "b").start()
    c1, c2 = await r1.connect(timeout=1), await r2.connect(timeout=1)
    await c2.set_meta(epoch=2)
    futs = [write_all([c1, c2], i * 4096, bytes([i]) * 4096, 2) for i in range(64)]
    assert await asyncio.gather(*futs) == [[None, None]] * 64
    for i in range(64):
        assert r1.disk(i * 4096, 4096) == r2.disk(i * 4096, 4096) == bytes([i]) * 4096
    assert await flush_all([c1, c2], 2) == [None, None]
    assert await unmap_all([c1, c2], 0, 4096, 2) == [None, None]
    res = await write_all([c1, c2], 0, b"s" * 512, 1)  # stale for r2 only
    assert res[0] is None and isinstance(res[1], ReplicaError)
    assert res[1].status == wire.STALE_EPOCH
    os.kill(r2.proc.pid, signal.SIGKILL)
    r2.proc.wait(10)
    res = await write_all([c1, c2], 8192, b"k" * 512, 2)
    assert res[0] is None and isinstance(res[1], ReplicaUnavailable)
    assert await write_all([], 0, b"x" * 512, 2) == []
    await c1.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (needs root), unmounted at teardown."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_gives_eio_and_the_replica_keeps_serving(procs, small_fs):
    r = Replica(procs, small_fs / "r", size="32M").start()
    c = await r.connect()
    chunk = b"\x77" * MiB
    written = []
    err = None
    for i in range(32):
        try:
            await c.write(i * MiB, chunk, 0)
            written.append(i)
        except ReplicaError as e:
            err = e
            break
    assert err is not None and err.status == wire.EIO
    assert "No space left" in err.message
    assert 1 <= len(written) < 5
    assert await c.read(0, MiB, 0) == chunk  # earlier data is intact
    await c.write(0, b"\x01" * MiB, 0)  # overwriting allocated blocks still works
    await c.unmap(MiB, MiB, 0)  # freeing space...
    await c.write(10 * MiB, b"\x02" * 4096, 0)  # ...makes room again
    assert await c.read(10 * MiB, 4096, 0) == b"\x02" * 4096
    assert r.proc.poll() is None
    await c.close()
    os.kill(r.proc.pid, signal.SIGTERM)
    assert r.proc.wait(10) == 0


async def test_reads_not_in_page_cache_are_served_from_a_thread(replica):
    c = await replica.connect()
    data = random.Random(5).randbytes(4 * MiB)
    await c.write(0, data, 0)
    await c.flush(0)
    fd = os.open(replica.dir / "volume.img", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the (clean) cached pages
    finally:
        os.close(fd)
    got = await asyncio.gather(*(c.read(i * 65536, 65536, 0) for i in range(64)))
    assert b"".join(got) == data
    st = (await c.info())["stats"]
    assert st["reads"] == 64
    assert st["reads_offloaded"] >= 1  # the cold ones went to a worker thread
    assert await c.read(0, 65536, 0) == data[:65536]  # now cached: answered inline
    assert (await c.info())["stats"]["reads_offloaded"] == st["reads_offloaded"]
    await c.close()


def test_port_in_use_is_a_one_line_error(replica, tmp_path):
    out = subprocess.run(
        REPLICA
        + ["--volume", "vol1", "--size", "64M", "--dir", str(tmp_path / "other")]
        + ["--listen", f"127.0.0.1:{replica.port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].endswith(f"cannot listen on 127.0.0.1:{replica.port}: address already in use")
    assert "Traceback" not in out.stderr


async def test_readv_writev_round_trip_and_bad_input(replica):
    c = await replica.connect()
    await c.set_meta(epoch=1)
    ranges = [(0, 4096), (3 * MiB + 512, 1024), (9 * MiB, 8192)]
    data = bytes(range(256)) * 52  # 13312 bytes = sum of the ranges
    await c.writev(ranges, data, 1, rebuild=True)
    assert await c.read(3 * MiB + 512, 1024, 1) == data[4096:5120]
    assert await c.readv(ranges, 1) == data
    info = await c.info()
    assert info["stats"]["rebuild_bytes_written"] == len(data)
    bad = [
        (lambda: c.readv([(1, 512)], 1), "multiples of 512"),
        (lambda: c.readv([(0, 512)] * 5000, 1), "1..4096"),
        (lambda: c.readv([(64 * MiB - 512, 1024)], 1), "past the end"),
        (lambda: c.writev([(0, 1024)], b"x" * 512, 1), "data length"),
        (lambda: c.writev([(0, 512)], b"x" * 512, 0), "older than"),
    ]
    for call, why in bad:
        with pytest.raises(ReplicaError) as ei:
            await call()
        assert why in ei.value.message, ei.value.message
    assert await c.readv([(0, 4096)], 1) == data[:4096]  # nothing was written by the refusals
    await c.close()
