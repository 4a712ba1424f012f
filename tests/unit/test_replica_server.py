"""In-process tests of the replica connection state machine with a fake transport.

They control exactly how bytes are split into receive calls, which a real socket cannot.
"""

from __future__ import annotations

import asyncio

import pytest

from jiva_engine.protocol import wire
from jiva_engine.replica.connection import ReplicaConnection
from jiva_engine.replica.server import ReplicaServer
from jiva_engine.replica.store import ReplicaStore

MiB = 1 << 20


class FakeTransport:
    def __init__(self) -> None:
        self.reader = wire.FrameReader()
        self.frames: list[tuple] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.frames += self.reader.feed(data)

    def get_extra_info(self, key):
        return ("127.0.0.1", 4242) if key == "peername" else None

    def set_write_buffer_limits(self, high):
        pass

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


def recv(c: ReplicaConnection, data: bytes) -> None:
    """Deliver bytes the way the transport does: recv_into get_buffer(), then buffer_updated()."""
    pos = 0
    while pos < len(data) and not c.closing:
        buf = c.get_buffer(-1)
        n = min(len(buf), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        c.buffer_updated(n)
        pos += n


@pytest.fixture
async def conn(tmp_path):
    store = ReplicaStore(tmp_path / "r", "v", 64 * MiB)
    server = ReplicaServer(store, None, 60)
    c = ReplicaConnection(server)
    t = FakeTransport()
    c.connection_made(t)
    auth = {"volume": "v", "mac": "", "cnonce": "00"}
    recv(c, wire.encode(wire.AUTH, 1, wire.dumps(auth)))
    await asyncio.sleep(0)
    assert c.authed
    yield c, t, store
    store.close()


async def settle(server_conn, rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.01)
        if not server_conn.blocked and not server_conn.server.tasks:
            await asyncio.sleep(0)
            return


def w(rid: int, off: int, data: bytes, flags: int = 0) -> bytes:
    return wire.encode(wire.WRITE, rid, data, offset=off, length=flags)


async def test_writes_arriving_while_blocked_do_not_overtake(conn):
    c, t, store = conn
    store.write(0, b"\0" * 512)  # region 0 already dirty: its writes take the fast path
    recv(c, w(10, 5 * MiB, b"a" * 512) + w(11, 0, b"1" * 512))
    assert c.blocked  # waiting for the dirty-map write of region 5
    recv(c, w(12, 0, b"2" * 512))  # fast-able, but must queue behind 11
    await settle(c)
    assert store.pread(0, 512) == b"2" * 512
    assert store.pread(5 * MiB, 512) == b"a" * 512
    assert [f[2] for f in t.frames if f[0] == wire.WRITE] == [10, 11, 12]
    assert all(f[1] == wire.OK for f in t.frames)


async def test_frames_split_at_every_byte_boundary(conn):
    c, t, store = conn
    store.write(0, b"\0" * 512)
    stream = b"".join(w(100 + i, i * 4096, bytes([i]) * 4096) for i in range(20))
    stream += wire.encode(wire.READ, 200, offset=4096, length=4096)
    for i in range(0, len(stream), 7):
        recv(c, stream[i : i + 7])
    await settle(c)
    for i in range(20):
        assert store.pread(i * 4096, 4096) == bytes([i]) * 4096
    reads = [f for f in t.frames if f[0] == wire.READ]
    assert reads[0][6] == bytes([1]) * 4096
    assert [f[2] for f in t.frames if f[0] == wire.WRITE] == list(range(100, 120))


async def test_one_dirty_map_write_covers_a_batch_of_fresh_regions(conn, monkeypatch):
    c, t, store = conn
    calls = []
    real = store.write_bitmaps
    monkeypatch.setattr(store, "write_bitmaps", lambda snap: (calls.append(1), real(snap)))
    recv(c, b"".join(w(i, i * MiB, b"x" * 512) for i in range(1, 40)))
    await settle(c)
    assert store.dirty == set(range(1, 40))
    assert len(calls) == 1
    assert len([f for f in t.frames if f[0] == wire.WRITE and f[1] == wire.OK]) == 39


async def test_fua_writes_share_fdatasyncs(conn, monkeypatch):
    c, t, store = conn
    store.write(0, b"\0" * 512)
    syncs = []
    real = store.datasync
    monkeypatch.setattr(store, "datasync", lambda: (syncs.append(1), real()))
    recv(c, b"".join(w(i, i * 512, b"f" * 512, wire.FLAG_FUA) for i in range(1, 65)))
    await settle(c)
    acks = [f for f in t.frames if f[0] == wire.WRITE]
    assert len(acks) == 64 and all(f[1] == wire.OK for f in acks)
    assert 1 <= len(syncs) <= 3


async def test_queue_is_bounded_by_pausing_reads(conn, monkeypatch):
    c, t, store = conn
    gate = asyncio.Event()
    real_job = c.server.persist.job

    async def slow_persist():
        await gate.wait()
        await real_job()

    monkeypatch.setattr(c.server.persist, "job", slow_persist)
    recv(c, w(1, 9 * MiB, b"x" * 512))  # blocks on the (held) dirty-map write
    assert c.blocked
    chunk = b"".join(w(i, 0, b"y" * 4096) for i in range(2, 600))
    for _ in range(40):
        recv(c, chunk)
    assert t.paused  # stopped reading instead of buffering without limit
    gate.set()
    await settle(c, 200)
    assert not t.paused and not c.queue
    assert store.pread(0, 4096) == b"y" * 4096 and store.pread(9 * MiB, 512) == b"x" * 512


async def test_bad_json_control_frame_closes_and_stops_processing(conn):
    c, t, store = conn
    store.write(0, b"\0" * 512)
    recv(c, wire.encode(wire.SET_META, 5, b"{bad") + w(6, 0, b"z" * 512))
    await settle(c)
    assert t.closed
    assert store.pread(0, 512) == b"\0" * 512  # the write after the bad frame never ran


async def test_accepted_connections_use_tcp_keepalive(tmp_path):
    import socket

    store = ReplicaStore(tmp_path / "r", "v", MiB)
    server = ReplicaServer(store, None, 60)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readexactly(wire.HEADER_SIZE)  # HELLO header: the connection is set up
        (conn,) = server.conns
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
        writer.close()
    finally:
        await server.stop()


async def test_big_and_small_writes_with_random_receive_sizes(conn):
    import random

    c, t, store = conn
    rnd = random.Random(9)
    expect = {}
    stream = b""
    for i in range(40):
        size = rnd.choice([512, 4096, 65536, 65536 + 512, 300 * 1024, MiB])
        off = rnd.randrange(0, (60 * MiB - size) // 512) * 512
        data = rnd.randbytes(size)
        stream += w(1000 + i, off, data)
        expect[i] = (off, data)
    pos = 0
    while pos < len(stream):
        n = rnd.choice([1, 39, 40, 41, 4096, 70000, 262144, 1 << 20])
        recv(c, stream[pos : pos + n])
        pos += n
    await settle(c, 300)
    acks = [f for f in t.frames if f[0] == wire.WRITE]
    assert [f[2] for f in acks] == [1000 + i for i in range(40)]
    assert all(f[1] == wire.OK for f in acks)
    final = bytearray(store.pread(0, 60 * MiB))
    model = bytearray(60 * MiB)
    for i in range(40):
        off, data = expect[i]
        model[off : off + len(data)] = data
    for i in range(40):  # every written range holds what the last write to it put there
        off, data = expect[i]
        assert final[off : off + len(data)] == model[off : off + len(data)]
    assert c.big is None and c.start == c.end == 0


async def test_no_big_buffer_for_an_unauthenticated_peer(tmp_path):
    store = ReplicaStore(tmp_path / "r", "v", 64 * MiB)
    c = ReplicaConnection(ReplicaServer(store, None, 60))
    t = FakeTransport()
    c.connection_made(t)
    hdr = wire.pack_header(wire.WRITE, 1, payload_len=wire.MAX_IO, offset=0)
    recv(c, hdr + b"x" * 1000)
    assert t.closed and c.big is None
    store.close()
