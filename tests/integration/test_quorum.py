"""Majority quorum, witnesses and replica identity on real `jiva replica` / `jiva witness`
processes over real TCP (docs/ENGINE.md "Quorum"; the deterministic proof of the same rules is
tests/unit/test_quorum_model.py)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import pytest

from jiva_engine.controller.backend import tcp_connector
from jiva_engine.controller.volume import ERR, FENCED, NO_QUORUM, RW, SERVING, WAITING, Volume
from jiva_engine.protocol.client import ReplicaClient, ReplicaError
from jiva_engine.volume import VolumeFenced
from tests.integration.test_engine import (
    VOL,
    MiB,
    Rep,
    Writer,
    acked_writes,
    all_current,
    block,
    crashing_controller,
    identical,
    replicas,
)
from tests.procs import free_port, wait_port
from tests.waiting import eventually, holds


class Wit:
    """One `jiva witness` process the test can kill and restart on the same folder and port."""

    def __init__(self, procs, root: Path, name: str = "w") -> None:
        self.procs = procs
        self.name = name
        self.dir = root / name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self) -> Wit:
        self.starts += 1
        self.proc = self.procs.jiva(
            "witness", "--volume", VOL, "--listen", self.addr, "--dir", str(self.dir),
            name=f"{self.name}-{self.starts}",
        )  # fmt: skip
        wait_port("127.0.0.1", self.port)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.procs.kill(self.proc, sig)


async def serving(reps, witnesses=(), timeout: float = 1.5, **kw) -> Volume:
    vol = Volume(
        VOL, [r.addr for r in reps], witnesses=[w.addr for w in witnesses],
        replica_timeout=timeout, retry_interval=0.2, **kw,
    )  # fmt: skip
    await vol.start()
    await vol.wait_serving(20)
    return vol


async def verify_acked(vol: Volume, acked: list[tuple[int, int]]) -> None:
    for n, off in acked:
        assert await vol.read(off, 4096) == block(n), f"acknowledged write {n} lost"


# ---------------------------------------------------------------------------------------------


async def test_losing_two_of_three_holds_io_then_resumes_when_one_returns(procs, tmp_path):
    """Rule Q3: below a majority no I/O is acknowledged (held, not failed, and the status says
    `no quorum` naming who is missing); it resumes by itself when a majority is back."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    vol = await serving(reps, hold=30)
    try:
        await vol.write(0, block(1))
        b.kill()
        await vol.write(4096, block(2))  # B ejected under a new view: A + C are a majority
        assert vol.membership() == [a.addr, c.addr] or sorted(vol.membership()) == sorted(
            [a.addr, c.addr]
        )
        c.kill()
        held = asyncio.create_task(vol.write(8192, block(3)))
        await eventually(lambda: vol.state == NO_QUORUM, 10, "no quorum")
        st = vol.status()
        assert st["state"] == "no quorum" and "no quorum" in st["reason"], st
        assert c.addr in st["reason"] and b.addr in st["reason"], st["reason"]
        assert sorted(st["quorum"]["missing"]) == sorted([b.addr, c.addr])
        reader = asyncio.create_task(vol.read(0, 4096))  # reads are held too
        await holds(lambda: not held.done() and not reader.done(), 1.0, "I/O held")
        c.start()  # a majority again (A + C): the held write completes, no error
        await asyncio.wait_for(held, 20)
        assert await asyncio.wait_for(reader, 20) == block(1)
        assert vol.state == SERVING
        assert vol.stats["quorum_losses"] >= 1
        b.start()
        await all_current(vol, 3)
        for i in (1, 2, 3):
            assert await vol.read((i - 1) * 4096, 4096) == block(i)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


