"""Access control against real processes: CHAP (one-way, mutual), initiator allow-list, the
replica shared secret, the API token; and no secret ever shows up in logs or status JSON."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from jiva_engine.initiator import Initiator, LoginError
from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError
from tests.procs import JIVA, free_port, wait_port
from tests.waiting import eventually

VOL = "acvol"
IQN = f"iqn.2026-11.org.jiva-py:{VOL}"
GOOD_INIT = "iqn.2026-11.org.example:allowed-host"
BAD_INIT = "iqn.2026-11.org.example:intruder"
SECRETS = {
    "replica": "replica-shared-SECRET-4711",
    "token": "api-token-SECRET-0815",
    "chap": "chap-SECRET-password-1",
    "mutual": "mutual-SECRET-password-2",
}


def secret_file(tmp_path, name: str) -> str:
    p = tmp_path / f"{name}.secret"
    p.write_text(SECRETS[name] + "\n")
    os.chmod(p, 0o600)
    return str(p)


@pytest.fixture
def secured(procs, tmp_path):
    """One replica and one controller with every access control on, logging at DEBUG."""
    rport, api, portal = free_port(), free_port(), free_port()
    procs.jiva("replica", "--volume", VOL, "--listen", f"127.0.0.1:{rport}", "--dir",
               str(tmp_path / "r0"), "--size", "16M", "--secret-file",
               secret_file(tmp_path, "replica"), "--log-level", "debug", name="replica")  # fmt: skip
    wait_port("127.0.0.1", rport)
    procs.jiva("controller", "--volume", VOL, "--api", f"127.0.0.1:{api}", "--portal",
               f"127.0.0.1:{portal}", "--replica", f"127.0.0.1:{rport}",
               "--secret-file", secret_file(tmp_path, "replica"),
               "--token-file", secret_file(tmp_path, "token"),
               "--chap-user", "alice", "--chap-secret-file", secret_file(tmp_path, "chap"),
               "--mutual-user", "jiva-target", "--mutual-secret-file",
               secret_file(tmp_path, "mutual"), "--allow-initiator", GOOD_INIT,
               "--log-level", "DEBUG", name="controller")  # fmt: skip
    wait_port("127.0.0.1", portal)
    wait_port("127.0.0.1", api)
    return {"replica": rport, "api": f"http://127.0.0.1:{api}", "portal": portal}


def inq(portal: int, user: str | None, password: str | None, initiator: str,
        mutual: str | None = SECRETS["mutual"]) -> subprocess.CompletedProcess:  # fmt: skip
    """iscsi-inq (libiscsi) with CHAP, and mutual CHAP via target_user/target_password."""
    cred = f"{user}%{password}@" if user else ""
    url = f"iscsi://{cred}127.0.0.1:{portal}/{IQN}/0"
    if mutual:
        url += f"?target_user=jiva-target&target_password={mutual}"
    return subprocess.run(["iscsi-inq", "-i", initiator, url], capture_output=True, text=True,
                          timeout=30)  # fmt: skip


async def wait_serving(api: str) -> dict:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            async with s.get(api + "/v1/volume") as r:
                st = await r.json()
            if st["state"] == "serving":
                return st
            await asyncio.sleep(0.1)
    raise AssertionError(f"controller never served: {st}")


async def test_chap_allow_list_replica_secret_token(secured, procs, tmp_path):
    await wait_serving(secured["api"])
    portal = secured["portal"]

    # iSCSI CHAP with libiscsi's iscsi-inq: right password logs in, wrong one does not
    ok = inq(portal, "alice", SECRETS["chap"], GOOD_INIT)
    assert ok.returncode == 0 and "JIVA" in ok.stdout.upper(), ok.stdout + ok.stderr
    bad = inq(portal, "alice", "wrong-password-123", GOOD_INIT)
    assert bad.returncode != 0 and "JIVA" not in bad.stdout.upper()
    assert inq(portal, "mallory", SECRETS["chap"], GOOD_INIT).returncode != 0
    assert inq(portal, None, None, GOOD_INIT).returncode != 0  # no CHAP at all
    # mutual CHAP: an initiator that does not ask the target to prove itself is refused, and
    # libiscsi refuses a target whose answer does not match the mutual secret it expects
    assert inq(portal, "alice", SECRETS["chap"], GOOD_INIT, mutual=None).returncode != 0
    assert (
        inq(portal, "alice", SECRETS["chap"], GOOD_INIT, mutual="not-the-mutual-1").returncode != 0
    )
    # the allow-list: the right password from an initiator not on the list is refused
    assert inq(portal, "alice", SECRETS["chap"], BAD_INIT).returncode != 0

    # qemu-io (libiscsi through qemu's block layer): wrong CHAP password fails to log in
    q = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k",
                        f"iscsi://alice%wrong-password-123@127.0.0.1:{portal}/{IQN}/0"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert q.returncode != 0 and "read 4096/4096" not in q.stdout

    # our initiator: one-way and mutual CHAP, and each refusal with its login status
    good = Initiator("127.0.0.1", portal, IQN, GOOD_INIT, chap=("alice", SECRETS["chap"]),
                     mutual=("jiva-target", SECRETS["mutual"]))  # fmt: skip
    await good.connect()
    await good.write(0, b"\x42" * 4096)
    assert await good.read(0, 8) == b"\x42" * 4096
    await good.logout()
    with pytest.raises(LoginError) as e:
        await Initiator(
            "127.0.0.1", portal, IQN, GOOD_INIT, chap=("alice", "nope-nope-nope")
        ).connect()
    assert e.value.status == 0x0201  # authentication failure
    with pytest.raises(LoginError) as e:  # the target does not know the mutual secret we expect
        await Initiator("127.0.0.1", portal, IQN, GOOD_INIT, chap=("alice", SECRETS["chap"]),
                        mutual=("jiva-target", "another-secret-9")).connect()  # fmt: skip
    assert "mutual" in str(e.value)
    with pytest.raises(LoginError) as e:
        await Initiator(
            "127.0.0.1", portal, IQN, BAD_INIT, chap=("alice", SECRETS["chap"])
        ).connect()
    assert e.value.status >> 8 == 0x02  # initiator error class: not authorised
    with pytest.raises(LoginError):
        await Initiator("127.0.0.1", portal, IQN, GOOD_INIT).connect()  # AuthMethod=None

    # the replica accepts only a controller that proves the shared secret
    for secret, status in [(None, wire.AUTH_REQUIRED), ("wrong-secret", wire.AUTH_FAILED)]:
        c = ReplicaClient("127.0.0.1", secured["replica"], VOL, secret=secret, timeout=3)
        with pytest.raises(ReplicaError) as e:
            await c.connect()
        assert e.value.status == status
        await c.close()
    c = ReplicaClient("127.0.0.1", secured["replica"], "other-volume", secret=SECRETS["replica"])
    with pytest.raises(ReplicaError) as e:
        await c.connect()
    assert e.value.status in (wire.WRONG_VOLUME, wire.AUTH_FAILED)
    await c.close()
    # a whole controller with the wrong secret never serves the volume
    api2 = free_port()
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-replica-secret\n")
    procs.jiva("controller", "--volume", VOL, "--api", f"127.0.0.1:{api2}", "--replica",
               f"127.0.0.1:{secured['replica']}", "--secret-file", str(wrong),
               name="impostor")  # fmt: skip
    wait_port("127.0.0.1", api2)

    async def refused() -> dict | None:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{api2}/v1/volume") as r:
            st = await r.json()
        return st if "auth" in (st["replicas"][0]["last_error"] or "").lower() else None

    st = await eventually(refused, 20, "the impostor refused by the replica")
    assert st["state"] == "waiting" and st["replicas"][0]["mode"] == "ERR", st

    # management API: mutating calls need the token
    api = secured["api"]
    async with aiohttp.ClientSession() as s:
        for hdr in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRETS["token"]}):
            async with s.post(
                api + "/v1/replicas", json={"address": "127.0.0.1:9"}, headers=hdr
            ) as r:
                assert r.status == 401 and "token" in (await r.json())["error"].lower()
            async with s.delete(api + "/v1/replicas/127.0.0.1:9", headers=hdr) as r:
                assert r.status == 401
        st = await (await s.get(api + "/v1/volume")).json()
        assert [m["address"] for m in st["replicas"]] == [f"127.0.0.1:{secured['replica']}"]
        auth = {"Authorization": f"Bearer {SECRETS['token']}"}
        async with s.post(api + "/v1/replicas", json={"address": "127.0.0.1:9"}, headers=auth) as r:
            assert r.status == 202
        async with s.delete(api + "/v1/replicas/127.0.0.1:9", headers=auth) as r:
            assert r.status == 200
        # no secret in any status output
        outputs = [
            await (await s.get(api + p)).text() for p in ("/v1/volume", "/v1/stats", "/metrics")
        ]
    status_cli = subprocess.run([*JIVA, "status", "--api",
                                 api.removeprefix("http://"), "--json"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
    outputs.append(status_cli.stdout)
    # ...and none in any process log (DEBUG level), including the failed logins
    logs = [procs.log(n) for n in ("replica", "controller", "impostor")]
    assert "authentication" in logs[0].lower() or "auth" in logs[0].lower()
    # ...nor on any process's command line or environment (secrets travel in 0600 files)
    for p in procs.procs:
        for what in ("cmdline", "environ"):
            logs.append(Path(f"/proc/{p.pid}/{what}").read_bytes().decode(errors="replace"))
    for name, value in SECRETS.items():
        for text in outputs + logs:
            assert value not in text, f"the {name} secret leaked"
