"""Big Data-Out segments are received straight into their command's write buffer: the data the
device gets is exactly what was sent, however the bytes are cut, and a Data-Out the target
would refuse is never placed."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.protocol import TargetProtocol
from jiva_engine.iscsi.target import TargetConfig, TargetServer
from jiva_engine.scsi import sense as S
from tests.unit.memvolume import MemVolume
from tests.unit.test_iscsi_fuzz import IQN, FakeTransport, login_bytes

MiB = 1 << 20
SEG = 256 * 1024  # the target's MaxRecvDataSegmentLength: one Data-Out per R2T'd burst


def pdus(t: FakeTransport, start: int = 0) -> tuple[list[P.Response], int]:
    """The PDUs the target wrote from byte `start` on, and where the next one begins."""
    out, pos, raw = [], start, bytes(t.out)
    while pos + P.BHS_LEN <= len(raw):
        dlen = int.from_bytes(raw[pos + 5 : pos + 8], "big")
        out.append(P.parse_response(raw[pos : pos + P.BHS_LEN]))
        pos += P.BHS_LEN + dlen + (-dlen % 4)
    return out, pos


def send(c: TargetProtocol, data: bytes, rnd: random.Random) -> None:
    """Hand `data` over in random cuts (1 byte .. 100 KiB), across every PDU boundary."""
    pos = 0
    while pos < len(data):
        n = rnd.choice([1, 7, 48, 4096, 65536 + 3, 100_000])
        c.data_received(data[pos : pos + n])
        pos += n


async def logged_in(vol: MemVolume) -> tuple[TargetProtocol, FakeTransport]:
    server = TargetServer(vol, TargetConfig(iqn=IQN))
    t = FakeTransport()
    c = TargetProtocol(server)
    c.connection_made(t)
    c.data_received(login_bytes())
    return c, t


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_1mib_write_lands_intact_through_placement(seed: int) -> None:
    vol = MemVolume(4 * MiB, name="place")
    c, t = await logged_in(vol)
    rnd = random.Random(seed)
    payload = rnd.randbytes(MiB)
    first = 65536  # immediate data up to FirstBurstLength, then R2Ts (InitialR2T=Yes)
    cmd = P.ScsiCommand(itt=10, cdb=write10(2048, MiB // 512), edtl=MiB,
                        flags=P.FINAL | P.WRITE, cmdsn=0, data_len=first)  # fmt: skip
    _, at = pdus(t)
    send(c, cmd.pack() + payload[:first], rnd)
    done = False
    for _ in range(64):
        await asyncio.sleep(0)
        got, at = pdus(t, at)
        for r in got:
            if isinstance(r, P.R2T):
                for off in range(r.offset, r.offset + r.length, SEG):
                    n = min(SEG, r.offset + r.length - off)
                    d = P.DataOut(itt=10, ttt=r.ttt, offset=off, datasn=(off - r.offset) // SEG,
                                  final=off + n == r.offset + r.length, data_len=n)  # fmt: skip
                    send(c, d.pack() + payload[off : off + n], rnd)
            elif isinstance(r, P.ScsiResponse):
                assert r.status == S.GOOD
                done = True
        if done:
            break
    assert done, "no SCSI Response"
    assert vol.data[2048 * 512 : 2048 * 512 + MiB] == payload
    assert vol.data[: 2048 * 512].count(0) == 2048 * 512  # nothing outside the range
    assert c.rx_placed >= MiB - first - SEG  # the path under test was taken (at least 2 of 4)


async def test_a_data_out_out_of_sequence_is_not_placed() -> None:
    """A big Data-Out with the wrong DataSN is rejected as before and its bytes go nowhere;
    the connection carries on (the next command works)."""
    vol = MemVolume(4 * MiB, name="place")
    c, t = await logged_in(vol)
    rnd = random.Random(9)
    cmd = P.ScsiCommand(itt=20, cdb=write10(0, SEG // 512), edtl=SEG,
                        flags=P.FINAL | P.WRITE, cmdsn=0)  # fmt: skip
    _, at = pdus(t)
    c.data_received(cmd.pack())
    await asyncio.sleep(0)
    got, at = pdus(t, at)
    r2t = next(r for r in got if isinstance(r, P.R2T))
    bad = P.DataOut(itt=20, ttt=r2t.ttt, offset=0, datasn=5, data_len=SEG)
    send(c, bad.pack() + b"\xee" * SEG, rnd)
    await asyncio.sleep(0)
    got, at = pdus(t, at)
    assert any(isinstance(r, P.Reject) for r in got)
    assert c.rx_placed == 0 and vol.data[:SEG].count(0) == SEG
    # the connection still works: a small write, all immediate
    ok = P.ScsiCommand(itt=21, cdb=write10(8, 1), edtl=512, flags=P.FINAL | P.WRITE,
                       cmdsn=1, data_len=512)  # fmt: skip
    c.data_received(ok.pack() + b"\x11" * 512)
    for _ in range(16):
        await asyncio.sleep(0)
    got, at = pdus(t, at)
    assert any(isinstance(r, P.ScsiResponse) and r.status == S.GOOD for r in got)
    assert vol.data[8 * 512 : 9 * 512] == b"\x11" * 512
