"""Growing a volume from the inventory (issue 13): a larger `size` and the same site.yml grow the
volume online while a logged-in qemu-io session (libiscsi, as a guest) keeps writing; READ
CAPACITY follows; no process restarts. A smaller `size` is refused before anything changes,
naming the volume, both when the controller answers (the API check before the roles) and when
it is down (the replica module reads the size its folder recorded)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.ha_harness import QemuIoSession, abandon_workloads, longest_gap
from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    ROOT,
    frozen_wheelhouse,
    local_daemons_fixture,
    local_inventory,
    run_playbook,
)
from tests.waiting import eventually_sync

NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.61"
API = f"{PORTAL}:9861"
TOKEN = "grow-test-token-0123456789"
IQN = "iqn.2026-11.org.jiva-py:gv"
MiB = 1 << 20


def write_inventory(base: Path, size: str) -> Path:
    volume = {"name": "gv", "size": size, "replicas": 3, "portal": f"{PORTAL}:3260",
              "replica_port": 9761, "api_port": 9861}  # fmt: skip
    return local_inventory(
        base, [f"{NET}.{50 + i}" for i in range(1, 4)], [volume], jiva_api_token=TOKEN
    )


def status() -> dict:
    with urllib.request.urlopen(f"http://{API}/v1/volume", timeout=3) as r:
        return json.load(r)


def capacity() -> int:
    """The size READ CAPACITY(16) reports to a new libiscsi session."""
    out = subprocess.run(
        ["iscsi-readcapacity16", f"iscsi://{PORTAL}:3260/{IQN}/0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    fields = {
        k.strip().upper(): v.strip()
        for k, v in (line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    }
    lba, length = "RETURNED LOGICAL BLOCK ADDRESS", "LOGICAL BLOCK LENGTH IN BYTES"
    return (int(fields[lba]) + 1) * int(fields[length])


def qemu_io(*cmds: str) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(
        [*args, f"iscsi://{PORTAL}:3260/{IQN}/0"], capture_output=True, text=True, timeout=60
    )


def pids(base: Path) -> dict[str, str]:
    """pidfile -> supervisor PID of every jiva service under `base`."""
    return {str(p.relative_to(base)): p.read_text().strip() for p in base.glob("nodes/*/run/*.pid")}


def snapshot(base: Path) -> dict[str, str]:
    """Every config file's content (to show that nothing changed)."""
    return {str(p.relative_to(base)): p.read_text() for p in sorted(base.glob("nodes/*/etc/*"))}


@pytest.mark.usefixtures("local_daemons")
def test_inventory_size_grows_online_and_shrink_is_refused(tmp_path, shared_local_venv):
    home = tmp_path / "ansible-home"
    cfg = ROOT / "ansible.cfg"
    wheels = frozen_wheelhouse(tmp_path)
    inv = write_inventory(tmp_path, "16M")
    args = ["-i", str(inv), *wheels, "-e", f"jiva_ha_state_file={tmp_path / 'ha.json'}"]
    args += shared_local_venv

    deploy = run_playbook("site.yml", cfg, home, *args)
    assert deploy.rc == 0, deploy.output
    assert status()["size"] == 16 * MiB and capacity() == 16 * MiB
    before = pids(tmp_path)
    assert len(before) == 4, before  # 3 replicas + the controller
    # past the old end: refused (qemu-io reports the failed write)
    past = qemu_io("write -P 0x5a 24M 64k")
    assert "wrote 65536/65536" not in past.stdout, past.stdout

    # a guest keeps writing while the inventory's new size is applied
    q = QemuIoSession(f"iscsi://{PORTAL}:3260/{IQN}/0", 0, blocks=256, pause_ms=20)
    try:
        q.start()
        q.wait_writes(20)
        write_inventory(tmp_path, "32M")
        t0 = time.monotonic()
        grow = run_playbook("site.yml", cfg, home, "--diff", *args)
        t1 = time.monotonic()
        assert grow.rc == 0, grow.output
        q.wait_writes(20)
        got = q.stop_and_verify()
    finally:
        abandon_workloads()
    pause = longest_gap([t for t, _, _ in q.done], t0, t1)
    print(f"grow 16M -> 32M: site.yml {grow.seconds:.1f} s, longest qemu-io pause {pause:.2f} s, "
          f"{got['writes']} writes, {len(got['errors'])} failed")  # fmt: skip
    assert got["errors"] == [] and got["mismatches"] == [] and got["rc"] == 0, got
    assert "-gv: 16777216" in grow.output and "+gv: 33554432" in grow.output, grow.output
    st = status()
    assert st["size"] == 32 * MiB and st["state"] == "serving" and not st["degraded"], st
    assert capacity() == 32 * MiB
    for meta in tmp_path.glob("nodes/*/data/gv/meta.json"):
        assert json.loads(meta.read_text())["size"] == 32 * MiB, meta
    for env in tmp_path.glob("nodes/*/etc/*-gv.env"):
        assert "--size 32M" in env.read_text(), env.read_text()
    # online: no replica and not the controller was restarted
    assert pids(tmp_path) == before
    ok = qemu_io("write -P 0x5a 24M 64k", "read -P 0x5a 24M 64k")
    assert "wrote 65536/65536" in ok.stdout and "verification failed" not in ok.stdout, ok.stdout
    again = run_playbook("site.yml", cfg, home, *args)
    assert again.rc == 0 and again.changed() == 0, again.output

    # shrinking: refused before the roles run, naming the volume; nothing touched
    files = snapshot(tmp_path)
    write_inventory(tmp_path, "16M")
    shrink = run_playbook("site.yml", cfg, home, *args)
    assert shrink.rc != 0
    assert "volume 'gv' is 33554432 bytes but jiva_volumes gives size 16M" in shrink.output, (
        shrink.output
    )
    assert "a volume never shrinks" in shrink.output
    assert "TASK [install" not in shrink.output, "hosts were touched"
    assert snapshot(tmp_path) == files and pids(tmp_path) == before
    assert status()["size"] == 32 * MiB

    # with the controller down the API cannot tell: the replica module refuses on every host
    ctl = next(tmp_path.glob("nodes/*/run/controller-gv.pid"))
    os.kill(int(ctl.read_text()), signal.SIGTERM)
    eventually_sync(lambda: not Path(f"/proc/{before[str(ctl.relative_to(tmp_path))]}").exists(),
                    what="the controller's supervisor gone")  # fmt: skip
    files = snapshot(tmp_path)
    shrink = run_playbook("site.yml", cfg, home, *args)
    assert shrink.rc != 0
    for i in (1, 2, 3):  # every host refuses, naming its folder
        assert (
            f"the replica in {tmp_path}/nodes/n{i}/data/gv holds 33554432 bytes, more than the "
            "size given (16M" in shrink.output
        ), shrink.output
    assert snapshot(tmp_path) == files
    # the right size brings the controller back, at the grown size
    write_inventory(tmp_path, "32M")
    back = run_playbook("site.yml", cfg, home, *args)
    assert back.rc == 0, back.output
    st = status()
    assert st["size"] == 32 * MiB and st["state"] == "serving", st
    ok = qemu_io("read -P 0x5a 24M 64k")
    assert "read 65536/65536" in ok.stdout and "verification failed" not in ok.stdout, ok.stdout
