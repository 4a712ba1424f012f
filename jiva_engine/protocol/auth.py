"""HMAC-SHA256 challenge-response for the replica handshake (DESIGN.md §3); no secret on the wire.

mac inputs are the UTF-8 volume name followed by the raw (hex-decoded) nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

NONCE_BYTES = 16


def new_nonce() -> str:
    """Return a fresh random nonce as hex."""
    return secrets.token_hex(NONCE_BYTES)


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _mac(secret: str | bytes, label: bytes, volume: str, first: str, second: str) -> str:
    msg = label + volume.encode() + bytes.fromhex(first) + bytes.fromhex(second)
    return hmac.new(_as_bytes(secret), msg, hashlib.sha256).hexdigest()


def client_mac(secret: str | bytes, volume: str, nonce: str, cnonce: str) -> str:
    """The client's proof: HMAC(secret, "jiva-client|" + volume + nonce + cnonce)."""
    return _mac(secret, b"jiva-client|", volume, nonce, cnonce)


def server_mac(secret: str | bytes, volume: str, nonce: str, cnonce: str) -> str:
    """The replica's proof: HMAC(secret, "jiva-server|" + volume + cnonce + nonce)."""
    return _mac(secret, b"jiva-server|", volume, cnonce, nonce)


def verify(expected: str, got: object) -> bool:
    """Constant-time comparison of two hex MACs; False for anything that is not a string."""
    if not isinstance(got, str):
        return False
    return hmac.compare_digest(expected.encode(), got.encode())


class Refused(Exception):
    """A client the server must turn away; `wrong_volume` tells WRONG_VOLUME from AUTH_FAILED."""

    def __init__(self, message: str, wrong_volume: bool = False) -> None:
        super().__init__(message)
        self.wrong_volume = wrong_volume


def hello_body(volume: str, nonce: str, secret: bytes | None, kind: str, voter_id: str) -> dict:
    """The HELLO a replica or witness sends first (DESIGN.md §3)."""
    return {"volume": volume, "nonce": nonce, "auth": secret is not None, "kind": kind,
            "id": voter_id}  # fmt: skip


def answer_auth(
    secret: bytes | None, volume: str, nonce: str, body: object, previous: bytes | None = None
) -> str:
    """Check a client's AUTH body; return the server's proof ("" without a secret).

    `previous` is a second secret accepted during a rotation (ENGINE.md "Authentication and
    secret rotation"): a client proving either one is in, and the proof returned is made with the
    secret the client proved, so the client can check it. Raises Refused for another volume's
    controller or a wrong/missing MAC, ValueError when the body is not a JSON object (a malformed
    frame).
    """
    if not isinstance(body, dict):
        raise ValueError("AUTH payload must be a JSON object")
    if body.get("volume") != volume:
        raise Refused(
            f"this voter serves volume {volume!r}, not {body.get('volume')!r}", wrong_volume=True
        )
    if secret is None:
        return ""
    cnonce = body.get("cnonce")
    if not isinstance(cnonce, str):
        raise Refused("authentication failed")
    for accepted in (secret, previous):
        if accepted is None:
            continue
        try:
            if verify(client_mac(accepted, volume, nonce, cnonce), body.get("mac")):
                return server_mac(accepted, volume, nonce, cnonce)
        except (TypeError, ValueError, AttributeError):
            break  # a malformed cnonce fails with either secret
    raise Refused("authentication failed")
