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


def test_answer_auth_accepts_the_previous_secret_during_a_rotation():
    n, c = auth.new_nonce(), auth.new_nonce()

    def body(secret: bytes) -> dict:
        return {"volume": "v", "cnonce": c, "mac": auth.client_mac(secret, "v", n, c)}

    # the server answers with the secret the client proved, so the client can check the answer
    assert auth.answer_auth(b"new", "v", n, body(b"new"), b"old") == auth.server_mac(
        b"new", "v", n, c
    )
    assert auth.answer_auth(b"new", "v", n, body(b"old"), b"old") == auth.server_mac(
        b"old", "v", n, c
    )
    for secret, previous, presented in [
        (b"new", b"old", b"third"),  # neither
        (b"new", None, b"old"),  # the rotation ended: the old secret is out
    ]:
        with pytest.raises(auth.Refused):
            auth.answer_auth(secret, "v", n, body(presented), previous)
    with pytest.raises(auth.Refused):  # a malformed cnonce fails with either secret
        auth.answer_auth(b"new", "v", n, {**body(b"old"), "cnonce": "zz"}, b"old")


def test_read_secret_pair(tmp_path):
    from jiva_engine.util import read_secret_pair

    new, old, empty = tmp_path / "new", tmp_path / "old", tmp_path / "empty"
    new.write_text("new-secret\n")
    old.write_text("old-secret\n")
    empty.write_text("")
    assert read_secret_pair(str(new), str(old)) == ("new-secret", "old-secret")
    assert read_secret_pair(str(new), None) == ("new-secret", None)
    assert read_secret_pair(None, None) == (None, None)
    with pytest.raises(ValueError, match="--previous-secret-file needs --secret-file"):
        read_secret_pair(None, str(old))
    with pytest.raises(ValueError, match="--previous-token-file needs --token-file"):
        read_secret_pair(None, str(old), "API token", "--token-file")
    with pytest.raises(ValueError, match="previous API token file .* is empty"):
        read_secret_pair(str(new), str(empty), "API token", "--token-file")
    with pytest.raises(ValueError, match="cannot read previous secret file"):
        read_secret_pair(str(new), str(tmp_path / "missing"))
