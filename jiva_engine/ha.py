"""`jiva ha watch`: run the failover play periodically from the control node (host-loss recovery).

Polls every volume's management API each `--poll` seconds and runs playbooks/failover.yml at once
when one stops answering or turns unhealthy (again every `--retry` s while it stays so), and at
least every `--interval` seconds anyway.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from jiva_engine.api.client import ApiError, fetch_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `jiva ha`."""
    parser.add_argument("action", choices=["watch", "once"], help="watch: loop; once: one run")
    parser.add_argument(
        "--playbook",
        default="playbooks/failover.yml",
        help="the failover play: a file (default: playbooks/failover.yml of the Ansible project "
        "in the current folder, as in this repository; runs start in the current folder) or the "
        "installed collection's jiva.storage.failover",
    )
    parser.add_argument("--inventory", "-i", help="ansible inventory (default: ansible.cfg's)")
    parser.add_argument(
        "--state-file",
        default=None,
        help="failover state file (controller placement; the APIs to poll are read from it); "
        "default .jiva-state/ha-state.json next to the inventory, as the playbooks' default "
        "(jiva_state_dir)",
    )
    parser.add_argument(
        "--interval", type=float, default=30.0, help="run the play at least this often (s)"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="poll the volume APIs this often (s)"
    )
    parser.add_argument(
        "--retry",
        type=float,
        default=10.0,
        help="run the play again this often (s) while a volume stays unhealthy",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=300.0,
        help="stop a play run that takes longer than this (s; e.g. SSH stuck on a host that "
        "vanished mid-run) so the next run can start; 0 = no limit",
    )
    parser.add_argument(
        "--api-ca",
        default=None,
        help="the controllers serve their API over HTTPS (inventory jiva_api_tls_cert): poll "
        "https://API and verify it against this CA bundle (the inventory's jiva_api_ca)",
    )
    parser.add_argument("--ansible-playbook", default=None, help="ansible-playbook executable")
    parser.add_argument("--log", help="append each run's output here")
    parser.add_argument(
        "--ansible-args",
        default="",
        help="more ansible-playbook arguments, one shell-quoted string (e.g. '-e k=v')",
    )


def _poll_one(api: str, timeout: float) -> str:
    """'state/mode,mode,...' of one volume from GET /v1/volume (a `/witness-down` suffix when a
    witness does not answer), or 'unreachable'."""
    try:
        doc = fetch_status(api, timeout)
    except (ApiError, ValueError):
        return "unreachable"
    st = doc.get("state", "?")
    modes = ",".join(sorted(str(x.get("mode", "?")) for x in doc.get("replicas", [])))
    down = any(w.get("state") != "ok" for w in doc.get("witnesses") or [])
    return f"{st}/{modes}" + ("/witness-down" if down else "")


def poll(apis: dict[str, str], timeout: float = 1.0) -> dict[str, str]:
    """{volume: 'serving'|'waiting'|...|'degraded'|'unreachable'} from GET /v1/volume.

    The volumes are polled in parallel, so a dead host that holds several controllers is seen
    after one `timeout`, not one per volume.
    """
    if len(apis) <= 1:
        return {name: _poll_one(api, timeout) for name, api in apis.items()}
    with ThreadPoolExecutor(max_workers=min(16, len(apis))) as ex:
        futs = {name: ex.submit(_poll_one, api, timeout) for name, api in apis.items()}
        return {name: f.result() for name, f in futs.items()}


def healthy(states: dict[str, str]) -> bool:
    """True when every volume serves with every replica RW."""
    return all(
        s.startswith("serving/") and set(s[8:].split(",")) == {"RW"} for s in states.values()
    )  # a "/witness-down" suffix makes the last mode "RW/witness-down": not healthy


