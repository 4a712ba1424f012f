"""Our asyncio iSCSI initiator (jiva_engine/initiator.py) cross-checked against qemu-io (libiscsi)
on a real `jiva target` process: what one writes, the other reads back byte for byte."""

from __future__ import annotations

import os
import subprocess

import pytest

from jiva_engine.initiator import Initiator, LoginError, ScsiError
from tests.procs import free_port, wait_port

IQN = "iqn.2026-11.org.jiva-py:xchk"


@pytest.fixture
def target(procs, tmp_path):
    """A `jiva target --file` on 127.0.0.1; yields its port."""
    port = free_port()
    procs.jiva("target", "--file", str(tmp_path / "xchk.img"), "--size", "16M",
               "--portal", f"127.0.0.1:{port}", name="target")  # fmt: skip
    wait_port("127.0.0.1", port)
    return port


def qemu_io(port: int, *cmds: str) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    args.append(f"iscsi://127.0.0.1:{port}/{IQN}/0")
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


async def test_initiator_and_qemu_io_agree(target):
    init = Initiator("127.0.0.1", target, IQN)
    got = await init.connect()
    assert got["ImmediateData"] in ("Yes", "No")
    assert await init.capacity() == (16 * 2048, 512)
    # ours writes (immediate data + R2T for the 300 KiB one), qemu-io reads the pattern back
    await init.write(0, b"\xab" * 65536)
    await init.write(2048, b"\x5c" * (300 * 1024))
    r = qemu_io(target, "read -P 0xab 0 64k", "read -P 0x5c 1M 300k", "read -P 0 64k 64k")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    # a wrong expectation must fail, so the check above is meaningful
    bad = qemu_io(target, "read -P 0xac 0 4k")
    assert "Pattern verification failed" in bad.stdout + bad.stderr
    # qemu-io writes, ours reads
    r = qemu_io(target, "write -P 0x77 4M 192k")
    assert r.returncode == 0, r.stderr
    data = await init.read(4 * 2048, 384)
    assert data == b"\x77" * (192 * 1024)
    random_data = os.urandom(8192)
    await init.write(100, random_data, fua=True)
    assert await init.read(100, 16) == random_data
    await init.sync_cache()
    # out-of-range: a clear SCSI error (ILLEGAL REQUEST / LBA out of range), not a hang
    with pytest.raises(ScsiError) as e:
        await init.read(16 * 2048, 1)
    assert (e.value.key, e.value.asc) == (0x5, 0x21)
    await init.logout()
    assert not init.connected


async def test_initiator_refused_for_unknown_target(target):
    init = Initiator("127.0.0.1", target, "iqn.2026-11.org.jiva-py:nope")
    with pytest.raises(LoginError) as e:
        await init.connect()
    assert e.value.status >> 8 == 0x02  # initiator error class (target not found)
