"""Unit tests: CRC32C digests, BHS parsing/packing, text keys and serial-number arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.crc import FAST, crc32c, crc32c_py, digest


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


@given(
    st.integers(0, 0x3F),
    st.integers(0, 255),
    st.integers(0, (1 << 24) - 1),
    st.binary(min_size=8, max_size=8),
    st.lists(st.integers(0, 0xFFFFFFFF), min_size=8, max_size=8),
)
def test_bhs_roundtrip(op, flags, dlen, b8, words):
    """A packed header parses back to the same fields."""
    raw = P.header(op, flags, 7, 9, dlen, b8, *words)
    assert len(raw) == 48
    b = P.Bhs(raw)
    assert (b.opcode, b.flags, b.b2, b.b3, b.data_len, b.lun) == (op, flags, 7, 9, dlen, b8)
    assert [b.itt, b.w20, b.w24, b.w28, b.w32, b.w36, b.w40, b.w44] == words


def test_bhs_too_short():
    """Fewer than 48 bytes is a PduError, not an IndexError."""
    with pytest.raises(P.PduError):
        P.Bhs(b"\x01" * 47)


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
    assert P.sn_lt(1, 2) and not P.sn_lt(2, 1)
    assert P.sn_lt(0xFFFFFFFF, 0)
    assert P.sn_le(5, 5) and not P.sn_lt(5, 5)