class Watcher:
    """Runs the failover play when the polled state changes or every `interval` seconds."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = False
        exe = args.ansible_playbook or shutil.which("ansible-playbook")
        if exe is None:
            cand = Path(sys.executable).parent / "ansible-playbook"
            exe = str(cand) if cand.exists() else "ansible-playbook"
        self.exe = exe
        self.runs = 0
        self.scheme = ""
        if getattr(args, "api_ca", None):  # TLS for the management API: the client reads the CA
            os.environ["JIVA_API_CA"] = args.api_ca  # from $JIVA_API_CA (api/client.py)
            self.scheme = "https://"

    def apis(self) -> dict[str, str]:
        """Volume -> API address (https://HOST:PORT with --api-ca), from the state file the play
        writes."""
        try:
            vols = json.loads(Path(self.args.state_file).read_text()).get("volumes", {})
        except (OSError, ValueError):
            return {}
        return {n: self.scheme + v["api"] for n, v in vols.items() if v.get("api")}

    def _log(self, text: str) -> None:
        if self.args.log:
            with open(self.args.log, "a") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def run_play(self, why: str) -> int:
        """One ansible-playbook run of the failover play; returns its exit code (124 when it was
        stopped after --run-timeout seconds)."""
        cmd = [self.exe, self.args.playbook, "-e", f"jiva_ha_state_file={self.args.state_file}"]
        if self.args.inventory:
            cmd += ["-i", self.args.inventory]
        cmd += shlex.split(self.args.ansible_args)
        self.runs += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sink: IO[str] | int = subprocess.PIPE
        if self.args.log:  # the output streams into the log, so a run that hangs shows where
            self._log(f"{stamp} jiva ha: run {self.runs} ({why}) started\n")
            sink = open(self.args.log, "a")  # noqa: SIM115 - closed below, after the run
        start = time.monotonic()
        try:
            p = subprocess.Popen(
                cmd, stdout=sink, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,  # its own process group: a timeout stops ssh children too
            )  # fmt: skip
            timeout = self.args.run_timeout or None
            try:
                out, _ = p.communicate(timeout=timeout)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
                out = (out or "") + f"jiva ha: run stopped after --run-timeout {timeout:g} s\n"
                rc = 124
        finally:
            if not isinstance(sink, int):
                sink.close()
        took = time.monotonic() - start
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._log((out or "") + f"{stamp} jiva ha: run {self.runs} ({why}) rc={rc} {took:.1f}s\n")
        return rc

    def watch(self) -> int:
        """Loop until SIGTERM/SIGINT.

        A run starts when a volume is unhealthy and its polled state differs from the state seen
        just before the previous run (something new broke), or stayed unhealthy for `--retry` s
        (the previous run could not fix it yet), and every `--interval` s anyway.
        """
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        seen = poll(self.apis())
        self.run_play("start")
        last_run = time.monotonic()
        while not self.stop:
            time.sleep(self.args.poll)
            now = poll(self.apis())
            since = time.monotonic() - last_run
            why = None
            if not healthy(now) and (now != seen or since >= self.args.retry):
                why = "unhealthy: " + ", ".join(f"{k}={v}" for k, v in sorted(now.items()))
            elif since >= self.args.interval:
                why = "interval"
            if why and not self.stop:
                seen = now
                self.run_play(why)
                last_run = time.monotonic()
        return 0


def inventory_folder(inventory: str | None) -> Path:
    """The folder of the inventory ansible-playbook will use: `inventory` (-i), else
    $ANSIBLE_INVENTORY, else the `inventory` of the ansible.cfg Ansible reads ($ANSIBLE_CONFIG,
    ./ansible.cfg, ~/.ansible.cfg, /etc/ansible/ansible.cfg; relative to that file), else
    /etc/ansible. A folder inventory is its own folder; a file's is the one holding it."""
    if not inventory:
        inventory = os.environ.get("ANSIBLE_INVENTORY", "").split(",")[0] or None
    base = Path.cwd()
    if not inventory:
        for cfg in (os.environ.get("ANSIBLE_CONFIG"), "ansible.cfg", "~/.ansible.cfg",
                    "/etc/ansible/ansible.cfg"):  # fmt: skip
            if not cfg or not Path(cfg).expanduser().is_file():
                continue
            parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
            parser.read(Path(cfg).expanduser())
            inventory = parser.get("defaults", "inventory", fallback=None)
            base = Path(cfg).expanduser().resolve().parent
            break
    path = base / Path(inventory or "/etc/ansible/hosts").expanduser()
    return path if path.is_dir() else path.parent


def default_state_file(inventory: str | None) -> str:
    """The playbooks' default HA state file (jiva_state_dir/ha-state.json)."""
    return str(inventory_folder(inventory) / ".jiva-state" / "ha-state.json")


def run(args: argparse.Namespace) -> int:
    """Entry point of `jiva ha`."""
    if not os.path.exists(args.playbook) and not args.playbook.startswith("jiva.storage."):
        print(f"jiva ha: no playbook {args.playbook}", file=sys.stderr)
        return 2
    if args.state_file is None:
        args.state_file = default_state_file(args.inventory)
    w = Watcher(args)
    if args.action == "once":
        return w.run_play("once")
    return w.watch()


def main(argv: list[str] | None = None) -> int:
    """`python -m jiva_engine.ha`."""
    parser = argparse.ArgumentParser(prog="jiva ha", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
