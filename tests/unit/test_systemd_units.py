"""The systemd units: the install role's jiva@.service (rendered as the role renders it) and
scripts/systemd/*.service|*.timer pass `systemd-analyze verify` (the Debian package `systemd`,
installed by scripts/install-debs.sh, verifies units where systemd does not run), and the
command jiva@.service starts is, word for word, the one the daemon supervisor (the service layer
on hosts without systemd) starts for the same env file - both are run here with a stand-in
`jiva` that records its argv."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tests.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_service as S  # noqa: E402

TEMPLATE = (
    ROOT / "collections/ansible_collections/jiva/storage/roles/install/templates/jiva@.service.j2"
)
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze (Debian systemd)")

# argv of every kind of service, with what needs shell quoting: an IPv6 portal, a path with a
# space, a quote (the env file's line is shell-quoted twice)
CONFIGS = {
    "replica-db": ["replica", "--volume", "db", "--listen", "10.0.0.1:9700", "--dir",
                   "/var/lib/jiva/db", "--size", "1G", "--secret-file", "/etc/jiva/replica-db.secret"],
    "witness-db": ["witness", "--volume", "db", "--listen", "[fd00::3]:9700", "--dir",
                   "/srv/my disk/_witness/db"],
    "controller-db": ["controller", "--volume", "db", "--size", "1G", "--api", "[::1]:9800",
                      "--portal", "[fd00::1]:3260", "--replica", "10.0.0.1:9700", "--replica",
                      "10.0.0.2:9700", "--witness", "[fd00::3]:9700", "--chap-user", "o'brien",
                      "--token-file", "/etc/jiva/controller-db.token"],
}  # fmt: skip


def render_unit(venv: Path, config_dir: Path, out: Path) -> Path:
    """jiva@.service as roles/install/tasks/main.yml renders it (ansible.builtin.template)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string(TEMPLATE.read_text()).render(
        ansible_managed="Ansible managed", jiva_venv=str(venv), jiva_config_dir=str(config_dir)
    )
    out.mkdir(parents=True, exist_ok=True)
    unit = out / "jiva@.service"
    unit.write_text(text)
    return unit


def fake_venv(base: Path) -> Path:
    """A venv whose python runs this checkout's jiva_engine and whose `jiva` writes its argv as
    JSON to $JIVA_ARGV_OUT (and exits)."""
    venv = base / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    jiva = venv / "bin" / "jiva"
    jiva.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "tmp = os.environ['JIVA_ARGV_OUT'] + '.tmp'\n"
        "open(tmp, 'w').write(json.dumps(sys.argv))\nos.replace(tmp, os.environ['JIVA_ARGV_OUT'])\n"
    )
    jiva.chmod(0o755)
    return venv


def verify(*units: Path) -> None:
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    # a warning (unknown key, bad value) is printed but leaves rc 0: both must be clean
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def unit_exec_start(unit: Path, instance: str) -> list[str]:
    """ExecStart of `unit` for an instance, split and %i-expanded as systemd does for this line
    (no quotes, no variables in it: asserted)."""
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    line = lines[0][len("ExecStart=") :]
    assert not set("'\"\\$;") & set(line), line  # no quoting, variables or command separators
    return [w.replace("%i", instance) for w in line.split()]


@needs_analyze
def test_role_unit_verifies(tmp_path):
    venv = fake_venv(tmp_path)
    unit = render_unit(venv, tmp_path / "etc", tmp_path / "units")
    # the template itself and an instance of it (systemd-analyze loads the template for both)
    verify(unit, unit.with_name("jiva@controller-db.service"))


@needs_analyze
def test_script_units_verify(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    for f in (ROOT / "scripts" / "systemd").iterdir():
        shutil.copy(f, units / f.name)
    names = sorted(f.name for f in units.iterdir())
    want = {"jiva-ha@.service", "jiva-ha@.timer", "jiva-backup@.service", "jiva-backup@.timer"}
    assert want <= set(names)
    # as instances (a template's timer needs its service), each of them
    verify(*(units / n.replace("@.", "@prod.") for n in names))


class FakeModule:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def fail_json(self, **kw: Any) -> None:  # pragma: no cover - fails the test
        raise AssertionError(kw)


def daemon_command(venv: Path, base: Path, name: str) -> list[str]:
    """The supervisor command line the service layer runs for a service (Service.start)."""
    kind, volume = name.split("-", 1)
    params = {"config_dir": str(base / "etc"), "run_dir": str(base / "run"),
              "log_dir": str(base / "log"), "venv": str(venv), "service_manager": "daemon",
              "start_timeout": 5}  # fmt: skip
    svc = S.Service(FakeModule(params), kind, volume)
    seen: list[list[str]] = []

    class Popen:
        def __init__(self, cmd: list[str], **_kw: Any) -> None:
            seen.append(cmd)

    real, S.subprocess.Popen = S.subprocess.Popen, Popen  # type: ignore[misc]
    real_pid, svc._pid = svc._pid, lambda: 1  # type: ignore[method-assign]
    try:
        svc.start()
    finally:
        S.subprocess.Popen = real  # type: ignore[misc]
        svc._pid = real_pid  # type: ignore[method-assign]
    assert len(seen) == 1
    return seen[0]


def argv_of(cmd: list[str], out: Path, **env: str) -> list[str]:
    """Run `cmd` until the stand-in jiva has written its argv; return that argv."""
    out.unlink(missing_ok=True)
    environ = {**os.environ, "JIVA_ARGV_OUT": str(out), "PYTHONPATH": str(ROOT), **env}
    p = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        eventually_sync(out.exists, what=f"the stand-in jiva started by {shlex.join(cmd)}")
    finally:
        if p.poll() is None:
            p.terminate()
        p.wait(timeout=30)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unit_runs_the_daemon_command_line(tmp_path, name):
    venv = fake_venv(tmp_path)
    etc = tmp_path / "etc"
    etc.mkdir()
    args = CONFIGS[name]
    (etc / f"{name}.env").write_text(S.render_env(args[0], "db", args[1:], "r1"))
    unit = render_unit(venv, etc, tmp_path / "units")

    systemd = argv_of(unit_exec_start(unit, name), tmp_path / "argv-systemd.json")
    daemon_cmd = daemon_command(venv, tmp_path, name)
    assert daemon_cmd[daemon_cmd.index("--env-file") + 1] == str(etc / f"{name}.env")
    daemon = argv_of(daemon_cmd, tmp_path / "argv-daemon.json")
    assert systemd == daemon == [str(venv / "bin" / "jiva"), *args]


@needs_analyze
def test_verify_catches_a_bad_unit(tmp_path):
    unit = render_unit(fake_venv(tmp_path), tmp_path / "etc", tmp_path / "units")
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes\nBogus=1"))
    with pytest.raises(AssertionError, match="Bogus"):
        verify(unit.with_name("jiva@replica-db.service"))
    unit.write_text(unit.read_text().replace(str(tmp_path / "venv"), "/nonexistent"))
    with pytest.raises(AssertionError, match="not executable"):
        verify(unit.with_name("jiva@replica-db.service"))
