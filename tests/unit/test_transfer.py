"""controller/transfer.py without processes: the run arithmetic of a revert, the exclusive
gate (and the iSCSI login it refuses), progress, and reading a snapshot's view around blocks
that fail their checksum on one member."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import pytest

from jiva_engine.controller.transfer import (
    BLOCK,
    Gate,
    SnapshotBadBlocks,
    Transfer,
    TransferFailed,
    TransferRefused,
    Transfers,
    merge,
    split_changed,
    subtract,
    whole_blocks,
)
from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.connection import ConnState
from jiva_engine.iscsi.login import SERVICE_UNAVAILABLE
from jiva_engine.iscsi.protocol import TargetProtocol
from jiva_engine.iscsi.target import TargetConfig, TargetServer
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import BadBlocks, ReplicaError
from tests.unit.memvolume import MemVolume
from tests.unit.test_iscsi_connection import responses
from tests.unit.test_iscsi_fuzz import IQN, FakeTransport, login_bytes

K = BLOCK


def test_merge_joins_adjacent_and_overlapping_runs():
    assert merge([(8, 4), (0, 4), (4, 2), (20, 0), (30, 5), (32, 1)]) == [
        (0, 6),
        (8, 4),
        (30, 5),
    ]


def test_split_changed_copies_what_the_snapshot_holds_and_unmaps_the_rest():
    changed = [(0, 8 * K), (20 * K, 2 * K)]
    has = [(2 * K, 2 * K), (6 * K, 10 * K)]
    assert split_changed(changed, has) == [
        (0, 2 * K, False),
        (2 * K, 2 * K, True),
        (4 * K, 2 * K, False),
        (6 * K, 2 * K, True),
        (20 * K, 2 * K, False),
    ]
    # long runs are cut into pieces
    assert split_changed([(0, 10 * K)], [(0, 10 * K)], piece=4 * K) == [
        (0, 4 * K, True),
        (4 * K, 4 * K, True),
        (8 * K, 2 * K, True),
    ]
    assert split_changed([], has) == []


def test_subtract_and_whole_blocks():
    assert subtract(0, 10 * K, [(2 * K, K), (5 * K, 2 * K)]) == [(0, 2 * K), (3 * K, 2 * K),
                                                                (7 * K, 3 * K)]  # fmt: skip
    assert subtract(0, 4 * K, [(0, 4 * K)]) == []
    assert whole_blocks([(K + 100, 10)], 0, 8 * K) == [(K, K)]
    assert whole_blocks([(0, 3 * K)], K, 2 * K) == [(K, K)]


def test_gate_refuses_while_initiators_are_logged_in_or_another_holds_it():
    g = Gate()
    sessions = [1]
    g.sessions = lambda: sessions[0]
    with pytest.raises(TransferRefused, match="1 iSCSI initiator session"):
        g.acquire("revert to snapshot s1")
    assert g.login_refusal() is None
    sessions[0] = 0
    g.acquire("revert to snapshot s1")
    assert "revert to snapshot s1 is running" in (g.login_refusal() or "")
    with pytest.raises(TransferRefused, match="revert to snapshot s1 is running"):
        g.acquire("import from x")
    g.release()
    assert g.login_refusal() is None


def test_gate_expires_an_idle_holder():
    g = Gate()
    expired = []
    g.on_expire = lambda: expired.append(1)
    g.acquire("import from x", idle=60)
    assert g.busy()
    g.deadline = 0.0  # idle for too long
    assert g.busy() is None and expired == [1]


def test_transfer_progress():
    t = Transfer("import", "backup b1", 100)
    t.add(40)
    v = t.view()
    assert v["kind"] == "import" and v["done"] == 40 and v["total"] == 100
    assert v["state"] == "running" and v["result"] is None
    t.finish("done")
    t.finish("failed: later")  # the first result stays
    assert t.view()["result"] == "done" and t.view()["state"] == "ended"


async def test_login_refused_while_the_gate_is_held():
    """The target asks the gate before a normal session's login completes: Service
    Unavailable (0x0301) and the connection closed; accepted again once released."""
    g = Gate()
    server = TargetServer(MemVolume(64 * 1024, name="conn"), TargetConfig(iqn=IQN),
                          login_gate=g.login_refusal)  # fmt: skip
    g.sessions = lambda: server.sessions
    g.acquire("import from somewhere")
    t = FakeTransport()
    c = TargetProtocol(server)
    c.connection_made(t)
    c.data_received(login_bytes())
    rsp = responses(t)
    assert isinstance(rsp[0], P.LoginResponse)
    assert rsp[0].status == SERVICE_UNAVAILABLE
    assert c.state is ConnState.FREE and t.closed and server.sessions == 0
    c.connection_lost(None)
    g.release()
    t2 = FakeTransport()
    c2 = TargetProtocol(server)
    c2.connection_made(t2)
    c2.data_received(login_bytes())
    assert c2.state is ConnState.LOGGED_IN and server.sessions == 1
    with pytest.raises(TransferRefused, match="logged in"):
        g.acquire("revert to snapshot s")
    c2.connection_lost(None)


# ---------------------------------------------------------------------- read_view
class FakeLink:
    """A member's snapshot view: `data` bytes, `bad` block offsets failing their checksum."""

    def __init__(self, data: bytes, bad: set[int] = frozenset(), error: bool = False) -> None:
        self.data, self.bad, self.error = data, set(bad), error
        self.calls: list[tuple[int, int]] = []

    def snap_read(self, snap_id, offset, length, epoch):
        self.calls.append((offset, length))
        fut = asyncio.get_running_loop().create_future()
        if self.error:
            fut.set_exception(ReplicaError(wire.UNKNOWN_OP, "SNAP_READ"))
            return fut
        bad = [[o, K] for o in sorted(self.bad) if offset <= o < offset + length]
        if bad:
            fut.set_exception(BadBlocks(wire.dumps({"bad": bad})))
        else:
            fut.set_result(self.data[offset : offset + length])
        return fut


