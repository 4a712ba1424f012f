"""Rotating the replica secret and the API token from the inventory (docs/ANSIBLE.md "Rotating
the replica secret or the API token") on three local "nodes", while a qemu-io session writes
through the portal: the new values with the old ones as `*_previous` and site.yml (its rolling
play restarts every process one at a time), then without `*_previous` and site.yml again. No
write fails, every write reads back; afterwards only the new token is accepted, and every
process runs with the new secret only."""

from __future__ import annotations

import json
import random
import time
import urllib.error
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

NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.71"
API = f"{PORTAL}:9881"
IQN = "iqn.2026-11.org.jiva-py:rv"
OLD = {"secret": "old-replica-secret-0123", "token": "old-api-token-0123456"}
NEW = {"secret": "new-replica-secret-4567", "token": "new-api-token-4567890"}


def write_inventory(base: Path, **secrets: str) -> Path:
    volume = {"name": "rv", "size": "16M", "replicas": 3, "portal": f"{PORTAL}:3260",
              "replica_port": 9781, "api_port": 9881}  # fmt: skip
    return local_inventory(base, [f"{NET}.{70 + i}" for i in range(1, 4)], [volume], **secrets)


def api_post(token: str) -> int:
    """HTTP status of a mutating call with this token (an empty body: 400 once authorised)."""
    req = urllib.request.Request(
        f"http://{API}/v1/replicas", data=b"{}", method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def status() -> dict:
    with urllib.request.urlopen(f"http://{API}/v1/volume", timeout=3) as r:
        return json.load(r)


def child_pids(base: Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): p.read_text().strip()
        for p in base.glob("nodes/*/run/*.pid.child")
    }


@pytest.mark.timeout(1800)  # three deploys/rolls of a local cluster on a loaded 2-core machine
@pytest.mark.usefixtures("local_daemons")
def test_secret_and_token_rotation_through_the_inventory(tmp_path, shared_local_venv):
    home = tmp_path / "ansible-home"
    cfg = ROOT / "ansible.cfg"
    wheels = frozen_wheelhouse(tmp_path)
    state = ["-e", f"jiva_ha_state_file={tmp_path / 'ha.json'}"]
    old = {"jiva_replica_secret": OLD["secret"], "jiva_api_token": OLD["token"]}
    inv = write_inventory(tmp_path, **old)
    args = ["-i", str(inv), *wheels, *state, *shared_local_venv]
    deploy = run_playbook("site.yml", cfg, home, *args)
    assert deploy.rc == 0, deploy.output
    assert api_post(OLD["token"]) == 400 and api_post(NEW["token"]) == 401
    first = child_pids(tmp_path)
    assert len(first) == 4, first

    q = QemuIoSession(f"iscsi://{PORTAL}:3260/{IQN}/0", 0, blocks=256, pause_ms=20)
    try:
        q.start()
        q.wait_writes(20)
        # roll 1: the new values, the old ones still accepted
        write_inventory(
            tmp_path,
            jiva_replica_secret=NEW["secret"], jiva_replica_secret_previous=OLD["secret"],
            jiva_api_token=NEW["token"], jiva_api_token_previous=OLD["token"],
        )  # fmt: skip
        t0 = time.monotonic()
        roll1 = run_playbook("site.yml", cfg, home, *args)
        t1 = time.monotonic()
        assert roll1.rc == 0, roll1.output
        q.wait_writes(20)
        second = child_pids(tmp_path)
        assert all(second[k] != v for k, v in first.items()), (first, second)
        assert api_post(OLD["token"]) == 400 and api_post(NEW["token"]) == 400
        # roll 2: the old values dropped
        write_inventory(
            tmp_path, jiva_replica_secret=NEW["secret"], jiva_api_token=NEW["token"]
        )  # fmt: skip
        t2 = time.monotonic()
        roll2 = run_playbook("site.yml", cfg, home, *args)
        t3 = time.monotonic()
        assert roll2.rc == 0, roll2.output
        q.wait_writes(20)
        got = q.stop_and_verify()
    finally:
        abandon_workloads()
    done = [t for t, _, _ in q.done]
    print(
        f"rotation: roll 1 {roll1.seconds:.1f} s (longest qemu-io pause "
        f"{longest_gap(done, t0, t1):.2f} s), roll 2 {roll2.seconds:.1f} s (longest pause "
        f"{longest_gap(done, t2, t3):.2f} s), {got['writes']} writes, {len(got['errors'])} failed"
    )
    assert got["errors"] == [] and got["mismatches"] == [] and got["rc"] == 0, got
    third = child_pids(tmp_path)
    assert all(third[k] != v for k, v in second.items()), (second, third)
    # only the new token now; every process runs with the new secret alone
    assert api_post(OLD["token"]) == 401 and api_post(NEW["token"]) == 400
    assert not list(tmp_path.glob("nodes/*/etc/*previous*"))
    for secret in tmp_path.glob("nodes/*/etc/*.secret"):
        assert secret.read_text() == NEW["secret"], secret
    st = status()
    assert st["state"] == "serving" and not st["degraded"], st
    again = run_playbook("site.yml", cfg, home, *args)
    assert again.rc == 0 and again.changed() == 0, again.output
