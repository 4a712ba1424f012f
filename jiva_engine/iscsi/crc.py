"""CRC32C (Castagnoli) for iSCSI header and data digests: the `crc32c` package or pure Python."""

from __future__ import annotations

from collections.abc import Callable

_fast: Callable[[bytes | bytearray | memoryview], int] | None
try:  # a maintained C implementation (SSE4.2 / ARMv8 CRC instructions when available)
    import crc32c as _crc32c

    _fast = _crc32c.crc32c
except ImportError:  # pragma: no cover - exercised only without the optional package
    _fast = None

_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c_py(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Table-driven CRC32C in pure Python (slow; the fallback and the unit tests' oracle)."""
    c = crc ^ 0xFFFFFFFF
    t = _TABLE
    for b in bytes(data):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """Return the CRC32C of `data` (iSCSI sends it little-endian after the covered bytes)."""
    if _fast is not None:
        return _fast(data)
    return crc32c_py(data)


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 4 digest bytes as they appear on the wire."""
    return crc32c(data).to_bytes(4, "little")


FAST = _fast is not None
