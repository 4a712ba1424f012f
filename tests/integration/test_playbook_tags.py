"""site.yml's tags: `--tags jiva_controller` (or jiva_install, jiva_replica, jiva_witness, ...)
runs that part plus what every part needs (validation, placement), and nothing else."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def listed(tags: str) -> str:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(ROOT / "inventory/local"),
         str(ROOT / "playbooks/site.yml"), "--list-tasks", "--tags", tags],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # (role argument-spec checks are tagged `always`: they are not the role's work)
    return "\n".join(ln for ln in run.stdout.splitlines() if "Validating arguments" not in ln)


@pytest.mark.parametrize(
    ("tag", "role"),
    [
        ("jiva_install", "install"),
        ("jiva_witness", "witness"),
        ("jiva_replica", "replica"),
        ("jiva_controller", "controller"),
    ],  # fmt: skip
)
def test_a_role_tag_runs_that_role_after_validation_and_placement(tag, role):
    out = listed(tag)
    assert "Validate the volumes and compute their placement" in out
    assert "Place the volumes, keeping existing replicas" in out
    roles = set(re.findall(r"^\s+jiva\.storage\.(\w+) : ", out, re.M))
    assert roles == {role}, out
    assert ("Grow volumes online" in out) is False


def test_the_grow_tag_grows_without_touching_the_roles():
    out = listed("jiva_grow")
    assert "Grow volumes online" in out and "Refuse shrinking a volume" in out
    assert not re.findall(r"^\s+jiva\.storage\.(\w+) : ", out, re.M), out
