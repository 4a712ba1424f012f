"""Per-volume QoS against real processes: 3 `jiva replica` processes, a `jiva controller` with
--max-iops / --max-mbps, and qemu-img bench writing through the iSCSI portal.

Only ceilings are asserted (a bench takes at least the time the limit allows, which cannot flake
on a loaded machine); lifting the limit is checked on the throttling counters, never on time."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.procs import JIVA, Procs, free_port, wait_port
from tests.waiting import eventually_sync

VOL = "qosvol"
URL = "iscsi://127.0.0.1:{portal}/iqn.2026-11.org.jiva-py:" + VOL + "/0"
TOKEN = "qos-api-token-1"
BURST = 0.1  # controller/qos.py: seconds' worth of I/O a full bucket holds

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")


class Cluster:
    """Three replicas and one controller on 127.0.0.1 (all stopped by PID by the fixture)."""

    def __init__(self, procs: Procs, tmp_path: Any) -> None:
        self.procs = procs
        self.tmp = tmp_path
        self.reps = []
        for i in range(3):
            port = free_port()
            procs.jiva("replica", "--volume", VOL, "--listen", f"127.0.0.1:{port}", "--dir",
                       str(tmp_path / f"r{i}"), "--size", "128M", name=f"r{i}")  # fmt: skip
            self.reps.append(port)
        for port in self.reps:
            wait_port("127.0.0.1", port)
        self.token = tmp_path / "token"
        self.token.write_text(TOKEN + "\n")
        os.chmod(self.token, 0o600)
        self.api = self.portal = 0
        self.ctl: subprocess.Popen | None = None
        self.starts = 0

    def start(self, *qos: str) -> Cluster:
        self.api, self.portal = free_port(), free_port()
        args = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{self.api}", "--portal",
                f"127.0.0.1:{self.portal}", "--token-file", str(self.token), *qos]  # fmt: skip
        for port in self.reps:
            args += ["--replica", f"127.0.0.1:{port}"]
        self.starts += 1
        self.ctl = self.procs.jiva(*args, name=f"ctl{self.starts}")
        eventually_sync(lambda: self._state() == "serving", 60, "the controller serving")
        return self

    def _state(self) -> str | None:
        try:
            return self.status()["state"]
        except OSError:
            return None

    def call(
        self, path: str, body: Any = None, token: str | None = TOKEN, method: str = "PUT"
    ) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}")
        if body is not None:
            req.method = method
            req.data = body if isinstance(body, bytes) else json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if path != "/metrics" else raw.decode()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def status(self) -> dict[str, Any]:
        return self.call("/v1/volume")[1]

    def qos(self) -> dict[str, Any]:
        return self.status()["qos"]

    def metric(self, name: str) -> float:
        text = self.call("/metrics")[1]
        m = re.search(rf'^{name}{{volume="{VOL}"}} (\S+)$', text, re.M)
        assert m, f"{name} missing from /metrics"
        return float(m.group(1))

    def bench(self, count: int, size: str) -> float:
        """qemu-img bench writing `count` I/Os of `size` at queue depth 8; its wall time."""
        t0 = time.monotonic()
        p = subprocess.run(
            ["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-c", str(count), "-d", "8",
             "-s", size, URL.format(portal=self.portal)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        took = time.monotonic() - t0
        assert p.returncode == 0, p.stderr[-2000:]
        return took


def jiva_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*JIVA, *args], capture_output=True, text=True, timeout=60)


def test_max_iops_caps_a_bench_and_can_be_lifted_online(procs, tmp_path):
    vol = Cluster(procs, tmp_path).start("--max-iops", "200")
    assert vol.qos() == {"max_iops": 200, "max_mbps": None, "throttled_ios": 0,
                         "throttled_seconds": 0.0}  # fmt: skip
    assert vol.metric("jiva_volume_qos_max_iops") == 200
    assert vol.metric("jiva_volume_qos_max_bytes_per_second") == 0  # 0: unlimited

    # 600 4 KiB writes at QD8: everything past the burst waits for its token
    took = vol.bench(600, "4096")
    assert took >= (600 - 200 * BURST) / 200, f"600 writes at --max-iops 200 took {took:.2f}s"
    q = vol.qos()
    assert q["throttled_ios"] > 0 and q["throttled_seconds"] > 0, q
    assert vol.metric("jiva_volume_qos_throttled_ios_total") == q["throttled_ios"]
    assert vol.metric("jiva_volume_qos_throttled_seconds_total") > 0

    # the limit goes at runtime (jiva qos set, through the API): the next run is not throttled
    out = jiva_cli("qos", "set", "--api", f"127.0.0.1:{vol.api}", "--token-file", str(vol.token),
                   "--max-iops", "unlimited")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"max IOPS\s+unlimited", out.stdout), out.stdout
    before = vol.qos()
    assert before["max_iops"] is None
    vol.bench(600, "4096")
    after = vol.qos()
    assert after["throttled_ios"] == before["throttled_ios"], (before, after)
    assert after["throttled_seconds"] == before["throttled_seconds"]
    assert vol.metric("jiva_volume_qos_max_iops") == 0

    # and comes back the same way (PUT /v1/volume/qos), shown by `jiva qos show`
    code, doc = vol.call("/v1/volume/qos", {"max_iops": 500})
    assert code == 200 and doc["qos"]["max_iops"] == 500, doc
    out = jiva_cli("qos", "show", "--api", f"127.0.0.1:{vol.api}", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["qos"]["max_iops"] == 500, out


def test_max_mbps_caps_large_writes(procs, tmp_path):
    vol = Cluster(procs, tmp_path).start("--max-mbps", "20")
    assert vol.qos()["max_mbps"] == 20
    assert vol.metric("jiva_volume_qos_max_bytes_per_second") == 20 << 20
    took = vol.bench(60, "1M")  # 60 MiB at 20 MiB/s
    assert took >= (60 - 20 * BURST) / 20, f"60 MiB at --max-mbps 20 took {took:.2f}s"
    assert vol.qos()["throttled_ios"] > 0
    # lifted online: 1 MiB writes no longer wait
    code, doc = vol.call("/v1/volume/qos", {"max_mbps": None})
    assert code == 200 and doc["qos"] == {**doc["qos"], "max_iops": None, "max_mbps": None}
    before = vol.qos()["throttled_ios"]
    vol.bench(60, "1M")
    assert vol.qos()["throttled_ios"] == before


def test_internal_traffic_is_not_limited(procs, tmp_path):
    """An import (the volume's own writes and unmaps) and a scrub pass under --max-iops 1
    --max-mbps 1: none of their I/O waits for the limit (the counters stay 0)."""
    vol = Cluster(procs, tmp_path).start("--max-iops", "1", "--max-mbps", "1")
    begin = {"action": "begin", "source": "qos test", "total": 16 << 20}
    code, doc = vol.call("/v1/import", begin, method="POST")
    assert code == 201, doc
    for i in range(8):  # 8 MiB: 8 s of --max-mbps 1, 8 I/Os at --max-iops 1
        code, doc = vol.call(f"/v1/import/data?offset={i << 20}", bytes([i + 1]) * (1 << 20))
        assert code == 200, doc
    code, doc = vol.call(f"/v1/import/data?offset={8 << 20}&length={8 << 20}&zero=1", b"")
    assert code == 200, doc
    code, doc = vol.call("/v1/import", {"action": "end"}, method="POST")
    assert code == 200 and doc["import"]["result"] == "done", doc
    code, doc = vol.call("/v1/scrub", {}, method="POST")
    assert code == 202, doc
    eventually_sync(lambda: vol.status()["scrub"]["last_result"], 60, "the scrub pass ended")
    assert vol.status()["scrub"]["last_result"] == "clean"
    q = vol.qos()
    assert q["throttled_ios"] == 0 and q["throttled_seconds"] == 0, q


def test_bad_qos_values_are_refused_clearly(procs, tmp_path):
    vol = Cluster(procs, tmp_path).start()
    assert vol.qos()["max_iops"] is None and vol.qos()["max_mbps"] is None
    for body, msg in [
        ({"max_iops": 0}, "max_iops must be a positive integer (I/Os per second) or null, not 0"),
        ({"max_iops": 2.5}, "max_iops must be a positive integer"),
        ({"max_iops": "100"}, "max_iops must be a positive integer"),
        ({"max_mbps": -1}, "max_mbps must be a positive number (MiB/s) or null, not -1"),
        ({"max_mbps": True}, "max_mbps must be a positive number"),
        ({"max_iops": 10, "burst": 5}, "unknown key(s) burst"),
        ({}, "expected a JSON object"),
        ([1], "expected a JSON object"),
    ]:
        code, doc = vol.call("/v1/volume/qos", body)
        assert code == 400 and msg in doc["error"], (body, code, doc)
    code, doc = vol.call("/v1/volume/qos", {"max_iops": 10}, token=None)
    assert code == 401, doc
    assert vol.qos()["max_iops"] is None  # nothing was changed by a refused call

    api = f"127.0.0.1:{vol.api}"
    for args, msg in [
        (["--max-iops", "0"], "--max-iops must be a positive integer or 'unlimited', not '0'"),
        (["--max-mbps", "fast"], "--max-mbps must be a positive number or 'unlimited'"),
        ([], "'set' needs --max-iops and/or --max-mbps"),
    ]:
        out = jiva_cli("qos", "set", "--api", api, *args)
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)

    ctl = ["controller", "--volume", VOL, "--api", f"127.0.0.1:{free_port()}", "--replica",
           f"127.0.0.1:{vol.reps[0]}"]  # fmt: skip
    for args, msg in [
        (["--max-iops", "0"], "--max-iops must be a positive integer (I/Os per second), not 0"),
        (["--max-iops", "-5"], "--max-iops must be a positive integer"),
        (["--max-mbps", "0"], "--max-mbps must be a positive number (MiB/s), not 0"),
        (["--max-mbps", "inf"], "--max-mbps must be a positive number"),
        (["--max-iops", "many"], "argument --max-iops: invalid int value: 'many'"),
    ]:
        out = jiva_cli(*ctl, *args)
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)
