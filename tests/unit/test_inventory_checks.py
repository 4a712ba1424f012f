"""The validation play's whole-inventory checks (module_utils/jiva_inventory.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_path = (
    Path(__file__).resolve().parents[2]
    / "collections/ansible_collections/jiva/storage/plugins/module_utils/jiva_inventory.py"
)
_spec = importlib.util.spec_from_file_location("jiva_inventory", _path)
assert _spec is not None and _spec.loader is not None
INV = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(INV)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "127.0.0.11", "fd00::5", "storage-1", "node1.example.org", "a.b."]
)
def test_good_addresses_pass(address):
    assert INV.address_problem("n1", address) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("300.1.1.1", "not a valid IPv4 address"),
        ("10.0.0", "not a valid IPv4 address"),
        ("0.0.0.0", "which no other host can connect to"),
        ("::", "which no other host can connect to"),
        ("node_1", "neither an IP address nor a host name"),
        ("-bad.example", "neither an IP address nor a host name"),
        ("a" * 64 + ".example", "neither an IP address nor a host name"),
    ],
)
def test_bad_addresses_are_named(address, why):
    msg = INV.address_problem("n2", address)
    assert msg is not None and why in msg and "host 'n2'" in msg


def host(name, address, ansible_host=None, volumes=None, set_=True):
    return {"name": name, "address": address, "ansible_host": ansible_host,
            "volumes_set": set_, "volumes": volumes}  # fmt: skip


def test_whole_inventory_problems_are_all_reported():
    vols = [{"name": "db"}]
    ok = [host("a", "10.0.0.1", "h1", vols), host("b", "10.0.0.2", "h2", vols)]
    assert INV.inventory_problems(ok) == []
    bad = ok + [
        host("c", "10.0.0.3", "h1", vols),
        host("d", "999.0.0.1", None, vols),
        host("e", "10.0.0.5", None, [{"name": "other"}]),
        host("f", "10.0.0.6", None, None, set_=False),
    ]
    problems = INV.inventory_problems(bad)
    assert len(problems) == 4, problems
    assert "hosts 'a' and 'c' have the same ansible_host 'h1'" in problems[0]
    assert "'999.0.0.1'" in problems[1]
    assert "host 'e' has a jiva_volumes that differs" in problems[2]
    assert "host 'f' has a jiva_volumes that differs" in problems[3]


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("slow_replica_floor", "1.5", "1.5"),
        ("slow_replica_floor", 2, "2"),
        ("slow_replica_floor", "off", "off"),
        ("slow_replica_floor", False, "off"),  # a bare YAML off
        ("slow_replica_floor", "0", "off"),  # 0 and off are one setting (one fingerprint)
        ("slow_replica_factor", 4.0, "4"),
        ("slow_replica_factor", "1.5", "1.5"),
        ("slow_replica_factor", 0, "off"),
        ("slow_replica_window", "10", "10"),
        ("slow_replica_window", "OFF", "off"),
        ("rebuild_rate", 50, "50"),
        ("rebuild_rate", "12.5", "12.5"),
        ("rebuild_pacing", "on", "on"),
        ("rebuild_pacing", True, "on"),
        ("rebuild_pacing", False, "off"),
        ("rebuild_pacing", "off", "off"),
        ("slow_replica_factor", "", None),  # empty: the engine's default, no flag
        ("rebuild_pacing", None, None),
    ],
)
def test_controller_options_become_flag_values(option, value, flag):
    assert INV.controller_option(option, value) == flag


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("slow_replica_floor", "-1", "seconds >= 0"),
        ("slow_replica_floor", "soon", "seconds >= 0"),
        ("slow_replica_floor", True, "seconds >= 0"),
        ("slow_replica_factor", "1", "a number above 1"),
        ("slow_replica_factor", 0.5, "a number above 1"),
        ("slow_replica_factor", "-3", "a number above 1"),
        ("slow_replica_window", "inf", "seconds >= 0"),
        ("rebuild_rate", "0", "a positive number (MiB/s)"),
        ("rebuild_rate", "off", "a positive number (MiB/s)"),
        ("rebuild_rate", -5, "a positive number (MiB/s)"),
        ("rebuild_pacing", "sometimes", "on or off"),
    ],
)
def test_bad_controller_options_are_refused_naming_the_variable(option, value, why):
    with pytest.raises(ValueError, match="must be " + why.replace("(", r"\(").replace(")", r"\)")):
        INV.controller_option(option, value)
    good = host("a", "10.0.0.1")
    # (a good value of another option beside it is no problem)
    bad = dict(host("b", "10.0.0.2"), controller_options={"rebuild_rate": "8", option: value})
    problems = INV.inventory_problems([good, bad])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"host 'b': jiva_{option} must be {why}"), problems
    assert problems[0].endswith(f"got {value!r}"), problems
