"""Pytest helpers for Ansible tests: test hosts (network namespaces + sshd) that are always torn
down, and a runner for ansible-playbook that parses the recap."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "collections" / "ansible_collections" / "jiva" / "storage"
BIN = Path(sys.executable).parent
_spec = importlib.util.spec_from_file_location("jiva_sandbox", ROOT / "scripts" / "sandbox.py")
assert _spec is not None and _spec.loader is not None
sandbox_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sandbox_mod)
Sandbox: Any = sandbox_mod.Sandbox  # scripts/sandbox.py: the test hosts (loaded by path)
_counter = itertools.count()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="test hosts need root (netns, mounts)")


@dataclass
class PlaybookRun:
    """The outcome of one ansible-playbook run."""

    rc: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """host -> {ok, changed, unreachable, failed, skipped, ...} from PLAY RECAP."""
        out = {}
        for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", self.output, re.M):
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out

    def changed(self) -> int:
        """Total changed tasks over all hosts."""
        return sum(h.get("changed", 0) for h in self.recap().values())

    def failed(self) -> int:
        """Total failed + unreachable over all hosts."""
        return sum(h.get("failed", 0) + h.get("unreachable", 0) for h in self.recap().values())


def ansible_env(config: Path, home: Path) -> dict[str, str]:
    """Environment for ansible-playbook with a given ansible.cfg and an Ansible home."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    return env


