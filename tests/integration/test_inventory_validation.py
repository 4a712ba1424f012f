"""Bad inventories: site.yml must fail in its first (control-node) play with a message naming the
variable, before any host is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.sandbox import ROOT, run_playbook


def write_inventory(base: Path, volumes: list | None, hostvars: dict | None = None) -> Path:
    """Three local-connection nodes whose folders live under `base`/nodes; `volumes` as given."""
    inv = base / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    hosts = {f"n{i}": {"jiva_address": f"127.0.0.{60 + i}"} for i in range(1, 4)}
    for name, extra in (hostvars or {}).items():
        hosts[name].update(extra)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"jiva_nodes": {"hosts": hosts}}))
    node = f"{base}/nodes/{{{{ inventory_hostname }}}}"
    group = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "jiva_venv": f"{node}/venv",
        "jiva_config_dir": f"{node}/etc",
        "jiva_data_dir": f"{node}/data",
        "jiva_run_dir": f"{node}/run",
        "jiva_log_dir": f"{node}/log",
    }
    if volumes is not None:
        group["jiva_volumes"] = volumes
    (inv / "group_vars" / "jiva_nodes.yml").write_text(yaml.safe_dump(group))
    return inv


def good(name: str, **kw) -> dict:
    return {
        "name": name,
        "size": "16M",
        "replicas": 2,
        "portal": f"127.0.0.7{len(name)}:3260",
        **kw,
    }


CASES = {
    "more replicas than nodes": (
        [good("db", replicas=4)],
        None,
        "jiva_volumes[0] (volume 'db') asks for 4 replicas but only 3 eligible nodes exist",
    ),
    "duplicate names": (
        [good("db"), good("db", portal="127.0.0.99")],
        None,
        "duplicate volume name 'db' in jiva_volumes[0] and jiva_volumes[1]",
    ),
    "bad size": (
        [good("db", size="12X")],
        None,
        "jiva_volumes[0] (volume 'db').size: invalid size '12X'",
    ),
    "port clash": (
        [good("db", replica_port=9900), good("logs", replica_port=9900)],
        None,
        "port clash: jiva_volumes[1] (volume 'logs') replica_port 9900 is also the replica_port of volume 'db'",
    ),
    "missing portal": (
        [{"name": "db", "size": "16M", "replicas": 2}],
        None,
        "jiva_volumes[0] (volume 'db') has no 'portal'",
    ),
    "unknown pinned node": (
        [good("db", nodes=["n1", "nope"])],
        None,
        "jiva_volumes[0] (volume 'db').nodes names unknown host 'nope'",
    ),
    "witness without a third host": (
        [good("db", witness=True)],
        {"n3": {"jiva_eligible": False}},
        "jiva_volumes[0] (volume 'db').witness is true but no eligible host is left for the "
        "witness: it needs a third eligible host that holds no replica of the volume "
        "(eligible: n1, n2); add a host or set witness: false",
    ),
    "bad quorum": (
        [good("db", quorum="strict")],
        None,
        "jiva_volumes[0] (volume 'db').quorum must be 'majority' or 'off', got 'strict'",
    ),
    "one machine listed twice": (
        [good("db")],
        {"n1": {"ansible_host": "127.0.0.1"}, "n3": {"ansible_host": "127.0.0.1"}},
        "hosts 'n1' and 'n3' have the same ansible_host '127.0.0.1': they are one machine",
    ),
    "address out of range": (
        [good("db")],
        {"n2": {"jiva_address": "300.1.1.1"}},
        "jiva_address of host 'n2' is not a valid IPv4 address: '300.1.1.1'",
    ),
    "host_vars volume list": (
        [good("db")],
        {"n2": {"jiva_volumes": [good("db"), good("other", portal="127.0.0.88:3260")]}},
        "host 'n2' has a jiva_volumes that differs from the one of host 'n1': define jiva_volumes once",
    ),
    "slow replica factor not above 1": (
        [good("db")],
        {"n2": {"jiva_slow_replica_factor": 1, "jiva_slow_replica_floor": "-1"}},
        "host 'n2': jiva_slow_replica_floor must be seconds >= 0 (0 or off: no lag ejection),"
        " got '-1'; host 'n2': jiva_slow_replica_factor must be a number above 1",
    ),
    "missing jiva_address": (
        [good("db")],
        {"n2": {"jiva_address": ""}},
        "host n2: jiva_address must be set",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inventory_fails_before_any_host_changes(case, tmp_path):
    volumes, hostvars, message = CASES[case]
    inv = write_inventory(tmp_path, volumes, hostvars)
    run = run_playbook(
        "site.yml", ROOT / "ansible.cfg", tmp_path / "ansible-home", inventory=inv, timeout=120
    )
    assert run.rc != 0, run.output
    assert message in run.output, run.output
    # the failure came from the validation play: the deploy play never started
    assert "PLAY [Deploy jiva on the storage nodes]" not in run.output
    assert not (tmp_path / "nodes").exists()
    assert run.recap()["localhost"]["failed"] == 1
