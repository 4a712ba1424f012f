"""The collection as an operator receives it: `scripts/build-collection.sh` builds the tarball
(modules, roles, playbooks and the engine wheel), `ansible-galaxy collection install` puts it into
an empty folder, and an ansible-core of the LOWEST version `meta/runtime.yml` claims
(`requires_ansible`) deploys a local cluster from there with `ansible-playbook jiva.storage.site`:
another folder, its own venv for Ansible with only the collection's requirements.txt, no
PYTHONPATH, nothing of the checkout on any path."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from jiva_engine.ha import default_state_file
from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    COLLECTION,
    ROOT,
    PlaybookRun,
    local_daemons_fixture,
    local_inventory,
)

NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.41"


def lowest_core() -> str:
    """X.Y of the lowest ansible-core meta/runtime.yml's requires_ansible admits."""
    spec = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())["requires_ansible"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)(?:\.\d+)?", spec.strip())
    assert m, f"requires_ansible {spec!r}: expected a lower bound only"
    return f"{m.group(1)}.{m.group(2)}"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an operator's shell: no PYTHONPATH, no Ansible settings from here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON"))}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **extra)
    return env


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    """A venv with the lowest claimed ansible-core and the collection's Python requirements."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]  # fmt: skip
    core = lowest_core()
    subprocess.run([*pip, f"ansible-core=={core}.*", "-r", str(COLLECTION / "requirements.txt")],
                   check=True, timeout=600)  # fmt: skip
    out = subprocess.run([str(venv / "bin" / "ansible-playbook"), "--version"],
                         capture_output=True, text=True, check=True, env=clean_env())  # fmt: skip
    assert f"[core {core}." in out.stdout, out.stdout
    return venv


def playbook(venv: Path, cwd: Path, *args: str) -> PlaybookRun:
    start = time.monotonic()
    p = subprocess.run([str(venv / "bin" / "ansible-playbook"), *args], cwd=cwd,
                       env=clean_env(ANSIBLE_CONFIG=str(cwd / "ansible.cfg")),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    return PlaybookRun(p.returncode, p.stdout + p.stderr, time.monotonic() - start)


@pytest.mark.usefixtures("local_daemons")
def test_the_tarball_alone_deploys_a_cluster_with_the_lowest_claimed_ansible_core(
    tmp_path, core_venv
):
    # 1. build the tarball: the collection with its roles, playbooks and the engine wheel
    dist = tmp_path / "dist"
    built = subprocess.run([str(ROOT / "scripts" / "build-collection.sh"), str(dist)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = dist.glob("jiva-storage-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for member in ("roles/install/tasks/main.yml", "roles/controller/meta/argument_specs.yml",
                   "playbooks/site.yml", "playbooks/failover.yml", "playbooks/group_vars/all.yml",
                   "playbooks/tasks/secrets.yml", "plugins/modules/controller.py",
                   "requirements.txt", "LICENSE"):  # fmt: skip
        assert member in names, f"{member} is not in {tarball.name}"
    assert [n for n in names if re.fullmatch(r"roles/install/files/jiva_py-.*\.whl", n)], names
    assert not [n for n in names if n.startswith("tests/output")], "test output shipped"

    # 2. an empty folder of the operator's: the installed collection, an inventory, ansible.cfg
    site = tmp_path / "site"
    (site / "collections").mkdir(parents=True)
    inst = subprocess.run([str(core_venv / "bin" / "ansible-galaxy"), "collection", "install",
                           str(tarball), "-p", str(site / "collections")], cwd=site,
                          env=clean_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert inst.returncode == 0, inst.stdout + inst.stderr
    (site / "ansible.cfg").write_text(
        "[defaults]\ncollections_path = collections\ninventory = inventory\n"
        "home = .ansible\nlocal_tmp = .ansible/tmp\n"
    )
    volumes = [{"name": "tv1", "size": "16M", "replicas": 3, "portal": f"{PORTAL}:3260"}]
    nodes = tmp_path / "nodes-root"
    inv = local_inventory(nodes, [f"{NET}.{30 + i}" for i in range(1, 4)], volumes,
                          jiva_replica_port_base=9760, jiva_api_port_base=9860)  # fmt: skip
    (site / "inventory").symlink_to(inv)

    # 3. deploy from there with the lowest claimed ansible-core
    deploy = playbook(core_venv, site, "jiva.storage.site")
    print("deploy", round(deploy.seconds, 1))
    assert deploy.rc == 0 and deploy.failed() == 0, deploy.output
    with urllib.request.urlopen(f"http://{PORTAL}:9860/v1/volume", timeout=5) as r:
        st = json.load(r)
    assert st["state"] == "serving" and [x["mode"] for x in st["replicas"]] == ["RW"] * 3, st

    # the hosts' engine is the wheel that came in the tarball, not the checkout
    engine = subprocess.run([str(nodes / "venv" / "bin" / "python"), "-I", "-c",
                             "import jiva_engine; print(jiva_engine.__file__)"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, check=True)  # fmt: skip
    assert engine.stdout.startswith(str(nodes / "venv")), engine.stdout
    assert not engine.stdout.startswith(str(ROOT))

    # cluster state and secrets live next to the inventory, not inside the installed collection;
    # `jiva ha watch` finds the same state file by default
    state = inv / ".jiva-state" / "ha-state.json"
    assert "tv1" in json.loads(state.read_text())["volumes"]
    assert default_state_file(str(inv)) == str(state)
    assert not list((site / "collections").rglob("*ha-state*"))
    assert (inv / ".jiva-secrets" / "api-token").stat().st_mode & 0o777 == 0o600

    # the volume serves I/O through a real initiator
    url = f"iscsi://{PORTAL}:3260/iqn.2026-11.org.jiva-py:tv1/0"
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", url], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    read = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 64k", url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout

    # 4. the re-run changes nothing, and the teardown play of the collection stops everything
    again = playbook(core_venv, site, "jiva.storage.site")
    assert again.rc == 0 and again.changed() == 0, again.output
    down = playbook(core_venv, site, "jiva.storage.teardown")
    assert down.rc == 0, down.output
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{PORTAL}:9860/v1/volume", timeout=3)