class Blackhole:
    """A TCP relay to a replica that can start swallowing everything (both ways) while keeping
    the connections open: what a controller sees of a replica whose link went down."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropping = False
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> Blackhole:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        rr, rw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.dropping:
                    dst.write(data)
                    await dst.drain()

        for t in (asyncio.create_task(pipe(cr, rw)), asyncio.create_task(pipe(rr, cw))):
            self.tasks.add(t)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server is not None:
            self.server.close()


async def test_a_cut_off_writer_keeps_its_regions_dirty_for_the_next_controller(procs, tmp_path):
    """Writes landed on A and B but never reached C (its link is down: the frames are lost);
    then the controller is cut off from everyone (stopped: its connections stay open and
    silent) before it could eject C. B must not forget those regions by its lazy clearing: the
    next controller, reaching only B and C, resynchronises them, so B and C hold identical data
    before it serves (rule 5)."""
    opts = ("--sync-interval", "1.0", "--writer-silence", "0.7")
    a, b, c = reps = [Rep(procs, tmp_path, f"r{i}", args=opts).start() for i in range(3)]
    link = await Blackhole(c.port).start()
    via = Rep(procs, tmp_path, "via")  # C as the old controller reaches it: through the link
    via.addr = f"127.0.0.1:{link.port}"
    ctl, log = crashing_controller(procs, tmp_path, [a, b, via], timeout=1.5)
    try:
        await eventually(lambda: log.exists() and log.stat().st_size > 5_000, 30, "writes")
        link.dropping = True  # C's link goes down: writes in flight land on A and B only
        await asyncio.sleep(0.2)
        procs.kill(ctl, signal.SIGSTOP)  # cut off: no ejection of C, no BYE, nothing closes
        await eventually(lambda: "silent for" in b.log(), 10, "B pins the writer's regions")
        await asyncio.sleep(2.5)  # two more lazy-clearing passes on B: the pinned regions stay
        vol = Volume(VOL, [r.addr for r in reps], replica_timeout=1.5, retry_interval=0.2,
                     connector=_refusing(a.port))  # fmt: skip
        await vol.start()
        try:
            await vol.wait_serving(20)
            assert sorted(vol.membership()) == sorted([b.addr, c.addr])
            assert "resynchronised" in vol.reason, vol.reason
            await verify_acked(vol, acked_writes(log))
            assert b.digest() == c.digest(), "B and C disagree on what the cut-off writer left"
        finally:
            await vol.close()
    finally:
        procs.kill(ctl)
        await link.close()


async def test_io_held_without_quorum_fails_with_not_ready_after_the_hold(procs, tmp_path):
    from jiva_engine.volume import VolumeNotReady

    a, b, c = reps = replicas(procs, tmp_path, 3)
    vol = await serving(reps, hold=2)
    try:
        b.kill()
        c.kill()
        t0 = time.monotonic()
        with pytest.raises(VolumeNotReady, match="no quorum"):
            await vol.write(0, block(1))
        assert 2 <= time.monotonic() - t0 < 12  # detection (replica timeout) + the 2 s hold
        assert vol.state == NO_QUORUM
    finally:
        await vol.close()


async def test_controller_and_a_replica_lost_together_the_other_two_serve(procs, tmp_path):
    """Scenario 2 at engine level: the controller dies with the replica beside it; a new
    controller with the same replica list serves from the other two at once (they are a
    majority and current members), every acknowledged write is there, and the lost replica
    catches up incrementally when it returns."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    ctl, log = crashing_controller(procs, tmp_path, reps, timeout=1.5)
    await eventually(
        lambda: log.exists() and log.stat().st_size > 20_000, 30, "acknowledged writes"
    )
    procs.kill(ctl)
    a.kill()  # its host is gone: controller and replica together
    acked = acked_writes(log)
    t0 = time.monotonic()
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=1.5, retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(20)
        took = time.monotonic() - t0
        assert took < 8, f"took {took:.1f}s to serve"  # no waiting for the dead host
        assert sorted(vol.membership()) == sorted([b.addr, c.addr])
        await verify_acked(vol, acked)
        await vol.write(0, block(999))  # writes go on with two members
        a.start()
        await all_current(vol, 3)
        last = vol.members[a.addr].last_rebuild
        assert last["kind"] == "incremental", last
        await verify_acked(vol, [(n, off) for n, off in acked if off != 0])
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_two_replicas_and_a_witness(procs, tmp_path):
    """A 2-replica volume with a witness keeps taking writes when one replica dies, survives
    losing the controller with the replica beside it, and never serves from the stale one."""
    a, b = reps = replicas(procs, tmp_path, 2)
    w = Wit(procs, tmp_path).start()
    vol = await serving(reps, [w])
    try:
        st = vol.status()
        assert st["quorum"] == {"policy": "majority", "voters": 3, "needed": 2, "missing": []}
        assert st["witnesses"][0]["state"] == "ok" and not st["degraded"]
        writer = Writer(vol, 0, 4 * MiB, workers=4).start()
        await asyncio.sleep(0.3)
        b.kill()
        await eventually(lambda: vol.members[b.addr].mode == ERR, 10, "ejection")
        await asyncio.sleep(0.3)
        await writer.stop()
        assert not writer.errors, "one replica + the witness are a majority: no I/O error"
        assert a.meta()["membership"] == [a.id]
        await vol.flush()
    finally:
        await vol.close()  # the controller goes ...
    a.kill()  # ... with A, the only current copy
    b.start()
    vol = Volume(VOL, [a.addr, b.addr], witnesses=[w.addr], replica_timeout=1.5,
                 retry_interval=0.2)  # fmt: skip
    await vol.start()
    try:  # B + the witness are a majority, but B is behind: it must not serve
        await holds(lambda: vol.state == WAITING, 1.5, "waiting")
        assert "no current copy" in vol.reason and a.addr in vol.reason, vol.reason
        a.start()
        await vol.wait_serving(20)
        await writer.verify(vol)
        await all_current(vol, 2)
        await vol.flush()
    finally:
        await vol.close()
    # now lose the controller and A together while both are current: B + witness serve
    a.kill()
    vol = await serving(reps, [w])
    try:
        assert vol.membership() == [b.addr]
        await writer.verify(vol)
        a.start()
        await all_current(vol, 2)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_voters_follow_the_configuration_one_step_at_a_time(procs, tmp_path):
    """A witness taken out of the configuration leaves the voters (it is no current copy); a new
    one given later joins them: each is one view change committed by both majorities (Q7)."""
    a, b = reps = replicas(procs, tmp_path, 2)
    w = Wit(procs, tmp_path).start()
    vol = await serving(reps, [w])
    try:
        await vol.write(0, block(1))
    finally:
        await vol.close()
    w.kill()  # the inventory dropped it: its service is gone, the controller restarts without
    vol = await serving(reps)
    try:
        await eventually(lambda: vol.status()["quorum"]["voters"] == 2, 10, "the witness leaves")
        st = vol.status()
        assert st["witnesses"] == [] and not st["degraded"], st
        assert [r["address"] for r in st["replicas"]] == [a.addr, b.addr]
        assert sorted(a.meta()["voters"]) == sorted([a.id, b.id])
    finally:
        await vol.close()
    w2 = Wit(procs, tmp_path, "w2").start()
    vol = await serving(reps, [w2])
    try:
        await eventually(lambda: vol.status()["quorum"]["voters"] == 3, 10, "the witness joins")
        st = vol.status()
        assert st["witnesses"][0]["state"] == "ok" and st["witnesses"][0]["last_error"] is None
        assert st["quorum"]["missing"] == [] and not st["degraded"]
        assert await vol.read(0, 4096) == block(1)
        b.kill()  # now one replica + the new witness are a majority: writes go on
        await vol.write(4096, block(2))
        assert vol.membership() == [a.addr]
    finally:
        await vol.close()


