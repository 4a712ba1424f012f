"""site.yml on three local "nodes" (loopback addresses, local connection): --check changes nothing,
a deploy serves iSCSI, a 2-replica volume gets a witness on the third node (shown by health.yml,
degraded while it is down, restarted by site.yml), a re-run changes nothing, --check --diff shows
a config change without making it, the change then restarts the controller, and teardown keeps
data unless told."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from jiva_engine.protocol import wire
from jiva_engine.protocol.client import ReplicaClient, ReplicaError
from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    ROOT,
    frozen_wheelhouse,
    local_daemons_fixture,
    local_inventory,
    run_playbook,
)
from tests.waiting import eventually_sync

CHAP_SECRET = "s3cret-chap-pass"
# a loopback /24 of its own per run, so concurrent runs of this file on one machine do not clash
NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.41"
PORTAL2 = f"{NET}.42"
API2 = f"{PORTAL2}:9851"


def write_inventory(base: Path) -> Path:
    volumes = [
        {"name": "lv1", "size": "16M", "replicas": 3, "portal": f"{PORTAL}:3260",
         "chap": {"user": "lv1user", "secret": CHAP_SECRET}},
        # 2 replicas on 3 nodes: placement adds a witness on the third node
        {"name": "lv2", "size": "16M", "replicas": 2, "portal": f"{PORTAL2}:3260"},
    ]  # fmt: skip
    return local_inventory(
        base, [f"{NET}.{30 + i}" for i in range(1, 4)], volumes,
        jiva_replica_port_base=9750, jiva_api_port_base=9850,
    )  # fmt: skip


def api_state(api: str = f"{PORTAL}:9850") -> dict:
    with urllib.request.urlopen(f"http://{api}/v1/volume", timeout=3) as r:
        return json.load(r)


def witness_node(base: Path) -> Path:
    """The node folder holding lv2's witness config (there must be exactly one)."""
    envs = list(base.glob("nodes/*/etc/witness-lv2.env"))
    assert len(envs) == 1, envs
    return envs[0].parent.parent


def health(cfg: Path, home: Path, base_args: list[str], out: Path) -> dict:
    """Run health.yml, return the JSON report's rows by volume (and the play output)."""
    state = out.with_name("ha-state.json")  # not the checkout's failover record
    run = run_playbook(
        "health.yml", cfg, home, *base_args, "-e", f"jiva_health_file={out}",
        "-e", f"jiva_ha_state_file={state}",
    )  # fmt: skip
    assert run.rc == 0, run.output
    rows = {r["volume"]: r for r in json.loads(out.read_text())["volumes"]}
    return {"rows": rows, "output": run.output, "degraded": json.loads(out.read_text())["degraded"]}


def http_status(url: str, method: str = "GET", token: str | None = None) -> int:
    """The HTTP status of one call (an empty JSON body for POST)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def replica_refuses(address: str, volume: str, secret: str | None) -> int:
    """The status a replica answers a controller connection presenting `secret` with."""

    async def attempt() -> int:
        host, port = address.rsplit(":", 1)
        c = ReplicaClient(host, int(port), volume=volume, secret=secret)
        try:
            await c.connect()
        except ReplicaError as e:
            return e.status
        await c.close()
        raise AssertionError(f"replica {address} accepted secret {secret!r}")

    return asyncio.run(attempt())


def secure_by_default(inv: Path, deploy_output: str) -> str:
    """The deploy of an inventory without secrets generated them (0600, under the inventory's
    folder, never printed): the API refuses changes without the token (not /metrics), the replicas
    refuse a controller without the secret. Returns the token."""
    folder = inv / ".jiva-secrets"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    secret, token = ((folder / n).read_text().strip() for n in ("replica-secret", "api-token"))
    for n in ("replica-secret", "api-token"):
        assert oct((folder / n).stat().st_mode & 0o777) == "0o600"
    assert len(secret) >= 32 and len(token) >= 32 and secret != token
    assert secret not in deploy_output and token not in deploy_output
    api = f"http://{PORTAL}:9850"
    for method, path in [("POST", "/v1/replicas"), ("DELETE", "/v1/replicas/127.0.0.1:1"),
                         ("POST", "/v1/volume/grow"), ("POST", "/v1/snapshots")]:  # fmt: skip
        assert http_status(api + path, method) == 401, (method, path)
        assert http_status(api + path, method, token="wrong") == 401, (method, path)
    # with the token: past the check (no such replica / a malformed body)
    assert http_status(api + "/v1/replicas/127.0.0.1:1", "DELETE", token) == 404
    assert http_status(api + "/v1/replicas", "POST", token) == 400
    assert http_status(api + "/metrics") == 200 and http_status(api + "/v1/volume") == 200
    replica = api_state()["replicas"][0]["address"]
    assert replica_refuses(replica, "lv1", None) == wire.AUTH_REQUIRED
    assert replica_refuses(replica, "lv1", "not-the-secret") == wire.AUTH_FAILED
    env, _ = controller_files(inv.parent)
    assert secret not in env.read_text() and token not in env.read_text()
    return token


def changed_items(run) -> int:
    """Loop items reported changed (the recap counts a loop task once, however many changed)."""
    return len(re.findall(r"^changed: \[.*\(item=", run.output, re.M))


def snapshot_names(api: str) -> list[str]:
    with urllib.request.urlopen(f"http://{api}/v1/snapshots", timeout=5) as r:
        return [s["name"] for s in json.load(r)["snapshots"]]


def image(url: str, out: Path) -> bytes:
    """The whole volume behind an iscsi:// URL, read with qemu-img."""
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return out.read_bytes()


