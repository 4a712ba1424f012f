"""Resource abuse against real processes: idle connections, slow senders, oversized PDUs and
frames, a replica flooding garbage and unsolicited answers. Memory stays bounded, abusers are
cut off, and the volume keeps serving a well-behaved client meanwhile (checked by real I/O)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp

from jiva_engine.filevolume import FileVolume
from jiva_engine.initiator import Initiator
from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.target import TargetConfig, start_target
from jiva_engine.protocol import wire
from tests.procs import free_port, wait_port

VOL = "abuse"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
TOKEN = "abuse-token"
MiB = 1 << 20


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def login_pdu(dlen: int) -> bytes:
    """A Login Request header announcing `dlen` data bytes (no data follows)."""
    req = P.LoginRequest(itt=1, isid=b"\x80\1\2\3\4\5", csg=1, nsg=3, transit=True, cmdsn=1,
                         data_len=dlen & P.DSL_MASK)  # fmt: skip
    return req.pack()


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True if the peer closes (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


async def io_ok(init: Initiator, rounds: int, tag: int) -> None:
    """Write and read back distinct data: the volume serves this client."""
    for i in range(rounds):
        data = bytes([tag, i & 0xFF]) * 2048
        await init.write(i * 8, data)
        assert await init.read(i * 8, 8) == data


def start_volume(procs, tmp_path, n: int = 2):
    reps = []
    for i in range(n):
        port = free_port()
        procs.jiva("replica", "--volume", VOL, "--listen", f"127.0.0.1:{port}", "--dir",
                   str(tmp_path / f"r{i}"), "--size", "32M", name=f"r{i}")  # fmt: skip
        reps.append(port)
    for port in reps:
        wait_port("127.0.0.1", port)
    api, portal = free_port(), free_port()
    (tmp_path / "token").write_text(TOKEN)
    args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{api}", "--portal",
            f"127.0.0.1:{portal}", "--token-file", str(tmp_path / "token"),
            "--replica-timeout", "2"]  # fmt: skip
    for port in reps:
        args += ["--replica", f"127.0.0.1:{port}"]
    ctl = procs.jiva(*args, name="controller")
    wait_port("127.0.0.1", portal)
    wait_port("127.0.0.1", api)
    for _ in range(300):
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/volume", timeout=5) as r:
            if json.load(r)["state"] == "serving":
                break
        time.sleep(0.1)
    return reps, api, portal, ctl


async def status(api: int) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{api}/v1/volume") as r:
        return await r.json()


async def test_idle_slow_and_oversized_clients(procs, tmp_path):
    reps, api, portal, ctl = start_volume(procs, tmp_path)
    init = Initiator("127.0.0.1", portal, IQN)
    await init.reconnect(deadline=30)
    await io_ok(init, 20, 1)
    base_ctl = rss_mib(ctl.pid)
    rep_pid = procs.procs[0].pid
    base_rep = rss_mib(rep_pid)
    socks: list[socket.socket] = []
    try:
        # 200 idle connections to the iSCSI portal and 200 to a replica
        for port in (portal, reps[0]):
            for _ in range(200):
                socks.append(socket.create_connection(("127.0.0.1", port)))
        await io_ok(init, 50, 2)
        # oversized announcements are cut off at once, without buffering the announced bytes
        big = socket.create_connection(("127.0.0.1", portal))
        big.sendall(login_pdu(0xFFFFFF))
        assert closed_within(big, 3), "target kept a PDU announcing 16 MiB of login data"
        big.close()
        bigf = socket.create_connection(("127.0.0.1", reps[0]))
        bigf.sendall(wire.HEADER.pack(wire.MAGIC, wire.WRITE, 0, 2**32 - 1, 1, 0, 0, 0))
        assert closed_within(bigf, 3), "replica kept a frame announcing a 4 GiB payload"
        bigf.close()
        # slow senders: one byte per 100 ms, to both ports, while the client does I/O
        slow = [socket.create_connection(("127.0.0.1", p)) for p in (portal, portal, reps[0])]
        payload = login_pdu(0) + b"InitiatorName=iqn.x:slow\0"
        t0 = time.monotonic()
        for i in range(20):
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(payload[i : i + 1])
            await asyncio.sleep(0.1)
        await io_ok(init, 30, 3)
        assert time.monotonic() - t0 < 20
        # memory stays bounded while all of this is open
        assert rss_mib(ctl.pid) < base_ctl + 64, (base_ctl, rss_mib(ctl.pid))
        assert rss_mib(rep_pid) < base_rep + 64, (base_rep, rss_mib(rep_pid))
        st = await status(api)
        assert st["state"] == "serving" and all(r["mode"] == "RW" for r in st["replicas"])
        for s in slow:
            s.close()
    finally:
        for s in socks:
            s.close()
        await init.close()
    # afterwards a fresh client is still served
    init2 = Initiator("127.0.0.1", portal, IQN)
    await init2.connect()
    await io_ok(init2, 5, 4)
    await init2.logout()


async def test_login_timeout_holds_against_a_slow_sender(tmp_path):
    """A connection trickling a login PDU (1 byte / 100 ms) is dropped after login_timeout."""
    vol = FileVolume(str(tmp_path / "slow.img"), 4 * MiB)
    srv = await start_target(vol, "127.0.0.1", 0, TargetConfig("iqn.2026-11.org.jiva-py:slow",
                                                                login_timeout=2.0))  # fmt: skip
    try:
        port = srv.address[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        payload = login_pdu(100) + bytes(100)  # completes only after ~15 s at this pace
        t0 = time.monotonic()
        closed_at = None
        for i in range(len(payload)):
            if r.at_eof():
                closed_at = time.monotonic() - t0
                break
            try:
                w.write(payload[i : i + 1])
                await w.drain()
            except (ConnectionResetError, BrokenPipeError):
                closed_at = time.monotonic() - t0
                break
            try:
                if not await asyncio.wait_for(r.read(1), 0.1):
                    closed_at = time.monotonic() - t0
                    break
            except TimeoutError:
                pass
            if time.monotonic() - t0 > 8:
                break
        w.close()
        assert closed_at is not None and closed_at < 4.5, f"slow sender kept for {closed_at}"
    finally:
        await srv.close()


class FloodingReplica:
    """A fake replica: valid HELLO, then unsolicited answers at full speed and garbage replies."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.conns = 0
        self.sent = 0
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.conns += 1
        hello = {"volume": VOL, "nonce": os.urandom(8).hex(), "auth": False}
        w.write(wire.encode(wire.HELLO, 0, json.dumps(hello).encode()))

        async def answer() -> None:  # every request gets a reply that is not JSON
            fr = wire.FrameReader()
            while data := await r.read(65536):
                for f in fr.feed(data):
                    w.write(wire.encode(f[0], f[2], b"\xffgarbage\x00" * 100))

        t = asyncio.create_task(answer())
        self.tasks.add(t)
        junk = wire.encode(wire.READ, 2**63 + 5, os.urandom(4096))
        try:
            while not t.done():
                w.write(junk * 16)
                self.sent += 16
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            t.cancel()
            w.close()

    async def stop(self) -> None:
        self.server.close()
        for t in self.tasks:
            t.cancel()


