"""Stable ports and volume removal with site.yml on three local "nodes" (loopback addresses, local
connection): three volumes deployed; the middle one marked `state: absent` is stopped and
unconfigured everywhere while the other two keep their ports and their processes (PIDs
unchanged) and serve the data written before; its data stays until `delete_data: true`; its entry
then leaves the list and the others are reordered (nothing changes); `jiva_volumes: []` is
refused before anything changes."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pytest

from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    ROOT,
    frozen_wheelhouse,
    local_daemons_fixture,
    local_inventory,
    qemu_io,
    run_playbook,
)
from tests.waiting import eventually_sync

NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
RBASE, ABASE = 9760, 9860


def volumes() -> list[dict]:
    return [
        {"name": "pv1", "size": "16M", "replicas": 3, "portal": f"{NET}.51:3260"},
        {"name": "pv2", "size": "16M", "replicas": 2, "portal": f"{NET}.52:3260"},  # + witness
        {"name": "pv3", "size": "16M", "replicas": 3, "portal": f"{NET}.53:3260"},
    ]


def write_inventory(base: Path, vols: list[dict]) -> Path:
    return local_inventory(
        base, [f"{NET}.{30 + i}" for i in range(1, 4)], vols,
        jiva_replica_port_base=RBASE, jiva_api_port_base=ABASE,
    )  # fmt: skip


def api_state(api: str) -> dict:
    with urllib.request.urlopen(f"http://{api}/v1/volume", timeout=3) as r:
        return json.load(r)


def serving(api: str) -> bool:
    try:
        return api_state(api)["state"] == "serving"
    except OSError:
        return False


def pids(base: Path, volume: str) -> dict[str, str]:
    """{node/KIND: jiva child PID} of every supervised process of `volume`."""
    out = {}
    for f in base.glob(f"nodes/*/run/*-{volume}.pid.child"):
        out[f"{f.parent.parent.name}/{f.name.split('-')[0]}"] = f.read_text().strip()
    return out


@pytest.mark.usefixtures("local_daemons")
def test_remove_a_volume_from_the_middle_keeps_the_others(tmp_path, shared_local_venv):
    vols = volumes()
    inv = write_inventory(tmp_path, vols)
    home, cfg = tmp_path / "ansible-home", ROOT / "ansible.cfg"
    state_file = tmp_path / "ha-state.json"
    args = ["-i", str(inv), *frozen_wheelhouse(tmp_path), "-e", f"jiva_ha_state_file={state_file}"]
    args += shared_local_venv

    deploy = run_playbook("site.yml", cfg, home, *args)
    print(f"\ndeploy of 3 volumes: {deploy.seconds:.1f}s")
    assert deploy.rc == 0, deploy.output
    record = json.loads(state_file.read_text())
    assert record["ports"] == {
        f"pv{i}": {"replica_port": RBASE + i - 1, "api_port": ABASE + i - 1} for i in (1, 2, 3)
    }
    assert sorted(record["volumes"]) == ["pv1", "pv2", "pv3"]
    for i in (1, 3):
        assert serving(f"{NET}.5{i}:{ABASE + i - 1}")
        qemu_io(f"{NET}.5{i}:3260", f"pv{i}", f"write -P 0x{i}{i} 1M 256k")
    keep = {v: pids(tmp_path, v) for v in ("pv1", "pv3")}
    assert len(keep["pv1"]) == 4 and len(keep["pv3"]) == 4, keep  # 3 replicas + a controller
    pv2_data = sorted(
        p.parent.parent.parent.name for p in tmp_path.glob("nodes/*/data/pv2/meta.json")
    )
    wit = list(tmp_path.glob("nodes/*/data/_witness/pv2/meta.json"))
    assert len(pv2_data) == 2 and len(wit) == 1, (pv2_data, wit)

    # the middle volume marked absent: stopped and unconfigured everywhere, its data kept
    vols[1]["state"] = "absent"
    write_inventory(tmp_path, vols)
    removed = run_playbook("site.yml", cfg, home, *args)
    print(f"site.yml removing pv2: {removed.seconds:.1f}s")
    assert removed.rc == 0, removed.output
    assert "removed (stopped and unconfigured on every host reached): pv2 (data kept)" in " ".join(
        removed.output.split()
    ), removed.output
    assert not list(tmp_path.glob("nodes/*/etc/*-pv2.*")), "pv2's config is left"
    assert not list(tmp_path.glob("nodes/*/run/*-pv2.pid*")), "pv2's processes are left"
    eventually_sync(lambda: not serving(f"{NET}.52:{ABASE + 1}"), what="pv2's controller gone")
    assert (
        sorted(p.parent.parent.parent.name for p in tmp_path.glob("nodes/*/data/pv2/meta.json"))
        == pv2_data
    )
    assert all(w.exists() for w in wit)
    for v in ("pv1", "pv3"):
        assert pids(tmp_path, v) == keep[v], f"{v} was restarted"
    for i in (1, 3):
        assert serving(f"{NET}.5{i}:{ABASE + i - 1}")
        qemu_io(f"{NET}.5{i}:3260", f"pv{i}", f"read -P 0x{i}{i} 1M 256k")
    record = json.loads(state_file.read_text())
    assert record["ports"]["pv2"] == {
        "replica_port": RBASE + 1,
        "api_port": ABASE + 1,
        "state": "absent",
    }
    assert sorted(record["volumes"]) == ["pv1", "pv3"]

    # the second flag deletes its data (replica folders and the witness metadata)
    vols[1]["delete_data"] = True
    write_inventory(tmp_path, vols)
    purge = run_playbook("site.yml", cfg, home, *args)
    assert purge.rc == 0, purge.output
    assert "pv2 (data deleted)" in purge.output, purge.output
    assert not list(tmp_path.glob("nodes/*/data/pv2")) and not any(w.exists() for w in wit)
    assert list(tmp_path.glob("nodes/*/data/pv1/meta.json")), "another volume's data went too"

    # the entry leaves the list and the other two are reordered: nothing moves, nothing restarts
    write_inventory(tmp_path, [vols[2], vols[0]])
    again = run_playbook("site.yml", cfg, home, *args)
    print(f"site.yml with the list reordered: {again.seconds:.1f}s")
    assert again.rc == 0 and again.changed() == 0, again.output
    assert "pv2" not in json.loads(state_file.read_text())["ports"]
    for v in ("pv1", "pv3"):
        assert pids(tmp_path, v) == keep[v], f"{v} was restarted"

    # an empty list while volumes run is refused before anything changes on a host
    write_inventory(tmp_path, [])
    empty = run_playbook("site.yml", cfg, home, *args)
    assert empty.rc != 0, empty.output
    flat = " ".join(empty.output.split())
    assert "jiva_volumes lists no volume but volumes run: volume 'pv1' on n" in flat, flat
    assert "jiva_remove_unlisted_volumes=true" in flat and "state: absent" in flat, flat
    assert empty.changed() == 0, empty.output
    for v in ("pv1", "pv3"):
        assert pids(tmp_path, v) == keep[v], f"{v} was touched"
    # so is a list that drops a running volume without state: absent
    write_inventory(tmp_path, [vols[0]])
    dropped = run_playbook("site.yml", cfg, home, *args)
    assert dropped.rc != 0 and "volumes run that are not in jiva_volumes: volume 'pv3'" in " ".join(
        dropped.output.split()
    ), dropped.output

    # on request the unlisted volume is stopped and unconfigured everywhere, its data kept
    stop = run_playbook("site.yml", cfg, home, *args, "-e", "jiva_remove_unlisted_volumes=true")
    assert stop.rc == 0, stop.output
    assert "pv3 (data kept)" in stop.output, stop.output
    assert not list(tmp_path.glob("nodes/*/etc/*-pv3.*")) and not pids(tmp_path, "pv3")
    eventually_sync(lambda: not serving(f"{NET}.53:{ABASE + 2}"), what="pv3's controller gone")
    assert len(list(tmp_path.glob("nodes/*/data/pv3/meta.json"))) == 3, "pv3's data went"
    assert pids(tmp_path, "pv1") == keep["pv1"], "pv1 was restarted"
    qemu_io(f"{NET}.51:3260", "pv1", "read -P 0x11 1M 256k")
