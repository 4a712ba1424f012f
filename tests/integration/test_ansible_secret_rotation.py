"""The modules' side of a secret rotation (docs/ANSIBLE.md "Rotating the replica secret or the API
token"): `previous_secret` / `previous_token` become 0600 files passed with `--previous-...-file`,
never shown, and are removed when the option is emptied (or the service is absent). The engine's
side is tests/integration/test_secret_rotation.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_ansible_local import run_module

NEW, OLD = "new-shared-secret-2", "old-shared-secret-1"
T_NEW, T_OLD = "new-api-token-2", "old-api-token-1"


def common(tmp_path: Path) -> dict:
    return {
        "config_dir": str(tmp_path / "etc"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "log"),
        "venv": str(Path(os.sys.executable).parent.parent),
        "service_manager": "daemon",
        "state": "present",  # config only: no process to start or stop
    }


def secret_mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


@pytest.mark.parametrize("kind", ["replica", "witness"])
def test_voter_previous_secret_file_written_then_removed(tmp_path, kind):
    base = {
        **common(tmp_path),
        "name": "m1",
        "listen": "127.0.0.1:9690",
        "data_dir": str(tmp_path / "data" / "m1"),
        "secret": NEW,
    }
    if kind == "replica":
        base["size"] = "8M"
    prev = tmp_path / "etc" / f"{kind}-m1.previous-secret"
    env = tmp_path / "etc" / f"{kind}-m1.env"

    r = run_module(tmp_path, kind, {**base, "previous_secret": OLD}, "--diff")
    assert r["changed"] and prev.read_text() == OLD and secret_mode(prev) == "0o600", r
    assert r["args"][-4:] == ["--secret-file", str(prev.with_suffix(".secret")),
                              "--previous-secret-file", str(prev)]  # fmt: skip
    assert OLD not in env.read_text() and OLD not in r["diff"]["after"], r
    assert not run_module(tmp_path, kind, {**base, "previous_secret": OLD})["changed"]

    # the rotation ends: the option emptied (the roles then omit it) removes the file
    r = run_module(tmp_path, kind, base)
    assert r["changed"] and str(prev) in r["changed_files"] and not prev.exists(), r
    assert (
        "--previous-secret-file" not in r["args"]
        and "--previous-secret-file" not in env.read_text()
    )
    assert not run_module(tmp_path, kind, base)["changed"]

    # a previous secret alone is refused before anything is written
    with pytest.raises(AssertionError, match="previous_secret is set but secret is not"):
        run_module(tmp_path, kind, {**base, "secret": "", "previous_secret": OLD})
    assert not prev.exists() and (tmp_path / "etc" / f"{kind}-m1.secret").exists()


def test_controller_previous_secret_and_token_files(tmp_path):
    base = {
        **common(tmp_path),
        "name": "m1",
        "portal": "127.0.0.1:3260",
        "api": "127.0.0.1:9800",
        "replicas": ["127.0.0.1:9700"],
        "secret": NEW,
        "token": T_NEW,
    }
    etc = tmp_path / "etc"
    files = {
        "previous-secret": (etc / "controller-m1.previous-secret", OLD),
        "previous-token": (etc / "controller-m1.previous-token", T_OLD),
    }
    rotating = {**base, "previous_secret": OLD, "previous_token": T_OLD}
    r = run_module(tmp_path, "controller", rotating, "--diff")
    assert r["changed"], r
    for what, (path, value) in files.items():
        assert path.read_text() == value and secret_mode(path) == "0o600", what
        assert f"--{what}-file" in r["args"] and str(path) in r["args"]
        assert (
            value not in r["diff"]["after"] and value not in (etc / "controller-m1.env").read_text()
        )

    # the token rotation ends before the secret's: only its file goes
    r = run_module(tmp_path, "controller", {**base, "previous_secret": OLD})
    assert r["changed_files"] == [str(etc / "controller-m1.env"), str(files["previous-token"][0])]
    assert "--previous-token-file" not in r["args"] and files["previous-secret"][0].exists()

    with pytest.raises(AssertionError, match="previous_token is set but token is not"):
        run_module(tmp_path, "controller", {**base, "token": "", "previous_token": T_OLD})

    # absent removes every secret file, the previous ones included
    r = run_module(tmp_path, "controller", {**rotating, "state": "absent"})
    assert r["changed"] and not list(etc.glob("controller-m1*")), r
