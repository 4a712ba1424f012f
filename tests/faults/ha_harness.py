"""HA harness shared by tests/faults/test_ha.py and bench/ha_gap.py: 4 test hosts with one
3-replica volume deployed by site.yml, a checking iSCSI workload through the portal in a thread
(own initiator), the `jiva ha watch` loop, and helpers to inject the four scenarios."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from jiva_engine.initiator import Initiator
from jiva_engine.torture.workload import Workload
from tests.sandbox import ROOT, HostsFactory, ansible_env, frozen_wheelhouse, run_playbook

VOLUME = "ha3"
VOLUME2 = "ha2"
IQN = f"iqn.2026-11.org.jiva-py:{VOLUME}"
SIZE_MB = 32
NBLOCKS = 2048  # 8 MiB of 4 KiB blocks written by the workload


class Cluster:
    """4 test hosts, volume ha3 (replicas on h1-h3, controller on h4), portal .101:3260."""

    def __init__(self, base: Path, replica_timeout: float = 1.5) -> None:
        self.factory = HostsFactory()
        self.base = base
        self.sb = self.factory(4)
        self.portal_host = self.sb.free_address(1)
        self.portal = f"{self.portal_host}:3260"
        self.api = f"{self.portal_host}:9800"
        self.api2 = f"{self.sb.free_address(2)}:9801"
        self.portal2 = f"{self.sb.free_address(2)}:3260"
        vols = [
            {
                "name": VOLUME,
                "size": f"{SIZE_MB}M",
                "replicas": 3,
                "portal": self.portal,
                "nodes": ["h1", "h2", "h3"],
                "controller": "h4",
            },
            {  # the 2-replica policy (ENGINE.md): survives one replica host, restarts on the survivor
                "name": VOLUME2,
                "size": "8M",
                "replicas": 2,
                "portal": f"{self.sb.free_address(2)}:3260",
                "nodes": ["h1", "h2"],
                "controller": "h4",
            },
        ]
        gv = self.sb.dir / "inventory" / "group_vars" / "jiva_nodes" / "volumes.yml"
        gv.write_text(
            yaml.safe_dump({"jiva_volumes": vols, "jiva_replica_timeout": replica_timeout})
        )
        self.cfg, self.home = self.sb.dir / "ansible.cfg", base / "ansible-home"
        prebuilt = os.environ.get("JIVA_HA_WHEELHOUSE")  # a wheelhouse dir (+ .tar) to ship as is
        if prebuilt:
            self.wheels = [
                "-e",
                "jiva_build_wheelhouse=false",
                "-e",
                f"jiva_control_wheelhouse={prebuilt}",
            ]
        else:
            self.wheels = frozen_wheelhouse(base)
        self.state_file = base / "ha-state.json"
        self.watch_proc: subprocess.Popen | None = None
        self._watch_from = 0
        self.history: dict = {}  # acknowledged/issued writes of every workload run so far

    def close(self) -> None:
        """Stop any workload still running, the watch loop, tear the hosts down."""
        abandon_workloads()
        self.stop_watch()
        self.factory.teardown()

    # ---- Ansible ---------------------------------------------------------------------------
    def play(self, name: str, *args: str):  # noqa: ANN201 - tests.sandbox.PlaybookRun
        """Run a playbook against the test hosts (frozen wheelhouse, our state file)."""
        return run_playbook(
            name,
            self.cfg,
            self.home,
            *self.wheels,
            "-e",
            f"jiva_ha_state_file={self.state_file}",
            *args,
        )

    def deploy(self) -> None:
        """site.yml, then one failover run (records the state)."""
        r = self.play("site.yml")
        assert r.rc == 0, r.output[-4000:] + self.host_logs()
        r = self.play("failover.yml")
        assert r.rc == 0, r.output[-4000:] + self.host_logs()

    def host_logs(self, tail: int = 1500) -> str:
        """The end of every jiva log on every test host (for failure messages)."""
        out = []
        for h in self.sb.hosts():
            for f in sorted((Path(self.sb.host(h)["dir"]) / "var-lib-jiva" / "log").glob("*.log")):
                out.append(f"\n--- {h}:{f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "".join(out)

    def start_watch(self, interval: float = 20.0, poll: float = 0.5) -> None:
        """Start `jiva ha watch` (the automatic host-loss recovery) in the background."""
        log = self.base / "watch.log"
        self._watch_from = log.stat().st_size if log.exists() else 0  # this loop's runs start here
        cmd = [
            sys.executable, "-m", "jiva_engine.ha", "watch", "--state-file", str(self.state_file),
            "--interval", str(interval), "--poll", str(poll), "--log", str(log), "--ansible-args", shlex.join(self.wheels),
        ]  # fmt: skip
        self.watch_proc = subprocess.Popen(
            cmd, cwd=ROOT, env=ansible_env(self.cfg, self.home), stdout=subprocess.DEVNULL,
            stderr=open(self.base / "watch.err", "ab"), start_new_session=True,  # noqa: SIM115
        )  # fmt: skip

    def wait_watch_run(self, n: int = 1, timeout: float = 120.0) -> None:
        """Wait until the watch loop's run `n` has finished (its `rc=` line is in the log)."""
        deadline = time.monotonic() + timeout
        pat = re.compile(rf"jiva ha: run {n} \(.*\) rc=")
        while time.monotonic() < deadline:
            log = self.base / "watch.log"
            text = (
                log.read_bytes()[self._watch_from :].decode(errors="replace")
                if log.exists()
                else ""
            )
            if pat.search(text):
                return
            time.sleep(0.2)
        raise AssertionError(
            f"watch run {n} not done after {timeout}s:\n{self.watch_log()[-3000:]}"
        )

    def stop_watch(self) -> None:
        """Stop the watch loop (by its PID) and wait for it."""
        p, self.watch_proc = self.watch_proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def watch_log(self) -> str:
        """The watch loop's log so far."""
        out = ""
        for name in ("watch.err", "watch.log"):
            f = self.base / name
            out += f.read_text(errors="replace") if f.exists() else ""
        return out

    # ---- state -----------------------------------------------------------------------------
    def status(self, api: str | None = None) -> dict | None:
        """GET /v1/volume through the portal address (None when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://{api or self.api}/v1/volume", timeout=2) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def wait_healthy(self, timeout: float = 90.0) -> dict:
        """Wait until serving with 3 RW replicas; return the status."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status()
            if st and st["state"] == "serving" and all(r["mode"] == "RW" for r in st["replicas"]):
                if len(st["replicas"]) == 3 and not st["degraded"]:
                    return st
            time.sleep(0.3)
        raise AssertionError(
            f"volume not healthy after {timeout}s: {st}\n{self.watch_log()[-3000:]}"
        )

    def child_pid(self, host: str, kind: str) -> int:
        """In-namespace PID of the supervised jiva process KIND-ha3 on a host."""
        return int(self.sb.ssh(host, f"cat /run/jiva/{kind}-{VOLUME}.pid.child").stdout)

    def kill_child(self, host: str, kind: str) -> int:
        """kill -9 the jiva process (not its supervisor); return the killed PID."""
        pid = self.child_pid(host, kind)
        self.sb.ssh(host, f"kill -9 {pid}")
        return pid

    def controller_host(self) -> str | None:
        """The host holding the portal address (None when none does)."""
        for h in self.sb.hosts():
            out = self.sb.nsexec(h, "ip", "-o", "addr", "show", "dev", "eth0", check=False)
            if f" {self.portal_host}/" in out:
                return h
        return None

    def portal_holders(self) -> list[str]:
        """Every host that has the portal address configured."""
        return [
            h
            for h in self.sb.hosts()
            if f" {self.portal_host}/"
            in self.sb.nsexec(h, "ip", "-o", "addr", "show", "dev", "eth0", check=False)
        ]

    def replica_digests(self) -> dict[str, str]:
        """sha256 of volume.img on each replica host (read from the host's bind-mounted folder)."""
        out = {}
        for h in ("h1", "h2", "h3"):
            img = Path(self.sb.host(h)["dir"]) / "var-lib-jiva" / VOLUME / "volume.img"
            out[h] = hashlib.sha256(img.read_bytes()).hexdigest()
        return out


