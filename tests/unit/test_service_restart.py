"""The restart decision of the service modules (module_utils/jiva_service.py): what a running
process was started with (a fingerprint of its env file and the secret files it names) against
the config being written; `--size` alone is applied online, never a reason to restart; with
restart=false a stale service is left running and reported pending."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_service as S  # noqa: E402
from ansible_collections.jiva.storage.plugins.modules import controller as C  # noqa: E402


def env(args: list[str], revision: str = "r1") -> str:
    return S.render_env("replica", "db", args, revision)


BASE = ["--volume", "db", "--listen", "10.0.0.1:9700", "--dir", "/d/db", "--size", "1G"]
SECRET = "/etc/jiva/replica-db.secret"


def fp(text: str | None, files: dict[str, str | None] | None = None) -> str | None:
    files = files or {}
    return S.config_fingerprint(text, files.get)


def test_fingerprint_ignores_size_only():
    assert fp(env(BASE)) == fp(env(BASE[:-1] + ["2G"]))
    assert fp(env(BASE)) == fp(env(BASE[:-2]))  # (--size added or dropped: still online)


def test_fingerprint_sees_args_revision_and_secret_contents():
    one = fp(env(BASE))
    assert one != fp(env(BASE + ["--rebuild-rate", "50"]))
    # the scrub options (jiva_scrub_interval / jiva_scrub_rate) restart the controller too
    scrub = BASE + ["--scrub-interval", "7d", "--scrub-rate", "64"]
    assert len({one, fp(env(scrub)), fp(env(scrub[:-3] + ["12h", "--scrub-rate", "64"])),
                fp(env(scrub[:-1] + ["32"]))}) == 4  # fmt: skip
    # a volume's qos: (--max-iops/--max-mbps) is a config change too: the controller restarts
    assert len({one, fp(env(BASE + ["--max-iops", "500"])), fp(env(BASE + ["--max-iops", "600"])),
                fp(env(BASE + ["--max-mbps", "40"]))}) == 4  # fmt: skip
    assert one != fp(env(BASE, revision="r2"))  # a new engine build
    with_secret = env(BASE + ["--secret-file", SECRET])
    a = fp(with_secret, {SECRET: "old"})
    assert a != fp(with_secret, {SECRET: "new"})  # same path, new content: restart
    assert a == fp(with_secret, {SECRET: "old"})
    # a file the arguments do not name does not count
    assert one == fp(env(BASE), {SECRET: "anything"})
    assert fp(None) is None


def test_parse_env_args_round_trip():
    args = BASE + ["--allow-initiator", "iqn.x:a b"]
    assert S.parse_env_args(env(args)) == ["replica", *args]
    assert S.parse_env_args("# nothing\n") is None


def test_plan_actions():
    run = dict(state="started", running=True, orphan=False)
    assert S.plan_actions(started_with="a", wanted="a", restart=True, **run) == ([], False)
    assert S.plan_actions(started_with="a", wanted="b", restart=True, **run) == (["restart"], False)
    assert S.plan_actions(started_with="a", wanted="b", restart=False, **run) == ([], True)
    # not running: started at once, whatever `restart` says (first deploy: no slowdown)
    stopped = dict(run, running=False)
    for restart in (True, False):
        assert S.plan_actions(started_with=None, wanted=None, restart=restart, **stopped) == (
            ["start"],
            False,
        )
    assert S.plan_actions("stopped", True, False, None, None, False) == (["stop"], False)
    assert S.plan_actions("absent", False, True, None, None, True) == (["stop"], False)
    assert S.plan_actions("present", True, False, None, None, False) == ([], False)


# the controller module's parameters as the controller role gives them without any tuning
CTL = dict(name="db", api="10.0.0.1:9800", portal="10.9.9.3:3260", replicas=["10.0.0.1:9700"],
           witnesses=[], quorum=None, size="1G", replica_timeout=None, scrub_interval="7d",
           scrub_rate=None, max_snapshots=None, chap_user=None, allowed_initiators=[])  # fmt: skip
TUNING = {  # module option -> (role variable, value, the flag and value on the command line)
    "slow_replica_floor": ("jiva_slow_replica_floor", "2", ["--slow-replica-floor", "2"]),
    "slow_replica_factor": ("jiva_slow_replica_factor", 6, ["--slow-replica-factor", "6"]),
    "slow_replica_window": ("jiva_slow_replica_window", False, ["--slow-replica-window", "off"]),
    "rebuild_rate": ("jiva_rebuild_rate", 40.0, ["--rebuild-rate", "40"]),
    "rebuild_pacing": ("jiva_rebuild_pacing", False, ["--rebuild-pacing", "off"]),
}


def ctl_fp(**tuning: object) -> str | None:
    return fp(S.render_env("controller", "db", C.daemon_args({**CTL, **tuning}), "r1"))


@pytest.mark.parametrize("option", sorted(TUNING))
def test_controller_tuning_reaches_the_command_line_and_restarts(option):
    """jiva_slow_replica_* / jiva_rebuild_rate / jiva_rebuild_pacing: the role and the failover
    start pass the variable, the module puts the flag in the env file's JIVA_ARGS, and a changed
    value changes the config fingerprint (the rolling restart applies it)."""
    var, value, flag = TUNING[option]
    args = C.daemon_args({**CTL, option: value})
    assert args[args.index(flag[0]) + 1] == flag[1], args
    env_text = S.render_env("controller", "db", args, "r1")
    assert S.parse_env_args(env_text) == ["controller", *args]
    untuned = ctl_fp()
    assert ctl_fp(**{option: value}) != untuned
    # unset or empty: no flag, the engine's default, and the fingerprint of before
    assert ctl_fp(**{option: None}) == untuned
    assert flag[0] not in C.daemon_args(CTL)
    collection = ROOT / "collections/ansible_collections/jiva/storage"
    for tasks in ("roles/controller/tasks/main.yml", "playbooks/tasks/controller_start.yml"):
        text = (collection / tasks).read_text()
        assert f'    {option}: "{{{{ {var} if {var} | ' in text, tasks
    defaults = (collection / "roles/controller/defaults/main.yml").read_text()
    assert f'\n{var}: ""\n' in defaults


def test_controller_tuning_spellings_of_one_value_are_one_fingerprint():
    assert ctl_fp(slow_replica_floor="0") == ctl_fp(slow_replica_floor="off")
    assert ctl_fp(slow_replica_floor=False) == ctl_fp(slow_replica_floor="OFF")
    assert ctl_fp(slow_replica_factor="4") == ctl_fp(slow_replica_factor=4.0)
    assert ctl_fp(slow_replica_factor="4") != ctl_fp(slow_replica_factor="5")
    # rebuild_rate was an integer option: an existing config keeps its fingerprint
    args = C.daemon_args({**CTL, "rebuild_rate": 50})
    assert args[args.index("--rebuild-rate") + 1] == "50"


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("slow_replica_factor", 1, "slow_replica_factor must be a number above 1"),
        ("slow_replica_floor", "-0.5", "slow_replica_floor must be seconds >= 0"),
        ("slow_replica_window", "later", "slow_replica_window must be seconds >= 0"),
        ("rebuild_rate", 0, "rebuild_rate must be a positive number (MiB/s)"),
    ],
)
def test_controller_module_refuses_bad_tuning(option, value, why, capsys, tmp_path):
    from ansible.module_utils.testing import patch_module_args

    params = {k: v for k, v in CTL.items() if v not in (None, [])}
    params.update({option: value, "state": "present", "config_dir": str(tmp_path),
                   "run_dir": str(tmp_path), "log_dir": str(tmp_path)})  # fmt: skip
    with patch_module_args(params), pytest.raises(SystemExit):
        C.main()
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] and out["msg"].startswith("controller db: " + why), out
    assert list(tmp_path.iterdir()) == []  # refused before any file is written


def test_failover_and_drain_start_controllers_with_the_roles_options():
    """tasks/controller_start.yml (failover.yml, drain.yml) passes the controller module every
    option the controller role does (only the restart policy differs): a moved controller runs
    with the same config, and the next site.yml has nothing to restart."""
    import yaml

    collection = ROOT / "collections/ansible_collections/jiva/storage"

    def options(tasks: str, name: str) -> set[str]:
        """The options a task gives, also those in each of its `instances` (the keys its
        template writes)."""
        found = yaml.safe_load((collection / tasks).read_text())
        (task,) = [t for t in found if t.get("name", "").startswith(name)]
        given = task["jiva.storage.controller"]
        each = given.get("instances", "")
        per_volume = re.findall(r"'(\w+)':", each)  # {'name': v.name, ...}
        for names in re.findall(r"for opt in \[([^\]]*)\]", each):  # options set when given
            per_volume += re.findall(r"'(\w+)'", names)
        return (set(given) - {"instances"}) | set(per_volume)

    role = options("roles/controller/tasks/main.yml", "Run the controllers")
    moved = options("playbooks/tasks/controller_start.yml", "Start controllers")
    assert role - moved == {"restart"}
    assert moved - role == {"applied_online", "alive_check"}
