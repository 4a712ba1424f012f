"""The management API and `jiva status` against a real `jiva controller` process and replicas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import aiohttp
import pytest

from jiva_engine.api.server import start_api
from jiva_engine.controller.volume import Volume
from tests.integration.test_engine import VOL, Rep, jiva, replicas
from tests.procs import JIVA, free_port, wait_port

TOKEN = "s3cret-token-for-tests"


def start_controller(procs, tmp_path, reps, name="controller", token=True, extra=()):
    """Run `jiva controller` as a process; return its API base URL and address."""
    port = free_port()
    args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{port}"]
    for r in reps:
        args += ["--replica", r.addr]
    if token:
        tf = tmp_path / "token"
        tf.write_text(TOKEN + "\n")
        args += ["--token-file", str(tf)]
    jiva(procs, *args, *extra, name=name)
    wait_port("127.0.0.1", port)
    return f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.content_type == "application/json"
        return await r.json()


async def wait_state(base: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await get_json(base + "/v1/volume")
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"API never reached the expected state: {st}")
        await asyncio.sleep(0.1)


def status_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*JIVA, "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


async def test_status_stats_metrics_and_jiva_status(procs, tmp_path):
    reps = replicas(procs, tmp_path, 3)
    base, api = start_controller(procs, tmp_path, reps)
    st = await wait_state(base, lambda s: s["state"] == "serving")
    assert st["name"] == VOL and st["size"] == reps[0].size
    assert st["iqn"] == f"iqn.2026-11.org.jiva-py:{VOL}" and st["portal"] is None
    assert st["degraded"] is False and st["epoch"] >= 1
    assert [r["address"] for r in st["replicas"]] == [r.addr for r in reps]
    assert all(r["mode"] == "RW" and r["rebuild"] is None for r in st["replicas"])

    stats = await get_json(base + "/v1/stats")
    assert stats["state"] == "serving" and set(stats["replicas"]) == {r.addr for r in reps}
    assert stats["volume"]["writes"] == 0

    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert f'jiva_volume_up{{volume="{VOL}"}} 1' in text
    assert "# TYPE jiva_volume_writes_total counter" in text
    assert f'jiva_replica_mode{{volume="{VOL}",replica="{reps[0].addr}",mode="RW"}} 1' in text
    for line in text.splitlines():  # every sample line is `name{labels} number`
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.startswith("jiva_") and name.endswith("}")

    # a proxy in the environment is not used for the API (nothing listens on port 9)
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = status_cli("--api", api, env=proxy)
    assert out.returncode == 0, out.stderr
    assert "serving" in out.stdout and "healthy" in out.stdout
    for r in reps:
        assert r.addr in out.stdout
    js = status_cli("--api", api, "--json")
    assert js.returncode == 0
    parsed = json.loads(js.stdout)
    assert parsed["state"] == "serving" and len(parsed["replicas"]) == 3

    # a replica dies: the table says so
    reps[1].kill()
    await wait_state(base, lambda s: s["degraded"])
    out = status_cli("--api", api)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(reps[1].addr))
    assert "ERR" in line and "failed" in line
    quorum = next(ln for ln in out.stdout.splitlines() if ln.startswith("quorum"))
    assert "majority: 3 voters, 2 needed" in quorum and f"missing {reps[1].addr}" in quorum


async def test_jiva_status_unreachable_api():
    port = free_port()
    out = status_cli("--api", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the API at 127.0.0.1" in lines[0], out.stderr
    out = status_cli("--api", "no-port-here")
    assert out.returncode == 1 and "needs a port" in out.stderr


async def test_waiting_volume_says_why(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2)
    missing = Rep(procs, tmp_path, "never-started")
    base, api = start_controller(procs, tmp_path, [*reps, missing], token=False)
    st = await wait_state(base, lambda s: missing.addr in (s["reason"] or ""))
    assert st["state"] == "waiting"
    out = status_cli("--api", api)
    assert "waiting" in out.stdout and missing.addr in out.stdout


async def test_api_token_refusal_bad_input_and_replica_add_remove(procs, tmp_path):
    reps = replicas(procs, tmp_path, 2)
    base, _ = start_controller(procs, tmp_path, reps)
    await wait_state(base, lambda s: s["state"] == "serving")
    new = Rep(procs, tmp_path, "new").start()
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with s.post(
                base + "/v1/replicas", json={"address": new.addr}, headers=headers
            ) as r:
                assert r.status == 401
                assert "Bearer" in (await r.json())["error"]
            async with s.delete(f"{base}/v1/replicas/{reps[0].addr}", headers=headers) as r:
                assert r.status == 401
        async with s.post(base + "/v1/replicas", data=b"{not json", headers=good) as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        async with s.post(base + "/v1/replicas", json={"addr": "x"}, headers=good) as r:
            assert r.status == 400 and "address" in (await r.json())["error"]
        async with s.post(base + "/v1/replicas", json={"address": "nohost"}, headers=good) as r:
            assert r.status == 400 and "port" in (await r.json())["error"]
        async with s.post(base + "/v1/replicas", json={"address": reps[0].addr}, headers=good) as r:
            assert r.status == 409
        async with s.delete(base + "/v1/replicas/127.0.0.1:1", headers=good) as r:
            assert r.status == 404 and "not part" in (await r.json())["error"]
        async with s.get(base + "/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        st = await get_json(base + "/v1/volume")
        assert len(st["replicas"]) == 2, "refused calls changed nothing"

        async with s.post(base + "/v1/replicas", json={"address": new.addr}, headers=good) as r:
            assert r.status == 202
            assert (await r.json())["added"] == new.addr
        st = await wait_state(
            base,
            lambda s: len(s["replicas"]) == 3 and all(x["mode"] == "RW" for x in s["replicas"]),
        )
        epoch = st["epoch"]
        async with s.delete(f"{base}/v1/replicas/{reps[0].addr}", headers=good) as r:
            assert r.status == 200
        st = await get_json(base + "/v1/volume")
        assert [x["address"] for x in st["replicas"]] == [reps[1].addr, new.addr]
        assert st["epoch"] > epoch and st["degraded"] is False
    assert reps[1].meta()["membership"] == sorted([reps[1].id, new.id])


async def test_api_refuses_to_remove_the_last_current_copy(procs, tmp_path):
    (a,) = replicas(procs, tmp_path, 1)
    vol = Volume(VOL, [a.addr], retry_interval=0.2)
    await vol.start()
    api = await start_api(vol, "127.0.0.1", 0)
    try:
        await vol.wait_serving(20)
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{api.port}/v1/replicas/{a.addr}"
            async with s.delete(url) as r:
                assert r.status == 409
                assert "only current copy" in (await r.json())["error"]
        assert vol.membership() == [a.addr]
    finally:
        await api.close()
        await vol.close()


def test_controller_cli_refuses_bad_options(tmp_path):
    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*JIVA, "controller", "--volume", VOL, "--api", "127.0.0.1:1", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    out = ctl()
    assert out.returncode == 2 and "at least one --replica" in out.stderr
    out = ctl("--replica", "127.0.0.1")
    assert out.returncode == 2 and "needs a port" in out.stderr
    out = ctl("--replica", "127.0.0.1:5", "--size", "lots")
    assert out.returncode == 2 and "invalid size" in out.stderr
    out = ctl("--replica", "127.0.0.1:5", "--token-file", str(tmp_path / "missing"))
    assert out.returncode == 2 and "cannot read API token file" in out.stderr
    out = ctl("--replica", "127.0.0.1:5", "--replica", "127.0.0.1:5")
    assert out.returncode == 2 and "given twice" in out.stderr
    out = ctl("--replica", "127.0.0.1:5", "--chap-user", "u")
    assert out.returncode == 2 and "--chap-secret-file" in out.stderr
    assert "Traceback" not in out.stderr


async def test_replica_secret_is_required_and_checked(procs, tmp_path):
    secret = tmp_path / "replica.secret"
    secret.write_text("shared-between-controller-and-replicas\n")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("something else")
    reps = []
    for name, sf in (("a", secret), ("b", secret), ("c", wrong)):
        r = Rep(procs, tmp_path, name)
        r.proc = jiva(
            procs, "replica", "--volume", VOL, "--listen", r.addr, "--dir", str(r.dir),
            "--size", str(r.size), "--secret-file", str(sf), name=name,
        )  # fmt: skip
        wait_port("127.0.0.1", r.port)
        reps.append(r)
    base, _ = start_controller(
        procs, tmp_path, reps[:2], token=False, extra=("--secret-file", str(secret))
    )
    st = await wait_state(base, lambda s: s["state"] == "serving")
    assert [x["mode"] for x in st["replicas"]] == ["RW", "RW"]
    # a controller with the wrong secret is refused by the replicas and says so
    base2, _ = start_controller(
        procs,
        tmp_path,
        reps[:1],
        name="ctl-wrong",
        token=False,
        extra=("--secret-file", str(wrong)),
    )
    st = await wait_state(base2, lambda s: "AUTH_FAILED" in (s["replicas"][0]["last_error"] or ""))
    assert st["state"] == "waiting"
    # and the serving controller refuses a replica that cannot prove the shared secret
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/v1/replicas", json={"address": reps[2].addr}) as r,
    ):
        assert r.status == 202
    st = await wait_state(
        base,
        lambda s: (
            len(s["replicas"]) == 3 and "AUTH_FAILED" in (s["replicas"][2]["last_error"] or "")
        ),
    )
    assert st["replicas"][2]["mode"] == "ERR" and st["degraded"]


def self_signed(tmp_path, name: str = "127.0.0.1") -> tuple[str, str]:
    """A self-signed certificate for the address `name` (openssl): (cert, key) PEM paths."""
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


async def test_api_over_tls(procs, tmp_path, monkeypatch):
    """--api-tls-cert/--api-tls-key: the API answers HTTPS only; the engine's client reaches it
    as https://HOST:PORT with the CA in $JIVA_API_CA, refuses an unknown certificate, and the
    token is still required."""
    from jiva_engine.api import client
    from jiva_engine.api.server import tls_context

    (a,) = replicas(procs, tmp_path, 1)
    cert, key = self_signed(tmp_path)
    vol = Volume(VOL, [a.addr], retry_interval=0.2)
    await vol.start()
    api = await start_api(vol, "127.0.0.1", 0, token="t0ken", ssl_context=tls_context(cert, key))
    where = f"127.0.0.1:{api.port}"
    try:
        await vol.wait_serving(20)
        monkeypatch.delenv("JIVA_API_CA", raising=False)
        with pytest.raises(client.ApiError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(client.fetch_status, f"https://{where}")
        with pytest.raises(client.ApiError):  # plain HTTP to the TLS port
            await asyncio.to_thread(client.fetch_status, where)
        monkeypatch.setenv("JIVA_API_CA", cert)
        st = await asyncio.to_thread(client.fetch_status, f"https://{where}")
        assert st["state"] == "serving"
        with pytest.raises(client.ApiError) as ei:
            await asyncio.to_thread(client.scrub, f"https://{where}")
        assert ei.value.code == 401
        done = await asyncio.to_thread(client.snapshot_create, f"https://{where}", "s1", "t0ken")
        assert done["snapshot"]["name"] == "s1"
    finally:
        await api.close()
        await vol.close()
    with pytest.raises(ValueError, match="cannot load the API certificate"):
        tls_context(key, key)


def test_controller_cli_tls_options_go_together(tmp_path):
    cert, key = self_signed(tmp_path)
    args = ["--volume", VOL, "--api", "127.0.0.1:1", "--replica", "127.0.0.1:5"]
    out = subprocess.run(
        [*JIVA, "controller", *args, "--api-tls-cert", cert],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "go together" in out.stderr
