"""Rolling restart and upgrade on three local "nodes" (loopback addresses, local connection).

site.yml never restarts the running services of a changed config at once: a changed controller
setting is applied by its rolling play, one controller at a time; a new engine build +
`upgrade.yml`, and `upgrade.yml -e jiva_force_restart=true` with nothing changed, each replace
every replica, witness and controller process one at a time (PIDs checked) while a qemu-io session per volume writes through the portals: no failed write,
every write reads back, and no volume ever has two voters down at once (sampled from the APIs).
A degraded volume stops the roll before its first step, naming the volume; with a config change
the roll stops before the step that needs it, leaves the rest stale (node_state) and the next run
finishes it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.ha_harness import QemuIoSession, abandon_workloads, longest_gap
from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    BIN,
    ROOT,
    ansible_env,
    frozen_wheelhouse,
    local_daemons_fixture,
    local_inventory,
    run_playbook,
)
from tests.waiting import eventually_sync

# a loopback /24 of its own per run, so concurrent runs on one machine do not clash
NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTALS = {"uv1": f"{NET}.41", "uv2": f"{NET}.42"}
APIS = {"uv1": f"{NET}.41:9870", "uv2": f"{NET}.42:9871"}


def write_inventory(base: Path) -> Path:
    volumes = [
        # controllers on different nodes, so "one at a time" is not just one host's loop
        {"name": "uv1", "size": "16M", "replicas": 3, "portal": f"{PORTALS['uv1']}:3260",
         "controller": "n1"},
        # 2 replicas on 3 nodes: a witness on the third node
        {"name": "uv2", "size": "16M", "replicas": 2, "portal": f"{PORTALS['uv2']}:3260",
         "nodes": ["n2", "n3"], "controller": "n2"},
    ]  # fmt: skip
    return local_inventory(
        base, [f"{NET}.{30 + i}" for i in range(1, 4)], volumes,
        jiva_replica_port_base=9770, jiva_api_port_base=9870,
    )  # fmt: skip


def api_state(vol: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{APIS[vol]}/v1/volume", timeout=1) as r:
            return json.load(r)
    except OSError:
        return None


def healthy(vol: str) -> bool:
    st = api_state(vol)
    return bool(st and st["state"] == "serving" and not st["degraded"])


def services(base: Path) -> dict[str, int]:
    """{"NODE/KIND-VOL": jiva child PID} of every supervised service under `base`."""
    out = {}
    for f in base.glob("nodes/*/run/*.pid.child"):
        out[f"{f.parent.parent.name}/{f.name.removesuffix('.pid.child')}"] = int(f.read_text())
    return out


class Sampler:
    """Polls both volumes' APIs every 50 ms: per volume the most voters (replicas not RW,
    witnesses not ok) seen down at once, and the times both APIs were unreachable together."""

    def __init__(self) -> None:
        self.max_down = {v: 0 for v in APIS}
        self.worst: dict[str, dict | None] = {v: None for v in APIS}
        self.api_down: dict[str, list[float]] = {v: [] for v in APIS}
        self.both_down = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            down_apis = 0
            for v in APIS:
                st = api_state(v)
                if st is None:
                    self.api_down[v].append(now)
                    down_apis += 1
                    continue
                if st["state"] != "serving":
                    continue  # a (re)starting controller lists its voters before it claimed them
                down = sum(r["mode"] != "RW" for r in st["replicas"])
                down += sum(w["state"] != "ok" for w in st.get("witnesses") or [])
                if down > self.max_down[v]:
                    self.max_down[v], self.worst[v] = down, st
            self.both_down += down_apis == len(APIS)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)


def qemu(vol: str) -> QemuIoSession:
    url = f"iscsi://{PORTALS[vol]}:3260/iqn.2026-11.org.jiva-py:{vol}/0"
    s = QemuIoSession(url, offset=4 << 20, blocks=64, pause_ms=50, timeout=120)
    s.start()
    s.wait_writes(5)
    return s


def node_state(base: Path, node: str) -> dict:
    """jiva.storage.node_state of one local node (an ad-hoc run; its JSON result)."""
    n = base / "nodes" / node
    args = f"config_dir={n}/etc run_dir={n}/run data_dir={n}/data service_manager=daemon"
    env = {
        **ansible_env(ROOT / "ansible.cfg", base / "ansible-home"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
    }
    p = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", "jiva.storage.node_state", "-a", args, "-o"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.split("=>", 1)[1])


def new_wheelhouse(base: Path) -> Path:
    """A copy of the test's wheelhouse (a folder of per-target wheelhouses) with one more file in
    each target: other archives, so another engine revision (their sha256), same wheels."""
    src, out = base / "control-wheelhouse", base / "control-wheelhouse2"
    shutil.copytree(src, out)
    for target in (t for t in out.iterdir() if t.is_dir()):
        (target / "BUILD-NOTE").write_text("a rebuilt engine\n")
        with tarfile.open(f"{target}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(os.listdir(target)):
                if name.endswith(".whl") or name == "BUILD-NOTE":
                    tar.add(target / name, arcname=name)
    return out


def restarts(base: Path) -> list[tuple[float, str]]:
    """(monotonic time, "NODE/KIND-VOL") of each service's last (re)start, from its start record."""
    shift = time.time() - time.monotonic()
    out = []
    for f in base.glob("nodes/*/run/*.started"):
        out.append((f.stat().st_mtime - shift, f"{f.parent.parent.name}/{f.stem}"))
    return sorted(out)


