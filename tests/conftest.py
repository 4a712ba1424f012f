"""Shared pytest fixtures: a process manager that always stops what a test started."""

from __future__ import annotations

import os

import pytest

# The engine runs on uvloop when it is installed (`make bench` installs it; deployed hosts do
# not). The suite runs every daemon on the stdlib loop, as deployed; the tests that start them
# on uvloop say so (tests/integration/test_iscsi_target.py::test_uvloop_*).
os.environ.setdefault("JIVA_NO_UVLOOP", "1")

from tests.procs import Procs
from tests.sandbox import DeployedFactory


@pytest.fixture
def procs(tmp_path):
    """Start real processes inside a test; all are stopped by PID when the test ends."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def deployed_four_hosts(tmp_path_factory):
    """`d = deployed_four_hosts()`: the shared 4-host cluster (see `Deployed`, `dirty`). Saves
    a test-host set and a first site.yml run (1-2 min) per test that starts from it. The hosts
    go at the end of the session (also after a failure)."""
    factory = DeployedFactory(tmp_path_factory.mktemp("deployed4"))
    try:
        yield factory
    finally:
        factory.teardown()


@pytest.fixture(scope="session")
def shared_local_venv(tmp_path_factory) -> list[str]:
    """ansible-playbook args giving the local-connection deploy tests one engine venv for the
    session (`-e jiva_venv=...`, above the inventory): the first deploy creates it and installs
    the engine, later ones find the same revision installed (20-30 s each saved). The fresh
    install into a new venv stays proven by tests/integration/test_ansible_local.py (own venv,
    `--check` creates none) and by every deploy onto test hosts."""
    return ["-e", f"jiva_venv={tmp_path_factory.mktemp('localvenv') / 'venv'}"]