def fake_transfers(*links: FakeLink) -> Transfers:
    members = [SimpleNamespace(address=f"r{i}", link=ln, client=ln) for i, ln in enumerate(links)]

    async def admit(reading: bool) -> None:
        return None

    vol = SimpleNamespace(name="v", epoch=1, rw_members=lambda: members, _rr=itertools.count(),
                          _admit=admit, io_stats={"checksum_errors": 0})  # fmt: skip
    return Transfers(vol)  # type: ignore[arg-type]


DATA = bytes(range(256)) * (64 * K // 256)


async def test_read_view_reads_bad_blocks_from_another_member():
    a = FakeLink(DATA, bad={3 * K, 9 * K})
    b = FakeLink(DATA, bad={9 * K + 0})
    c = FakeLink(DATA)
    tr = fake_transfers(a, b, c)
    tr.vol._rr = itertools.repeat(0)  # a first
    got = await tr.read_view("s", "id", 0, 16 * K)
    assert got == DATA[: 16 * K]
    assert (3 * K, K) in b.calls and (9 * K, K) in c.calls


async def test_read_view_names_blocks_bad_everywhere():
    tr = fake_transfers(FakeLink(DATA, bad={5 * K}), FakeLink(DATA, bad={5 * K}))
    with pytest.raises(SnapshotBadBlocks) as e:
        await tr.read_view("s", "id", 0, 8 * K)
    assert e.value.runs == [(5 * K, K)]
    assert f"byte {5 * K}" in str(e.value)


async def test_read_view_fails_when_no_member_answers():
    tr = fake_transfers(FakeLink(DATA, error=True), FakeLink(DATA, error=True))
    with pytest.raises(TransferFailed, match="UNKNOWN_OP"):
        await tr.read_view("s", "id", 0, 8 * K)


async def test_run_all_cancels_the_others_when_one_fails():
    """A failed revert worker stops its siblings: nothing keeps writing after the revert
    reported its end and released the gate."""
    from jiva_engine.controller.transfer import run_all

    started = asyncio.Event()
    cancelled = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def fails() -> None:
        await started.wait()
        raise TransferFailed("boom")

    with pytest.raises(TransferFailed, match="boom"):
        await run_all([slow(), fails()])
    assert cancelled == [1]


def test_status_table_shows_the_transfer():
    from jiva_engine.api.cli import render

    t = Transfer("revert", "s1", 4 << 20)
    t.add(1 << 20)
    text = render({"name": "v", "transfer": t.view()})
    assert "revert to s1: 25% (1.0 MiB/4.0 MiB)" in text
    t.finish("done")
    assert "revert to s1: done (1.0 MiB," in render({"name": "v", "transfer": t.view()})
