"""The docs name only things that exist: files and folders of this repository, the numbered
correctness rules and the quorum rules Q1-Q9 of docs/ENGINE.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `playbooks/...` and `roles/...` may name the collection's own (its roles and playbooks live in it)
COLLECTION = ROOT / "collections" / "ansible_collections" / "jiva" / "storage"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
CODE = sorted((ROOT / "jiva_engine").rglob("*.py")) + sorted(
    (ROOT / "tests" / "torture").glob("*.py")
)
TOP = "jiva_engine|tests|playbooks|scripts|bench|roles|collections|docs|inventory|molecule"
PATH_RE = re.compile(rf"`((?:{TOP})/[A-Za-z0-9_./*-]*)`")
PKG_RE = re.compile(r"`((?:controller|replica|protocol|api|iscsi|scsi|witness)/[a-z_]+\.py)`")
ENGINE = (ROOT / "docs" / "ENGINE.md").read_text()
RULES = {int(n) for n in re.findall(r"^(\d)\. ", ENGINE.split("## The correctness rules")[1]
                                    .split("\n## ")[0], re.M)}  # fmt: skip
QRULES = {int(n) for n in re.findall(r"\*\*Q(\d+) —", ENGINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_the_docs_exist(doc):
    text = doc.read_text()
    missing = []
    for path in PATH_RE.findall(text):
        p = path.rstrip("/.")
        if "*" in p:
            if not list(ROOT.glob(p)) and not list(COLLECTION.glob(p)):
                missing.append(path)
        elif not (ROOT / p).exists() and not (COLLECTION / p).exists():
            missing.append(path)
    for path in PKG_RE.findall(text):
        if not (ROOT / "jiva_engine" / path).exists():
            missing.append(path)
    assert not missing, f"{doc.name} names what does not exist: {missing}"


@pytest.mark.parametrize("src", DOCS + CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_rules_cited_are_defined(src):
    text = src.read_text()
    assert set(range(1, 9)) == RULES and set(range(1, 10)) == QRULES
    cited = {int(n) for n in re.findall(r"\b[Rr]ules? (\d+)", text)}
    cited |= {int(b) for a, b in re.findall(r"\b[Rr]ules (\d+)[-–](\d+)", text)}
    assert cited <= RULES, f"{src.name} cites rules {sorted(cited - RULES)}"
    q = {int(n) for n in re.findall(r"\bQ(\d+)\b", text)}
    assert q <= QRULES, f"{src.name} cites quorum rules {sorted(q - QRULES)}"


def test_role_readmes_are_generated_from_their_argument_specs():
    """roles/*/README.md list the variables of meta/argument_specs.yml (one source): regenerate
    them with `python scripts/role_readmes.py` after changing a spec."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, str(root / "scripts/role_readmes.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    for role in ("install", "witness", "replica", "controller"):
        text = (COLLECTION / "roles" / role / "README.md").read_text()
        assert "## Variables" in text and "| `jiva_venv` |" in text
