"""docs/BAD-INPUT.md names real tests: every `tests/...py::test_name` in it exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_bad_input_table_exists():
    doc = (ROOT / "docs" / "BAD-INPUT.md").read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", doc)
    assert len(refs) > 40
    missing = []
    for path, name in refs:
        src = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        if not re.search(rf"^(async )?def {name}\(", src, re.M):
            missing.append(f"{path}::{name}")
    # parametrized ids ([case]) must be cases of the tables they name
    from tests.integration.test_badinput import CDBS, CLI
    from tests.integration.test_inventory_validation import CASES

    known = set(CDBS) | set(CLI) | set(CASES)
    params = re.findall(r"\[([\w -]+)\]`", doc)
    assert len(params) > 25
    unknown = [p for p in params if p not in known and not p.isdigit() and p != "param"]
    assert not unknown, f"BAD-INPUT.md names parameter ids no test has: {unknown}"
    assert not missing, f"BAD-INPUT.md names tests that do not exist: {missing}"
