"""Shared pytest fixtures: a process manager that always stops what a test started."""

from __future__ import annotations

import pytest

from tests.procs import Procs


@pytest.fixture
def procs(tmp_path):
    """Start real processes inside a test; all are stopped by PID when the test ends."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
