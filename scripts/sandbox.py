#!/usr/bin/env python3
"""Test hosts on one machine: N network namespaces on a bridge, each with its own address,
mount/PID/UTS namespaces, /var/lib/jiva, /etc/jiva, /opt/jiva, /run and an sshd (needs root).

`sandbox.py up --nodes 4` writes DIR/inventory/, DIR/id_ed25519 and DIR/ansible.cfg; `down` removes
everything it created. `up --user NAME` gives every host its own /etc (an overlay on the machine's)
and /home, makes NAME a login account there with the sandbox key and passwordless sudo, and writes
the inventory with `ansible_user: NAME` (Ansible then becomes root with sudo). Fault helpers
(kill, link down/up, blackhole, floating address moves) are both subcommands and methods of
`Sandbox`, for tests.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPERNET = "10.213.0.0/16"
HOST_DIRS = {"/var/lib/jiva": "var-lib-jiva", "/etc/jiva": "etc-jiva", "/opt/jiva": "opt-jiva"}
LOCK = Path("/run/lock/jiva-sandbox.lock")
LAST = Path("/run/lock/jiva-sandbox.last")  # the subnet handed out last


def sh(*args: str, check: bool = True, capture: bool = True) -> str:
    """Run a command; return stdout; raise with stderr when it fails and `check` is set."""
    p = subprocess.run(args, capture_output=capture, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {(p.stderr or '').strip()}")
    return p.stdout or ""


class Sandbox:
    """One set of test hosts, described by DIR/state.json."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.state_file = self.dir / "state.json"
        self.state: dict = (
            json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        )

    # ---- naming --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name (prefix of netns and interface names)."""
        return self.state["name"]

    def hosts(self) -> list[str]:
        """Host names h1..hN."""
        return [h["name"] for h in self.state.get("hosts", [])]

    def host(self, name: str) -> dict:
        """The state of one host (name, netns, veth, address, dir, pid)."""
        for h in self.state.get("hosts", []):
            if h["name"] == name:
                return h
        raise KeyError(f"no test host {name!r} in {self.dir}")

    def address(self, name: str) -> str:
        """The host's own address."""
        return self.host(name)["address"]

    @property
    def bridge_address(self) -> str:
        """The control node's address on the bridge."""
        return f"{self.state['prefix']}.1"

    def free_address(self, n: int) -> str:
        """The n-th address reserved for floating portals (.100 + n)."""
        return f"{self.state['prefix']}.{100 + n}"

    def save(self) -> None:
        """Write state.json."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")

    # ---- up ------------------------------------------------------------------------------
    @staticmethod
    def _used_prefixes() -> set[str]:
        out = sh("ip", "-o", "-4", "addr", "show") + sh("ip", "-4", "route", "show", "table", "all")
        used = set()
        for word in out.split():
            if word.startswith("10.213."):
                parts = word.split("/")[0].split(".")
                if len(parts) == 4 and parts[2] != "0":
                    used.add(".".join(parts[:3]))
        return used

    def up(self, name: str, nodes: int, subnet: int | None = None, own_etc: bool = False) -> None:
        """Create `nodes` hosts; on any failure tear down what was made and re-raise.

        `own_etc`: each host sees its own /etc (an overlay on the machine's: changes made in the
        host, e.g. by `add_user`, stay in DIR/hN/etc-upper) and its own empty /home."""
        if os.geteuid() != 0:
            raise RuntimeError("the test hosts need root (network namespaces, mounts)")
        if len(name) > 8 or not name.isalnum():
            raise ValueError(
                "sandbox name must be 1-8 letters/digits (it prefixes interface names)"
            )
        if self.state.get("hosts"):
            raise RuntimeError(f"{self.dir} already has test hosts; run down first")
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = self._used_prefixes()
            if subnet is None:
                # round robin from the last one handed out: a subnet just freed is not reused at
                # once, so a straggler of a finished suite (a client still retrying its portal)
                # cannot reach the next suite's hosts
                try:
                    last = int(LAST.read_text())
                except (OSError, ValueError):
                    last = 19
                order = [20 + (last - 20 + k) % 230 for k in range(1, 231)]
                subnet = next(i for i in order if f"10.213.{i}" not in used)
                LAST.write_text(f"{subnet}\n")
            prefix = f"10.213.{subnet}"
            if prefix in used:
                raise RuntimeError(f"subnet {prefix}.0/24 is already in use")
            self.state = {
                "name": name,
                "prefix": prefix,
                "bridge": f"{name}br",
                "hosts": [],
                "created_route": False,
                "created_targets": [],
                "own_etc": own_etc,
            }
            self.save()
            try:
                self._up_network()
            except BaseException:
                self.down()
                raise
        try:
            self._make_key()
            for i in range(1, nodes + 1):
                self._add_host(i)
            for h in self.hosts():
                self.wait_ssh(h)
            self._write_ansible_files()
        except BaseException:
            self.down()
            raise

    def _up_network(self) -> None:
        br, prefix = self.state["bridge"], self.state["prefix"]
        if "unreachable 10.213.0.0/16" not in sh("ip", "route", "show", SUPERNET):
            sh("ip", "route", "add", "unreachable", SUPERNET)
            self.state["created_route"] = True
        sh("ip", "link", "add", br, "type", "bridge")
        self.save()
        sh("ip", "addr", "add", f"{prefix}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")

    def _make_key(self) -> None:
        key = self.dir / "id_ed25519"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "jiva-sandbox", "-f", str(key))
        (self.dir / "authorized_keys").write_text((self.dir / "id_ed25519.pub").read_text())

    def _add_host(self, i: int) -> None:
        name, prefix = self.state["name"], self.state["prefix"]
        h = {
            "name": f"h{i}",
            "netns": f"{name}-h{i}",
            "veth": f"{name}v{i}",
            "address": f"{prefix}.{10 + i}",
            "dir": str(self.dir / f"h{i}"),
            "pid": None,
        }
        self.state["hosts"].append(h)
        self.save()
        hdir = Path(h["dir"])
        for target, sub in HOST_DIRS.items():
            (hdir / sub).mkdir(parents=True, exist_ok=True)
            if not os.path.isdir(target):
                os.makedirs(target)
                self.state["created_targets"].append(target)
        sh("ip", "netns", "add", h["netns"])
        sh(
            "ip",
            "link",
            "add",
            h["veth"],
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            h["netns"],
        )
        sh("ip", "link", "set", h["veth"], "master", self.state["bridge"])
        sh("ip", "link", "set", h["veth"], "up")
        sh("ip", "-n", h["netns"], "link", "set", "lo", "up")
        sh("ip", "-n", h["netns"], "addr", "add", f"{h['address']}/24", "dev", "eth0")
        sh("ip", "-n", h["netns"], "link", "set", "eth0", "up")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hdir / "ssh_host_ed25519_key"))
        (hdir / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {h['address']}",
                    "Port 22",
                    f"HostKey {hdir / 'ssh_host_ed25519_key'}",
                    "PidFile /run/sshd.pid",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 100:30:200",
                    "MaxSessions 50",
                    # root: the sandbox key; other users (add_user): their own authorized_keys
                    "Match User root",
                    f"    AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "",
                ]
            )
        )
        mounts = "\n".join(
            f"mount --bind {hdir / sub} {target}" for target, sub in HOST_DIRS.items()
        )
        if self.state.get("own_etc"):
            # before the /etc/jiva bind mount, which goes on top of the overlay
            for sub in ("etc-upper", "etc-work", "home"):
                (hdir / sub).mkdir(exist_ok=True)
            mounts = (
                "mount -t overlay overlay -o lowerdir=/etc,"
                f"upperdir={hdir / 'etc-upper'},workdir={hdir / 'etc-work'} /etc\n"
                f"mount --bind {hdir / 'home'} /home\n{mounts}"
            )
        # remote_tmp: sticky and world-writable like /tmp, for a non-root ansible_user too
        (hdir / "init.sh").write_text(
            "#!/bin/bash\n# PID 1 of test host: own hostname, /run, jiva folders, then sshd.\n"
            f"set -e\nhostname {h['name']}\nmount -t tmpfs -o mode=755 tmpfs /run\n"
            "mkdir -p /run/sshd /run/jiva /run/ansible-tmp\nchmod 1777 /run/ansible-tmp\n"
            f"{mounts}\nexec /usr/sbin/sshd -D -e -f {hdir / 'sshd_config'}\n"
        )
        (hdir / "init.sh").chmod(0o755)
        self.start_host(h["name"])

    def start_host(self, name: str) -> None:
        """(Re)start a host's PID 1 (init.sh: mounts, then sshd); a restart wipes its /run."""
        h = self.host(name)
        log = open(Path(h["dir"]) / "init.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    h["netns"],
                    "unshare",
                    "--mount",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    str(Path(h["dir"]) / "init.sh"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        h["pid"] = p.pid
        self.save()

    def wait_ssh(self, name: str, timeout: float = 20.0) -> None:
        """Wait until the host's sshd accepts TCP connections."""
        addr = self.address(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((addr, 22), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        log = (Path(self.host(name)["dir"]) / "init.log").read_text(errors="replace")[-2000:]
        raise TimeoutError(f"sshd of test host {name} ({addr}) did not come up: {log}")

    def ssh_args(self, name: str, user: str = "root") -> list[str]:
        """ssh command prefix that logs in to a host as `user` (root) with the sandbox key."""
        return [
            "ssh",
            "-i",
            str(self.dir / "id_ed25519"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            f"{user}@{self.address(name)}",
        ]

    def ssh(
        self, name: str, command: str, check: bool = True, user: str = "root"
    ) -> subprocess.CompletedProcess:
        """Run a shell command on a host over SSH (as root, or as `user`)."""
        p = subprocess.run(
            [*self.ssh_args(name, user), command], capture_output=True, text=True, timeout=60
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"{name}: {command!r} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def nsexec(self, name: str, *args: str, check: bool = True) -> str:
        """Run a command in the host's network namespace (root mount namespace)."""
        return sh("ip", "netns", "exec", self.host(name)["netns"], *args, check=check)

    # ---- a non-root login with sudo ------------------------------------------------------
    def add_user(self, name: str, user: str, sudo: bool = True) -> None:
        """Make `user` a login account on host `name` (home /home/USER, the sandbox key in its
        ~/.ssh/authorized_keys, no password) and, with `sudo`, give it passwordless sudo
        (/etc/sudoers.d/jiva-USER). Needs hosts made with own_etc: the account and its sudo
        rights then live in that host's /etc and /home only, never in the machine's."""
        if not self.state.get("own_etc"):
            raise RuntimeError(
                "add_user needs test hosts made with own_etc=True (up --user): without it they"
                " share /etc with this machine"
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", user) or user == "root":
            raise ValueError(
                f"user must be a non-root login name ([a-z_][a-z0-9_-]*), got {user!r}"
            )
        key = shlex.quote((self.dir / "id_ed25519.pub").read_text().strip())
        self.ssh(
            name,
            f"set -e; useradd --create-home --home-dir /home/{user} --shell /bin/sh"
            f" --password '*' {user}; install -d -m 700 -o {user} -g {user} /home/{user}/.ssh;"
            f" echo {key} > /home/{user}/.ssh/authorized_keys;"
            f" chown {user}: /home/{user}/.ssh/authorized_keys;"
            f" chmod 600 /home/{user}/.ssh/authorized_keys",
        )
        self.host(name).setdefault("users", []).append(user)
        self.save()
        if sudo:
            self.set_sudo(name, user, True)

    def set_sudo(self, name: str, user: str, allowed: bool) -> None:
        """Give `user` passwordless sudo on host `name`, or take it away again."""
        f = f"/etc/sudoers.d/jiva-{user}"
        if allowed:
            rule = shlex.quote(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL")
            self.ssh(
                name,
                f"set -e; echo {rule} > {f}.tmp; chmod 440 {f}.tmp; visudo -cqf {f}.tmp;"
                f" mv {f}.tmp {f}",
            )
        else:
            self.ssh(name, f"rm -f {f}")

    def remove_user(self, name: str, user: str) -> None:
        """Remove an account made by add_user: its sudo rule, the account, its home."""
        self.ssh(name, f"rm -f /etc/sudoers.d/jiva-{user}; userdel --force --remove {user}")
        users = self.host(name).get("users", [])
        if user in users:
            users.remove(user)
            self.save()

    def set_ansible_user(self, user: str) -> None:
        """Make the inventory log in as `user` (root, or an account made by add_user; for a
        non-root one the plays become root with sudo, as on a real cluster)."""
        f = self.dir / "inventory" / "group_vars" / "jiva_nodes" / "sandbox.yml"
        f.write_text(re.sub(r"(?m)^ansible_user: .*$", f"ansible_user: {user}", f.read_text()))

    def _write_ansible_files(self) -> None:
        inv = self.dir / "inventory"
        (inv / "group_vars" / "jiva_nodes").mkdir(parents=True, exist_ok=True)
        key = self.dir / "id_ed25519"
        lines = [
            "---",
            "# Written by scripts/sandbox.py: the test hosts.",
            "jiva_nodes:",
            "  hosts:",
        ]
        for h in self.state["hosts"]:
            lines += [
                f"    {h['name']}:",
                f"      ansible_host: {h['address']}",
                f"      jiva_address: {h['address']}",
            ]
        (inv / "hosts.yml").write_text("\n".join(lines) + "\n")
        (inv / "group_vars" / "jiva_nodes" / "sandbox.yml").write_text(
            "---\n# Written by scripts/sandbox.py: how to reach the test hosts and where things live.\n"
            "ansible_user: root\n"
            f"ansible_ssh_private_key_file: {key}\n"
            "ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n"
            "ansible_python_interpreter: /usr/bin/python3\n"
            "jiva_service_manager: daemon\n"
            "jiva_log_dir: /var/lib/jiva/log\n"
            "jiva_portal_interface: eth0\n"
            "jiva_portal_prefix: 24\n"
            f"jiva_project_dir: {ROOT}\n"
            f"jiva_control_wheelhouse: {ROOT}/build/wheelhouse\n"
        )
        (self.dir / "ansible.cfg").write_text(
            "# Written by scripts/sandbox.py: Ansible against the test hosts over SSH.\n"
            "[defaults]\n"
            f"inventory = {inv}\n"
            f"collections_path = {ROOT / 'collections'}\n"
            f"home = {self.dir / 'ansible-home'}\n"
            f"local_tmp = {self.dir / 'ansible-home' / 'tmp'}\n"
            "remote_tmp = /run/ansible-tmp\n"
            "host_key_checking = False\n"
            "interpreter_python = /usr/bin/python3\n"
            "callback_result_format = yaml\n"
            "forks = 16\ntimeout = 10\nretry_files_enabled = False\n\n"
            "[ssh_connection]\npipelining = True\n"
            f"control_path_dir = {self.dir / 'cp'}\n"
            "ssh_args = -o ControlMaster=auto -o ControlPersist=30s"
            " -o ServerAliveInterval=2 -o ServerAliveCountMax=3\n"
        )

    # ---- faults --------------------------------------------------------------------------
    def pids(self, name: str) -> list[int]:
        """Every PID (root namespace numbering) running in the host."""
        out = sh("ip", "netns", "pids", self.host(name)["netns"], check=False)
        return [int(x) for x in out.split() if x.isdigit()]

    def kill_host(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Crash a host: signal every process in it (its /run is gone when it restarts)."""
        for pid in self.pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 5
            while self.pids(name) and time.monotonic() < deadline:
                time.sleep(0.05)

    def kill_processes(self, name: str, pattern: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal the host's processes whose command line contains `pattern`; return their PIDs."""
        hit = []
        for pid in self.pids(name):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pattern in cmd:
                os.kill(pid, sig)
                hit.append(pid)
        return hit

    def link(self, name: str, up: bool) -> None:
        """Take the host's link down (host offline) or bring it back up."""
        sh("ip", "link", "set", self.host(name)["veth"], "up" if up else "down")

    def blackhole(self, name: str, on: bool) -> None:
        """Drop all of the host's traffic (hung/partitioned host) or undo it."""
        ns = self.host(name)["netns"]
        for fam in ("-4", "-6"):
            sh(
                "ip",
                "-n",
                ns,
                fam,
                "rule",
                "add" if on else "del",
                "pref",
                "100",
                "blackhole",
                check=on,
            )

    def move_address(self, address: str, to: str, prefix_len: int = 24) -> None:
        """Move a floating address to host `to` (removing it from any other) and refresh ARP."""
        for h in self.hosts():
            if h != to and address in self.nsexec(h, "ip", "-o", "addr", "show", "dev", "eth0"):
                self.nsexec(h, "ip", "addr", "del", f"{address}/{prefix_len}", "dev", "eth0")
        if f" {address}/" not in self.nsexec(to, "ip", "-o", "addr", "show", "dev", "eth0"):
            self.nsexec(to, "ip", "addr", "add", f"{address}/{prefix_len}", "dev", "eth0")
        sh("ip", "neigh", "flush", "dev", self.state["bridge"], "to", address, check=False)

    # ---- down ----------------------------------------------------------------------------
    def down(self) -> None:
        """Tear everything down: SSH masters, host processes, netns, veths, bridge, route, files."""
        cp = self.dir / "cp"
        # every SSH master Ansible left there (named by a hash of host, port and user)
        for sock in sorted(cp.iterdir()) if cp.is_dir() else []:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "sandbox-host"],
                capture_output=True,
                timeout=10,
            )
        for h in self.state.get("hosts", []):
            try:
                self.kill_host(h["name"], signal.SIGTERM)
                deadline = time.monotonic() + 3
                while self.pids(h["name"]) and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.kill_host(h["name"], signal.SIGKILL)
            except RuntimeError:
                pass
            if h.get("pid"):
                try:
                    os.waitpid(h["pid"], os.WNOHANG)
                except ChildProcessError:
                    pass
            sh("ip", "link", "del", h["veth"], check=False)
            sh("ip", "netns", "del", h["netns"], check=False)
        if self.state.get("bridge"):
            sh("ip", "link", "del", self.state["bridge"], check=False)
        others = [n for n in sh("ip", "netns", "list", check=False).split() if "-h" in n]
        if not others:  # the last test hosts gone: whoever added the guard route, it goes too
            sh("ip", "route", "del", "unreachable", SUPERNET, check=False)
        if not others:
            for target in self.state.get("created_targets", []):
                try:
                    os.rmdir(target)
                except OSError:
                    pass
        # remove what up() made (the folder may hold other things, e.g. another sandbox's folder)
        made = [h["dir"] for h in self.state.get("hosts", [])]
        made += [str(self.dir / n) for n in ("inventory", "cp", "ansible-home")]
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        for n in ("id_ed25519", "id_ed25519.pub", "authorized_keys", "ansible.cfg", "state.json"):
            (self.dir / n).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass
        self.state = {}


def main(argv: list[str] | None = None) -> int:
    """Command line: up, down, status and the fault helpers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT / ".sandbox"), help="state folder (default .sandbox)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="create the test hosts")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--name", default="jvsbx", help="prefix of netns/interface names (<= 8 chars)")
    p.add_argument("--subnet", type=int, help="use 10.213.SUBNET.0/24 (default: first free)")
    p.add_argument(
        "--user",
        help="log in as this non-root user with passwordless sudo (hosts get their own /etc)",
    )
    sub.add_parser("down", help="remove the test hosts and their data")
    sub.add_parser("status", help="print the state as JSON")
    for cmd in ("kill", "link-down", "link-up", "blackhole-on", "blackhole-off", "start", "pids"):
        sub.add_parser(cmd).add_argument("host")
    p = sub.add_parser("move-address")
    p.add_argument("address")
    p.add_argument("host")
    args = ap.parse_args(argv)
    sb = Sandbox(Path(args.dir))
    if args.cmd == "up":
        sb.up(args.name, args.nodes, args.subnet, own_etc=bool(args.user))
        if args.user:
            try:
                for h in sb.hosts():
                    sb.add_user(h, args.user)
                sb.set_ansible_user(args.user)
            except BaseException:
                sb.down()
                raise
        print(
            f"{len(sb.hosts())} test hosts up: "
            + ", ".join(f"{h}={sb.address(h)}" for h in sb.hosts())
        )
        print(f"ANSIBLE_CONFIG={sb.dir / 'ansible.cfg'} ansible-playbook playbooks/site.yml")
    elif args.cmd == "down":
        sb.down()
    elif args.cmd == "status":
        print(json.dumps(sb.state, indent=2))
    elif args.cmd == "kill":
        sb.kill_host(args.host)
    elif args.cmd in ("link-down", "link-up"):
        sb.link(args.host, args.cmd == "link-up")
    elif args.cmd in ("blackhole-on", "blackhole-off"):
        sb.blackhole(args.host, args.cmd == "blackhole-on")
    elif args.cmd == "start":
        sb.start_host(args.host)
        sb.wait_ssh(args.host)
    elif args.cmd == "pids":
        print(" ".join(map(str, sb.pids(args.host))))
    elif args.cmd == "move-address":
        sb.move_address(args.address, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
