"""HA harness shared by tests/faults/test_ha.py, tests/faults/test_ha3.py and bench/ha_gap.py.

Test hosts with volumes deployed by the real site.yml (`Cluster(base, hosts=4)`: ha3 with 3
replicas on h1-h3 and ha2 with 2 replicas, both controllers alone on h4; `hosts=3`: the same
volumes with both controllers pinned on h1, which holds a replica of each, and ha2's witness on
h3), a checking iSCSI workload through a portal in a thread (own initiator), a long-lived qemu-io
session (libiscsi), the `jiva ha watch` loop, and helpers to inject faults and wait for their
outcome (`eventually`: every wait is for a condition, bounded by a timeout)."""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jiva_engine.initiator import Initiator
from tests.sandbox import ROOT, HostsFactory, ansible_env, frozen_wheelhouse, run_playbook
from tests.torture.workload import Workload

VOLUME = "ha3"
VOLUME2 = "ha2"
IQN = f"iqn.2026-11.org.jiva-py:{VOLUME}"
SIZE_MB = 32
NBLOCKS = 2048  # 8 MiB of 4 KiB blocks written by the workload
QEMU_OFFSET = 16 << 20  # where qemu-io sessions write (ha3: 32 MiB; workloads: 0-8 MiB)

# hosts -> the volumes: (name, size MiB, replicas, replica hosts, pinned controller host). Volume
# i gets the floating portal address .10(i+1) and API port 9800+i. With 3 hosts the 2-replica
# volume's witness lands on h3 (the only eligible host without one of its replicas).
LAYOUTS: dict[int, list[tuple[str, int, int, tuple[str, ...], str]]] = {
    4: [
        (VOLUME, SIZE_MB, 3, ("h1", "h2", "h3"), "h4"),
        (VOLUME2, 8, 2, ("h1", "h2"), "h4"),
    ],
    3: [
        (VOLUME, SIZE_MB, 3, ("h1", "h2", "h3"), "h1"),
        (VOLUME2, 16, 2, ("h1", "h2"), "h1"),
    ],
}


