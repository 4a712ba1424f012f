"""site.yml over SSH onto 4 test hosts with 2 volumes of 3 replicas: placement, service state,
iSCSI I/O through the floating portals, idempotence, and supervised restart after a crash."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.sandbox import (  # noqa: F401 - sandbox_hosts_fixture provides the fixture
    frozen_wheelhouse,
    needs_root,
    run_playbook,
    sandbox_hosts_fixture,
)

pytestmark = [pytest.mark.hosts, needs_root]

IQN = "iqn.2026-11.org.jiva-py:{}"


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


def qemu_io(portal: str, volume: str, command: str) -> str:
    url = f"iscsi://{portal}/{IQN.format(volume)}/0"
    p = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", command, url], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "failed" not in p.stdout.lower(), p.stdout + p.stderr
    return p.stdout


def test_site_yml_on_four_test_hosts(sandbox_hosts, tmp_path):
    sb = sandbox_hosts(4)
    volumes = [
        {"name": "alpha", "size": "32M", "replicas": 3, "portal": f"{sb.free_address(1)}:3260"},
        {"name": "beta", "size": "16M", "replicas": 3, "portal": f"{sb.free_address(2)}:3260"},
    ]
    gv = sb.dir / "inventory" / "group_vars" / "jiva_nodes" / "volumes.yml"
    gv.write_text(yaml.safe_dump({"jiva_volumes": volumes}))
    cfg, home = sb.dir / "ansible.cfg", tmp_path / "ansible-home"
    wheels = frozen_wheelhouse(tmp_path)

    first = run_playbook("site.yml", cfg, home, *wheels)
    assert first.rc == 0 and first.failed() == 0, first.output
    print(f"\nsite.yml, 4 hosts, 2 volumes x 3 replicas: first run {first.seconds:.1f}s")
    assert re.search(r"alpha\s+32M\s+\S+:3260\s+\S+\s+h\d", first.output), first.output

    by_address = {sb.address(h): h for h in sb.hosts()}
    placed: dict[str, dict] = {}
    for i, vol in enumerate(volumes):
        api = f"{sb.free_address(i + 1)}:{9800 + i}"
        st = wait_serving(api)
        assert st["name"] == vol["name"] and st["degraded"] is False
        hosts = [by_address[r["address"].rsplit(":", 1)[0]] for r in st["replicas"]]
        assert len(hosts) == 3 and len(set(hosts)) == 3, (
            f"two replicas of {vol['name']} share a host"
        )
        assert all(r["mode"] == "RW" for r in st["replicas"]), st
        placed[vol["name"]] = {"replicas": hosts}

    # service state on every host: one env file (0600) and one live supervisor per placed process
    for h in sb.hosts():
        out = sb.ssh(
            h,
            "cd /etc/jiva && for f in *.env; do echo $f $(stat -c %a $f); done; "
            'for p in /run/jiva/*.pid; do [ -e "$p" ] && kill -0 $(cat $p) && echo alive $p; done; true',
        ).stdout
        want = {f"replica-{v}.env" for v, p in placed.items() if h in p["replicas"]}
        have = set(re.findall(r"^(replica-\S+\.env) 600$", out, re.M))
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
