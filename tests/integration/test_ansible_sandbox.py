"""site.yml over SSH onto 4 test hosts with a 3-replica volume and a 2-replica volume (which gets a
witness on a third host): placement, service state, iSCSI I/O through the floating portals,
idempotence, supervised restart after a crash, the witness in health.yml, failover.yml restarting
a dead witness, and teardown.yml removing everything (data only when told)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request

import pytest

from tests.sandbox import IQN, needs_root, qemu_io, run_playbook

pytestmark = [pytest.mark.hosts, needs_root]


def volume_state(api: str) -> dict:
    with urllib.request.urlopen(f"http://{api}/v1/volume", timeout=3) as r:
        return json.load(r)


def wait_serving(api: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = volume_state(api)
            if last["state"] == "serving":
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{api} not serving after {timeout}s: {last}")


def test_site_yml_on_four_test_hosts(deployed_four_hosts, tmp_path):
    # the shared cluster: its first site.yml run (4 fresh hosts) is `d.first`; it may have served
    # test_ansible_hosts_down.py before (which hands it back converged, every replica RW)
    d = deployed_four_hosts()
    d.dirty = True  # this test ends with teardown.yml
    sb, volumes, cfg, home = d.sb, d.volumes, d.cfg, tmp_path / "ansible-home"
    wheels = d.args  # the frozen wheelhouse and the cluster's failover record

    first = d.first
    assert first.rc == 0 and first.failed() == 0, first.output
    print(f"\nsite.yml, 4 hosts, 3 + 2 replicas and a witness: first run {first.seconds:.1f}s")
    assert re.search(r"alpha\s+32M\s+\S+:3260\s+\S+\s+h\d", first.output), first.output

    by_address = {sb.address(h): h for h in sb.hosts()}
    placed: dict[str, dict] = {}
    for i, vol in enumerate(volumes):
        api = f"{sb.free_address(i + 1)}:{9800 + i}"
        st = wait_serving(api)
        assert st["name"] == vol["name"] and st["degraded"] is False
        hosts = [by_address[r["address"].rsplit(":", 1)[0]] for r in st["replicas"]]
        n = vol["replicas"]
        assert len(hosts) == n and len(set(hosts)) == n, (
            f"two replicas of {vol['name']} share a host"
        )
        assert all(r["mode"] == "RW" for r in st["replicas"]), st
        witnesses = [by_address[w["address"].rsplit(":", 1)[0]] for w in st["witnesses"]]
        assert [w["state"] for w in st["witnesses"]] == ["ok"] * len(witnesses), st
        # a witness for the 2-replica volume only, on a host without one of its replicas
        assert len(witnesses) == (1 if n == 2 else 0) and not set(witnesses) & set(hosts), st
        assert all(w["address"].endswith(f":{9700 + i}") for w in st["witnesses"]), st
        placed[vol["name"]] = {"replicas": hosts, "witness": witnesses[0] if witnesses else None}

    # service state on every host: one env file (0600) and one live supervisor per placed process
    for h in sb.hosts():
        out = sb.ssh(
            h,
            "cd /etc/jiva && for f in *.env; do echo $f $(stat -c %a $f); done; "
            'for p in /run/jiva/*.pid; do [ -e "$p" ] && kill -0 $(cat $p) && echo alive $p; done; true',
        ).stdout
        want = {f"replica-{v}.env" for v, p in placed.items() if h in p["replicas"]}
        want |= {f"witness-{v}.env" for v, p in placed.items() if h == p["witness"]}
        have = set(re.findall(r"^((?:replica|witness)-\S+\.env) 600$", out, re.M))
        assert have == want, (h, out)
        for name in want:
            assert f"alive /run/jiva/{name[:-4]}.pid" in out, (h, out)

    # the controller runs on the host that holds the floating portal address
    for i, vol in enumerate(volumes):
        holders = [
            h
            for h in sb.hosts()
            if f" {sb.free_address(i + 1)}/" in sb.nsexec(h, "ip", "-o", "addr", "show", "eth0")
        ]
        assert len(holders) == 1, holders
        assert sb.ssh(holders[0], f"test -e /run/jiva/controller-{vol['name']}.pid").returncode == 0

    # real iSCSI I/O through each portal
    for vol in volumes:
        portal = vol["portal"]
        inq = subprocess.run(
            ["iscsi-inq", f"iscsi://{portal}/{IQN.format(vol['name'])}/0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert inq.returncode == 0 and "DIRECT_ACCESS" in inq.stdout, inq.stdout + inq.stderr
        qemu_io(portal, vol["name"], "write -P 0x5a 1M 512k")
        qemu_io(portal, vol["name"], "read -P 0x5a 1M 512k")

    second = run_playbook("site.yml", cfg, home, *wheels)
    assert second.rc == 0, second.output
    assert second.changed() == 0, second.output
    print(f"site.yml second run (no changes): {second.seconds:.1f}s")

    # a crashed controller is restarted by its supervisor and serves the same data again
    ctl_host = next(
        h
        for h in sb.hosts()
        if sb.ssh(h, "test -e /run/jiva/controller-alpha.pid", check=False).returncode == 0
    )
    child = int(sb.ssh(ctl_host, "cat /run/jiva/controller-alpha.pid.child").stdout)
    sb.ssh(ctl_host, f"kill -9 {child}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = sb.ssh(
            ctl_host, "cat /run/jiva/controller-alpha.pid.child 2>/dev/null", check=False
        ).stdout.strip()
        if new and new != str(child):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the supervisor did not restart the controller")
    wait_serving(f"{sb.free_address(1)}:9800")
    qemu_io(volumes[0]["portal"], "alpha", "read -P 0x5a 1M 512k")

    # health.yml: the witness column and JSON; the cluster is healthy
    state_file = d.state_file  # not the checkout's failover record
    ha_args = ["-e", f"jiva_ha_state_file={state_file}"]
    report = tmp_path / "health.json"
    health = run_playbook(
        "health.yml", cfg, home, *ha_args, "-e", f"jiva_health_file={report}",
        "-e", "jiva_fail_on_degraded=true",
    )  # fmt: skip
    assert health.rc == 0, health.output
    wit = placed["beta"]["witness"]
    rows = {r["volume"]: r for r in json.loads(report.read_text())["volumes"]}
    assert [(w["host"], w["state"]) for w in rows["beta"]["witnesses"]] == [(wit, "ok")], rows
    assert rows["alpha"]["witnesses"] == [] and not rows["beta"]["degraded"], rows
    assert f"{wit}:ok" in health.output, health.output

    # failover.yml: a witness whose supervisor is gone (host up) is started again
    old_pid = sb.ssh(wit, "cat /run/jiva/witness-beta.pid").stdout.strip()
    sb.ssh(wit, f"kill {old_pid}")  # SIGTERM: the supervisor stops the witness and exits
    deadline = time.monotonic() + 20
    while sb.ssh(wit, "test -e /run/jiva/witness-beta.pid", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the witness's supervisor did not stop"
        time.sleep(0.1)
    fo = run_playbook("failover.yml", cfg, home, *wheels, *ha_args)
    assert fo.rc == 0 and fo.failed() == 0, fo.output
    assert f"witness on {wit} not running (host up)" in fo.output, fo.output
    assert f"{wit}: witnesses started or restarted: beta" in fo.output, fo.output
    new_pid = sb.ssh(wit, "cat /run/jiva/witness-beta.pid").stdout.strip()
    assert new_pid and new_pid != old_pid
    sb.ssh(wit, f"kill -0 {new_pid}")
    deadline = time.monotonic() + 20
    while [w["state"] for w in volume_state(f"{sb.free_address(2)}:9801")["witnesses"]] != ["ok"]:
        assert time.monotonic() < deadline, volume_state(f"{sb.free_address(2)}:9801")
        time.sleep(0.2)
    assert json.loads(state_file.read_text())["volumes"]["beta"]["witness"] == wit
    calm = run_playbook("failover.yml", cfg, home, *wheels, *ha_args)
    assert calm.rc == 0 and calm.changed() == 0, calm.output

    # teardown.yml: every service goes; data and witness metadata stay unless told
    down = run_playbook("teardown.yml", cfg, home)
    assert down.rc == 0, down.output
    for h in sb.hosts():
        left = sb.ssh(h, "ls /etc/jiva/*.env /run/jiva/*.pid 2>/dev/null; true").stdout.strip()
        assert left == "", (h, left)
    assert sb.ssh(wit, "test -e /var/lib/jiva/_witness/beta/meta.json", check=False).returncode == 0
    purge = run_playbook("teardown.yml", cfg, home, "-e", "jiva_teardown_delete_data=true")
    assert purge.rc == 0, purge.output
    for h in sb.hosts():
        left = sb.ssh(
            h,
            "ls -d /var/lib/jiva/alpha /var/lib/jiva/beta /var/lib/jiva/_witness 2>/dev/null; true",
        )
        assert left.stdout.strip() == "", (h, left.stdout)
