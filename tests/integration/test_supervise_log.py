"""The pidfile supervisor caps its service log: past --log-max-bytes it is copied to LOG.1 (older
copies shift, at most --log-keep kept) and truncated, while the child keeps running and writing."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.waiting import eventually_sync

CHATTY = "import time\nwhile True:\n    print('x' * 99, flush=True)\n    time.sleep(0.002)\n"


def test_log_is_rotated_and_capped_while_the_child_runs(procs, tmp_path: Path):
    log = tmp_path / "svc.log"
    pidfile = tmp_path / "svc.pid"
    sup = procs.start(
        [sys.executable, "-m", "jiva_engine.supervise", "--name", "chatty", "--pidfile",
         str(pidfile), "--log", str(log), "--log-max-bytes", "20000", "--log-keep", "2", "--",
         sys.executable, "-c", CHATTY],
        "supervise",
    )  # fmt: skip
    child = Path(f"{pidfile}.child")
    eventually_sync(child.exists, what="the child started")
    first_child = child.read_text()
    eventually_sync(lambda: Path(f"{log}.2").exists(), timeout=60, what="two rotations")
    assert not Path(f"{log}.3").exists()  # --log-keep 2
    assert child.read_text() == first_child  # the same child all along: no restart
    assert "log rotated" in log.read_text() + Path(f"{log}.1").read_text()
    # capped: the cap plus what the child writes between two looks (about 2 s at ~40 KB/s)
    assert log.stat().st_size < 20000 + 400_000
    # the child still writes into the live file after the truncation
    size = log.stat().st_size
    eventually_sync(lambda: log.stat().st_size != size, what="new lines in the log")
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=30) == 0
    assert not pidfile.exists()
