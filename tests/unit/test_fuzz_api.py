"""Hypothesis fuzzing of the management API (aiohttp test client against the real app).

Random methods, paths, headers, tokens and JSON/binary bodies at a controller volume served by a
real in-process replica. Every answer must be a deliberate one (never a 500), JSON with an
`error` message for every failure, and mutating calls without the token must get 401 and change
nothing. Long run: JIVA_FUZZ_EXAMPLES=3000 pytest -m slow tests/unit/test_fuzz_api.py
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jiva_engine.api.server import make_app
from jiva_engine.controller.volume import Volume
from jiva_engine.replica.server import ReplicaServer
from jiva_engine.replica.store import ReplicaStore

MiB = 1 << 20
TOKEN = "fuzz-api-token"
VOL = "fzapi"

json_val = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=10,
)
address = st.sampled_from(
    ["127.0.0.1:1", "localhost:99999", ":", "", "[::1]:5", "a:b:c"]
) | st.text(max_size=30)
size = st.integers(-1024, 64 * MiB) | st.sampled_from(["16M", "1G", "12Q", "", "1.5G", "-8M"])
body = (
    st.none()
    | json_val.map(json.dumps)
    | st.fixed_dictionaries({"address": address | json_val}).map(json.dumps)
    | st.fixed_dictionaries({"size": size}).map(json.dumps)
    | st.binary(max_size=300)
    | st.text(max_size=100)
)
path_seg = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="?#"), max_size=20
)
path = st.sampled_from(
    ["/v1/volume", "/v1/stats", "/metrics", "/v1/replicas", "/v1/replicas/", "/v1/volume/grow"]
) | (
    # ("//x" would be a scheme-relative URL that aiohttp's test client refuses to build)
    st.tuples(st.sampled_from(["/v1/replicas/", "/v1/", "/", "/v2/"]), path_seg).map(
        lambda t: t[0] + t[1].lstrip("/")
    )
)
# snapshot data, revert and import (api/transfer_routes.py)
path = path | st.sampled_from(
    [
        "/v1/snapshots/s1/extents",
        "/v1/snapshots/s1/data?offset=0&length=4096",
        "/v1/snapshots/s1/data?offset=-1&length=x",
        "/v1/snapshots/s1/revert",
        "/v1/import",
        "/v1/import/data?offset=0",
        "/v1/import/data?offset=4096&length=8192&zero=1",
        "/v1/import/data?offset=q",
    ]
)
body = body | st.fixed_dictionaries(
    {
        "action": st.sampled_from(["begin", "end", "x"]) | json_val,
        "source": st.text(max_size=10) | json_val,
        "total": size | json_val,
    }
).map(json.dumps)
# QoS limits (PUT /v1/volume/qos)
limit = st.none() | st.integers(-5, 10**6) | st.floats() | st.sampled_from(["100", True, []])
path = path | st.just("/v1/volume/qos")
body = body | st.fixed_dictionaries(
    {}, optional={"max_iops": limit | json_val, "max_mbps": limit | json_val, "x": json_val}
).map(json.dumps)
method = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
authz = st.sampled_from(
    [None, f"Bearer {TOKEN}", "Bearer wrong", f"bearer {TOKEN}", TOKEN, "Basic eA==", "Bearer "]
) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)

ALLOWED = {200, 201, 202, 400, 401, 404, 405, 409}


class Harness:
    """One replica server, one controller Volume over it, and the API app in a test client."""

    def __init__(self, tmp_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start(tmp_path))

    async def _start(self, tmp_path) -> None:
        self.store = ReplicaStore(tmp_path / "r", VOL, 8 * MiB)
        self.rs = ReplicaServer(self.store, None, 0.5)
        await self.rs.start("127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self.rs.port}"
        self.vol = Volume(VOL, [self.addr], replica_timeout=2, retry_interval=0.2)
        await self.vol.start()
        await self.vol.wait_serving(20)
        self.client = TestClient(TestServer(make_app(self.vol, token=TOKEN, iqn="iqn.x:" + VOL)))
        await self.client.start_server()

    def close(self) -> None:
        async def stop() -> None:
            await self.client.close()
            await self.vol.close()
            await self.rs.stop()

        self.loop.run_until_complete(stop())
        self.loop.close()

    async def one(self, m: str, p: str, a: str | None, b: str | bytes | None) -> None:
        before = [r["address"] for r in self.vol.status()["replicas"]]
        headers = {"Authorization": a} if a is not None else {}
        try:
            resp = await self.client.request(m, p, headers=headers, data=b)
        except ValueError:
            return  # aiohttp's client refused to build this request (bad header/URL): not sent
        text = await resp.read()
        assert resp.status in ALLOWED, f"{m} {p!r} -> {resp.status}: {text[:300]!r}"
        if resp.status >= 400 and m != "HEAD":
            err = json.loads(text)
            assert isinstance(err["error"], str) and err["error"] and err["status"] == resp.status
        scheme, _, given = (a or "").partition(" ")
        valid = scheme.lower() == "bearer" and given.strip() == TOKEN  # schemes are case-blind
        if not valid and m in ("POST", "DELETE", "PUT"):
            assert resp.status in (401, 404, 405), f"{m} {p!r} without the token: {resp.status}"
        after = [r["address"] for r in self.vol.status()["replicas"]]
        if resp.status not in (200, 202):
            assert after == before, f"a refused {m} {p!r} changed the replicas"
        # the original replica is never removed by fuzzing: only current copy -> 409
        assert self.addr in after
        for extra in set(after) - {self.addr}:  # undo an accepted add so the state stays small
            await self.vol.remove_replica(extra)
        if not valid:
            assert self.vol.qos.unlimited, f"{m} {p!r} without the token changed the QoS limits"
        self.vol.qos.set_limits(None, None)


def _run(tmp_path, examples: int) -> None:
    h = Harness(tmp_path)
    try:

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        @given(m=method, p=path, a=authz, b=body)
        def check(m, p, a, b):
            h.loop.run_until_complete(h.one(m, p, a, b))

        check()
        # still serving correctly afterwards
        st_ = h.loop.run_until_complete(h.client.get("/v1/volume"))
        assert st_.status == 200
    finally:
        h.close()


def test_fuzz_management_api(tmp_path):
    _run(tmp_path, 300)


@pytest.mark.slow
def test_fuzz_management_api_long(tmp_path):
    _run(tmp_path, int(os.environ.get("JIVA_FUZZ_EXAMPLES", "3000")))