_LIVE: list[BackgroundWorkload] = []


def abandon_workloads() -> int:
    """Stop every workload a failed test left running (no verification); returns how many.

    A workload that outlives its test keeps writing through whatever answers on its portal
    address later (another cluster of the same suite may reuse the subnet), so every test stops
    its workloads on the way out, pass or fail.
    """
    n = 0
    while _LIVE:
        _LIVE.pop().abandon()
        n += 1
    return n


class BackgroundWorkload:
    """The torture workload (checked 4 KiB blocks) through the portal, in its own thread.

    Records the time of every acknowledged write so `gap(t0, t1)` gives the longest stretch
    without an acknowledged write.
    """

    def __init__(
        self, host: str, port: int, writers: int = 4, seed: int = 5, history: dict | None = None
    ) -> None:
        self.host, self.port = host, port
        self.history = history if history is not None else {}
        self.loop = asyncio.new_event_loop()
        self.acks: list[float] = []
        self.errors: list[float] = []
        self.init = Initiator(host, port, IQN, timeout=5.0)  # like noop timeouts of a few s
        self.wl: Workload | None = None
        self.writers = writers
        self.seed = seed
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _LIVE.append(self)

    def abandon(self) -> None:
        """Stop writing and log out without verifying (a test failed); keep the history usable:
        the issued/acked maps are shared with it, only the sequence counter needs carrying over."""
        if self in _LIVE:
            _LIVE.remove(self)

        async def fin() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:  # writers may sit in a long reconnect: cancel, do not wait for them
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.wl is not None:
                seq = max(self.history.get("seq", 0), self.wl.seq)
                self.history.update(acked=self.wl.acked, issued=self.wl.issued, seq=seq)
            await asyncio.wait_for(self.init.logout(), 5)

        try:
            self._call(fin(), timeout=30)
        except Exception:  # noqa: BLE001, S110 - best effort on a failed test's way out
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def _call(self, coro, timeout: float = 300):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        await self.init.reconnect(deadline=60)
        self.wl = Workload(self.init, NBLOCKS, random.Random(self.seed), writers=self.writers)
        if self.history:  # what earlier workloads wrote on the same volume is still there
            self.wl.acked = self.history["acked"]
            self.wl.issued = self.history["issued"]
            self.wl.seq = self.history["seq"]
        orig = self.init.write

        async def write(lba: int, data: bytes, fua: bool = False) -> None:
            try:
                await orig(lba, data, fua)
            except Exception:
                self.errors.append(time.monotonic())
                raise
            self.acks.append(time.monotonic())

        self.init.write = write  # type: ignore[method-assign]
        self.wl.start()

    def start(self) -> None:
        """Log in and start writing."""
        self._call(self._start())

    def gap(self, t0: float, t1: float) -> float:
        """Longest time without an acknowledged write within [t0, t1]."""
        ts = [t0] + [t for t in list(self.acks) if t0 <= t <= t1] + [t1]
        return max(b - a for a, b in zip(ts, ts[1:], strict=False))

    def errors_between(self, t0: float, t1: float) -> int:
        """Writes that failed (not acknowledged) within [t0, t1]."""
        return sum(1 for t in list(self.errors) if t0 <= t <= t1)

    def wait_acks(self, n: int, timeout: float = 60) -> None:
        """Wait for n more acknowledged writes."""
        want = len(self.acks) + n
        deadline = time.monotonic() + timeout
        while len(self.acks) < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"workload stalled: {len(self.acks)} acks, wanted {want}")
            time.sleep(0.05)

    def stop_and_verify(self) -> dict:
        """Stop, flush, read every block back and check it; return the stats."""

        async def fin() -> dict:
            assert self.wl is not None
            await self.wl.stop()
            await self.wl.ensure_connected()
            await self.init.sync_cache()
            await self.wl.verify_all()
            s = self.wl.stats
            self.history.update(acked=self.wl.acked, issued=self.wl.issued, seq=self.wl.seq)
            await self.init.logout()
            return {
                "acked": s.writes_acked,
                "failed": s.writes_failed,
                "verified": s.blocks_verified,
                "reconnects": s.reconnects,
                "violations": list(s.violations),
            }

        if self in _LIVE:
            _LIVE.remove(self)
        try:
            return self._call(fin())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