def snapshots_backup_restore(base: Path, cfg: Path, home: Path, base_args: list[str]) -> None:
    """snapshot.yml takes/deletes snapshots idempotently; backup.yml backs lv2 up to a folder
    (its snapshot deleted after); restore.yml writes that backup into lv1, byte for byte."""
    lv1 = f"iscsi://lv1user%{CHAP_SECRET}@{PORTAL}:3260/iqn.2026-11.org.jiva-py:lv1/0"
    lv2 = f"iscsi://{PORTAL2}:3260/iqn.2026-11.org.jiva-py:lv2/0"
    pattern = ["-c", "write -P 0x5a 0 3M", "-c", "write -P 0x33 9M 1M"]
    subprocess.run(["qemu-io", "-f", "raw", *pattern, lv2], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    snap = ["-e", "jiva_snapshot_name=t1"]
    took = run_playbook("snapshot.yml", cfg, home, *base_args, *snap)
    assert took.rc == 0 and changed_items(took) == 2, took.output
    assert snapshot_names(f"{PORTAL}:9850") == ["t1"] and snapshot_names(API2) == ["t1"]
    again = run_playbook("snapshot.yml", cfg, home, *base_args, *snap)
    assert again.rc == 0 and again.changed() == 0, again.output
    gone = run_playbook("snapshot.yml", cfg, home, *base_args, *snap, "-e",
                        "jiva_snapshot_state=absent")  # fmt: skip
    assert gone.rc == 0 and changed_items(gone) == 2, gone.output
    assert snapshot_names(API2) == []
    # (as JSON: `-e k=no way` is two key=value words to Ansible, and `no` a valid name)
    bad = run_playbook("snapshot.yml", cfg, home, *base_args, "-e",
                       '{"jiva_snapshot_name": "no way"}')  # fmt: skip
    assert bad.rc != 0 and "jiva_snapshot_name" in bad.output

    store = base / "backups"
    only_lv2 = ["-e", '{"jiva_backup_volumes": ["lv2"]}', "-e", f"jiva_backup_dir={store}"]
    backed = run_playbook("backup.yml", cfg, home, *base_args, *only_lv2)
    assert backed.rc == 0, backed.output
    assert snapshot_names(API2) == [], "the backup's snapshot was left behind"
    listed = subprocess.run([str(base / "venv" / "bin" / "jiva"), "backup", "list", "--from",
                             str(store), "--json"], capture_output=True, text=True, timeout=60,
                            check=True)  # fmt: skip
    backups = json.loads(listed.stdout)
    backups = backups["backups"] if isinstance(backups, dict) else backups
    assert [b["volume"] for b in backups] == ["lv2"], backups
    restored = run_playbook(
        "restore.yml", cfg, home, *base_args, "-e", f"jiva_backup_dir={store}",
        "-e", f"jiva_restore_backup={backups[0]['name']}", "-e", "jiva_restore_volume=lv1",
    )  # fmt: skip
    assert restored.rc == 0, restored.output
    want = image(lv2, base / "lv2.img")
    assert want[: 3 << 20] == b"\x5a" * (3 << 20)
    assert image(lv1, base / "lv1.img") == want
    unknown = run_playbook("restore.yml", cfg, home, *base_args, "-e", f"jiva_backup_dir={store}",
                           "-e", "jiva_restore_backup=x", "-e", "jiva_restore_volume=nope")  # fmt: skip
    assert unknown.rc != 0 and "jiva_restore_volume" in unknown.output


def controller_files(base: Path) -> tuple[Path, Path]:
    """(env file, pidfile) of lv1's controller, wherever placement put it."""
    envs = list(base.glob("nodes/*/etc/controller-lv1.env"))
    assert len(envs) == 1, envs
    node = envs[0].parent.parent
    return envs[0], node / "run" / "controller-lv1.pid"


@pytest.mark.usefixtures("local_daemons")
def test_check_diff_deploy_idempotence_teardown(tmp_path):
    inv = write_inventory(tmp_path)
    home = tmp_path / "ansible-home"
    cfg = ROOT / "ansible.cfg"
    wheels = frozen_wheelhouse(tmp_path)
    base_args = ["-i", str(inv), *wheels]

    check = run_playbook("site.yml", cfg, home, "--check", *base_args)
    print("check", check.seconds)
    assert check.rc == 0, check.output
    assert check.changed() > 0
    assert not (tmp_path / "nodes").exists(), "--check created host folders"
    assert not (tmp_path / "venv").exists()

    deploy = run_playbook("site.yml", cfg, home, *base_args)
    print("deploy", deploy.seconds)
    assert deploy.rc == 0, deploy.output
    st = api_state()
    assert st["state"] == "serving" and len(st["replicas"]) == 3
    secure_by_default(inv, check.output + deploy.output)
    env, pidfile = controller_files(tmp_path)
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    chap = env.with_name("controller-lv1.chap")
    assert chap.read_text() == CHAP_SECRET and oct(chap.stat().st_mode & 0o777) == "0o600"
    assert "--chap-user lv1user" in env.read_text() and CHAP_SECRET not in env.read_text()
    # the deployed target demands the CHAP credentials from the inventory (libiscsi's client)
    target = f"{PORTAL}:3260/iqn.2026-11.org.jiva-py:lv1/0"
    ok = subprocess.run(
        ["iscsi-readcapacity16", f"iscsi://lv1user%{CHAP_SECRET}@{target}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "LOGICAL BLOCK LENGTH IN BYTES:512" in ok.stdout, ok.stderr
    denied = subprocess.run(
        ["iscsi-readcapacity16", f"iscsi://{target}"], capture_output=True, text=True, timeout=30
    )
    assert denied.returncode != 0 and "Authentication failure" in denied.stdout + denied.stderr

    # lv2 (2 replicas) got a witness on the third node: its own config, metadata folder and port
    st2 = api_state(API2)
    assert st2["state"] == "serving" and len(st2["replicas"]) == 2, st2
    wnode = witness_node(tmp_path)
    windex = int(wnode.name[1:])
    waddr = f"{NET}.{30 + windex}:9751"
    assert [(w["address"], w["state"]) for w in st2["witnesses"]] == [(waddr, "ok")], st2
    assert waddr not in [r["address"] for r in st2["replicas"]]
    assert st2["quorum"]["policy"] == "majority" and st2["quorum"]["voters"] == 3, st2
    wenv = wnode / "etc" / "witness-lv2.env"
    assert oct(wenv.stat().st_mode & 0o777) == "0o600"
    assert (
        f"witness --volume lv2 --listen {waddr} --dir {wnode}/data/_witness/lv2" in wenv.read_text()
    )
    assert (wnode / "data" / "_witness" / "lv2" / "meta.json").exists()
    assert (
        not (wnode / "etc" / "replica-lv2.env").exists() and not (wnode / "data" / "lv2").exists()
    )
    ctl2 = next(tmp_path.glob("nodes/*/etc/controller-lv2.env")).read_text()
    assert f"--witness {waddr}" in ctl2 and "--quorum majority" in ctl2, ctl2
    assert f"n{windex}:ok" in deploy.output, deploy.output  # the volume table's witness column
    # every replica and the witness serve /metrics on jiva_metrics_port_base (default 9900) +
    # replica_port - jiva_replica_port_base (9750 here)
    served = [("lv1", "replica", r["address"]) for r in st["replicas"]]
    served += [("lv2", "replica", r["address"]) for r in st2["replicas"]]
    served += [("lv2", "witness", waddr)]
    for vol, kind, addr in served:
        host, port = addr.rsplit(":", 1)
        with urllib.request.urlopen(
            f"http://{host}:{int(port) - 9750 + 9900}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        up = "jiva_replica_up" if kind == "replica" else "jiva_witness_process_up"
        assert f'{up}{{volume="{vol}",{kind}="{addr}"}} 1' in text, text

    # node_state (the failover play's host check) reports the witness service and its metadata
    (tmp_path / "ns").mkdir()
    ns = run_module(
        tmp_path / "ns", "node_state",
        {"config_dir": str(wnode / "etc"), "run_dir": str(wnode / "run"),
         "data_dir": str(wnode / "data"), "service_manager": "daemon"},
    )  # fmt: skip
    assert (ns["witnesses"], ns["witnesses_running"], ns["witness_data"]) == (["lv2"],) * 3, ns
    assert "lv2" not in ns["replicas"] + ns["replica_data"], ns

    again = run_playbook("site.yml", cfg, home, *base_args)
    print("again", again.seconds)
    assert again.rc == 0 and again.changed() == 0, again.output

    # health.yml shows the witness; a witness that is down makes the volume degraded
    report = health(cfg, home, base_args, tmp_path / "health.json")
    row = report["rows"]["lv2"]
    assert [(w["host"], w["state"]) for w in row["witnesses"]] == [(wnode.name, "ok")], row
    assert row["degraded"] is False and report["degraded"] == [], report["rows"]
    assert report["rows"]["lv1"]["witnesses"] == []
    assert f"{wnode.name}:ok" in report["output"]
    wpid = int((wnode / "run" / "witness-lv2.pid").read_text())
    os.kill(wpid, signal.SIGTERM)  # its supervisor: it stops the witness and does not restart it
    eventually_sync(lambda: not Path(f"/proc/{wpid}").exists(), what="the witness gone")
    eventually_sync(
        lambda: [w["state"] for w in api_state(API2)["witnesses"]] == ["unreachable"],
        what="the witness reported unreachable",
    )
    report = health(cfg, home, base_args, tmp_path / "health.json")
    row = report["rows"]["lv2"]
    assert [(w["host"], w["state"]) for w in row["witnesses"]] == [(wnode.name, "unreachable")]
    assert row["degraded"] is True and report["degraded"] == ["lv2"], report["rows"]
    assert f"{wnode.name}:unreachable" in report["output"]
    # the volume keeps serving on its two replicas (a majority of three voters)
    assert api_state(API2)["state"] == "serving"
    # site.yml starts the witness again, and the controller takes it back
    back = run_playbook("site.yml", cfg, home, *base_args)
    assert back.rc == 0 and back.changed() >= 1, back.output
    eventually_sync(
        lambda: [w["state"] for w in api_state(API2)["witnesses"]] == ["ok"],
        what="the witness back",
    )

    snapshots_backup_restore(tmp_path, cfg, home, base_args)

    before_env = env.read_text()
    before_pid = pidfile.read_text()
    extra = ["-e", "jiva_replica_timeout=5"]
    preview = run_playbook("site.yml", cfg, home, "--check", "--diff", *base_args, *extra)
    assert preview.rc == 0, preview.output
    assert preview.changed() >= 1
    assert "--replica-timeout 5" in preview.output and "+JIVA_ARGS=" in preview.output
    assert "-JIVA_ARGS=" in preview.output
    assert CHAP_SECRET not in preview.output
    assert env.read_text() == before_env and pidfile.read_text() == before_pid

    applied = run_playbook("site.yml", cfg, home, "--diff", *base_args, *extra)
    assert applied.rc == 0, applied.output
    assert "--replica-timeout 5" in env.read_text()
    assert pidfile.read_text() != before_pid, "the controller was not restarted on a config change"
    assert api_state()["state"] == "serving"

    down = run_playbook("teardown.yml", cfg, home, *base_args)
    assert down.rc == 0, down.output
    assert not list(tmp_path.glob("nodes/*/run/*.pid"))
    assert not list(tmp_path.glob("nodes/*/etc/*.env"))
    assert len(list(tmp_path.glob("nodes/*/data/lv1/meta.json"))) == 3, "teardown deleted data"
    assert (wnode / "data" / "_witness" / "lv2" / "meta.json").exists(), "teardown deleted data"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            api_state()
        except OSError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the controller still answers after teardown")

    purge = run_playbook(
        "teardown.yml", cfg, home, *base_args, "-e", "jiva_teardown_delete_data=true"
    )
    assert purge.rc == 0, purge.output
    assert not list(tmp_path.glob("nodes/*/data/lv1"))
    assert not list(tmp_path.glob("nodes/*/data/lv2"))
    assert not list(tmp_path.glob("nodes/*/data/_witness")), "the witness folder is left"


def test_supervisor_restarts_a_crashed_child_and_stops_on_sigterm(tmp_path):
    """The daemon service layer's supervisor, on its own: restart with backoff, clean stop."""
    env = tmp_path / "svc.env"
    env.write_text("JIVA_ARGS='-c \"import time; time.sleep(60)\"'\n")
    pidfile = tmp_path / "svc.pid"
    sup = subprocess.Popen(
        [
            os.sys.executable,
            "-m",
            "jiva_engine.supervise",
            "--name",
            "svc",
            "--pidfile",
            str(pidfile),
            "--env-file",
            str(env),
            "--log",
            str(tmp_path / "svc.log"),
            "--",
            os.sys.executable,
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        child_file = Path(f"{pidfile}.child")
        deadline = time.monotonic() + 10
        while not child_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = int(child_file.read_text())
        os.kill(first, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if child_file.exists() and child_file.read_text().strip() not in ("", str(first)):
                break
            time.sleep(0.05)
        second = int(child_file.read_text())
        assert second != first
        assert Path(f"{pidfile}.crashes").read_text().strip() == "1"
        assert int(pidfile.read_text()) == sup.pid
        sup.terminate()
        assert sup.wait(timeout=15) == 0
        assert not pidfile.exists() and not child_file.exists()
        assert (
            not Path(f"/proc/{second}").exists() or "Z" in Path(f"/proc/{second}/stat").read_text()
        )
        assert "restart 1" in (tmp_path / "svc.log").read_text()
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()


def run_module(
    tmp_path: Path, module: str, args: dict, *extra: str, may_fail: bool = False
) -> dict:
    """Run one jiva.storage module on localhost through ansible-playbook; return its result
    (`may_fail`: also when the module failed)."""
    out = tmp_path / "result.json"
    book = tmp_path / "module.yml"
    task = {f"jiva.storage.{module}": args, "register": "r", "ignore_errors": may_fail}
    save = {
        "ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"},
        "check_mode": False,
    }
    book.write_text(
        yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task, save]}])
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
    }
    cmd = [str(Path(os.sys.executable).parent / "ansible-playbook"), str(book), *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(out.read_text())


def test_one_module_call_brings_many_instances_to_their_state(tmp_path):
    """`instances` (module_utils jiva_batch, what the roles use): each instance gets the top-level
    options unless it sets its own, is checked like a call of its own (a bad one fails the call
    with its name and the spec's message, after the others were handled), secrets stay out of the
    result, and the result lists one loop-shaped entry per instance."""
    secret = "batch-shared-secret"
    top = {
        "state": "present",
        "size": "8M",
        "secret": secret,
        "config_dir": str(tmp_path / "etc"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "log"),
        "venv": str(Path(os.sys.executable).parent.parent),
        "service_manager": "daemon",
    }
    good = [
        {"name": "b1", "listen": f"{NET}.39:9681", "data_dir": str(tmp_path / "data" / "b1")},
        {"name": "b2", "listen": f"{NET}.39:9682", "data_dir": str(tmp_path / "data" / "b2"),
         "size": "4M"},
    ]  # fmt: skip
    r = run_module(tmp_path, "replica", {**top, "instances": [*good, {"name": "b3"}]},
                   may_fail=True)  # fmt: skip
    assert r["failed"] and r["changed"], r
    assert r["msg"] == "b3: state is present but all of the following are missing: listen, data_dir"
    assert [x["item"]["name"] for x in r["results"]] == ["b1", "b2", "b3"], r
    assert [x.get("failed", False) for x in r["results"]] == [False, False, True], r
    assert secret not in json.dumps(r)
    etc = tmp_path / "etc"
    assert "--size 8M" in (etc / "replica-b1.env").read_text()
    assert "--size 4M" in (etc / "replica-b2.env").read_text()
    assert (etc / "replica-b1.secret").read_text() == secret
    assert not (etc / "replica-b3.env").exists()
    again = run_module(tmp_path, "replica", {**top, "instances": good})
    assert not again["changed"] and len(again["results"]) == 2, again
    both = run_module(tmp_path, "replica", {**top, "name": "b1", "instances": good}, may_fail=True)
    assert both["failed"] and "mutually exclusive" in both["msg"], both


@pytest.mark.parametrize("kind", ["replica", "witness"])
@pytest.mark.usefixtures("local_daemons")
def test_voter_module_states_are_idempotent(tmp_path, kind):
    """present -> started -> stopped (check, then real) -> absent with data, each twice; the
    replica and the witness module share this behaviour (module_utils jiva_service voters)."""
    port = 9690 if kind == "replica" else 9691
    secret = "voter-shared-secret"
    base = {
        "name": "m1",
        "listen": f"{NET}.39:{port}",
        "data_dir": str(tmp_path / "data" / "m1"),
        "secret": secret,
        "metrics": f"{NET}.39:{port + 200}",  # the role's jiva_metrics_port_base rule
        "config_dir": str(tmp_path / "etc"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "log"),
        "venv": str(Path(os.sys.executable).parent.parent),
        "service_manager": "daemon",
    }
    if kind == "replica":
        base["size"] = "8M"
    env_file = tmp_path / "etc" / f"{kind}-m1.env"
    secret_file = tmp_path / "etc" / f"{kind}-m1.secret"
    pidfile = tmp_path / "run" / f"{kind}-m1.pid"

    r = run_module(tmp_path, kind, {**base, "state": "present"}, "--check", "--diff")
    assert r["changed"] and not env_file.exists() and not (tmp_path / "data").exists(), r
    assert f"{kind} --volume m1 --listen" in r["diff"]["after"], r
    assert secret not in r["diff"]["after"] and "(secret, " in r["diff"]["after"], r

    r = run_module(tmp_path, kind, {**base, "state": "present"})
    assert r["changed"] and env_file.exists() and not pidfile.exists(), r
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and secret not in env_file.read_text()
    assert secret_file.read_text() == secret and oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert r["args"][:7] == [
        kind,
        "--volume",
        "m1",
        "--listen",
        base["listen"],
        "--dir",
        base["data_dir"],
    ]
    assert not run_module(tmp_path, kind, {**base, "state": "present"})["changed"]

    r = run_module(tmp_path, kind, {**base, "state": "started"})
    assert r["changed"] and r["actions"] == ["start"], r
    pid = int(pidfile.read_text())
    assert Path(f"/proc/{pid}").exists()
    assert r["args"][-4:-2] == ["--metrics", base["metrics"]], r
    up = "jiva_replica_up" if kind == "replica" else "jiva_witness_process_up"

    def scraped() -> str:
        try:
            with urllib.request.urlopen(f"http://{base['metrics']}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    assert f'{up}{{volume="m1",{kind}="{base["listen"]}"}} 1' in eventually_sync(
        scraped, what="the metrics listener"
    )
    assert not run_module(tmp_path, kind, {**base, "state": "started"})["changed"]

    r = run_module(tmp_path, kind, {**base, "state": "stopped"}, "--check")
    assert r["changed"] and r["actions"] == ["stop"], r
    assert int(pidfile.read_text()) == pid, "check mode stopped the process"

    r = run_module(tmp_path, kind, {**base, "state": "stopped"})
    assert r["changed"] and not pidfile.exists() and env_file.exists(), r
    assert not run_module(tmp_path, kind, {**base, "state": "stopped"})["changed"]

    gone = {**base, "state": "absent", "delete_data": True}
    r = run_module(tmp_path, kind, gone, "--check")
    assert r["changed"] and r["data_removed"] and env_file.exists(), r
    assert (tmp_path / "data" / "m1").exists()
    r = run_module(tmp_path, kind, gone)
    assert r["changed"] and r["data_removed"] and not env_file.exists(), r
    assert not secret_file.exists() and not (tmp_path / "data" / "m1").exists()
    assert not run_module(tmp_path, kind, gone)["changed"]
