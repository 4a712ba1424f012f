"""libiscsi's iscsi-test-cu conformance suite against `jiva target --file` (real TCP, real file)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.procs import free_port, wait_port

pytestmark = pytest.mark.skipif(
    shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin (iscsi-test-cu) not installed"
)


def parse_cu(output: str) -> dict:
    """Return CUnit's test counts plus how many passing tests printed [SKIPPED]."""
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", output, re.MULTILINE)
    assert m, "no Run Summary in iscsi-test-cu output"
    total, ran, passed, failed = map(int, m.groups())
    # per test: the text from "Test: X ..." to its verdict line
    skipped_passes = 0
    failed_names = []
    suite = ""
    current = None
    text = ""
    verdict = None

    def close() -> None:
        nonlocal skipped_passes
        if current is None:
            return
        if verdict == "passed" and "[SKIPPED]" in text:
            skipped_passes += 1
        if verdict == "FAILED":
            failed_names.append(current)

    for line in output.splitlines():
        if line.startswith("Run Summary"):
            break
        ms = re.match(r"Suite: (\S+)", line)
        if ms:
            close()
            suite, current, verdict = ms.group(1), None, None
            continue
        mt = re.match(r"\s+Test: (\S+) \.\.\.(.*)", line)
        if mt:
            close()
            current, text, verdict = f"{suite}.{mt.group(1)}", mt.group(2), None
            if text.endswith("passed"):
                verdict = "passed"
            continue
        if current is not None:
            text += "\n" + line
            if verdict is None:
                stripped = line.strip()
                if stripped == "FAILED" or stripped.endswith("passed") and "[" not in stripped:
                    verdict = "FAILED" if stripped == "FAILED" else "passed"
    close()
    return {
        "total": total,
        "ran": ran,
        "passed": passed,
        "failed": failed,
        "clean": passed - skipped_passes,
        "failed_names": failed_names,
    }


def test_iscsi_test_cu_dataloss(procs, tmp_path):
    """The destructive suite, with a second path for the multipath tests: >=600 pass, >=480 clean."""
    port = free_port()
    img = tmp_path / "cu.img"
    procs.jiva("target", "--file", str(img), "--size", "64M", "--portal", f"127.0.0.1:{port}",
               "--log-level", "ERROR", name="target")  # fmt: skip
    wait_port("127.0.0.1", port)
    url = f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.jiva-py:cu/0"
    proc = subprocess.run(
        ["iscsi-test-cu", "-d", url, url],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=480,
    )
    out = proc.stdout + proc.stderr
    (tmp_path / "iscsi-test-cu.log").write_text(out)
    res = parse_cu(out)
    print(res)
    assert res["total"] >= 600 and res["ran"] == res["total"], res
    assert res["passed"] >= 600, res
    assert res["clean"] >= 480, res
    assert procs.procs[0].poll() is None, "the target died during the suite"