def eventually(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll `cond()` until it returns something truthy and return that; after `timeout` s raise
    AssertionError naming `what`, the last value and `detail()` (logs). The one wait helper of the
    HA tests: they wait for conditions, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            extra = detail() if detail is not None else ""
            raise AssertionError(f"{what}: not so after {timeout:g}s (last: {got!r})\n{extra}")
        time.sleep(interval)


@dataclass(frozen=True)
class Vol:
    """One volume of the test cluster: its jiva_volumes entry and its addresses."""

    name: str
    size_mb: int
    replicas: int
    nodes: tuple[str, ...]
    controller: str  # the pinned controller host (where site.yml puts it)
    portal_host: str
    api_port: int

    @property
    def iqn(self) -> str:
        return f"iqn.2026-11.org.jiva-py:{self.name}"

    @property
    def portal(self) -> str:
        return f"{self.portal_host}:3260"

    @property
    def api(self) -> str:
        return f"{self.portal_host}:{self.api_port}"

    @property
    def url(self) -> str:
        """The LUN as qemu and libiscsi name it."""
        return f"iscsi://{self.portal}/{self.iqn}/0"

    def entry(self) -> dict:
        """The volume's jiva_volumes entry."""
        return {
            "name": self.name,
            "size": f"{self.size_mb}M",
            "replicas": self.replicas,
            "portal": self.portal,
            "nodes": list(self.nodes),
            "controller": self.controller,
        }


class Cluster:
    """Test hosts with the volumes of LAYOUTS[hosts] deployed by site.yml (see the module doc)."""

    def __init__(self, base: Path, replica_timeout: float = 1.5, hosts: int = 4) -> None:
        self.factory = HostsFactory()
        self.base = base
        self.watch_proc: subprocess.Popen | None = None
        self.sb = self.factory(hosts)
        try:
            self._setup(replica_timeout, hosts)
        except BaseException:
            self.factory.teardown()  # (the caller gets no Cluster to close)
            raise

    def _setup(self, replica_timeout: float, hosts: int) -> None:
        self.vols = [
            Vol(name, size, reps, nodes, ctl, self.sb.free_address(i + 1), 9800 + i)
            for i, (name, size, reps, nodes, ctl) in enumerate(LAYOUTS[hosts])
        ]
        self.vol, self.vol2 = self.vols[0], self.vols[1]
        self.portal_host, self.portal, self.api = (
            self.vol.portal_host,
            self.vol.portal,
            self.vol.api,
        )
        self.api2, self.portal2 = self.vol2.api, self.vol2.portal  # (short names used by test_ha)
        gv = self.sb.dir / "inventory" / "group_vars" / "jiva_nodes" / "volumes.yml"
        gv.write_text(
            yaml.safe_dump(
                {
                    "jiva_volumes": [v.entry() for v in self.vols],
                    "jiva_replica_timeout": replica_timeout,
                }
            )
        )
        self.cfg, self.home = self.sb.dir / "ansible.cfg", self.base / "ansible-home"
        # a folder of per-target wheelhouses (scripts/build-wheelhouse.sh OUT) to ship as is
        prebuilt = os.environ.get("JIVA_HA_WHEELHOUSE")
        if prebuilt:
            self.wheels = [
                "-e",
                "jiva_build_wheelhouse=false",
                "-e",
                f"jiva_control_wheelhouse={prebuilt}",
            ]
        else:
            self.wheels = frozen_wheelhouse(self.base)
        self.state_file = self.base / "ha-state.json"
        self._watch_from = 0
        # acknowledged/issued writes of every workload run so far, per volume
        self.histories: dict[str, dict] = {v.name: {} for v in self.vols}
        self.history = self.histories[VOLUME]

    def close(self) -> None:
        """Stop any workload or qemu-io session still running, the watch loop, tear the hosts
        down."""
        abandon_workloads()
        self.stop_watch()
        self.factory.teardown()

    def _v(self, vol: Vol | None) -> Vol:
        return vol if vol is not None else self.vol

    def workload(
        self, vol: Vol | None = None, seed: int = 5, writers: int = 4
    ) -> BackgroundWorkload:
        """A checking workload through the volume's portal (not started), continuing the
        volume's history."""
        v = self._v(vol)
        return BackgroundWorkload(
            v.portal_host,
            3260,
            writers=writers,
            seed=seed,
            history=self.histories[v.name],
            iqn=v.iqn,
        )

    # ---- Ansible ---------------------------------------------------------------------------
    def play(self, name: str, *args: str):
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

    def health(self, out: Path, fail_on_degraded: bool = True):
        """health.yml writing JSON to `out`; returns (PlaybookRun, the JSON document or None)."""
        args = ["-e", f"jiva_health_file={out}"]
        if fail_on_degraded:
            args += ["-e", "jiva_fail_on_degraded=true"]
        r = self.play("health.yml", *args)
        doc = json.loads(out.read_text()) if out.exists() else None
        return r, doc

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

    def watch_runs(self) -> str:
        """The watch loop's log since it was started."""
        log = self.base / "watch.log"
        return log.read_bytes()[self._watch_from :].decode(errors="replace") if log.exists() else ""

    def wait_watch_run(self, n: int = 1, timeout: float = 120.0) -> None:
        """Wait until the watch loop's run `n` has finished (its `rc=` line is in the log)."""
        pat = re.compile(rf"jiva ha: run {n} \(.*\) rc=")
        eventually(
            lambda: pat.search(self.watch_runs()),
            timeout,
            f"watch run {n} done",
            detail=lambda: self.watch_log()[-3000:],
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

    def status_on(self, host: str, vol: Vol | None = None) -> dict | None:
        """GET /v1/volume of the controller on `host`, asked from inside that host's network
        namespace (its API address is local there: this works while the host is cut off, and
        while another host holds the same portal address). None when nothing answers."""
        code = (
            "import sys, urllib.request as u\n"
            "print(u.urlopen(sys.argv[1], timeout=2).read().decode())"
        )
        url = f"http://{self._v(vol).api}/v1/volume"
        out = self.sb.nsexec(host, "python3", "-c", code, url, check=False)
        try:
            return json.loads(out)
        except ValueError:
            return None

    def healthy_status(self, vol: Vol | None = None) -> dict | None:
        """The status when the volume serves with all its replicas RW and nothing degraded
        (witness included), else None."""
        v = self._v(vol)
        st = self.status(v.api)
        if (
            st
            and st["state"] == "serving"
            and len(st["replicas"]) == v.replicas
            and all(r["mode"] == "RW" for r in st["replicas"])
            and not st["degraded"]
        ):
            return st
        return None

    def wait_healthy(self, timeout: float = 90.0, vol: Vol | None = None) -> dict:
        """Wait until the volume (default ha3) is healthy; return the status."""
        v = self._v(vol)
        return eventually(
            lambda: self.healthy_status(v),
            timeout,
            f"volume {v.name} healthy",
            interval=0.3,
            detail=lambda: f"status: {self.status(v.api)}\n{self.watch_log()[-3000:]}",
        )

    def caught_up(self, host: str, vol: Vol | None = None) -> Callable[[], dict]:
        """A wait for after a replica fault (make it before injecting the fault): it returns the
        status once the volume is healthy again after a new rebuild of the replica on `host` (its
        last_rebuild changed: the record names the epoch it caught up from)."""
        v = self._v(vol)
        before = self.replica_of(self.status(v.api), host)["last_rebuild"]

        def done() -> dict | None:
            st = self.healthy_status(v)
            return (
                st
                if st and self.replica_of(st, host)["last_rebuild"] not in (None, before)
                else None
            )

        return lambda: eventually(done, 90, f"replica of {v.name} on {host} caught up, healthy")

    def replica_of(self, st: dict, host: str) -> dict:
        """The entry of the replica on `host` in a status document."""
        pre = self.sb.address(host) + ":"
        return next(r for r in st["replicas"] if r["address"].startswith(pre))

    def child_pid(self, host: str, kind: str, volume: str = VOLUME) -> int:
        """In-namespace PID of the supervised jiva process KIND-VOLUME on a host."""
        return int(self.sb.ssh(host, f"cat /run/jiva/{kind}-{volume}.pid.child").stdout)

    def kill_child(self, host: str, kind: str, volume: str = VOLUME) -> int:
        """kill -9 the jiva process (not its supervisor); return the killed PID."""
        pid = self.child_pid(host, kind, volume)
        self.sb.ssh(host, f"kill -9 {pid}")
        return pid

    def controller_procs(self, host: str, vol: Vol | None = None) -> list[int]:
        """PIDs (root namespace) of the volume's controller processes on `host` (supervisor and
        child), from /proc: works whatever the host's network state."""
        want = f"controller --volume {self._v(vol).name} "
        out = []
        for pid in self.sb.pids(host):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if want in cmd + " " or f"controller-{self._v(vol).name}.env" in cmd:
                out.append(pid)
        return out

    def configured_on(self, host: str) -> list[str]:
        """The service config files (KIND-VOLUME.env) in the host's /etc/jiva."""
        d = Path(self.sb.host(host)["dir"]) / "etc-jiva"
        return sorted(f.name for f in d.glob("*.env"))

    def controller_host(self, vol: Vol | None = None) -> str | None:
        """The host holding the portal address (None when none does)."""
        holders = self.portal_holders(vol)
        return holders[0] if holders else None

    def portal_holders(self, vol: Vol | None = None) -> list[str]:
        """Every host that has the volume's portal address configured."""
        addr = self._v(vol).portal_host
        return [
            h
            for h in self.sb.hosts()
            if f" {addr}/"
            in self.sb.nsexec(h, "ip", "-o", "addr", "show", "dev", "eth0", check=False)
        ]

    def served_from(self, vol: Vol, old: str, old_term: int) -> str | None:
        """The host now serving `vol` instead of `old`: the only other holder of its portal
        address, answering `serving` under a newer term than `old_term`; else None."""
        others = [h for h in self.portal_holders(vol) if h != old]
        st = self.status(vol.api)
        if len(others) == 1 and st and st["state"] == "serving" and st["term"] > old_term:
            return others[0]
        return None

    def wait_moved_off(self, old: str, terms: dict[str, int], timeout: float = 90) -> dict:
        """Wait until every volume is served from a host other than `old` (the failover play
        moved it); `terms` are the volumes' terms before. Returns volume -> new host."""
        return {
            v.name: eventually(
                lambda v=v: self.served_from(v, old, terms[v.name]),
                timeout,
                f"{v.name} served from a host other than {old}",
                detail=lambda: self.watch_log()[-5000:],
            )
            for v in self.vols
        }

    def stale_gone(self, host: str, vol: Vol) -> bool:
        """`host` runs no controller of `vol`, has no config for it and not its portal address."""
        return (
            not self.controller_procs(host, vol)
            and f"controller-{vol.name}.env" not in self.configured_on(host)
            and host not in self.portal_holders(vol)
        )

    def assert_identical(self, vol: Vol | None = None) -> None:
        """The volume's replicas are byte-identical."""
        digests = self.replica_digests(vol)
        assert len(set(digests.values())) == 1, digests

    def replica_digests(self, vol: Vol | None = None) -> dict[str, str]:
        """sha256 of volume.img on each replica host (read from the host's bind-mounted folder)."""
        v = self._v(vol)
        out = {}
        for h in v.nodes:
            img = Path(self.sb.host(h)["dir"]) / "var-lib-jiva" / v.name / "volume.img"
            out[h] = hashlib.sha256(img.read_bytes()).hexdigest()
        return out


_LIVE: list[BackgroundWorkload | QemuIoSession] = []


@pytest.fixture(autouse=True)
def no_workload_outlives_its_test():
    """Autouse in the HA test modules that import it: a failed test must not leave a workload or
    a qemu-io session writing (see abandon_workloads)."""
    yield
    abandon_workloads()


@contextmanager
def deployed(base: Path, hosts: int) -> Iterator[Cluster]:
    """A Cluster deployed by site.yml with every volume healthy; torn down at the end, also on
    failure (the module-scoped fixture of the HA test modules)."""
    c = Cluster(base, hosts=hosts)
    try:
        c.deploy()
        for v in c.vols:
            c.wait_healthy(vol=v)
        yield c
    finally:
        c.close()


def abandon_workloads() -> int:
    """Stop every workload and qemu-io session a failed test left running (no verification);
    returns how many.

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
        self,
        host: str,
        port: int,
        writers: int = 4,
        seed: int = 5,
        history: dict | None = None,
        iqn: str = IQN,
        nblocks: int = NBLOCKS,
    ) -> None:
        self.host, self.port, self.nblocks = host, port, nblocks
        self.history = history if history is not None else {}
        self.loop = asyncio.new_event_loop()
        self.acks: list[float] = []
        self.errors: list[float] = []
        self.init = Initiator(host, port, iqn, timeout=5.0)  # like noop timeouts of a few s
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
        except Exception:
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def _call(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        await self.init.reconnect(deadline=60)
        self.wl = Workload(self.init, self.nblocks, random.Random(self.seed), writers=self.writers)
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
        return longest_gap(list(self.acks), t0, t1)

    def errors_between(self, t0: float, t1: float) -> int:
        """Writes that failed (not acknowledged) within [t0, t1]."""
        return sum(1 for t in list(self.errors) if t0 <= t <= t1)

    def wait_acks(self, n: int, timeout: float = 60) -> float:
        """Wait for n more acknowledged writes; return the time of the n-th."""
        want = len(self.acks) + n
        eventually(
            lambda: len(self.acks) >= want,
            timeout,
            f"workload on {self.host}: {want} acknowledged writes (has {len(self.acks)})",
            interval=0.05,
        )
        return self.acks[want - 1]

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


def longest_gap(times: list[float], t0: float, t1: float) -> float:
    """Longest stretch within [t0, t1] without one of `times` (completions)."""
    ts = [t0] + sorted(t for t in times if t0 <= t <= t1) + [t1]
    return max(b - a for a, b in zip(ts, ts[1:], strict=False))


class QemuIoSession:
    """One long-lived qemu-io process (Debian qemu-utils; iSCSI through libiscsi from
    qemu-block-extra) on a volume, as a guest would use it: one 4 KiB `write -P N OFF 4k` after
    another over `blocks` blocks from `offset`, with `sleep MS` (a qemu-io command) between them.

    Commands go to qemu-io's stdin one at a time: qemu-io reads stdin with stdio buffering, so a
    second line sent before the prompt would sit in its buffer. The time a write completed is
    when its result and the next prompt arrive (qemu-io flushes its output with each prompt).
    `stop_and_verify()` reads every block back with `read -P` (the pattern of its last completed
    write), quits and returns the figures.
    """

    PROMPT = "qemu-io> "

    def __init__(
        self, url: str, offset: int, blocks: int = 64, pause_ms: int = 200, timeout: float = 180
    ) -> None:
        self.url, self.offset, self.blocks, self.pause_ms = url, offset, blocks, pause_ms
        self.timeout = timeout  # the longest a single command may take before it counts as failed
        self.done: list[tuple[float, int, int]] = []  # (completed at, offset, pattern)
        self.errors: list[tuple[float, str]] = []  # (when, qemu-io's output) of failed writes
        self.last: dict[int, int] = {}  # offset -> pattern of its last completed write
        self._buf = ""
        self._prompts = 0
        self._prompt_at = 0.0
        self._eof = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.proc = subprocess.Popen(
            ["qemu-io", "-f", "raw", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._driver = threading.Thread(target=self._drive, daemon=True)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            now = time.monotonic()
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += chunk.decode(errors="replace")
                n = self._buf.count(self.PROMPT)
                if n > self._prompts:
                    self._prompts, self._prompt_at = n, now
                self._cond.notify_all()

    def _command(self, line: str | None, timeout: float) -> tuple[float, str] | None:
        """Send one command (None: only wait for the first prompt); return (when the next prompt
        appeared, the command's output), or None when qemu-io neither answered nor exited."""
        with self._cond:
            n, start = self._prompts, len(self._buf)
        if line is not None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return time.monotonic(), "qemu-io has exited"
        with self._cond:
            if not self._cond.wait_for(lambda: self._prompts > n or self._eof, timeout):
                return None
            return self._prompt_at if self._prompts > n else time.monotonic(), self._buf[start:]

    def start(self) -> None:
        """Wait until qemu-io has opened the volume, then start writing (in a thread)."""
        got = self._command(None, 60)
        assert got is not None and not self._eof, f"qemu-io did not start: {self.output()}"
        self._driver.start()

    def _drive(self) -> None:
        i = 0
        while not self._stop.is_set() and not self._eof:
            off = self.offset + (i % self.blocks) * 4096
            pat = i % 255 + 1
            got = self._command(f"write -P {pat:#04x} {off} 4k", self.timeout)
            if got is None:
                self.errors.append((time.monotonic(), f"no answer within {self.timeout:g}s"))
                return
            t, out = got
            if f"wrote 4096/4096 bytes at offset {off}\n" in out and "failed" not in out:
                self.done.append((t, off, pat))
                self.last[off] = pat
            else:
                self.errors.append((t, out.strip()))
            if self._command(f"sleep {self.pause_ms}", 60) is None:
                return
            i += 1

    def output(self) -> str:
        """Everything qemu-io printed so far."""
        with self._cond:
            return self._buf

    def completions(self) -> list[float]:
        """When each write completed."""
        return [t for t, _, _ in self.done]

    def wait_writes(self, n: int, timeout: float = 60) -> float:
        """Wait for n more completed writes; return the time of the n-th."""
        want = len(self.done) + n
        eventually(
            lambda: len(self.done) >= want or self._eof,
            timeout,
            f"qemu-io: {want} completed writes",
            interval=0.05,
            detail=lambda: self.output()[-2000:],
        )
        assert len(self.done) >= want, f"qemu-io exited: {self.output()[-2000:]}"
        return self.done[want - 1][0]

    def stop_and_verify(self) -> dict:
        """Stop writing (after the write in progress), read every block back with its last
        pattern, quit; return {writes, errors, mismatches, rc, output}."""
        self._stop.set()
        if self._driver.is_alive():
            self._driver.join(self.timeout + 70)
        mismatches = []
        for off, pat in sorted(self.last.items()):
            got = self._command(f"read -P {pat:#04x} {off} 4k", 60)
            out = got[1] if got else "no answer"
            if f"read 4096/4096 bytes at offset {off}\n" not in out or "verification failed" in out:
                mismatches.append(f"offset {off} pattern {pat:#04x}: {out.strip()}")
        self._command("quit", 30)
        rc = self._finish()
        return {
            "writes": len(self.done),
            "errors": self.errors,
            "mismatches": mismatches,
            "rc": rc,
            "output": self.output(),
        }

    def _finish(self) -> int:
        if self in _LIVE:
            _LIVE.remove(self)
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        finally:
            self._reader.join(10)

    def abandon(self) -> None:
        """Stop at once (a test failed): kill qemu-io by its PID."""
        self._stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._finish()