async def test_flooding_replica_is_contained(procs, tmp_path):
    reps, api, portal, ctl = start_volume(procs, tmp_path)
    init = Initiator("127.0.0.1", portal, IQN)
    await init.reconnect(deadline=30)
    await io_ok(init, 10, 5)
    base = rss_mib(ctl.pid)
    fake = FloodingReplica()
    fport = await fake.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{api}/v1/replicas", json={"address": f"127.0.0.1:{fport}"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as r:  # fmt: skip
            assert r.status == 202, await r.text()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:  # I/O keeps working while the flood goes on
            await io_ok(init, 10, 6)
            await asyncio.sleep(0.2)
        assert fake.conns >= 1 and fake.sent > 1000, "the fake replica never got to flood"
        st = await status(api)
        modes = {r["address"]: r["mode"] for r in st["replicas"]}
        assert modes[f"127.0.0.1:{fport}"] == "ERR", st
        assert st["state"] == "serving" and [modes[f"127.0.0.1:{p}"] for p in reps] == ["RW"] * 2
        assert rss_mib(ctl.pid) < base + 64, (base, rss_mib(ctl.pid))
    finally:
        await fake.stop()
        await init.close()


async def test_replica_drops_connections_that_never_authenticate(tmp_path):
    """200 idle (and one trickling) unauthenticated connections are closed after auth_timeout;
    an authenticated controller connection stays and is served meanwhile."""
    from jiva_engine.protocol.client import ReplicaClient
    from jiva_engine.replica.server import ReplicaServer
    from jiva_engine.replica.store import ReplicaStore

    store = ReplicaStore(tmp_path / "r", VOL, 8 * MiB)
    srv = ReplicaServer(store, b"idle-test-secret", 0.5)
    srv.auth_timeout = 1.5
    await srv.start("127.0.0.1", 0)
    conns = []
    try:
        good = ReplicaClient("127.0.0.1", srv.port, VOL, secret=b"idle-test-secret", timeout=3)
        await good.connect()
        for _ in range(200):
            conns.append(await asyncio.open_connection("127.0.0.1", srv.port))
        assert len(srv.conns) == 201
        slow_w = conns[0][1]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # one of them trickles bytes: no excuse
            if not slow_w.is_closing():
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    slow_w.write(b"J")
            await asyncio.sleep(0.1)
            await good.write(0, b"\x01" * 4096, 0)
        closed = 0
        for r, _w in conns:
            try:
                data = await asyncio.wait_for(r.read(), 2)  # HELLO, then EOF
                closed += r.at_eof()
                assert data[:2] == b"JV"
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
        assert closed == 200
        assert len(srv.conns) == 1
        assert await good.read(0, 4096, 0) == b"\x01" * 4096
        await good.close()
    finally:
        for _r, w in conns:
            w.close()
        await srv.stop()
