"""Ansible as a non-root SSH user with passwordless sudo (`become`), on 2 test hosts with their own
/etc: site.yml deploys a 2-replica volume that serves iSCSI I/O, its daemons and config files are
root's, the re-run changes nothing, health.yml works; without sudo rights the run fails with
Ansible's "Missing sudo password", not a traceback. Plus a static check that every host play of
the playbooks becomes root and every task delegated to the control node does not."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sandbox import ROOT, Sandbox, frozen_wheelhouse, needs_root, qemu_io, run_playbook
from tests.waiting import eventually_sync

USER = "jvdeploy"
COLLECTION = ROOT / "collections" / "ansible_collections" / "jiva" / "storage"


def _walk(tasks: list, become: Any = None, delegate: Any = None):
    """(task, effective become, effective delegate_to) for every task, blocks included."""
    for t in tasks or []:
        b, d = t.get("become", become), t.get("delegate_to", delegate)
        blocks = [t[key] for key in ("block", "rescue", "always") if key in t]
        for sub in blocks:
            yield from _walk(sub, b, d)
        if not blocks:
            yield t, b, d


def test_host_plays_become_and_control_node_tasks_do_not():
    """Every play on storage hosts has `become: true`; every task delegated to localhost (the
    control node: wheelhouse, placement, secrets, API calls) has `become: false`, in the
    playbooks, their task files and the roles (wherever they live)."""
    files = [
        f
        for base in (ROOT, COLLECTION)
        for pattern in ("playbooks/*.yml", "playbooks/tasks/*.yml", "roles/*/tasks/*.yml")
        for f in sorted(base.glob(pattern))
    ]
    host_plays, delegated, wrong = 0, 0, []
    for f in files:
        doc = yaml.safe_load(f.read_text()) or []
        tasks: list = []
        if f.parent.name == "playbooks":  # plays (or imports of playbooks)
            for p in doc:
                if "hosts" not in p:
                    continue
                if p["hosts"] != "localhost":
                    host_plays += 1
                    if p.get("become") is not True:
                        wrong.append(f"{f.name}: play {p['name']!r} lacks become: true")
                for sect in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                    tasks += _walk(p.get(sect, []), p.get("become"))
        else:  # a task file, imported into plays that become
            tasks = list(_walk(doc, True))
        for t, b, d in tasks:
            if d == "localhost":
                delegated += 1
                if b is not False:
                    wrong.append(
                        f"{f.name}: {t.get('name')!r} (delegated to localhost) lacks become: false"
                    )
    assert host_plays >= 14 and delegated >= 16, (host_plays, delegated, files)
    assert not wrong, "\n".join(wrong)


@pytest.fixture(name="user_hosts")
def user_hosts_fixture():
    """2 test hosts with their own /etc and /home, each with the login USER (the sandbox key,
    passwordless sudo); the inventory logs in as USER. At the end the accounts are removed
    (userdel --remove, sudo rule) and checked gone, then the hosts torn down - also on failure."""
    d = Path(tempfile.mkdtemp(prefix="jvsb", dir="/tmp"))
    sb = Sandbox(d)
    try:
        sb.up(f"pb{os.getpid() % 100000}", 2, own_etc=True)
        for h in sb.hosts():
            sb.add_user(h, USER)
        sb.set_ansible_user(USER)
        yield sb
    finally:
        try:
            left = []
            for h in sb.hosts():
                for user in list(sb.host(h).get("users", [])):
                    sb.remove_user(h, user)
                    gone = sb.ssh(h, f"getent passwd {user}; ls -d /home/{user}", check=False)
                    if gone.stdout.strip():
                        left.append((h, gone.stdout))
            assert not left, f"accounts left behind: {left}"
        finally:
            sb.down()
            shutil.rmtree(d, ignore_errors=True)


def serving(api: str) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        with urllib.request.urlopen(f"http://{api}/v1/volume", timeout=3) as r:
            st = json.load(r)
        if st["state"] == "serving":
            return st
    return None


def jiva_process_uids(sb: Any, host: str) -> dict[int, int]:
    """PID -> real uid of every jiva process (supervisors and daemons) running in the host."""
    out = {}
    for pid in sb.pids(host):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"jiva" in cmd:
            out[pid] = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return out


@needs_root
@pytest.mark.hosts
@pytest.mark.timeout(1200)  # 2 deploys + a failed run on a loaded 2-core machine
def test_site_and_health_as_a_non_root_user_with_sudo(user_hosts, tmp_path):
    sb = user_hosts
    portal = f"{sb.free_address(1)}:3260"
    volumes = [{"name": "bv", "size": "16M", "replicas": 2, "portal": portal}]
    gv = sb.dir / "inventory" / "group_vars" / "jiva_nodes" / "volumes.yml"
    gv.write_text(yaml.safe_dump({"jiva_volumes": volumes}))
    cfg, home = sb.dir / "ansible.cfg", tmp_path / "ansible-home"
    wheels = frozen_wheelhouse(tmp_path)

    # the account is real and the hosts' own: USER logs in (not root) and has sudo; the
    # machine's /etc knows nothing of it
    for h in sb.hosts():
        assert sb.ssh(h, "id -un; sudo -n id -u", user=USER).stdout.split() == [USER, "0"]
    assert not re.search(rf"^{USER}:", Path("/etc/passwd").read_text(), re.M)

    first = run_playbook("site.yml", cfg, home, *wheels)
    assert first.rc == 0 and first.failed() == 0, first.output
    print(f"\nsite.yml as {USER} with sudo, 2 hosts, 2 replicas: first run {first.seconds:.1f}s")

    st = eventually_sync(lambda: serving(f"{sb.free_address(1)}:9800"), 30, "bv serving")
    assert len(st["replicas"]) == 2 and all(r["mode"] == "RW" for r in st["replicas"]), st
    qemu_io(portal, "bv", "write -P 0xc3 1M 256k")
    assert "read 262144/262144" in qemu_io(portal, "bv", "read -P 0xc3 1M 256k")

    # the daemons (supervisors and children) run as root, and their files are root's
    for h in sb.hosts():
        uids = jiva_process_uids(sb, h)
        assert len(uids) >= 2, (h, uids)  # at least a replica's supervisor and its child
        assert set(uids.values()) == {0}, (h, uids)
        files = sb.ssh(h, "stat -c '%U %a %n' /etc/jiva /etc/jiva/*.env /var/lib/jiva/bv").stdout
        owners_modes = re.findall(r"^(\S+) (\d+) (\S+)$", files, re.M)
        assert len(owners_modes) >= 3 and {o for o, _, _ in owners_modes} == {"root"}, files
        assert {m for _, m, n in owners_modes if n.endswith(".env")} == {"600"}, files

    second = run_playbook("site.yml", cfg, home, *wheels)
    assert second.rc == 0 and second.changed() == 0, second.output
    print(f"site.yml re-run (changed=0): {second.seconds:.1f}s")

    health = run_playbook("health.yml", cfg, home)
    assert health.rc == 0, health.output
    assert re.search(r"\bbv\b.*\bserving\b", health.output), health.output

    # without sudo rights: a clear failure on every host, at the first task, no traceback
    for h in sb.hosts():
        sb.set_sudo(h, USER, False)
    denied = run_playbook("site.yml", cfg, home, *wheels)
    assert denied.rc != 0, denied.output
    assert denied.output.count("Missing sudo password") >= 2, denied.output
    assert {h: r["failed"] for h, r in denied.recap().items() if h != "localhost"} == {
        h: 1 for h in sb.hosts()
    }, denied.output
    assert "Traceback" not in denied.output, denied.output
    print(f"site.yml without sudo rights: failed in {denied.seconds:.1f}s")
