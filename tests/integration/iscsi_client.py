"""A minimal blocking iSCSI initiator for tests: login (with CHAP), digests, SCSI commands, raw PDUs.

Only what the tests need to poke at the target in ways qemu and libiscsi do not (data digests,
immediate NOP-Out numbering, malformed PDUs). Not used by the product; it builds and parses
headers with the product's own PDU classes (jiva_engine/iscsi/pdu.py).
"""

from __future__ import annotations

import hashlib
import socket
from typing import NamedTuple

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.crc import crc32c
from jiva_engine.iscsi.framing import append_pdu, lengths, pad_len


class Received(NamedTuple):
    """A PDU from the target: its parsed header and its data segment."""

    header: P.Response
    data: bytes

    def text(self) -> dict[str, str]:
        """Decode a login/text data segment."""
        return dict(P.parse_text(self.data))


class LoginFailed(Exception):
    """Login ended with a nonzero status (class, detail)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"login failed with status {status:#06x}")
        self.status = status


class Initiator:
    """One connection/session to a target."""

    def __init__(self, host: str, port: int, name: str = "iqn.2026-11.org.jiva-py:test-client"):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.name = name
        self.itt = 1
        self.cmdsn = 1
        self.exp_statsn = 0
        self.hd = False
        self.dd = False
        self.isid = b"\x80\x12\x34\x56\x78\x9a"

    # ------------------------------------------------------------- raw I/O
    def send_raw(self, b: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(b)

    def frame(self, hdr: bytes, data: bytes = b"") -> bytes:
        """A PDU's bytes with padding and whatever digests the session negotiated."""
        parts: list = []
        append_pdu(parts, hdr, data, self.hd, self.dd)
        return b"".join(parts)

    def send(self, hdr: bytes, data: bytes = b"") -> None:
        """Send one PDU."""
        self.sock.sendall(self.frame(hdr, data))

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("target closed the connection")
            buf += chunk
        return buf

    def recv(self) -> Received:
        """Read one PDU (checking digests)."""
        hdr = self._recv_exact(P.BHS_LEN)
        ahs, dlen, _ = lengths(hdr)
        if ahs:
            self._recv_exact(ahs)
        if self.hd:
            dig = self._recv_exact(4)
            assert crc32c(hdr) == int.from_bytes(dig, "little"), "bad header digest from target"
        data = b""
        if dlen:
            padded = self._recv_exact(dlen + pad_len(dlen))
            if self.dd:
                dig = self._recv_exact(4)
                assert crc32c(padded) == int.from_bytes(dig, "little"), "bad data digest"
            data = padded[:dlen]
        h = P.parse_response(hdr)
        numbered = (P.ScsiResponse, P.LoginResponse, P.TextResponse, P.LogoutResponse, P.NopIn)
        status = isinstance(h, numbered) or (isinstance(h, P.DataIn) and h.flags & P.STATUS)
        if status and h.itt != P.RESERVED_TAG:
            self.exp_statsn = (h.statsn + 1) & 0xFFFFFFFF
        return Received(h, data)

    def next_itt(self) -> int:
        """A fresh initiator task tag."""
        self.itt += 1
        return self.itt

    # ------------------------------------------------------------- login
    def login(self, target: str | None, keys: dict[str, str] | None = None,
              chap: tuple[str, str] | None = None, discovery: bool = False) -> dict[str, str]:  # fmt: skip
        """Log in (security stage with CHAP when given, then operational); returns the keys."""
        base = {"InitiatorName": self.name, "SessionType": "Discovery" if discovery else "Normal"}
        if target:
            base["TargetName"] = target
        got: dict[str, str] = {}
        itt = self.next_itt()
        if chap:
            base["AuthMethod"] = "CHAP,None"
            r = self._login_pdu(itt, 0, 1, False, base)
            got.update(r.text())
            r = self._login_pdu(itt, 0, 1, False, {"CHAP_A": "5"})
            t = r.text()
            ident, chal = int(t["CHAP_I"]), bytes.fromhex(t["CHAP_C"][2:])
            resp = hashlib.md5(bytes([ident]) + chap[1].encode() + chal).hexdigest()
            r = self._login_pdu(itt, 0, 1, True, {"CHAP_N": chap[0], "CHAP_R": "0x" + resp})
            got.update(r.text())
        else:
            base["AuthMethod"] = "None"
            r = self._login_pdu(itt, 0, 1, True, base)
            got.update(r.text())
        op = {"HeaderDigest": "None", "DataDigest": "None", **(keys or {})}
        r = self._login_pdu(itt, 1, 3, True, op)
        got.update(r.text())
        assert isinstance(r.header, P.LoginResponse)
        assert r.header.transit, "target did not move to full feature phase"
        self.hd = got.get("HeaderDigest") == "CRC32C"
        self.dd = got.get("DataDigest") == "CRC32C"
        self.cmdsn = r.header.exp_cmdsn
        return got

    def _login_pdu(self, itt: int, csg: int, nsg: int, transit: bool, keys: dict) -> Received:
        data = P.build_text(list(keys.items()))
        req = P.LoginRequest(itt=itt, isid=self.isid, csg=csg, nsg=nsg, transit=transit,
                             cmdsn=self.cmdsn, exp_statsn=self.exp_statsn, data_len=len(data))  # fmt: skip
        self.send(req.pack(), data)
        r = self.recv()
        assert isinstance(r.header, P.LoginResponse)
        if r.header.status:
            raise LoginFailed(r.header.status)
        return r

    # ------------------------------------------------------------- commands
    def command_pdu(self, cdb: bytes, read_len: int = 0, data: bytes = b"",
                    immediate_len: int | None = None) -> tuple[int, bytes]:  # fmt: skip
        """A SCSI Command PDU (with immediate data) numbered next; returns (ITT, its bytes)."""
        itt = self.next_itt()
        flags = P.FINAL | (P.READ if read_len else 0) | (P.WRITE if data else 0)
        imm = data[: immediate_len if immediate_len is not None else 8192]
        cmd = P.ScsiCommand(itt=itt, cdb=cdb, edtl=read_len or len(data), flags=flags,
                            cmdsn=self.cmdsn, exp_statsn=self.exp_statsn, data_len=len(imm))  # fmt: skip
        self.cmdsn += 1
        return itt, self.frame(cmd.pack(), imm)

    def scsi(self, cdb: bytes, read_len: int = 0, data_out: bytes = b"",
             immediate_len: int | None = None) -> tuple[int, bytes, bytes, P.Response]:  # fmt: skip
        """Run one command; returns (status, data-in, sense, final header). Handles R2T."""
        itt, pdu = self.command_pdu(cdb, read_len, data_out, immediate_len)
        self.send_raw(pdu)
        data = bytearray()
        while True:
            h, seg = self.recv()
            if isinstance(h, P.R2T):
                off, length = h.offset, h.length
                sn = 0
                while length > 0:
                    n = min(length, 8192)
                    d = P.DataOut(itt=itt, ttt=h.ttt, offset=off, datasn=sn,
                                  exp_statsn=self.exp_statsn, final=n == length, data_len=n)  # fmt: skip
                    self.send(d.pack(), data_out[off : off + n])
                    off += n
                    length -= n
                    sn += 1
                continue
            if isinstance(h, P.DataIn):
                data[h.offset : h.offset + len(seg)] = seg
                if h.flags & P.STATUS:
                    return h.status, bytes(data), b"", h
                continue
            if isinstance(h, P.ScsiResponse):
                sense = seg[2 : 2 + int.from_bytes(seg[:2], "big")] if seg else b""
                return h.status, bytes(data), sense, h
            if isinstance(h, P.NopIn):  # target NOP-In ping: answer it
                if h.ttt != P.RESERVED_TAG:
                    pong = P.NopOut(itt=P.RESERVED_TAG, ttt=h.ttt, cmdsn=self.cmdsn,
                                    exp_statsn=self.exp_statsn, immediate=True)  # fmt: skip
                    self.send(pong.pack())
                continue
            raise AssertionError(f"unexpected PDU {h}")

    def nop(self, immediate: bool = True, data: bytes = b"") -> Received:
        """NOP-Out ping; with `immediate` the CmdSN is not consumed."""
        itt = self.next_itt()
        ping = P.NopOut(itt=itt, cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                        immediate=immediate, data_len=len(data))  # fmt: skip
        if not immediate:
            self.cmdsn += 1
        self.send(ping.pack(), data)
        while True:
            r = self.recv()
            if isinstance(r.header, P.NopIn) and r.header.itt == itt:
                return r

    def logout_pdu(self, immediate: bool = True) -> tuple[int, bytes]:
        """A Logout Request (close the session); returns (ITT, its bytes)."""
        itt = self.next_itt()
        req = P.LogoutRequest(itt=itt, cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                              immediate=immediate)  # fmt: skip
        return itt, self.frame(req.pack())

    def logout(self) -> Received:
        """Close the session."""
        self.send_raw(self.logout_pdu()[1])
        return self.recv()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
