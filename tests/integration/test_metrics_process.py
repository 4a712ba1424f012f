"""Real `jiva replica` / `jiva witness` processes started with `--metrics HOST:PORT`: GET /metrics
answers in the Prometheus text format, and the replica's counters move with the I/O it serves."""

from __future__ import annotations

import re
import sys
import urllib.request

from jiva_engine.protocol.client import ReplicaClient
from tests.procs import free_port, wait_port
from tests.waiting import eventually

JIVA = [sys.executable, "-m", "jiva_engine.cli"]
_SAMPLE = re.compile(r"^([a-z_]+)\{([^}]*)\} (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """{'name{labels}': value} of every sample, after checking each family has HELP and TYPE."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict[str, float] = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line {line!r}"
        assert m.group(1) in typed, f"{m.group(1)} has no TYPE line"
        out[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return out


async def test_replica_metrics_count_its_io(procs, tmp_path):
    port, mport = free_port(), free_port()
    listen = f"127.0.0.1:{port}"
    procs.start(
        [*JIVA, "replica", "--volume", "m1", "--listen", listen, "--dir", str(tmp_path / "r"),
         "--size", "16M", "--metrics", f"127.0.0.1:{mport}"],
        "replica",
    )  # fmt: skip
    wait_port("127.0.0.1", port, 15)
    wait_port("127.0.0.1", mport, 15)
    lbl = f'volume="m1",replica="{listen}"'
    before = scrape(mport)
    assert before[f"jiva_replica_up{{{lbl}}}"] == 1
    assert before[f"jiva_replica_writes_total{{{lbl}}}"] == 0
    assert before[f"jiva_replica_connections{{{lbl}}}"] == 0
    assert before[f'jiva_replica_store_mode{{{lbl},mode="RW"}}'] in (0, 1)
    for name in ("reads", "write_bytes", "io_errors", "checksum_errors", "rebuild_written_bytes"):
        assert f"jiva_replica_{name}_total{{{lbl}}}" in before, name
    assert f"jiva_replica_snapshots{{{lbl}}}" in before
    c = ReplicaClient("127.0.0.1", port, volume="m1")
    await c.connect()
    try:
        await c.set_meta(epoch=1, membership=[listen])
        await c.write(0, b"\xab" * 8192, 1)
        await c.write(1 << 20, b"\xcd" * 4096, 1)
        assert await c.read(0, 4096, 1) == b"\xab" * 4096
        after = scrape(mport)
        assert after[f"jiva_replica_writes_total{{{lbl}}}"] == 2
        assert after[f"jiva_replica_write_bytes_total{{{lbl}}}"] == 12288
        assert after[f"jiva_replica_reads_total{{{lbl}}}"] == 1
        assert after[f"jiva_replica_read_bytes_total{{{lbl}}}"] == 4096
        assert after[f"jiva_replica_connections{{{lbl}}}"] == 1
        assert after[f"jiva_replica_dirty_regions{{{lbl}}}"] == 2  # regions 0 and 1 (1 MiB each)
    finally:
        await c.close()
    await eventually(lambda: scrape(mport)[f"jiva_replica_connections{{{lbl}}}"] == 0,
                     what="the closed connection gone from the metrics")  # fmt: skip


async def test_witness_metrics_and_a_taken_metrics_port_is_a_clear_error(procs, tmp_path):
    port, mport = free_port(), free_port()
    listen = f"127.0.0.1:{port}"
    procs.start(
        [*JIVA, "witness", "--volume", "m2", "--listen", listen, "--dir", str(tmp_path / "w"),
         "--metrics", f"127.0.0.1:{mport}"],
        "witness",
    )  # fmt: skip
    wait_port("127.0.0.1", port, 15)
    wait_port("127.0.0.1", mport, 15)
    got = scrape(mport)
    lbl = f'volume="m2",witness="{listen}"'
    assert got[f"jiva_witness_process_up{{{lbl}}}"] == 1
    # wait_port's probe connection counts until the witness has read its close (under load,
    # after the first scrape)
    await eventually(lambda: scrape(mport)[f"jiva_witness_connections{{{lbl}}}"] == 0,
                     what="wait_port's probe connection gone from the metrics")  # fmt: skip
    # a replica whose --metrics port is taken says so and exits 2
    p = procs.start(
        [*JIVA, "replica", "--volume", "m3", "--listen", f"127.0.0.1:{free_port()}",
         "--dir", str(tmp_path / "r3"), "--size", "16M", "--metrics", f"127.0.0.1:{mport}"],
        "replica-clash",
    )  # fmt: skip
    assert p.wait(timeout=30) == 2
    assert f"cannot serve --metrics on 127.0.0.1:{mport}" in procs.log("replica-clash")
