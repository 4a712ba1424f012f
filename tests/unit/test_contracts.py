"""Rules the engine and the Ansible collection must share although they ship apart (the
collection's module_utils cannot import the engine): the same size syntax, the same env-file
format between the service modules that write it and the supervisor that reads it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from jiva_engine.supervise import read_env_args
from jiva_engine.util import parse_hostport, parse_size

ROOT = Path(__file__).resolve().parents[2]
MU = ROOT / "collections/ansible_collections/jiva/storage/plugins/module_utils"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"contract_{name}", MU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


placement = _load("jiva_placement")
service = _load("jiva_service")


def _outcome(parse, text):
    try:
        return ("ok", parse(text))
    except ValueError:
        return ("error", None)


size_texts = st.one_of(
    st.integers(min_value=-(1 << 41), max_value=1 << 41),
    st.booleans(),
    st.builds(
        lambda n, unit, b, ws: f"{ws}{n}{unit}{b}{ws}",
        st.integers(min_value=0, max_value=1 << 20),
        st.sampled_from(["", "K", "M", "G", "T", "k", "m", "X", "KB", "kib"]),
        st.sampled_from(["", "B", "iB", "IB"]),
        st.sampled_from(["", " "]),
    ),
    st.text(max_size=8),
)


@given(size_texts)
def test_one_set_of_size_rules(text):
    assert _outcome(parse_size, text) == _outcome(placement.parse_size, text)


def test_size_rules_examples():
    assert parse_size("10G") == placement.parse_size("10G") == 10 << 30
    for bad in ("0", "1000", "12X", True, -512, "", "5 M B"):
        assert _outcome(parse_size, bad) == _outcome(placement.parse_size, bad) == ("error", None)


@given(st.lists(st.text(min_size=1, max_size=12).filter(lambda w: not set(w) & set("\n\r\x00")),
                max_size=6))  # fmt: skip
def test_env_files_the_modules_write_are_what_the_supervisor_runs(args):
    text = service.render_env("replica", "v1", args, "rev")
    path = Path("/tmp") / f"jiva-contract-{abs(hash(tuple(args)))}.env"
    path.write_text(text)
    try:
        assert read_env_args(str(path)) == ["replica", *args]
        assert service.env_args(str(path)) == ["replica", *args]
    finally:
        path.unlink()


def test_an_argument_that_cannot_be_written_is_refused():
    import pytest

    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError, match="line break or NUL"):
            service.render_env("replica", "v1", ["--dir", bad], "rev")


hostports = st.one_of(
    st.builds(
        lambda h, sep, port: f"{h}{sep}{port}",
        st.sampled_from(["10.0.0.1", "node-1", "[fe80::1]", "fe80::1", "", " h "]),
        st.sampled_from([":", "", "::"]),
        st.sampled_from(["9700", "0", "65535", "65536", "x", ""]),
    ),
    st.text(max_size=12),
)


@given(hostports)
def test_one_set_of_address_rules(text):
    """HOST:PORT, [v6]:PORT, or HOST with a default port: the same answer on both sides."""
    assert _outcome(lambda t: parse_hostport(t, 3260), text) == _outcome(
        lambda t: placement.split_hostport(t, 3260), text
    )
