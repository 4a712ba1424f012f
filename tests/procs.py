"""Process and port helpers for tests that run real jiva processes (always cleaned up by PID)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jiva_engine.util import free_port, wait_port

__all__ = ["JIVA", "Procs", "free_port", "wait_port"]  # the tests import the port helpers from here

JIVA = [sys.executable, "-m", "jiva_engine.cli"]


class Procs:
    """Starts processes and stops every one of them by PID at teardown (SIGKILL after a wait)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        """Start `args` in its own session with output to logdir/name.log."""
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        p._log = log  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def jiva(self, *args: str, name: str, env: dict | None = None) -> subprocess.Popen:
        """Start `jiva ARGS...` from this checkout's interpreter."""
        return self.start([*JIVA, *args], name, env)

    def log(self, name: str) -> str:
        """Return what the process called `name` has printed so far."""
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process (by PID) and reap it if it was a kill."""
        if p.poll() is None:
            os.kill(p.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(timeout=10)

    def stop_all(self) -> None:
        """Terminate every started process, then SIGKILL the ones that linger."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            p._log.close()  # type: ignore[attr-defined]
