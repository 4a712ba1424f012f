"""site.yml, health.yml and failover.yml with one of 4 test hosts offline (link down): site.yml
reports the host, changes nothing that needs it (no replica, witness or controller moves off it,
no controller restarts) and still repairs the rest (a replica whose supervisor and process were
killed on a live host is started again); the volumes keep serving the data written before;
health.yml and failover.yml run through. When the host is back, site.yml converges again."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.sandbox import needs_root, qemu_io, run_playbook
from tests.waiting import eventually_sync

pytestmark = [pytest.mark.hosts, needs_root]


def volume_state(api: str) -> dict:
    with urllib.request.urlopen(f"http://{api}/v1/volume", timeout=3) as r:
        return json.load(r)


def serving(api: str) -> bool:
    try:
        return volume_state(api)["state"] == "serving"
    except OSError:
        return False


def services(sb, host: str) -> tuple[set[str], dict[str, str]]:
    """(env files, {KIND-VOL: live child PID}) of a host."""
    out = sb.ssh(
        host,
        "cd /etc/jiva && ls *.env 2>/dev/null; for p in /run/jiva/*.pid; do "
        '[ -e "$p" ] && kill -0 $(cat $p) 2>/dev/null && echo "pid $(basename $p .pid) '
        '$(cat $p.child 2>/dev/null)"; done; true',
    ).stdout
    envs = set(re.findall(r"^(\S+\.env)$", out, re.M))
    pids = dict(re.findall(r"^pid (\S+) (\d+)$", out, re.M))
    return envs, pids


def test_site_health_failover_with_one_host_down(deployed_four_hosts, tmp_path):
    # the shared cluster (4 fresh hosts, alpha 3 replicas, beta 2 + a witness; its first site.yml
    # run is `d.first`), handed on to test_ansible_sandbox.py only if this test ends converged
    d = deployed_four_hosts()
    d.dirty = True
    sb, volumes, cfg, home = d.sb, d.volumes, d.cfg, tmp_path / "ansible-home"
    apis = {v["name"]: d.api(i) for i, v in enumerate(volumes)}
    state_file, args = d.state_file, d.args

    first = d.first
    assert first.rc == 0 and first.failed() == 0, first.output
    print(f"\nsite.yml, 4 hosts, first run: {first.seconds:.1f}s")
    layout = json.loads(state_file.read_text())["volumes"]
    for v in volumes:
        assert serving(apis[v["name"]])
        qemu_io(v["portal"], v["name"], "write -P 0x6b 2M 512k")
    # the host to cut off holds a replica of alpha and neither controller
    ctls = {layout["alpha"]["controller"], layout["beta"]["controller"]}
    down = next(h for h in layout["alpha"]["replicas"] if h not in ctls)
    live = [h for h in sb.hosts() if h != down]
    before = {h: services(sb, h) for h in sb.hosts()}
    # a live host whose replica of alpha is dead (supervisor and process killed by PID)
    crashed = next(h for h in layout["alpha"]["replicas"] if h != down)
    sb.ssh(
        crashed,
        "kill -9 $(cat /run/jiva/replica-alpha.pid) $(cat /run/jiva/replica-alpha.pid.child)",
    )
    eventually_sync(
        lambda: "replica-alpha" not in services(sb, crashed)[1], what="the replica gone"
    )

    sb.link(down, up=False)
    run = run_playbook("site.yml", cfg, home, *args)
    print(f"site.yml with {down} down: {run.seconds:.1f}s (rc {run.rc})")
    recap = run.recap()
    # unreachable hosts make ansible-playbook exit 4; every reachable host converged
    assert run.rc == 4 and recap[down]["unreachable"] == 1, run.output
    assert all(recap[h]["failed"] == 0 and recap[h]["unreachable"] == 0 for h in live), recap
    assert recap["localhost"]["failed"] == 0, run.output
    flat = " ".join(run.output.split())
    assert (
        f"hosts not deployed in this run (unreachable, failed or outside --limit): {down}." in flat
    )
    assert f"{down}:unreachable" in run.output or f"{down}:ERR" in run.output, run.output
    # nothing moved: the same services on every live host, the controllers not restarted, the
    # crashed replica started again
    for h in live:
        envs, pids = services(sb, h)
        assert envs == before[h][0], (h, envs, before[h][0])
        for name, pid in before[h][1].items():
            if name.startswith("controller-"):
                assert pids.get(name) == pid, f"{name} on {h} was restarted"
        assert set(pids) == set(before[h][1]), (h, pids, before[h][1])
    assert (
        json.loads(state_file.read_text())["volumes"]["alpha"]["replicas"]
        == layout["alpha"]["replicas"]
    )
    for v in volumes:
        assert serving(apis[v["name"]])
        qemu_io(v["portal"], v["name"], "read -P 0x6b 2M 512k")
    eventually_sync(
        lambda: any(
            r["address"].startswith(sb.address(crashed) + ":") and r["mode"] == "RW"
            for r in volume_state(apis["alpha"])["replicas"]
        ),
        timeout=60,
        what="the restarted replica RW again",
    )

    report = tmp_path / "health.json"
    health = run_playbook("health.yml", cfg, home, *args, "-e", f"jiva_health_file={report}")
    assert health.rc == 0, health.output
    rows = json.loads(report.read_text())
    assert down in rows["hosts_down"], rows
    assert {r["volume"]: r["state"] for r in rows["volumes"]} == {
        "alpha": "serving",
        "beta": "serving",
    }
    fo = run_playbook("failover.yml", cfg, home, *args)
    print(f"failover.yml with {down} down: {fo.seconds:.1f}s")
    assert fo.rc == 0 and fo.failed() == 0, fo.output
    assert f"replica host {down} unreachable" in fo.output, fo.output
    for h in live:
        assert services(sb, h)[0] == before[h][0], h

    # the host returns: site.yml converges, nothing moved
    sb.link(down, up=True)
    sb.wait_ssh(down)
    back = run_playbook("site.yml", cfg, home, *args)
    print(f"site.yml with {down} back: {back.seconds:.1f}s")
    assert back.rc == 0 and back.failed() == 0, back.output
    for h in sb.hosts():
        assert services(sb, h)[0] == before[h][0], h
    for v in volumes:
        qemu_io(v["portal"], v["name"], "read -P 0x6b 2M 512k")

    # healthy again: every replica RW (the returned host's after its catch-up), no degraded volume
    def healthy() -> bool:
        try:
            sts = [volume_state(apis[v["name"]]) for v in volumes]
        except OSError:
            return False
        return all(
            st["state"] == "serving"
            and not st["degraded"]
            and len(st["replicas"]) == v["replicas"]
            and all(r["mode"] == "RW" for r in st["replicas"])
            for st, v in zip(sts, volumes, strict=True)
        )

    eventually_sync(healthy, timeout=120, what="both volumes healthy with the host back")
    d.dirty = False  # converged and healthy: test_ansible_sandbox.py may start from it
