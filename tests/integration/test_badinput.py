"""Bad input gets a clear answer, never a traceback or a partial write (docs/BAD-INPUT.md).

SCSI CDBs through our initiator at a real `jiva target` (sense key / ASC per case, and nothing
written by a refused write); I/O while the volume waits for its replicas (NOT READY); and every
`jiva` subcommand's bad options (one-line error, exit status, no traceback).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

from jiva_engine.initiator import Initiator, ScsiError
from tests.procs import JIVA, free_port, wait_port

ILLEGAL, NOT_READY = 0x5, 0x2
BLOCKS = 2048  # 1 MiB of 512-byte blocks


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


# id: (cdb, data-out, read length, sense key, ASC)
CDBS = {
    "unsupported-opcode-ff": (bytes([0xFF]) + bytes(9), b"", 0, ILLEGAL, 0x20),
    "unsupported-opcode-02": (bytes([0x02]) + bytes(5), b"", 0, ILLEGAL, 0x20),
    "read10-past-end": (rw10(0x28, BLOCKS, 1), b"", 512, ILLEGAL, 0x21),
    "write10-crossing-end": (rw10(0x2A, BLOCKS - 1, 2), b"\xee" * 1024, 0, ILLEGAL, 0x21),
    "read10-rdprotect-set": (rw10(0x28, 0, 1, 0xE0), b"", 512, ILLEGAL, 0x24),
    "read16-huge-length": (
        struct.pack(">BBQIBB", 0x88, 0, 0, 0xFFFFFFFF, 0, 0),
        b"",
        512,
        ILLEGAL,
        0x21,
    ),  # fmt: skip
    "write-same16-huge": (
        struct.pack(">BBQIBB", 0x93, 0, 0, 0x7FFFFFFF, 0, 0),
        bytes(512),
        0,
        ILLEGAL,
        0x21,
    ),  # fmt: skip
    "inquiry-unknown-vpd-page": (bytes([0x12, 1, 0x77, 0, 255, 0]), b"", 255, ILLEGAL, 0x24),
    "inquiry-page-without-evpd": (bytes([0x12, 0, 0x80, 0, 255, 0]), b"", 255, ILLEGAL, 0x24),
    "mode-sense-unknown-page": (bytes([0x1A, 0, 0x2E, 0, 255, 0]), b"", 255, ILLEGAL, 0x24),
    "unmap-bad-parameter-list": (
        bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
        b"\xff" * 24,
        0,
        ILLEGAL,
        0x26,
    ),  # fmt: skip
    "sync-cache-past-end": (rw10(0x35, 4096, 1), b"", 0, ILLEGAL, 0x21),
}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One `jiva target --file` for the module, stopped by PID at the end."""
    d = tmp_path_factory.mktemp("badinput")
    port = free_port()
    log = open(d / "target.log", "wb")  # noqa: SIM115 - closed in the finalizer
    p = subprocess.Popen([*JIVA, "target", "--file", str(d / "bad.img"), "--size", "1M",
                          "--portal", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)  # fmt: skip
    try:
        wait_port("127.0.0.1", port)
        yield port, d / "target.log"
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


@pytest.mark.parametrize("case", list(CDBS))
async def test_bad_cdb_gets_check_condition(target, case):
    port, logfile = target
    cdb, out, rlen, key, asc = CDBS[case]
    init = Initiator("127.0.0.1", port, "iqn.2026-11.org.jiva-py:bad")
    await init.connect()
    try:
        before = await init.read(BLOCKS - 8, 8)
        with pytest.raises(ScsiError) as e:
            await init.command(cdb, data_out=out, read_len=rlen)
        assert (e.value.status, e.value.key, e.value.asc) == (0x02, key, asc), str(e.value)
        # nothing written by a refused command, and the session still works
        assert await init.read(BLOCKS - 8, 8) == before
        await init.write(0, b"\x11" * 512)
        assert await init.read(0, 1) == b"\x11" * 512
    finally:
        await init.logout()
    assert "Traceback" not in logfile.read_text(errors="replace")


async def test_io_while_waiting_for_replicas_is_not_ready(procs, tmp_path):
    """A controller whose replicas are not all there holds I/O, then answers NOT READY, and
    writes nothing."""
    rport, missing, api, portal = free_port(), free_port(), free_port(), free_port()
    procs.jiva("replica", "--volume", "wv", "--listen", f"127.0.0.1:{rport}", "--dir",
               str(tmp_path / "r0"), "--size", "8M", name="r0")  # fmt: skip
    wait_port("127.0.0.1", rport)
    procs.jiva("controller", "--volume", "wv", "--api", f"127.0.0.1:{api}", "--portal",
               f"127.0.0.1:{portal}", "--replica", f"127.0.0.1:{rport}", "--replica",
               f"127.0.0.1:{missing}", "--quorum-hold", "1", name="controller")  # fmt: skip
    wait_port("127.0.0.1", portal)
    init = Initiator("127.0.0.1", portal, "iqn.2026-11.org.jiva-py:wv")
    await init.connect()
    for op in (init.write(0, b"\x99" * 4096), init.read(0, 8)):
        with pytest.raises(ScsiError) as e:
            await op
        assert (e.value.key, e.value.asc) == (NOT_READY, 0x04), str(e.value)
    await init.logout()
    await asyncio.sleep(0.1)
    assert not any((tmp_path / "r0" / "volume.img").read_bytes()), "a refused write landed"


def _bound_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


# id: (argv after `jiva`, exit status, message in stderr); {tmp} and {busy} are filled in
CLI = {
    "unknown-subcommand": (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    "replica-size-not-multiple-of-512": (["replica", "--volume", "v", "--listen",
        "127.0.0.1:{free}", "--dir", "{tmp}/r", "--size", "1000"], 2, "multiple of 512"),
    "replica-port-zero": (["replica", "--volume", "v", "--listen", "127.0.0.1:0", "--dir",
        "{tmp}/r", "--size", "1M"], 2, "invalid port"),
    "replica-port-busy": (["replica", "--volume", "v", "--listen", "127.0.0.1:{busy}", "--dir",
        "{tmp}/r", "--size", "1M"], 2, "address already in use"),
    "replica-unassignable-address": (["replica", "--volume", "v", "--listen", "10.255.255.1:9",
        "--dir", "{tmp}/r", "--size", "1M"], 2, "cannot listen on 10.255.255.1:9"),
    "controller-negative-timeout": (["controller", "--volume", "v", "--api", "127.0.0.1:{free}",
        "--replica", "127.0.0.1:5", "--replica-timeout", "-1"], 2, "must be positive"),
    "controller-bad-slow-replica": (["controller", "--volume", "v", "--api",
        "127.0.0.1:{free}", "--replica", "127.0.0.1:5", "--slow-replica-floor", "soon"], 2,
        "--slow-replica-floor must be a number >= 0 or off"),
    "controller-bad-scrub-interval": (["controller", "--volume", "v", "--api",
        "127.0.0.1:{free}", "--replica", "127.0.0.1:5", "--scrub-interval", "5x"], 2,
        "invalid duration '5x'"),
    "controller-zero-scrub-rate": (["controller", "--volume", "v", "--api", "127.0.0.1:{free}",
        "--replica", "127.0.0.1:5", "--scrub-rate", "0"], 2, "--scrub-rate must be positive"),
    "controller-port-out-of-range": (["controller", "--volume", "v", "--api", "127.0.0.1:{free}",
        "--replica", "127.0.0.1:99999"], 2, "invalid port in address '127.0.0.1:99999'"),
    "controller-api-port-busy": (["controller", "--volume", "v", "--api", "127.0.0.1:{busy}",
        "--replica", "127.0.0.1:5"], 1, "address already in use"),
    "controller-mutual-without-chap": (["controller", "--volume", "v", "--api",
        "127.0.0.1:{free}", "--replica", "127.0.0.1:5", "--mutual-user", "m",
        "--mutual-secret-file", "{tmp}/s"], 2, "mutual CHAP needs --chap-user"),
    "controller-empty-secret-file": (["controller", "--volume", "v", "--api", "127.0.0.1:{free}",
        "--replica", "127.0.0.1:5", "--secret-file", "{tmp}/empty"], 2, "is empty"),
    "target-missing-file-no-size": (["target", "--file", "{tmp}/none.img", "--portal",
        "127.0.0.1:{free}"], 2, "give --size to create it"),
    "target-bad-size": (["target", "--file", "{tmp}/t.img", "--size", "12Q", "--portal",
        "127.0.0.1:{free}"], 2, "invalid size '12Q'"),
    "target-port-busy": (["target", "--file", "{tmp}/t.img", "--size", "1M", "--portal",
        "127.0.0.1:{busy}"], 2, "address already in use"),
    "status-no-port": (["status", "--api", "nohost"], 1, "needs a port"),
    "status-unreachable": (["status", "--api", "127.0.0.1:{free}"], 1, "cannot reach the API"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLI))
def test_cli_bad_input_one_line_error(case, tmp_path):
    argv, code, msg = CLI[case]
    (tmp_path / "s").write_text("mutual-secret-value\n")
    (tmp_path / "empty").write_text("\n")
    busy, busy_port = _bound_port()
    try:
        args = [a.format(tmp=tmp_path, busy=busy_port, free=free_port()) for a in argv]
        out = subprocess.run([sys.executable, "-m", "jiva_engine.cli", *args],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        busy.close()
    assert out.returncode == code, out.stderr
    assert msg in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert len(lines) == 1, out.stderr
