"""PDUs on the byte stream (RFC 7143 §11.2): how long a PDU is, its padding and its CRC32C
header and data digests."""

from __future__ import annotations

from jiva_engine.iscsi.crc import digest
from jiva_engine.iscsi.pdu import BHS_LEN

Buffer = bytes | bytearray | memoryview
DIGEST_LEN = 4


def pad_len(n: int) -> int:
    """Bytes of padding after an n-byte data segment (segments end on a 4-byte boundary)."""
    return -n % 4


def lengths(
    bhs: Buffer, at: int = 0, header_digest: bool = False, data_digest: bool = False
) -> tuple[int, int, int]:
    """(AHS bytes, data segment bytes, bytes of the whole PDU on the wire) of the PDU whose
    BHS starts at `at`."""
    ahs = bhs[at + 4] * 4  # TotalAHSLength counts 4-byte words
    dlen = int.from_bytes(bhs[at + 5 : at + 8], "big")
    total = BHS_LEN + ahs + dlen + (-dlen % 4)
    if header_digest:
        total += DIGEST_LEN
    if data_digest and dlen:
        total += DIGEST_LEN
    return ahs, dlen, total


def append_pdu(
    out: list[Buffer],
    header: bytes,
    data: Buffer = b"",
    header_digest: bool = False,
    data_digest: bool = False,
) -> None:
    """Append the pieces of one PDU (header, digests, data, padding) to `out`, data not copied."""
    out.append(header)
    if header_digest:
        out.append(digest(header))
    if data:
        out.append(data)
        pad = -len(data) % 4
        if pad:
            out.append(bytes(pad))
        if data_digest:
            out.append(digest(bytes(data) + bytes(pad) if pad else data))
