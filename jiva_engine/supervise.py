"""`jiva supervise`: keep one jiva process running on hosts without systemd (Restart=on-failure).

Started detached (setsid) by the Ansible service layer; restarts its child with backoff when it
crashes, stops it on SIGTERM, and keeps pidfiles so the service layer and fault tests find both.

Its log is size-capped (hosts without systemd have no journald to do it): every few seconds, when
the log is past --log-max-bytes, it is copied to LOG.1 (older copies shift to LOG.2 ..
LOG.N, the oldest dropped; N = --log-keep) and truncated in place, like logrotate's copytruncate:
the child keeps writing to the same file (opened O_APPEND), so nothing is restarted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MIN_BACKOFF = 0.2
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # a child that ran this long resets the backoff
STOP_GRACE = 10.0
LOG_CHECK_EVERY = 2.0  # seconds between two looks at the log's size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `jiva supervise` (also `python -m jiva_engine.supervise`)."""
    parser.add_argument("--name", required=True, help="service name, for log lines")
    parser.add_argument("--pidfile", help="this supervisor's pidfile (required unless --exec)")
    parser.add_argument("--env-file", help="file with JIVA_ARGS=... appended to the command")
    parser.add_argument("--log", help="append the child's output here (default: inherit)")
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=50 << 20,
        help="rotate the log once it is past this size (default 50 MiB; 0 = never)",
    )
    parser.add_argument(
        "--log-keep", type=int, default=3, help="rotated copies kept: LOG.1 .. LOG.N (default 3)"
    )
    parser.add_argument(
        "--exec",
        action="store_true",
        help="do not supervise: replace this process with the command (the systemd unit's "
        "ExecStart, so systemd runs the very command line the supervisor would)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")


def read_env_args(path: str) -> list[str]:
    """Return the words of JIVA_ARGS in an env file (shell-quoted: the line, then its words).
    The systemd unit runs this too (`--exec`), so both service managers start jiva with the same
    words by the same code (not systemd's own `$VAR` splitting and unquoting rules)."""
    for raw in Path(path).read_text().split("\n"):  # not splitlines(): \x1c-\x1e are text
        line = raw.strip()
        if line.startswith("JIVA_ARGS="):
            value = line[len("JIVA_ARGS=") :]
            words = shlex.split(value)
            return shlex.split(words[0]) if len(words) == 1 else words
    raise ValueError(f"{path}: no JIVA_ARGS= line")