def run_playbook(
    playbook: str,
    config: Path,
    home: Path,
    *args: str,
    inventory: Path | None = None,
    timeout: float = 600,
) -> PlaybookRun:
    """Run `ansible-playbook playbooks/PLAYBOOK ARGS` from the checkout; return rc, output, time."""
    cmd = [str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / playbook), *args]
    if inventory is not None:
        cmd += ["-i", str(inventory)]
    start = time.monotonic()
    p = subprocess.run(
        cmd,
        cwd=ROOT,
        env=ansible_env(config, home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return PlaybookRun(p.returncode, p.stdout + p.stderr, time.monotonic() - start)


class HostsFactory:
    """Creates sandboxes on demand; `teardown()` removes every one of them."""

    def __init__(self) -> None:
        self.made: list = []

    def __call__(self, nodes: int) -> Any:
        """Bring up `nodes` test hosts in a fresh short folder under /tmp."""
        d = Path(tempfile.mkdtemp(prefix="jvsb", dir="/tmp"))
        sb = Sandbox(d)
        self.made.append(sb)
        sb.up(f"pt{os.getpid() % 10000}{next(_counter)}"[:8], nodes)
        return sb

    def teardown(self) -> None:
        """Tear down every sandbox made (also after a failed test)."""
        keep = os.environ.get("JIVA_SANDBOX_LOGS")  # a folder: keep each host's jiva logs there
        for sb in self.made:
            try:
                if keep:  # before down(), which removes the host folders
                    for h in sb.dir.glob("h*/var-lib-jiva/log"):
                        dest = Path(keep) / sb.dir.name / h.parts[-3]
                        shutil.copytree(h, dest, dirs_exist_ok=True)
                sb.down()
            finally:
                shutil.rmtree(sb.dir, ignore_errors=True)


@pytest.fixture(name="sandbox_hosts")
def sandbox_hosts_fixture():
    """Factory fixture: `sb = sandbox_hosts(4)` gives 4 SSH-reachable hosts, torn down at the end."""
    factory = HostsFactory()
    try:
        yield factory
    finally:
        factory.teardown()


def local_inventory(base: Path, addresses: list[str], volumes: list[dict], **group: Any) -> Path:
    """Write (or rewrite) an inventory of local "nodes" n1..nN under `base`: one loopback address
    each, the local connection, one venv for all (installed one host at a time), per-node
    folders under base/nodes/NODE, supervised daemons; `group` adds or overrides group vars.
    Returns the inventory folder (written as JSON, which YAML reads as it is)."""
    inv = base / "inventory"
    (inv / "group_vars").mkdir(parents=True, exist_ok=True)
    hosts = {f"n{i}": {"jiva_address": a} for i, a in enumerate(addresses, 1)}
    (inv / "hosts.yml").write_text(json.dumps({"jiva_nodes": {"hosts": hosts}}, indent=1))
    node = f"{base}/nodes/{{{{ inventory_hostname }}}}"
    values = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "jiva_venv": f"{base}/venv",
        "jiva_install_throttle": 1,
        "jiva_config_dir": f"{node}/etc",
        "jiva_data_dir": f"{node}/data",
        "jiva_run_dir": f"{node}/run",
        "jiva_log_dir": f"{node}/log",
        "jiva_service_manager": "daemon",
        "jiva_volumes": volumes,
        **group,
    }
    (inv / "group_vars" / "jiva_nodes.yml").write_text(json.dumps(values, indent=1))
    return inv


_session_wheelhouse: dict[str, Path] = {}  # "built": the session's wheelhouse


def _build_session_wheelhouse() -> Path:
    """The engine wheelhouse built once per pytest session (from the sources as they are at the
    first call), in a folder removed when the session ends."""
    built = _session_wheelhouse.get("built")
    if built is None or not list(built.glob("*.tar")):
        tmp = Path(tempfile.mkdtemp(prefix="jvwh", dir="/tmp"))
        atexit.register(shutil.rmtree, tmp, True)
        out = tmp / "wheelhouse"
        seed = ROOT / "build" / "wheelhouse"
        if seed.is_dir():
            shutil.copytree(seed, out)
            (out / ".src-key").unlink(missing_ok=True)
        subprocess.run(
            [str(ROOT / "scripts" / "build-wheelhouse.sh"), "--for", "/usr/bin/python3", str(out)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        _session_wheelhouse["built"] = built = out
    return built


IQN = "iqn.2026-11.org.jiva-py:{}"  # a deployed volume's target name (the collection's default)


def qemu_io(portal: str, volume: str, command: str) -> str:
    """Run one qemu-io command on a deployed volume through iSCSI; assert it succeeded."""
    url = f"iscsi://{portal}/{IQN.format(volume)}/0"
    p = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", command, url], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "failed" not in p.stdout.lower(), p.stdout + p.stderr
    return p.stdout


def frozen_wheelhouse(base: Path) -> list[str]:
    """The engine wheelhouse for the test hosts' Python (/usr/bin/python3, the default
    jiva_python) in `base`; return ansible-playbook args that ship it as is (so engine commits
    landing during a test do not count as changes between two runs). Built once per session and
    copied (a wheel build costs 10-25 s; every deploying module needs one)."""
    built = _build_session_wheelhouse()
    # not base/wheelhouse: that is the local hosts' own (the venv's folder + /wheelhouse)
    out = base / "control-wheelhouse"
    shutil.copytree(built, out)
    return ["-e", "jiva_build_wheelhouse=false", "-e", f"jiva_control_wheelhouse={out}"]


def stop_daemons(base: Path) -> None:
    """Stop every supervised jiva daemon whose pidfile lies under `base` (a test's folders):
    SIGTERM the supervisors, then SIGKILL supervisors and children that are still there."""
    import signal

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    pids: list[int] = []
    for f in list(base.rglob("*.pid")) + list(base.rglob("*.pid.child")):
        try:
            pid = int(f.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"jiva" in cmd or b"supervise" in cmd:
            pids.append(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(name="local_daemons")
def local_daemons_fixture(tmp_path):
    """Yield tmp_path; at teardown stop every supervised daemon started under it (also on failure)."""
    try:
        yield tmp_path
    finally:
        stop_daemons(tmp_path)


@dataclass
class Deployed:
    """4 test hosts with the volumes alpha (32M, 3 replicas) and beta (16M, 2 replicas + a
    witness) deployed by site.yml (`first` is that run); shared by the tests that start from this
    cluster (tests/integration/test_ansible_hosts_down.py, test_ansible_sandbox.py)."""

    sb: Any
    volumes: list[dict]
    cfg: Path
    args: list[str]  # the frozen wheelhouse and this cluster's failover record
    state_file: Path
    first: PlaybookRun
    # set by a test while it changes the cluster and cleared when it left it converged and
    # healthy (or left set: torn down, or the test failed midway): the next caller gets a fresh one
    dirty: bool = False

    def api(self, i: int) -> str:
        return f"{self.sb.free_address(i + 1)}:{9800 + i}"


class DeployedFactory:
    """Deploys the shared 4-host cluster on first use; again only after a test tore it down."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.hosts: HostsFactory | None = None
        self.current: Deployed | None = None

    def __call__(self) -> Deployed:
        if self.current is not None and not self.current.dirty:
            return self.current
        self.teardown()
        self.hosts = HostsFactory()
        sb = self.hosts(4)
        volumes = [
            {"name": "alpha", "size": "32M", "replicas": 3, "portal": f"{sb.free_address(1)}:3260"},
            {"name": "beta", "size": "16M", "replicas": 2, "portal": f"{sb.free_address(2)}:3260"},
        ]
        gv = sb.dir / "inventory" / "group_vars" / "jiva_nodes" / "volumes.yml"
        gv.write_text(json.dumps({"jiva_volumes": volumes}))  # (JSON is YAML)
        work = Path(tempfile.mkdtemp(prefix="dep", dir=self.base))
        state_file = work / "ha-state.json"  # not the checkout's failover record
        args = [*frozen_wheelhouse(work), "-e", f"jiva_ha_state_file={state_file}"]
        cfg = sb.dir / "ansible.cfg"
        first = run_playbook("site.yml", cfg, work / "ansible-home", *args)
        self.current = Deployed(sb, volumes, cfg, args, state_file, first)
        return self.current

    def teardown(self) -> None:
        """Remove the test hosts of the current cluster (if any)."""
        if self.hosts is not None:
            self.hosts.teardown()
        self.hosts, self.current = None, None
