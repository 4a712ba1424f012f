"""Unit tests of the HMAC challenge-response helpers."""

from __future__ import annotations

import pytest

from jiva_engine.protocol import auth


def test_client_and_server_macs_differ_and_depend_on_everything():
    n, c = auth.new_nonce(), auth.new_nonce()
    assert n != c and len(bytes.fromhex(n)) == auth.NONCE_BYTES
    base = auth.client_mac(b"s3cret", "vol", n, c)
    assert base == auth.client_mac("s3cret", "vol", n, c)  # str and bytes secrets agree
    assert base != auth.server_mac(b"s3cret", "vol", n, c)
    assert base != auth.client_mac(b"other", "vol", n, c)
    assert base != auth.client_mac(b"s3cret", "vol2", n, c)
    assert base != auth.client_mac(b"s3cret", "vol", c, n)
    assert len(base) == 64 and "s3cret" not in base


def test_verify():
    n, c = auth.new_nonce(), auth.new_nonce()
    mac = auth.client_mac(b"k", "v", n, c)
    assert auth.verify(mac, mac)
    assert not auth.verify(mac, mac[:-1] + ("0" if mac[-1] != "0" else "1"))
    assert not auth.verify(mac, None)
    assert not auth.verify(mac, 12)


def test_bad_nonce_is_a_value_error():
    with pytest.raises(ValueError):
        auth.client_mac(b"k", "v", "not-hex", auth.new_nonce())


def test_read_secret(tmp_path):
    from jiva_engine.util import read_secret

    p = tmp_path / "s"
    p.write_text("  topsecret\n")
    assert read_secret(p) == "topsecret"
    p.write_text("\n")
    with pytest.raises(ValueError, match="API token file .* is empty"):
        read_secret(p, "API token")
    with pytest.raises(ValueError, match="cannot read secret file"):
        read_secret(tmp_path / "missing")
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not text"):
        read_secret(p)
