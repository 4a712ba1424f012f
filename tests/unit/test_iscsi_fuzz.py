"""Fuzzing the iSCSI target: random and mutated PDUs at the parser, login and full feature phase.

Two levels: the connection protocol object fed through a fake transport (many examples, fast),
and a real TCP target in a thread hit by mutated PDUs while a healthy session must keep working.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.protocol import TargetProtocol
from jiva_engine.iscsi.target import TargetConfig, TargetServer, start_target
from tests.integration.iscsi_client import Initiator
from tests.unit.memvolume import MemVolume

IQN = "iqn.2026-11.org.jiva-py:fuzz"


class FakeTransport(asyncio.Transport):
    """Collects what the connection writes; records close/abort."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 3260)}.get(name, default)

    def write(self, data) -> None:
        self.out += data

    def writelines(self, parts) -> None:
        for p in parts:
            self.out += p

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def login_bytes() -> bytes:
    """A Login Request going straight to full feature phase without authentication."""
    text = f"InitiatorName=iqn.x:y\0TargetName={IQN}\0AuthMethod=None\0".encode()
    text += bytes(-len(text) % 4)
    raw_len = len(text.rstrip(b"\0")) + 1
    req = P.LoginRequest(itt=1, isid=b"\x80\0\0\0\0\1", csg=1, nsg=3, transit=True,
                         data_len=raw_len)  # fmt: skip
    return req.pack() + text


def templates() -> list[bytes]:
    """Valid full-feature PDUs to mutate."""
    cdb_read = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
    cdb_write = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)
    snack = bytes([P.Opcode.SNACK, P.FINAL]) + bytes(14) + (10).to_bytes(4, "big") + bytes(28)
    return [
        P.ScsiCommand(itt=5, cdb=cdb_read, edtl=512, flags=P.FINAL | P.READ).pack(),
        P.ScsiCommand(itt=6, cdb=cdb_write, edtl=1024, flags=P.FINAL | P.WRITE, data_len=512).pack()
        + b"\xab" * 512,
        P.DataOut(itt=6, offset=512, data_len=512).pack() + b"\xcd" * 512,
        P.NopOut(itt=7, immediate=True, data_len=4).pack() + b"ping",
        P.TaskManagementRequest(itt=8, function=P.TmfFunction.ABORT_TASK, rtt=5).pack(),
        P.TextRequest(itt=9, data_len=16).pack() + b"SendTargets=All\0",
        snack,
        P.LogoutRequest(itt=11, immediate=True).pack(),
    ]


def feed(server: TargetServer, chunks: list[bytes]) -> FakeTransport:
    """Run a connection over a fake transport through `chunks`; return the transport."""
    t = FakeTransport()

    async def go() -> None:
        c = TargetProtocol(server)
        c.connection_made(t)
        for ch in chunks:
            if t.closed:
                break
            c.data_received(ch)
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        c.connection_lost(None)

    asyncio.run(asyncio.wait_for(go(), 10))
    return t


@pytest.fixture(scope="module")
def server() -> TargetServer:
    """A target object (no socket) over a small memory volume."""
    return TargetServer(MemVolume(256 * 1024, name="fuzz"), TargetConfig(iqn=IQN))


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_random_bytes_before_login(server, chunks):
    """Garbage instead of a login: the connection answers or closes, nothing escapes."""
    feed(server, chunks)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, len(templates()) - 1),
    st.lists(st.tuples(st.integers(0, 560), st.integers(0, 255)), max_size=8),
    st.integers(1, 700),
)
def test_mutated_pdus_after_login(server, which, flips, split):
    """Valid PDUs with random byte flips after a good login, split at random points."""
    pdu = bytearray(templates()[which])
    for pos, val in flips:
        if pos < len(pdu):
            pdu[pos] = val
    stream = login_bytes() + bytes(pdu) + templates()[3]
    chunks = [stream[i : i + split] for i in range(0, len(stream), split)]
    t = feed(server, chunks)
    assert t.out[:1] == b"\x23", "the login itself must have been answered"


def test_oversized_pdu_closes_connection(server):
    """A header announcing more than the hard limit closes the connection immediately."""
    big = bytearray(P.NopOut(itt=7, immediate=True).pack())
    big[4] = 255  # 1020 bytes of AHS
    big[5:8] = (0xFFFFFF).to_bytes(3, "big")
    t = feed(server, [login_bytes(), bytes(big)])
    assert t.closed


def test_data_segment_above_negotiated_limit_is_rejected(server):
    """Data beyond MaxRecvDataSegmentLength (but under the hard cap) gets a Reject PDU."""
    n = 300 * 1024
    hdr = P.NopOut(itt=7, immediate=True, data_len=n).pack()
    t = feed(server, [login_bytes(), hdr + bytes(n)])
    ops = []
    out = bytes(t.out)
    pos = 0
    while pos + 48 <= len(out):
        dl = int.from_bytes(out[pos + 5 : pos + 8], "big")
        ops.append(out[pos] & 0x3F)
        pos += 48 + dl + (-dl % 4)
    assert P.Opcode.REJECT in ops


# ---------------------------------------------------------------- real TCP, threaded server
@pytest.fixture
def tcp_target():
    """A real target on 127.0.0.1 (random port) running in a background event loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            holder["srv"] = await start_target(
                MemVolume(1 << 20, name="fuzz"), "127.0.0.1", 0, TargetConfig(iqn=IQN)
            )
            started.set()

        loop.run_until_complete(boot())
        loop.run_forever()

    th = threading.Thread(target=main, daemon=True)
    th.start()
    assert started.wait(10)
    srv = holder["srv"]
    try:
        yield srv.address[1]
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        loop.close()


def _healthy(port: int) -> None:
    c = Initiator("127.0.0.1", port, name="iqn.2026-11.org.test:healthy")
    c.login(IQN)
    st_, _, _, _ = c.scsi(bytes(6))
    assert st_ == 0
    payload = b"\x42" * 4096
    cdb = struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 8, 0)
    assert c.scsi(cdb, data_out=payload)[0] == 0
    cdb = struct.pack(">BBIBHB", 0x28, 0, 8, 0, 8, 0)
    assert c.scsi(cdb, read_len=4096)[1] == payload
    c.logout()
    c.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, len(templates()) - 1),
    st.lists(st.tuples(st.integers(0, 560), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_tcp_mutated_pdus_leave_other_sessions_working(tcp_target, which, flips):
    """A session fed mutated PDUs never disturbs a concurrent healthy session or the process."""
    port = tcp_target
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(login_bytes())
    s.settimeout(2)
    assert s.recv(48)[:1] == b"\x23"
    pdu = bytearray(templates()[which])
    for pos, val in flips:
        if pos < len(pdu):
            pdu[pos] = val
    try:
        s.sendall(bytes(pdu))
        s.settimeout(0.2)
        s.recv(65536)
    except OSError:
        pass
    _healthy(port)
    s.close()