class Supervisor:
    """Runs the child, restarts it after a crash with exponential backoff, stops it on SIGTERM."""

    def __init__(
        self,
        name: str,
        command: list[str],
        pidfile: Path,
        log: Path | None,
        log_max_bytes: int = 0,
        log_keep: int = 3,
    ) -> None:
        self.name = name
        self.log_max_bytes = log_max_bytes
        self.log_keep = max(1, log_keep)
        self.command = command
        self.pidfile = pidfile
        self.childfile = Path(str(pidfile) + ".child")
        self.crashfile = Path(str(pidfile) + ".crashes")
        self.log = log
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.crashes = 0

    def say(self, msg: str) -> None:
        """Write a supervisor line into the service log."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervise[{self.name}]: {msg}\n"
        if self.log:
            with open(self.log, "a") as f:
                f.write(line)
        else:
            sys.stderr.write(line)

    def on_term(self, _signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: stop restarting and pass the signal to the child."""
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def spawn(self) -> None:
        """Start the child in this session with output appended to the log."""
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - closed below
        try:
            self.child = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        finally:
            if out:
                out.close()
        self.childfile.write_text(f"{self.child.pid}\n")

    def run(self) -> int:
        """Supervise until SIGTERM; return 0 (or the child's code when it exits cleanly)."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.crashfile.unlink(missing_ok=True)
        self.pidfile.write_text(f"{os.getpid()}\n")
        backoff = MIN_BACKOFF
        code = 0
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    self.spawn()
                except OSError as exc:
                    self.say(f"cannot start {self.command[0]}: {exc}")
                    code = 1
                else:
                    assert self.child is not None
                    self.say(f"started pid {self.child.pid}: {shlex.join(self.command)}")
                    code = self._wait_child()
                    self.childfile.unlink(missing_ok=True)
                if self.stopping:
                    break
                if code == 0:
                    self.say("child exited cleanly; not restarting")
                    return 0
                self.crashes += 1
                self.crashfile.write_text(f"{self.crashes}\n")
                if time.monotonic() - started > STABLE_AFTER:
                    backoff = MIN_BACKOFF
                self.say(f"child exited with {code}; restart {self.crashes} in {backoff:.1f}s")
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.05)
                backoff = min(backoff * 2, MAX_BACKOFF)
            return 0
        finally:
            self._stop_child()
            self.childfile.unlink(missing_ok=True)
            self.pidfile.unlink(missing_ok=True)
            self.say("stopped")

    def _wait_child(self) -> int:
        """Block in waitpid until the child ends: an idle supervisor costs no CPU (a wait with
        a timeout polls every 50 ms). The log's size is looked at by a thread meanwhile."""
        assert self.child is not None
        done = threading.Event()
        watcher = None
        if self.log and self.log_max_bytes:
            watcher = threading.Thread(target=self._watch_log, args=(done,), daemon=True)
            # the thread starts with SIGTERM/SIGINT blocked, so the kernel delivers them to this
            # (main) thread: they interrupt its waitpid and run on_term at once
            stop = {signal.SIGTERM, signal.SIGINT}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            try:
                watcher.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        try:
            return self.child.wait()
        finally:
            done.set()
            if watcher is not None:
                watcher.join()

    def _watch_log(self, done: threading.Event) -> None:
        while not done.wait(LOG_CHECK_EVERY):
            self.rotate_log()

    def rotate_log(self) -> bool:
        """Copy-and-truncate the log when it is past the cap; True when it was rotated."""
        if not self.log or not self.log_max_bytes:
            return False
        try:
            if self.log.stat().st_size <= self.log_max_bytes:
                return False
            for i in range(self.log_keep - 1, 0, -1):
                older = Path(f"{self.log}.{i}")
                if older.exists():
                    older.replace(f"{self.log}.{i + 1}")
            shutil.copyfile(self.log, f"{self.log}.1")
            os.truncate(self.log, 0)
        except OSError as exc:  # a full or read-only disk must not stop the supervision
            self.say(f"cannot rotate {self.log}: {exc}")
            return False
        self.say(f"log rotated (past {self.log_max_bytes} bytes; {self.log_keep} copies kept)")
        return True

    def _stop_child(self) -> None:
        if not self.child or self.child.poll() is not None:
            return
        self.child.send_signal(signal.SIGTERM)
        try:
            self.child.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of `jiva supervise`."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("jiva supervise: give the program after --", file=sys.stderr)
        return 2
    if args.env_file:
        try:
            command += read_env_args(args.env_file)
        except (OSError, ValueError) as exc:
            print(f"jiva supervise: {exc}", file=sys.stderr)
            return 2
    if args.exec:
        os.execv(command[0], command)
    if not args.pidfile:
        print("jiva supervise: --pidfile is required (unless --exec)", file=sys.stderr)
        return 2
    if args.log_max_bytes < 0 or args.log_keep < 1:
        print("jiva supervise: --log-max-bytes must be >= 0 and --log-keep >= 1", file=sys.stderr)
        return 2
    sup = Supervisor(
        args.name,
        command,
        Path(args.pidfile),
        Path(args.log) if args.log else None,
        args.log_max_bytes,
        args.log_keep,
    )
    return sup.run()


def main(argv: list[str] | None = None) -> int:
    """`python -m jiva_engine.supervise` without importing the other subcommands."""
    parser = argparse.ArgumentParser(prog="jiva supervise", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