def check(sessions: dict[str, QemuIoSession], t0: float, t1: float, base: Path) -> dict[str, str]:
    """Stop the qemu-io sessions, verify every write; return each one's longest pause in [t0, t1]
    with the service (re)started last before it ended."""
    gaps = {}
    marks = restarts(base)
    for vol, s in sessions.items():
        done = sorted(t for t in s.completions() if t0 <= t <= t1)
        edges = list(zip([t0, *done], [*done, t1], strict=True))
        a, b = max(edges, key=lambda e: e[1] - e[0])
        near = [name for t, name in marks if t <= b]
        gaps[vol] = f"{b - a:.2f} s (around {near[-1] if near else '-'})"
        assert abs((b - a) - longest_gap(s.completions(), t0, t1)) < 1e-6
        res = s.stop_and_verify()
        errors, mismatches = res["errors"], res["mismatches"]
        assert errors == [] and mismatches == [], (vol, errors, mismatches)
        assert res["writes"] > 10 and res["rc"] == 0, (vol, res["output"][-2000:])
    return gaps


@pytest.mark.timeout(1800)  # 4 deploys/rolls of a local cluster on a loaded 2-core machine
@pytest.mark.usefixtures("local_daemons")
def test_rolling_restart_and_upgrade(tmp_path, shared_local_venv):
    inv = write_inventory(tmp_path)
    home = tmp_path / "ansible-home"
    cfg = ROOT / "ansible.cfg"
    wheels = frozen_wheelhouse(tmp_path)
    base_args = ["-i", str(inv), *wheels, "-e", f"jiva_ha_state_file={tmp_path / 'ha-state.json'}"]
    base_args += shared_local_venv
    frozen = 0
    try:
        deploy = run_playbook("site.yml", cfg, home, *base_args)
        print("deploy", round(deploy.seconds, 1))
        assert deploy.rc == 0, deploy.output
        eventually_sync(lambda: all(healthy(v) for v in APIS), what="both volumes healthy")
        first = services(tmp_path)
        assert len(first) == 3 + 2 + 1 + 2, first  # replicas, witness, controllers
        # a first deploy starts everything at once: nothing for the rolling play
        assert "TASK [Restart the" not in deploy.output, deploy.output

        # 1. a controller setting changes: site.yml rolls the two controllers, one at a time
        sessions = {v: qemu(v) for v in APIS}
        t0 = time.monotonic()
        with Sampler() as smp:
            changed = run_playbook(
                "site.yml", cfg, home, *base_args, "-e", "jiva_replica_timeout=4"
            )
        t1 = time.monotonic()
        assert changed.rc == 0, changed.output
        gaps = check(sessions, t0, t1, tmp_path)
        after = services(tmp_path)
        ctl = {k for k in first if "/controller-" in k}
        assert {k for k in first if first[k] != after.get(k)} == ctl, (first, after)
        assert smp.both_down == 0, "both controllers were down at the same time"
        for env in tmp_path.glob("nodes/*/etc/controller-*.env"):
            assert "--replica-timeout 4" in env.read_text()
        print(f"config change: site.yml {changed.seconds:.1f} s, longest pause {gaps}")
        again = run_playbook("site.yml", cfg, home, *base_args, "-e", "jiva_replica_timeout=4")
        assert again.rc == 0 and again.changed() == 0, again.output

        # 2. a new engine build (another wheelhouse archive: another revision), upgrade.yml:
        # every process replaced, one at a time; then the same with jiva_force_restart=true and
        # nothing changed (after OS patches)
        args = [
            *base_args,
            "-e",
            "jiva_replica_timeout=4",
            "-e",
            f"jiva_control_wheelhouse={new_wheelhouse(tmp_path)}",
        ]
        for what, extra in (
            ("new engine revision", []),
            ("jiva_force_restart=true", ["-e", "jiva_force_restart=true"]),
        ):
            before = services(tmp_path)
            sessions = {v: qemu(v) for v in APIS}
            t0 = time.monotonic()
            with Sampler() as smp:
                up = run_playbook("upgrade.yml", cfg, home, *args, *extra)
            t1 = time.monotonic()
            assert up.rc == 0, up.output
            gaps = check(sessions, t0, t1, tmp_path)
            after = services(tmp_path)
            assert after.keys() == before.keys(), (before, after)
            same = [k for k in before if before[k] == after[k]]
            assert same == [], f"{what}: not restarted: {same}"
            assert smp.max_down == {"uv1": 1, "uv2": 1}, (what, smp.max_down, smp.worst)
            assert smp.both_down == 0, what
            assert all(healthy(v) for v in APIS)
            print(
                f"upgrade.yml ({what}): {up.seconds:.1f} s, {len(before)} processes, "
                f"longest pause {gaps}, API samples {smp.samples}"
            )
        assert run_playbook("upgrade.yml", cfg, home, *args).changed() == 0

        # 3. a degraded volume (a replica that hangs: SIGSTOP) stops the roll before its first step
        frozen = int(next(tmp_path.glob("nodes/n2/run/replica-uv1.pid.child")).read_text())
        os.kill(frozen, signal.SIGSTOP)
        eventually_sync(lambda: not healthy("uv1"), timeout=30, what="uv1 degraded")
        before = services(tmp_path)
        stopped = run_playbook(
            "upgrade.yml", cfg, home, *args,
            "-e", "jiva_force_restart=true", "-e", "jiva_rolling_gate_retries=2",
        )  # fmt: skip
        assert stopped.rc != 0
        assert "rolling restart stopped before restarting" in stopped.output, stopped.output
        assert "volume(s) uv1 still degraded" in stopped.output, stopped.output
        assert services(tmp_path) == before, "a process was restarted although uv1 was degraded"

        # 4. the same with a config change (site.yml): n1's controller of uv1 may restart (its gate
        # leaves uv1 out: that restart takes no voter away), n2's of uv2 is stopped by uv1; its
        # new config is written, the process is left stale (node_state says so) and the next
        # run, once uv1 is healthy, finishes the roll
        ctl2 = "n2/controller-uv2"
        changed = [*args, "-e", "jiva_replica_timeout=5"]
        half = run_playbook(
            "site.yml", cfg, home, *changed, "-e", "jiva_rolling_gate_retries=2"
        )  # fmt: skip
        assert half.rc != 0
        assert "before restarting the controller of uv2 on n2" in half.output, half.output
        assert "volume(s) uv1 still degraded" in half.output, half.output
        assert services(tmp_path)[ctl2] == before[ctl2]
        assert "--replica-timeout 5" in (tmp_path / "nodes/n2/etc/controller-uv2.env").read_text()
        assert node_state(tmp_path, "n2")["controllers_stale"] == ["uv2"]
        os.kill(frozen, signal.SIGCONT)
        frozen = 0
        eventually_sync(lambda: healthy("uv1"), timeout=60, what="uv1 healthy again")
        rest = run_playbook("site.yml", cfg, home, *changed)
        assert rest.rc == 0, rest.output
        assert services(tmp_path)[ctl2] != before[ctl2]
        assert node_state(tmp_path, "n2")["controllers_stale"] == []
        assert run_playbook("site.yml", cfg, home, *changed).changed() == 0
    finally:
        if frozen:
            os.kill(frozen, signal.SIGCONT)
        abandon_workloads()
