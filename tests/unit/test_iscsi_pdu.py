"""Unit tests: CRC32C digests, PDU header packing/parsing, text keys, serial-number arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.crc import FAST, crc32c, crc32c_py, digest
from jiva_engine.iscsi.session import sn_lt


@pytest.mark.parametrize(
    "data,wire",
    [
        (bytes(32), "aa36918a"),  # RFC 3720 appendix B.4 test vectors
        (b"\xff" * 32, "43aba862"),
        (bytes(range(32)), "4e79dd46"),
        (bytes(range(31, -1, -1)), "5cdb3f11"),
    ],
)
def test_crc32c_rfc_vectors(data, wire):
    """Digest bytes match the RFC's on-the-wire examples, fast and pure-Python alike."""
    assert digest(data).hex() == wire
    assert crc32c_py(data).to_bytes(4, "little").hex() == wire


def test_crc32c_uses_c_implementation():
    """The maintained C package is installed and used (pure Python is ~100x slower)."""
    assert FAST


@given(st.binary(max_size=2048))
def test_crc32c_fast_equals_python(data):
    """Both implementations agree on arbitrary input."""
    assert crc32c(data) == crc32c_py(data)


tags = st.integers(0, 0xFFFFFFFF)
lun = st.binary(min_size=8, max_size=8)
byte = st.integers(0, 255)
dlen = st.integers(0, P.DSL_MASK)

# every PDU class, with a strategy for each of its header fields
# fmt: off
PDUS = [
    st.builds(P.NopOut, tags, tags, tags, tags, lun, st.booleans(), dlen),
    st.builds(P.ScsiCommand, tags, st.binary(min_size=16, max_size=16), tags, byte, tags, tags,
              lun, st.booleans(), dlen),
    st.builds(P.TaskManagementRequest, tags, st.integers(0, 0x7F), tags, tags, tags, tags, tags,
              lun, st.booleans(), dlen),
    st.builds(P.LoginRequest, tags, st.binary(min_size=6, max_size=6), st.integers(0, 3),
              st.integers(0, 3), st.just(True), st.booleans(), st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF), tags, tags, byte, byte, dlen),
    st.builds(P.TextRequest, tags, tags, tags, tags, st.sampled_from([0, 0x40, 0x80]), lun,
              st.booleans(), dlen),
    st.builds(P.DataOut, tags, tags, tags, tags, tags, st.booleans(), lun, dlen),
    st.builds(P.LogoutRequest, tags, st.integers(0, 0x7F), st.integers(0, 0xFFFF), tags, tags,
              st.booleans(), dlen),
    st.builds(P.NopIn, tags, tags, tags, tags, tags, lun, dlen),
    st.builds(P.ScsiResponse, tags, byte, byte, tags, tags, tags, tags, tags, dlen, byte, tags,
              tags),
    st.builds(P.TaskManagementResponse, tags, byte, tags, tags, tags, dlen),
    st.builds(P.LoginResponse, tags, st.binary(min_size=6, max_size=6), st.integers(0, 3),
              st.integers(0, 3), st.just(True), st.booleans(), st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF), tags, tags, tags, byte, byte, dlen),
    st.builds(P.TextResponse, tags, tags, tags, tags, tags, byte, lun, dlen),
    st.builds(P.DataIn, tags, tags, tags, byte, byte, tags, tags, tags, tags, lun, dlen, tags),
    st.builds(P.LogoutResponse, tags, byte, tags, tags, tags, st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF), dlen),
    st.builds(P.R2T, tags, tags, tags, tags, tags, tags, tags, tags, lun, dlen),
    st.builds(P.AsyncMessage, byte, byte, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF), tags, tags, tags, lun, tags, dlen),
    st.builds(P.Reject, byte, tags, tags, tags, tags, tags, dlen),
]
# fmt: on


@given(st.one_of(PDUS))
def test_header_roundtrip(pdu):
    """Every PDU class packs to 48 bytes that parse back to the same fields."""
    raw = pdu.pack()
    assert len(raw) == P.BHS_LEN
    assert P.opcode_of(raw) == pdu.OPCODE
    back = type(pdu).parse(raw)
    assert back == pdu
    if pdu.OPCODE >= 0x20:
        assert P.parse_response(raw) == pdu


def test_header_layout_matches_rfc():
    """Fields land at the byte offsets RFC 7143 gives them (spot checks across the PDUs)."""
    cmd = P.ScsiCommand(itt=0x11223344, cdb=b"\x28" + bytes(15), edtl=512, flags=0xC1,
                        cmdsn=7, exp_statsn=9, lun=bytes([0, 1]) + bytes(6), immediate=True,
                        data_len=0x123456).pack()  # fmt: skip
    assert cmd[0] == 0x41 and cmd[1] == 0xC1 and cmd[5:8] == b"\x12\x34\x56"
    assert cmd[8:10] == b"\0\1" and cmd[16:20] == b"\x11\x22\x33\x44"
    assert cmd[20:24] == (512).to_bytes(4, "big") and cmd[24:28] == (7).to_bytes(4, "big")
    assert cmd[28:32] == (9).to_bytes(4, "big") and cmd[32] == 0x28
    rsp = P.LoginResponse(itt=1, isid=b"ABCDEF", csg=1, nsg=3, transit=True, tsih=0x0102,
                          status=0x0201, statsn=5).pack()  # fmt: skip
    assert rsp[1] == 0x87 and rsp[8:14] == b"ABCDEF" and rsp[14:16] == b"\1\2"
    assert rsp[24:28] == (5).to_bytes(4, "big") and rsp[36:38] == b"\2\1"
    data_in = P.DataIn(itt=1, offset=8192, datasn=2, flags=0x81, status=0, residual=3).pack()
    assert data_in[36:40] == (2).to_bytes(4, "big") and data_in[40:44] == (8192).to_bytes(4, "big")
    assert data_in[44:48] == (3).to_bytes(4, "big") and data_in[20:24] == b"\xff" * 4
    bye = P.LogoutResponse(itt=3, time2wait=2).pack()
    assert bye[40:42] == b"\0\2" and bye[42:44] == b"\0\0"
    assert P.R2T(itt=1, ttt=2, offset=3, length=4, r2tsn=5).pack()[36:48] == bytes(
        [0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 4]
    )


def test_parse_response_refuses_initiator_opcodes():
    """A header with an initiator opcode is no target PDU."""
    with pytest.raises(P.PduError):
        P.parse_response(P.NopOut(itt=1).pack())


def test_text_keys():
    """key=value pairs split on NUL; a pair without '=' is malformed."""
    assert P.parse_text(b"A=1\0B=x=y\0\0") == [("A", "1"), ("B", "x=y")]
    assert P.build_text([("A", "1")]) == b"A=1\0"
    with pytest.raises(P.PduError):
        P.parse_text(b"novalue\0")
    with pytest.raises(P.PduError):
        P.parse_text(b"A=\xff\xfe\0")


@given(st.binary(max_size=512))
def test_text_parser_never_crashes(data):
    """Arbitrary bytes either parse or raise PduError."""
    try:
        pairs = P.parse_text(data)
    except P.PduError:
        return
    assert all(isinstance(k, str) and k for k, _ in pairs)


def test_serial_number_arithmetic():
    """RFC 1982 comparisons wrap at 2**32."""
    assert sn_lt(1, 2) and not sn_lt(2, 1)
    assert sn_lt(0xFFFFFFFF, 0)
    assert not sn_lt(5, 5)
