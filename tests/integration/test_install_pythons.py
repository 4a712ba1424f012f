"""The engine is installed for each host's own Python and CPU: one wheelhouse per target (CPython
version, glibc floor, CPU) built on the control node with pip download --python-version/--platform.

- build-wheelhouse.sh --python 3.13 --platform aarch64 yields aarch64 cp313 wheels (from PyPI), a
  second run downloads nothing, and a target without wheels fails naming it;
- a local cluster whose three "hosts" run CPython 3.11, 3.12 and 3.13 (pyenv) as jiva_python,
  each with its own venv: every venv and every replica process runs its host's Python, the volume
  serves iSCSI I/O, a re-run changes nothing, a host whose Python changed gets a new venv, and a
  jiva_python that is too old fails naming jiva_python."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    COLLECTION,
    ROOT,
    local_daemons_fixture,
    local_inventory,
    run_playbook,
)

BUILD = ROOT / "scripts" / "build-wheelhouse.sh"
NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.41"
VERSIONS = ("3.11", "3.12", "3.13")


def find_python(version: str) -> str | None:
    """A CPython `version` on this machine: pyenv's first, then pythonX.Y on PATH."""
    for root in (Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")), Path.home() / ".pyenv"):
        for p in sorted(root.glob(f"versions/{version}.*/bin/python{version}"), reverse=True):
            if re.fullmatch(rf"{re.escape(version)}\.\d+", p.parent.parent.name):
                return str(p)
    return shutil.which(f"python{version}")


PYTHONS = {v: find_python(v) for v in VERSIONS}
MISSING = [v for v, p in PYTHONS.items() if p is None]


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BUILD), *args], capture_output=True, text=True, timeout=600, check=False
    )


