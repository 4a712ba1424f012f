"""Rotating the shared secret and the API token without downtime, on real processes
(docs/ENGINE.md "Authentication and secret rotation", docs/ANSIBLE.md "Rotating the replica
secret or the API token").

A 2-replica + witness volume is rolled one process at a time from the old secret to the new one
in the two passes the playbooks use: first every process gets [new, previous=old], then every
process gets [new] alone. The first pass restarts a replica, then the controller, then the other
voters, so each mixed pair is met: an old controller with a new replica (the replica accepts the
previous secret) and a new controller with old voters (it presents the previous secret after a
refusal). An initiator writes all along; every acknowledged write is read back at the end, and
no write fails.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from jiva_engine.initiator import Initiator
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError
from tests.integration.test_engine import block
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

VOL = "rotvol"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
OLD, NEW, THIRD = "old-shared-secret-1", "new-shared-secret-2", "not-the-secret-3"
T_OLD, T_NEW, T_THIRD = "old-api-token-1", "new-api-token-2", "not-the-token-3"


def secret_file(root: Path, value: str) -> str:
    p = root / f"{value}.txt"
    p.write_text(value + "\n")
    p.chmod(0o600)
    return str(p)


class Proc:
    """One jiva process (replica, witness or controller) restarted in place with new options."""

    def __init__(self, procs, kind: str, name: str, base: list[str]) -> None:
        self.procs, self.kind, self.name, self.base = procs, kind, name, base
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, *extra: str) -> None:
        self.starts += 1
        self.proc = self.procs.jiva(
            self.kind, *self.base, *extra, name=f"{self.name}-{self.starts}"
        )

    def restart(self, *extra: str) -> None:
        assert self.proc is not None
        self.procs.kill(self.proc, signal.SIGTERM)
        self.start(*extra)

    def log(self) -> str:
        return self.procs.log(f"{self.name}-{self.starts}")


class Workload:
    """Writes 4 KiB blocks one after another through the portal; records what was acknowledged."""

    def __init__(self, init: Initiator) -> None:
        self.init = init
        self.acked: dict[int, bytes] = {}  # the last data acknowledged at each LBA
        self.count = 0  # writes acknowledged
        self.errors: list[BaseException] = []
        self.seq = 0
        self.task: asyncio.Task | None = None
        self.stopping = False

    async def _run(self) -> None:
        while not self.stopping:
            self.seq += 1
            data = block(self.seq)
            lba = (self.seq % 2048) * 8  # the first 8 MiB, 4 KiB apart
            try:
                await self.init.write(lba, data)
            except Exception as e:  # counted: the test asserts there are none
                self.errors.append(e)
                return
            self.acked[lba] = data
            self.count += 1

    async def start(self) -> None:
        self.stopping = False
        self.task = asyncio.create_task(self._run())
        n = self.count
        await eventually(lambda: self.count > n or self.errors, 30, "a write acknowledged")

    async def stop(self) -> None:
        """Let the write in flight finish (not cancelled: its outcome would be unknown)."""
        assert self.task is not None
        self.stopping = True
        await self.task


async def status(api: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"http://{api}/v1/volume") as r:
        return await r.json()


async def healthy(api: str, what: str) -> dict:
    """Wait until the volume serves with every replica RW and its witness answering."""

    async def check() -> dict | None:
        try:
            st = await status(api)
        except aiohttp.ClientError:
            return None  # the controller is (re)starting
        ok = (
            st["state"] == "serving"
            and len(st["replicas"]) == 2
            and all(r["mode"] == "RW" for r in st["replicas"])
            and [w["state"] for w in st["witnesses"]] == ["ok"]
        )
        return st if ok else None

    return await eventually(check, 60, f"the volume healthy {what}")


async def grow_same_size(api: str, token: str) -> int:
    """A mutating call that changes nothing (grow to the current size): its HTTP status."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://{api}/v1/volume/grow",
            json={"size": "16M"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status


async def refuses(port: int, secret: str) -> None:
    """The voter on `port` refuses a client presenting `secret` with AUTH_FAILED."""
    c = ReplicaClient("127.0.0.1", port, VOL, secret=secret, timeout=3)
    with pytest.raises(ReplicaError) as e:
        await c.connect()
    await c.close()
    assert e.value.status == wire.AUTH_FAILED


async def accepts(port: int, secret: str | tuple[str, ...]) -> None:
    c = ReplicaClient("127.0.0.1", port, VOL, secret=secret, timeout=3)
    await c.connect()
    await c.close()


async def test_rolling_secret_and_token_rotation_keeps_the_volume_serving(procs, tmp_path):
    old, new = secret_file(tmp_path, OLD), secret_file(tmp_path, NEW)
    t_old, t_new = secret_file(tmp_path, T_OLD), secret_file(tmp_path, T_NEW)
    ports = {n: free_port() for n in ("a", "b", "w", "api", "portal")}
    api = f"127.0.0.1:{ports['api']}"
    voters = {
        n: Proc(procs, "replica", n, ["--volume", VOL, "--listen", f"127.0.0.1:{ports[n]}",
                                      "--dir", str(tmp_path / n), "--size", "16M"])
        for n in ("a", "b")
    }  # fmt: skip
    voters["w"] = Proc(procs, "witness", "w", ["--volume", VOL, "--listen",
                                               f"127.0.0.1:{ports['w']}", "--dir",
                                               str(tmp_path / "w")])  # fmt: skip
    ctl = Proc(procs, "controller", "ctl", ["--volume", VOL, "--api", api, "--portal",
                                            f"127.0.0.1:{ports['portal']}", "--replica",
                                            f"127.0.0.1:{ports['a']}", "--replica",
                                            f"127.0.0.1:{ports['b']}", "--witness",
                                            f"127.0.0.1:{ports['w']}", "--size", "16M",
                                            "--replica-timeout", "1"])  # fmt: skip
    a, b, w = voters["a"], voters["b"], voters["w"]

    # the old configuration everywhere
    for v in voters.values():
        v.start("--secret-file", old)
        wait_port("127.0.0.1", ports[v.name])
    ctl.start("--secret-file", old, "--token-file", t_old)
    await healthy(api, "before the rotation")
    init = Initiator("127.0.0.1", ports["portal"], IQN)
    await init.reconnect(30)
    load = Workload(init)
    await load.start()

    async def roll_voter(v: Proc, *opts: str) -> None:
        v.restart(*opts)
        # the controller is back on the new process (so it saw the old one go), then all healthy
        await eventually(lambda: "authenticated" in v.log(), 30, f"the controller back on {v.name}")
        await healthy(api, f"after restarting {v.name} with {opts}")

    async def roll_controller(*opts: str) -> None:
        await load.stop()
        await load.init.close()
        ctl.restart(*opts)
        await healthy(api, f"after restarting the controller with {opts}")
        load.init = Initiator("127.0.0.1", ports["portal"], IQN)  # a new session, as after a reboot
        await load.init.reconnect(30)
        await load.start()

    both = ("--secret-file", new, "--previous-secret-file", old)
    # pass 1: [new, previous=old]. An old controller with a new replica ...
    await roll_voter(a, *both)
    # ... a new controller with old voters (it falls back to the previous secret for them)
    await roll_controller(*both, "--token-file", t_new, "--previous-token-file", t_old)
    assert "refused secret 1 of 2" in ctl.log()
    # both tokens work during the overlap, a third does not
    assert await grow_same_size(api, T_NEW) == 200
    assert await grow_same_size(api, T_OLD) == 200
    assert await grow_same_size(api, T_THIRD) == 401
    await roll_voter(b, *both)
    await roll_voter(w, *both)
    # every voter now takes either secret, and still refuses any other
    for n in ("a", "b", "w"):
        await accepts(ports[n], OLD)
        await accepts(ports[n], NEW)
        await refuses(ports[n], THIRD)

    # pass 2: [new] alone, controller first this time
    await roll_controller("--secret-file", new, "--token-file", t_new)
    assert await grow_same_size(api, T_NEW) == 200
    assert await grow_same_size(api, T_OLD) == 401  # the overlap is over for the API
    for v in (a, b, w):
        await roll_voter(v, "--secret-file", new)
    for n in ("a", "b", "w"):
        await refuses(ports[n], OLD)
        await accepts(ports[n], (OLD, NEW))  # refused with OLD, a client gets in with NEW
    # a controller still on the old secret alone never gets in
    api2 = f"127.0.0.1:{free_port()}"
    procs.jiva("controller", "--volume", VOL, "--api", api2, "--replica",
               f"127.0.0.1:{ports['a']}", "--secret-file", old, name="stale")  # fmt: skip

    async def refused() -> dict | None:
        try:
            st = await status(api2)
        except aiohttp.ClientError:
            return None
        return st if "auth" in (st["replicas"][0]["last_error"] or "").lower() else None

    st = await eventually(refused, 20, "the stale controller refused")
    assert st["state"] == "waiting", st

    await load.stop()
    assert load.errors == [], load.errors
    assert load.count > 100, load.count
    for lba, data in load.acked.items():
        assert await load.init.read(lba, 8) == data, f"acknowledged write at LBA {lba} lost"
    await load.init.logout()


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("replica", ["--previous-secret-file", "{old}"], "--previous-secret-file needs --secret-file"),
        ("replica", ["--secret-file", "{new}", "--previous-secret-file", "{empty}"],
         "previous secret file {empty} is empty"),
        ("witness", ["--secret-file", "{new}", "--previous-secret-file", "{missing}"],
         "cannot read previous secret file {missing}"),
        ("controller", ["--replica", "127.0.0.1:9", "--previous-token-file", "{old}"],
         "--previous-token-file needs --token-file"),
        ("controller", ["--replica", "127.0.0.1:9", "--secret-file", "{new}",
                        "--previous-secret-file", "{empty}"], "previous secret file {empty} is empty"),
    ],
)  # fmt: skip
def test_previous_secret_files_bad_input(tmp_path, kind, args, message):
    """A previous secret without a current one, or an empty/unreadable file: exit 2, named."""
    paths = {"old": secret_file(tmp_path, OLD), "new": secret_file(tmp_path, NEW)}
    paths["empty"] = str(tmp_path / "empty")
    Path(paths["empty"]).write_text("\n")
    paths["missing"] = str(tmp_path / "missing")
    where = {
        "replica": ["--listen", "127.0.0.1:9", "--dir", str(tmp_path / "d"), "--size", "16M"],
        "witness": ["--listen", "127.0.0.1:9", "--dir", str(tmp_path / "d")],
        "controller": ["--api", "127.0.0.1:9"],
    }[kind]
    argv = [*JIVA, kind, "--volume", VOL, *where, *(a.format(**paths) for a in args)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert message.format(**paths) in r.stderr, r.stderr
