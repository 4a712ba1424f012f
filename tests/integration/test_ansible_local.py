"""site.yml on three local "nodes" (loopback addresses, local connection): --check changes nothing,
a deploy serves iSCSI, a re-run changes nothing, --check --diff shows a config change without
making it, the change then restarts the controller, and teardown keeps data unless told."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    ROOT,
    frozen_wheelhouse,
    local_daemons_fixture,
    run_playbook,
)

CHAP_SECRET = "s3cret-chap-pass"
# a loopback /24 of its own per run, so concurrent runs of this file on one machine do not clash
NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.41"


def write_inventory(base: Path) -> Path:
    inv = base / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    hosts = {f"n{i}": {"jiva_address": f"{NET}.{30 + i}"} for i in range(1, 4)}
    (inv / "hosts.yml").write_text(yaml.safe_dump({"jiva_nodes": {"hosts": hosts}}))
    node = f"{base}/nodes/{{{{ inventory_hostname }}}}"
    group = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "jiva_venv": f"{base}/venv",  # one venv for the three local nodes
        "jiva_install_throttle": 1,
        "jiva_config_dir": f"{node}/etc",
        "jiva_data_dir": f"{node}/data",
        "jiva_run_dir": f"{node}/run",
        "jiva_log_dir": f"{node}/log",
        "jiva_service_manager": "daemon",
        "jiva_replica_port_base": 9750,
        "jiva_api_port_base": 9850,
        "jiva_volumes": [
            {
                "name": "lv1",
                "size": "16M",
                "replicas": 3,
                "portal": f"{PORTAL}:3260",
                "chap": {"user": "lv1user", "secret": CHAP_SECRET},
            },
        ],
    }
    (inv / "group_vars" / "jiva_nodes.yml").write_text(yaml.safe_dump(group))
    return inv


def api_state() -> dict:
    with urllib.request.urlopen(f"http://{PORTAL}:9850/v1/volume", timeout=3) as r:
        return json.load(r)


def controller_files(base: Path) -> tuple[Path, Path]:
    """(env file, pidfile) of lv1's controller, wherever placement put it."""
    envs = list(base.glob("nodes/*/etc/controller-lv1.env"))
    assert len(envs) == 1, envs
    node = envs[0].parent.parent
    return envs[0], node / "run" / "controller-lv1.pid"


def test_check_diff_deploy_idempotence_teardown(tmp_path, local_daemons):
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

    again = run_playbook("site.yml", cfg, home, *base_args)
    print("again", again.seconds)
    assert again.rc == 0 and again.changed() == 0, again.output

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


def run_module(tmp_path: Path, module: str, args: dict, *extra: str) -> dict:
    """Run one jiva.storage module on localhost through ansible-playbook; return its result."""
    out = tmp_path / "result.json"
    book = tmp_path / "module.yml"
    task = {f"jiva.storage.{module}": args, "register": "r"}
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


def test_replica_module_states_are_idempotent(tmp_path, local_daemons):
    """present -> started -> stopped (check, then real) -> absent with data, each twice."""
    port = 9690
    base = {
        "name": "m1",
        "listen": f"{NET}.39:{port}",
        "data_dir": str(tmp_path / "data" / "m1"),
        "size": "8M",
        "config_dir": str(tmp_path / "etc"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "log"),
        "venv": str(Path(os.sys.executable).parent.parent),
        "service_manager": "daemon",
    }
    env_file = tmp_path / "etc" / "replica-m1.env"
    pidfile = tmp_path / "run" / "replica-m1.pid"

    r = run_module(tmp_path, "replica", {**base, "state": "present"})
    assert r["changed"] and env_file.exists() and not pidfile.exists(), r
    assert not run_module(tmp_path, "replica", {**base, "state": "present"})["changed"]

    r = run_module(tmp_path, "replica", {**base, "state": "started"})
    assert r["changed"] and r["actions"] == ["start"], r
    pid = int(pidfile.read_text())
    assert Path(f"/proc/{pid}").exists()
    assert not run_module(tmp_path, "replica", {**base, "state": "started"})["changed"]

    r = run_module(tmp_path, "replica", {**base, "state": "stopped"}, "--check")
    assert r["changed"] and r["actions"] == ["stop"], r
    assert int(pidfile.read_text()) == pid, "check mode stopped the replica"

    r = run_module(tmp_path, "replica", {**base, "state": "stopped"})
    assert r["changed"] and not pidfile.exists() and env_file.exists(), r
    assert not run_module(tmp_path, "replica", {**base, "state": "stopped"})["changed"]

    r = run_module(tmp_path, "replica", {**base, "state": "absent", "delete_data": True})
    assert r["changed"] and r["data_removed"] and not env_file.exists(), r
    assert not (tmp_path / "data" / "m1").exists()
    assert not run_module(tmp_path, "replica", {**base, "state": "absent", "delete_data": True})[
        "changed"
    ]