async def test_witness_down_is_degraded_but_serving(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2)
    w = Wit(procs, tmp_path).start()
    vol = await serving(reps, [w])
    try:
        w.kill()
        await eventually(lambda: vol.status()["witnesses"][0]["state"] == "unreachable", 10, "w")
        st = vol.status()
        assert st["state"] == "serving" and st["degraded"] and st["quorum"]["missing"] == [w.addr]
        await vol.write(0, block(5))  # both replicas answer: still a majority
        w.start()
        await eventually(lambda: not vol.degraded(), 10, "witness back")
    finally:
        await vol.close()


async def test_replica_known_by_id_across_a_new_port_and_a_copied_folder_is_refused(
    procs, tmp_path
):
    """Rule 6: memberships name replica ids. A replica that returns on another port is the
    same member; a folder copied to a second replica (same id) is refused."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    vol = await serving(reps)
    try:
        await vol.write(0, block(1))
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    old_addr = c.addr
    c.port = free_port()  # same folder, new address (re-IP, reordered inventory)
    c.addr = f"127.0.0.1:{c.port}"
    for r in reps:
        r.start()
    vol = await serving(reps)
    try:
        assert sorted(vol.membership()) == sorted(r.addr for r in reps)  # c is still a member
        assert old_addr not in vol.members
        assert vol.members[c.addr].id == c.id
        assert await vol.read(0, 4096) == block(1)
    finally:
        await vol.close()
    c.stop()
    shutil.copytree(c.dir, tmp_path / "copy")
    c.start()
    twin = Rep(procs, tmp_path, "copy").start()
    vol = Volume(VOL, [*(r.addr for r in reps), twin.addr], retry_interval=0.2)
    await vol.start()
    try:  # nothing tells the original from the copy at start-up: both are refused
        await vol.wait_serving(20)
        assert sorted(vol.membership()) == sorted([a.addr, b.addr])
        for r in (c, twin):
            assert "voter id" in (vol.members[r.addr].last_error or ""), vol.status()["replicas"]
            assert vol.members[r.addr].mode == ERR
    finally:
        await vol.close()
    vol = await serving(reps)  # the original alone: a member again
    try:
        twin_peer = await vol.add_replica(twin.addr)  # a copy showing up later is refused
        await eventually(lambda: "same voter id" in (twin_peer.last_error or ""), 10, "refused")
        await holds(lambda: vol.members[c.addr].mode == RW and twin_peer.mode == ERR, 1, "kept")
    finally:
        await vol.close()


def _refusing(*ports: int):
    """A connector that cannot reach the given ports (the test's firewall)."""

    def connect(host, port, volume, secret, timeout):
        if port in ports:
            return ReplicaClient(host, free_port(), volume, secret, timeout)  # nothing there
        return tcp_connector(host, port, volume, secret, timeout)

    return connect


async def test_partitioned_controller_holds_and_the_new_one_wins(procs, tmp_path):
    """The controller keeps its local replica A but loses B and C (SIGSTOP: they hang, as a
    partitioned host does): it stops acknowledging. A new controller that reaches B and C (not
    A) claims the volume and serves; when the partition heals the old one is fenced."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    old = await serving(reps, hold=60)
    try:
        await old.write(0, block(1))
        for r in (b, c):
            r.kill(signal.SIGSTOP)
        held = asyncio.create_task(old.write(4096, block(2)))
        await eventually(lambda: old.state == NO_QUORUM, 15, "no quorum on the old controller")
        for r in (b, c):
            r.kill(signal.SIGCONT)
        new = Volume(VOL, [r.addr for r in reps], replica_timeout=1.5, retry_interval=0.2,
                     connector=_refusing(a.port))  # fmt: skip
        await new.start()
        try:
            await new.wait_serving(20)
            assert sorted(new.membership()) == sorted([b.addr, c.addr])
            assert await new.read(0, 4096) == block(1)
            await new.write(8192, block(3))
            # the old controller reaches B and C again: they promised a newer term
            with pytest.raises(VolumeFenced):
                await asyncio.wait_for(held, 20)
            assert old.state == FENCED
            new_reader = await new.read(8192, 4096)
            assert new_reader == block(3)
        finally:
            await new.close()
    finally:
        await old.close()


async def test_new_controller_waits_out_the_old_read_lease(procs, tmp_path):
    """Rule Q8: a controller that claims the volume right after another one talked to the
    voters waits until the old one's read lease must have run out before it serves."""
    reps = replicas(procs, tmp_path, 3)
    old = await serving(reps)
    try:
        await old.read(0, 4096)
        t0 = time.monotonic()
        new = await serving(reps)
        took = time.monotonic() - t0
        try:
            assert took >= 1.0, f"served after {took:.2f}s, inside the old controller's lease"
            assert new.stats["lease_wait_seconds"] > 0  # the old one (this process) is alive
            with pytest.raises(VolumeFenced):
                await old.write(0, block(1))
        finally:
            await new.close()
    finally:
        await old.close()


async def test_witness_refuses_data_and_a_replica_folder(procs, tmp_path):
    w = Wit(procs, tmp_path).start()
    c = ReplicaClient("127.0.0.1", w.port, VOL, timeout=3)
    await c.connect()
    try:
        assert c.kind == "witness"
        info = await c.info()
        assert info["kind"] == "witness" and info["epoch"] == 0 and len(info["id"]) == 36
        with pytest.raises(ReplicaError, match="stores no data"):
            await c.write(0, bytes(512), 0)
        with pytest.raises(ReplicaError, match="stores no data"):
            await c.read(0, 512, 0)
        got = await c.claim(5 << 32)
        assert got["epoch"] == 5 << 32
        with pytest.raises(ReplicaError, match="already promised"):
            await c.claim(5 << 32)
        await c.set_meta(epoch=(5 << 32) + 1, membership=["x"], voters={"x": "h:1"})
        with pytest.raises(ReplicaError, match="older"):
            await c.set_meta(epoch=5 << 32, membership=[])
    finally:
        await c.close()
    w.kill(signal.SIGTERM)
    w.start()  # the record survives a restart
    c = ReplicaClient("127.0.0.1", w.port, VOL, timeout=3)
    await c.connect()
    try:
        info = await c.info()
        assert info["epoch"] == (5 << 32) + 1 and info["membership"] == ["x"]
    finally:
        await c.close()
    # a witness refuses a replica's folder, and a replica refuses a witness's folder
    rep = Rep(procs, tmp_path, "r0").start()
    rep.stop()
    bad = procs.jiva("witness", "--volume", VOL, "--listen", f"127.0.0.1:{free_port()}",
                     "--dir", str(rep.dir), name="bad-witness")  # fmt: skip
    assert bad.wait(timeout=20) == 2
    assert "replica's data" in procs.log("bad-witness")
    bad = procs.jiva("replica", "--volume", VOL, "--listen", f"127.0.0.1:{free_port()}",
                     "--dir", str(w.dir), "--size", "64M", name="bad-replica")  # fmt: skip
    assert bad.wait(timeout=20) == 2
    assert "witness's metadata" in procs.log("bad-replica")


async def test_witness_given_as_a_replica_is_refused(procs, tmp_path):
    """A witness address given with --replica (or the reverse) is named, not used."""
    reps = replicas(procs, tmp_path, 2)
    w = Wit(procs, tmp_path).start()
    vol = Volume(VOL, [reps[0].addr, reps[1].addr, w.addr], retry_interval=0.2)
    await vol.start()
    try:
        await eventually(lambda: "is a witness" in (vol.members[w.addr].last_error or ""), 10, "x")
    finally:
        await vol.close()


async def test_claim_never_serves_an_uncommitted_minority_view(procs, tmp_path):
    """A controller that lost its quorum proposed a view only its local replica accepted; a
    new controller reaching the other two picks the newest view by (term, version) and serves
    with data that holds every acknowledged write."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    old = await serving(reps, hold=60)
    acked = []
    try:
        for i in range(20):
            await old.write(i * 4096, block(100 + i))
            acked.append((100 + i, i * 4096))
        for r in (b, c):
            r.kill(signal.SIGSTOP)
        asyncio.create_task(old.write(0, block(7)))
        await eventually(lambda: old.state == NO_QUORUM, 15, "no quorum")
    finally:
        await old.close()
    for r in (b, c):
        r.kill(signal.SIGCONT)
    new = Volume(VOL, [r.addr for r in reps], replica_timeout=1.5, retry_interval=0.2,
                 connector=_refusing(a.port))  # fmt: skip
    await new.start()
    try:
        await new.wait_serving(20)
        for n, off in acked[1:]:
            assert await new.read(off, 4096) == block(n)
        assert await new.read(0, 4096) in (block(100), block(7))
    finally:
        await new.close()


async def test_a_start_does_not_wait_for_a_hung_voter_once_a_majority_answered(procs, tmp_path):
    """A voter whose host hangs (SIGSTOP: the kernel accepts the connection, nothing answers)
    costs a connect timeout; a starting controller decides on the majority that answered (plus
    a short grace) instead of waiting it out, and the hung one catches up when it is back."""
    a, b, c = reps = replicas(procs, tmp_path, 3)
    vol = await serving(reps)
    try:
        await vol.write(0, block(1))
    finally:
        await vol.close()
    c.kill(signal.SIGSTOP)
    vol = Volume(VOL, [r.addr for r in reps], replica_timeout=20, retry_interval=0.2)
    await vol.start()
    try:
        await vol.wait_serving(10)  # well before the 20 s connect timeout of the hung voter
        assert sorted(vol.membership()) == sorted([a.addr, b.addr])
        await vol.write(4096, block(2))
        c.kill(signal.SIGCONT)
        await all_current(vol, 3, timeout=60)
        for i in (1, 2):
            assert await vol.read((i - 1) * 4096, 4096) == block(i)
        await vol.flush()
    finally:
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)


async def test_every_replica_restarted_at_once_holds_io_then_resumes(procs, tmp_path):
    """All replicas of a volume restarted together (a config change applied everywhere at
    once, or the replica hosts rebooting while the controller's stays up): writes are held,
    never failed, while the members are away, and resume once they are back; nothing
    acknowledged is lost. (Writes used to fail with "no current replica" when every member's
    connection was gone before the ejection was decided.)"""
    reps = replicas(procs, tmp_path, 3)
    vol = await serving(reps, hold=30)
    acked: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            off = (n % 512) * 4096
            try:
                await vol.write(off, block(n))
            except Exception as e:  # every failure is what the test looks for
                errors.append(e)
                return
            acked.append((n, off))

    try:
        task = asyncio.create_task(writer())
        await eventually(lambda: len(acked) > 50, 20, "writes flowing")
        for r in reps:
            r.kill()
        for r in reps:
            r.start()
        count = len(acked)
        await eventually(lambda: len(acked) > count + 50 or errors, 40, "writes after the restart")
        stop.set()
        await asyncio.wait_for(task, 30)
        assert errors == [], errors
        assert vol.state == SERVING
        await all_current(vol, 3)
        latest = dict((off, n) for n, off in acked)
        await verify_acked(vol, [(n, off) for off, n in latest.items()])
        await vol.flush()
    finally:
        stop.set()
        await vol.close()
    for r in reps:
        r.stop()
    identical(reps)
