"""Unit tests of the login state machine: negotiation, CHAP, access control, fuzzed input."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from jiva_engine.iscsi import login as L
from jiva_engine.iscsi import pdu as P

IQN = "iqn.2026-11.org.jiva-py:vol"
INIT = "iqn.2026-11.org.test:init"


def req(csg: int, nsg: int, transit: bool, cont: bool = False) -> P.LoginRequest:
    """A Login Request header (the text goes separately)."""
    return P.LoginRequest(1, b"\x80\x01\x02\x03\x04\x05", csg, nsg, transit, cont)


def text(keys: dict[str, str]) -> bytes:
    """Encode keys."""
    return P.build_text(list(keys.items()))


def step(m: L.LoginMachine, csg: int, nsg: int, transit: bool, keys: dict) -> L.LoginResult:
    """Feed one request."""
    return m.handle(req(csg, nsg, transit), text(keys))


def decode(r: L.LoginResult) -> dict[str, str]:
    """Response keys."""
    return dict(P.parse_text(r.text))


def test_no_auth_login_and_negotiation():
    """Security None, then operational keys: digests, bursts and booleans per RFC 7143."""
    m = L.LoginMachine(L.AuthConfig(iqn=IQN))
    r = step(m, 0, 1, True, {"InitiatorName": INIT, "TargetName": IQN, "AuthMethod": "None"})
    assert r.status == 0 and r.transit and decode(r)["AuthMethod"] == "None"
    assert decode(r)["TargetPortalGroupTag"] == "1"
    keys = {
        "HeaderDigest": "CRC32C,None",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "65536",
        "MaxBurstLength": "1048576",
        "FirstBurstLength": "524288",
        "ImmediateData": "Yes",
        "InitialR2T": "No",
        "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "2",
        "X-com.example.Foo": "bar",
    }
    r = step(m, 1, 3, True, keys)
    got = decode(r)
    assert r.done and r.status == 0
    assert got["HeaderDigest"] == "CRC32C" and got["DataDigest"] == "None"
    assert got["MaxBurstLength"] == "1048576"
    assert got["FirstBurstLength"] == str(L.OUR_FIRST_BURST)
    assert got["ErrorRecoveryLevel"] == "0"
    assert got["X-com.example.Foo"] == "NotUnderstood"
    assert got["MaxRecvDataSegmentLength"] == str(L.OUR_MAX_RECV)
    p = m.params
    assert p.header_digest and not p.data_digest and p.max_xmit_dsl == 65536
    assert p.immediate_data and not p.initial_r2t


def test_missing_and_wrong_names():
    """No InitiatorName: missing parameter; unknown target: not found."""
    m = L.LoginMachine(L.AuthConfig(iqn=IQN))
    assert step(m, 0, 1, True, {"TargetName": IQN}).status == L.MISSING_PARAMETER
    m = L.LoginMachine(L.AuthConfig(iqn=IQN))
    r = step(m, 0, 1, True, {"InitiatorName": INIT, "TargetName": IQN + "x"})
    assert r.status == L.NOT_FOUND and r.close


def _chap_login(secret: str, mutual: tuple[str, str] | None = None) -> tuple[L.LoginResult, dict]:
    cfg = L.AuthConfig(iqn=IQN, chap_user="alice", chap_secret="supersecret1234")
    if mutual:
        cfg.mutual_user, cfg.mutual_secret = mutual
    m = L.LoginMachine(cfg)
    r = step(m, 0, 1, True, {"InitiatorName": INIT, "TargetName": IQN, "AuthMethod": "CHAP,None"})
    assert r.status == 0 and not r.transit and decode(r)["AuthMethod"] == "CHAP"
    r = step(m, 0, 1, True, {"CHAP_A": "7,5"})
    got = decode(r)
    assert got["CHAP_A"] == "5"
    ident, chal = int(got["CHAP_I"]), bytes.fromhex(got["CHAP_C"][2:])
    resp = hashlib.md5(bytes([ident]) + secret.encode() + chal).hexdigest()
    keys = {"CHAP_N": "alice", "CHAP_R": "0x" + resp}
    if mutual:
        keys.update({"CHAP_I": "7", "CHAP_C": "0x" + "ab" * 16})
    return step(m, 0, 1, True, keys), {"m": m}


def test_chap_success_and_failure():
    """Right secret: transit to operational; wrong secret: status 0x0201 and close."""
    r, _ = _chap_login("supersecret1234")
    assert r.status == 0 and r.transit
    r, _ = _chap_login("wrong-secret-00")
    assert r.status == L.AUTH_FAILURE and r.close


def test_mutual_chap_answer():
    """The target proves itself with MD5(id + mutual secret + challenge)."""
    r, _ = _chap_login("supersecret1234", ("tgt", "mutualsecret99"))
    got = decode(r)
    want = hashlib.md5(bytes([7]) + b"mutualsecret99" + bytes.fromhex("ab" * 16)).hexdigest()
    assert got["CHAP_N"] == "tgt" and got["CHAP_R"] == "0x" + want


def test_chap_required_cannot_be_skipped():
    """Jumping straight to the operational stage without CHAP is an authentication failure."""
    m = L.LoginMachine(L.AuthConfig(iqn=IQN, chap_user="alice", chap_secret="supersecret1234"))
    r = step(m, 1, 3, True, {"InitiatorName": INIT, "TargetName": IQN})
    assert r.status == L.AUTH_FAILURE


def test_initiator_acl():
    """A name outside the allowed list: authorization failure (0x0202)."""
    cfg = L.AuthConfig(iqn=IQN, allowed_initiators=("iqn.2026-11.org.test:ok",))
    r = step(L.LoginMachine(cfg), 0, 1, True, {"InitiatorName": INIT, "TargetName": IQN})
    assert r.status == L.AUTHORIZATION_FAILURE


def test_discovery_session():
    """Discovery needs no TargetName and answers burst keys as Irrelevant."""
    m = L.LoginMachine(L.AuthConfig(iqn=IQN))
    r = step(m, 1, 3, True, {"InitiatorName": INIT, "SessionType": "Discovery",
                             "MaxBurstLength": "1024"})  # fmt: skip
    assert r.status == 0 and r.done and m.session_type == "Discovery"
    assert decode(r)["MaxBurstLength"] == "Irrelevant"


key_names = st.sampled_from(
    [
        "InitiatorName",
        "TargetName",
        "SessionType",
        "AuthMethod",
        "CHAP_A",
        "CHAP_N",
        "CHAP_R",
        "CHAP_I",
        "CHAP_C",
        "HeaderDigest",
        "MaxBurstLength",
        "FirstBurstLength",
        "InitialR2T",
        "MaxRecvDataSegmentLength",
        "ErrorRecoveryLevel",
        "Foo",
    ]  # fmt: skip
)
values = st.one_of(st.text(max_size=40), st.sampled_from(["0x", "0b", "5", "-1", "99999999999"]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),
            st.lists(st.tuples(key_names, values), max_size=6),
            st.binary(max_size=64),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_login_machine_fuzz(steps):
    """Random flags, keys and raw bytes: handle() always answers, never raises."""
    cfg = L.AuthConfig(iqn=IQN, chap_user="alice", chap_secret="supersecret1234")
    m = L.LoginMachine(cfg)
    for flags, pairs, raw in steps:
        body = "".join(f"{k}={v}\0" for k, v in pairs if "\0" not in v).encode() + raw
        r = m.handle(P.LoginRequest.parse(bytes([0x43, flags]) + bytes(46)), body)
        assert isinstance(r, L.LoginResult)
        assert r.status in (0, *range(0x0200, 0x0210), 0x0300)
        if r.close:
            break
