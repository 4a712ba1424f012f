"""The restart decision of the service modules (module_utils/jiva_service.py): what a running
process was started with (a fingerprint of its env file and the secret files it names) against
the config being written; `--size` alone is applied online, never a reason to restart; with
restart=false a stale service is left running and reported pending."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_service as S  # noqa: E402


def env(args: list[str], revision: str = "r1") -> str:
    return S.render_env("replica", "db", args, revision)


BASE = ["--volume", "db", "--listen", "10.0.0.1:9700", "--dir", "/d/db", "--size", "1G"]
SECRET = "/etc/jiva/replica-db.secret"


def fp(text: str | None, files: dict[str, str | None] | None = None) -> str | None:
    files = files or {}
    return S.config_fingerprint(text, files.get)


def test_fingerprint_ignores_size_only():
    assert fp(env(BASE)) == fp(env(BASE[:-1] + ["2G"]))
    assert fp(env(BASE)) == fp(env(BASE[:-2]))  # (--size added or dropped: still online)


def test_fingerprint_sees_args_revision_and_secret_contents():
    one = fp(env(BASE))
    assert one != fp(env(BASE + ["--rebuild-rate", "50"]))
    # the scrub options (jiva_scrub_interval / jiva_scrub_rate) restart the controller too
    scrub = BASE + ["--scrub-interval", "7d", "--scrub-rate", "64"]
    assert len({one, fp(env(scrub)), fp(env(scrub[:-3] + ["12h", "--scrub-rate", "64"])),
                fp(env(scrub[:-1] + ["32"]))}) == 4  # fmt: skip
    # a volume's qos: (--max-iops/--max-mbps) is a config change too: the controller restarts
    assert len({one, fp(env(BASE + ["--max-iops", "500"])), fp(env(BASE + ["--max-iops", "600"])),
                fp(env(BASE + ["--max-mbps", "40"]))}) == 4  # fmt: skip
    assert one != fp(env(BASE, revision="r2"))  # a new engine build
    with_secret = env(BASE + ["--secret-file", SECRET])
    a = fp(with_secret, {SECRET: "old"})
    assert a != fp(with_secret, {SECRET: "new"})  # same path, new content: restart
    assert a == fp(with_secret, {SECRET: "old"})
    # a file the arguments do not name does not count
    assert one == fp(env(BASE), {SECRET: "anything"})
    assert fp(None) is None


def test_parse_env_args_round_trip():
    args = BASE + ["--allow-initiator", "iqn.x:a b"]
    assert S.parse_env_args(env(args)) == ["replica", *args]
    assert S.parse_env_args("# nothing\n") is None


def test_plan_actions():
    run = dict(state="started", running=True, orphan=False)
    assert S.plan_actions(started_with="a", wanted="a", restart=True, **run) == ([], False)
    assert S.plan_actions(started_with="a", wanted="b", restart=True, **run) == (["restart"], False)
    assert S.plan_actions(started_with="a", wanted="b", restart=False, **run) == ([], True)
    # not running: started at once, whatever `restart` says (first deploy: no slowdown)
    stopped = dict(run, running=False)
    for restart in (True, False):
        assert S.plan_actions(started_with=None, wanted=None, restart=restart, **stopped) == (
            ["start"],
            False,
        )
    assert S.plan_actions("stopped", True, False, None, None, False) == (["stop"], False)
    assert S.plan_actions("absent", False, True, None, None, True) == (["stop"], False)
    assert S.plan_actions("present", True, False, None, None, False) == ([], False)
