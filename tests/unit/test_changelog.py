"""The collection's changelog is antsibull-changelog's (changelogs/config.yaml, changelog.yaml,
fragments/): the fragments and changelog.yaml lint clean, CHANGELOG.md is exactly what
`antsibull-changelog generate` makes of changelog.yaml (run in a temporary copy, so the checkout
is never written), and its newest release is galaxy.yml's version."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "collections" / "ansible_collections" / "jiva" / "storage"
TOOL = str(Path(sys.executable).parent / "antsibull-changelog")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_fragments_and_changelog_yaml_lint_clean():
    lint = run("lint", cwd=COLLECTION)
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
    changes = run("lint-changelog-yaml", "changelogs/changelog.yaml", cwd=COLLECTION)
    assert changes.returncode == 0 and changes.stdout.strip() == "", changes.stdout


def test_generate_leaves_changelog_md_unchanged(tmp_path):
    copy = tmp_path / "storage"
    shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    (copy / "CHANGELOG.md").write_text("stale\n")
    gen = run("generate", cwd=copy)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert (copy / "CHANGELOG.md").read_text() == (COLLECTION / "CHANGELOG.md").read_text(), (
        "CHANGELOG.md is not what `antsibull-changelog generate` makes of changelogs/"
        "changelog.yaml: run it in the collection and commit the result"
    )


def test_newest_release_is_the_galaxy_version():
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    releases = yaml.safe_load((COLLECTION / "changelogs" / "changelog.yaml").read_text())
    versions = sorted(releases["releases"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert versions[:5] == ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"]  # the history kept
    assert versions[-1] == galaxy["version"]
    assert f"v{galaxy['version']}".replace(".", "\\.") in (COLLECTION / "CHANGELOG.md").read_text()
