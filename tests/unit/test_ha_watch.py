"""`jiva ha` run bookkeeping: a run's output streams into the log as it happens, and a run that
hangs is stopped (with its children) after --run-timeout so the watch loop can go on."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from jiva_engine import ha


def _args(tmp_path: Path, exe: Path, timeout: float) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ha.add_arguments(parser)
    return parser.parse_args(
        [
            "once",
            "--playbook", str(tmp_path / "failover.yml"),
            "--state-file", str(tmp_path / "state.json"),
            "--ansible-playbook", str(exe),
            "--log", str(tmp_path / "watch.log"),
            "--run-timeout", str(timeout),
        ]
    )  # fmt: skip


def _fake_playbook(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "fake-ansible-playbook"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    (tmp_path / "failover.yml").write_text("---\n")
    return exe


def test_hung_run_is_stopped_with_its_children_and_logged(tmp_path):
    pidfile = tmp_path / "child.pid"
    exe = _fake_playbook(tmp_path, f'echo "TASK [probe]"\nsleep 600 &\necho $! > {pidfile}\nwait\n')
    w = ha.Watcher(_args(tmp_path, exe, 1.5))
    t0 = time.monotonic()
    rc = w.run_play("test")
    assert rc == 124 and time.monotonic() - t0 < 30
    log = (tmp_path / "watch.log").read_text()
    assert "run 1 (test) started" in log and "TASK [probe]" in log
    assert "stopped after --run-timeout 1.5 s" in log and "run 1 (test) rc=124" in log
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the run's child {child} survived the timeout")


def test_finished_run_logs_output_then_exit_code(tmp_path):
    exe = _fake_playbook(tmp_path, 'echo "PLAY RECAP"\nexit 2\n')
    w = ha.Watcher(_args(tmp_path, exe, 30))
    assert w.run_play("once") == 2
    log = (tmp_path / "watch.log").read_text()
    assert log.index("started") < log.index("PLAY RECAP") < log.index("rc=2")