def wheels(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.whl"))


def test_build_for_another_python_and_cpu(tmp_path):
    out = tmp_path / "wh"
    first = build("--python", "3.13", "--platform", "aarch64", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["changed", "cp313-manylinux_2_17_aarch64"]
    names = wheels(out / "cp313-manylinux_2_17_aarch64")
    for dep in ("aiohttp", "crc32c", "multidict", "yarl", "frozenlist"):  # compiled ones
        (whl,) = [n for n in names if n.startswith(f"{dep}-")]
        assert "-cp313-cp313-" in whl and "aarch64" in whl and "x86_64" not in whl, whl
    assert any(n.startswith("jiva_py-") and n.endswith("-py3-none-any.whl") for n in names)
    assert any(n.startswith("tabulate-") for n in names)
    tar = out / "cp313-manylinux_2_17_aarch64.tar"
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == names
    before = tar.stat().st_mtime_ns
    again = build("--python", "3.13", "--platform", "aarch64", str(out))
    assert again.stdout.split() == ["unchanged", "cp313-manylinux_2_17_aarch64"], again.stderr
    assert tar.stat().st_mtime_ns == before

    # crc32c (C) has no wheel for 32-bit ARM: refused, naming the target and the dependency
    arm = build("--python", "3.13", "--platform", "armv7l", str(out))
    assert arm.returncode == 2
    assert "no wheels for target cp313-manylinux_2_17_armv7l" in arm.stderr, arm.stderr
    assert "crc32c" in arm.stderr, arm.stderr
    assert not (out / "cp313-manylinux_2_17_armv7l.tar").exists()
    bad = build("--platform", "riscv64", str(out))
    assert bad.returncode == 2 and "--platform 'riscv64': one of" in bad.stderr, bad.stderr


def test_a_host_gets_the_archive_of_its_python_and_cpu_with_the_highest_glibc_floor(tmp_path):
    """roles/install/files/select_wheelhouse.py, as the role runs it on the control node."""
    for name, body in [("cp313-manylinux_2_17_aarch64", b"a"), ("cp313-manylinux_2_28_aarch64", b"b"),
                       ("cp313-manylinux_2_36_x86_64", b"c"), ("cp312-manylinux_2_17_aarch64", b"d"),
                       ("not-a-target", b"e")]:  # fmt: skip
        (tmp_path / f"{name}.tar").write_bytes(body)
    wanted = ["cp313-manylinux_2_39_aarch64", "cp313-manylinux_2_27_aarch64",
              "cp313-manylinux_2_12_aarch64", "cp313-manylinux_2_35_x86_64",
              "cp311-manylinux_2_36_x86_64"]  # fmt: skip
    p = subprocess.run(
        [sys.executable, str(COLLECTION / "roles/install/files/select_wheelhouse.py"), str(tmp_path),
         *wanted],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    got = json.loads(p.stdout)
    picked = {w: (g or {}).get("target") for w, g in got.items()}
    assert picked == {
        "cp313-manylinux_2_39_aarch64": "cp313-manylinux_2_28_aarch64",  # the newest it can run
        "cp313-manylinux_2_27_aarch64": "cp313-manylinux_2_17_aarch64",
        "cp313-manylinux_2_12_aarch64": None,  # glibc older than every archive
        "cp313-manylinux_2_35_x86_64": None,  # built for glibc 2.36: too new for it
        "cp311-manylinux_2_36_x86_64": None,  # no CPython 3.11 archive
    }
    assert got["cp313-manylinux_2_39_aarch64"]["sha256"] == hashlib.sha256(b"b").hexdigest()
    assert got["cp313-manylinux_2_39_aarch64"]["tar"] == str(
        tmp_path / "cp313-manylinux_2_28_aarch64.tar"
    )


def host_vars(inv: Path, base: Path, pythons: dict[str, str]) -> None:
    """Give each node its own jiva_python and venv (host vars beat the group's shared venv; the
    host wheelhouse, next to the venv, is the node's own too)."""
    hosts = json.loads((inv / "hosts.yml").read_text())
    for name, py in pythons.items():
        venv = f"{base}/nodes/{name}/venv"
        hosts["jiva_nodes"]["hosts"][name].update(jiva_python=py, jiva_venv=venv)
    (inv / "hosts.yml").write_text(json.dumps(hosts, indent=1))


def venv_version(base: Path, node: str) -> str:
    p = subprocess.run(
        [str(base / "nodes" / node / "venv" / "bin" / "python"), "-c", "import sys, aiohttp, crc32c, "
         "jiva_engine; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return p.stdout.strip()


def task_block(output: str, task: str) -> str:
    """The output lines of the install role's task named `task...` (up to the next task)."""
    parts = re.split(r"^TASK \[", output, flags=re.M)
    (block,) = [p for p in parts if p.startswith(f"jiva.storage.install : {task}")]
    return block


def replica_python(base: Path, node: str) -> str:
    """The interpreter binary the node's replica process runs (its child of the supervisor)."""
    pid = int((base / "nodes" / node / "run" / "replica-pv.pid.child").read_text())
    return os.path.realpath(f"/proc/{pid}/exe")


@pytest.mark.timeout(2400)  # three deploys of a local cluster on a loaded 2-core machine
@pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs CPython {', '.join(MISSING)} (pyenv under $PYENV_ROOT or /root/.pyenv, or "
    "pythonX.Y on PATH) to run hosts with different Pythons",
)
@pytest.mark.usefixtures("local_daemons")
def test_hosts_with_different_pythons(tmp_path):
    volumes = [{"name": "pv", "size": "16M", "replicas": 3, "portal": f"{PORTAL}:3260"}]
    inv = local_inventory(
        tmp_path, [f"{NET}.{30 + i}" for i in range(1, 4)], volumes,
        jiva_replica_port_base=9750, jiva_api_port_base=9850,
    )  # fmt: skip
    py = {v: str(p) for v, p in PYTHONS.items()}
    nodes = {"n1": py["3.11"], "n2": py["3.12"], "n3": py["3.13"]}
    host_vars(inv, tmp_path, nodes)
    home, cfg = tmp_path / "ansible-home", ROOT / "ansible.cfg"
    wh = tmp_path / "control-wheelhouse"
    args = ["-i", str(inv), "-e", f"jiva_wheelhouse_dir={wh}",
            "-e", f"jiva_ha_state_file={tmp_path / 'ha-state.json'}"]  # fmt: skip

    deploy = run_playbook("site.yml", cfg, home, *args, timeout=1800)
    print("deploy", round(deploy.seconds, 1))
    assert deploy.rc == 0, deploy.output
    # one wheelhouse per target, with that Python's compiled wheels
    glibc = str(os.confstr("CS_GNU_LIBC_VERSION")).split()[1].replace(".", "_")
    for v in VERSIONS:
        cp = "cp" + v.replace(".", "")
        target = wh / f"{cp}-manylinux_{glibc}_x86_64"
        assert (wh / f"{target.name}.tar").is_file(), sorted(os.listdir(wh))
        (aiohttp,) = [n for n in wheels(target) if n.startswith("aiohttp-")]
        (crc,) = [n for n in wheels(target) if n.startswith("crc32c-")]
        assert f"-{cp}-{cp}-" in aiohttp and f"-{cp}-{cp}-" in crc, (aiohttp, crc)
    for (node, exe), v in zip(nodes.items(), VERSIONS, strict=True):
        assert venv_version(tmp_path, node) == v
        # the replica runs under the node's own interpreter (the venv's python links to it)
        assert replica_python(tmp_path, node) == os.path.realpath(exe), node
        marker = (tmp_path / "nodes" / node / "venv" / ".jiva-engine-revision").read_text().split()
        assert marker[0] == f"cp{v.replace('.', '')}-manylinux_{glibc}_x86_64", marker

    # the volume (three replicas under three Pythons) serves I/O through iSCSI
    url = f"iscsi://{PORTAL}:3260/iqn.2026-11.org.jiva-py:pv/0"
    io = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "read -P 0x5a 1M 256k",
         "-c", "read -P 0 0 64k", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout
    assert io.stdout.count("read 262144/262144 bytes") == 1, io.stdout

    again = run_playbook("site.yml", cfg, home, *args, timeout=1800)
    print("re-run", round(again.seconds, 1))
    assert again.rc == 0 and again.changed() == 0, again.output

    # n3's Python becomes 3.12: a new venv with 3.12's wheels, its replica restarted under it;
    # shipped as prebuilt (offline): nothing is built, the existing cp312 archive serves it
    nodes["n3"] = py["3.12"]
    host_vars(inv, tmp_path, nodes)
    tars = {t.name: t.stat().st_mtime_ns for t in wh.glob("*.tar")}
    moved = run_playbook(
        "site.yml", cfg, home, *args, "-e", "jiva_build_wheelhouse=false", timeout=1800
    )
    print("python change", round(moved.seconds, 1))
    assert moved.rc == 0, moved.output
    assert {t.name: t.stat().st_mtime_ns for t in wh.glob("*.tar")} == tars
    assert "skipping: [n1]" in task_block(moved.output, "Build the engine wheelhouse")
    assert venv_version(tmp_path, "n3") == "3.12"
    for task in ("Create the virtual environment", "Install the engine from the wheelhouse"):
        block = task_block(moved.output, task)
        assert "changed: [n3]" in block and "changed: [n1]" not in block, block
        assert "changed: [n2]" not in block, block
    # (site.yml restarted it: its config names the new archive's revision)
    assert replica_python(tmp_path, "n3") == os.path.realpath(py["3.12"])

    # a Python too old for the engine: refused before anything is installed, naming jiva_python
    old = find_python("3.10")
    if old is not None:
        nodes["n3"] = old
        host_vars(inv, tmp_path, nodes)
        refused = run_playbook("site.yml", cfg, home, *args, "--tags", "jiva_install")
        assert refused.rc != 0
        assert f"jiva_python={old} on n3 is Python 3.10, older than 3.11" in refused.output, (
            refused.output
        )
