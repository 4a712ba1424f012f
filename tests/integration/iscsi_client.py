"""A minimal blocking iSCSI initiator for tests: login (with CHAP), digests, SCSI commands, raw PDUs.

Only what the tests need to poke at the target in ways qemu and libiscsi do not (data digests,
immediate NOP-Out numbering, malformed PDUs). Not used by the product.
"""

from __future__ import annotations

import hashlib
import socket
import struct

from jiva_engine.iscsi.crc import crc32c

HDR = struct.Struct(">BBBBI8sIIIIIIII")


def pack(op: int, flags: int, data_len: int = 0, b8: bytes = bytes(8), itt: int = 0,
         w20: int = 0, w24: int = 0, w28: int = 0, w32: int = 0, w36: int = 0, w40: int = 0,
         w44: int = 0, b2: int = 0, b3: int = 0) -> bytes:  # fmt: skip
    """Pack a 48-byte BHS."""
    return HDR.pack(op, flags, b2, b3, data_len, b8, itt, w20, w24, w28, w32, w36, w40, w44)


class Pdu:
    """A received PDU: header fields and data segment."""

    def __init__(self, hdr: bytes, data: bytes) -> None:
        (b0, self.flags, self.b2, self.b3, lens, self.b8, self.itt, self.w20, self.w24,
         self.w28, self.w32, self.w36, self.w40, self.w44) = HDR.unpack(hdr)  # fmt: skip
        self.op = b0 & 0x3F
        self.data = data
        self.raw = hdr

    def text(self) -> dict[str, str]:
        """Decode a login/text data segment."""
        out = {}
        for item in self.data.split(b"\0"):
            if item:
                k, _, v = item.decode().partition("=")
                out[k] = v
        return out


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

    def send(self, hdr: bytes, data: bytes = b"") -> None:
        """Send one PDU with padding and whatever digests are on."""
        parts = [hdr]
        if self.hd:
            parts.append(crc32c(hdr).to_bytes(4, "little"))
        if data:
            padded = data + bytes(-len(data) % 4)
            parts.append(padded)
            if self.dd:
                parts.append(crc32c(padded).to_bytes(4, "little"))
        self.sock.sendall(b"".join(parts))

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("target closed the connection")
            buf += chunk
        return buf

    def recv(self) -> Pdu:
        """Read one PDU (checking digests)."""
        hdr = self._recv_exact(48)
        ahs = hdr[4] * 4
        dlen = int.from_bytes(hdr[5:8], "big")
        if ahs:
            self._recv_exact(ahs)
        if self.hd:
            dig = self._recv_exact(4)
            assert crc32c(hdr) == int.from_bytes(dig, "little"), "bad header digest from target"
        data = b""
        if dlen:
            padded = self._recv_exact(dlen + (-dlen % 4))
            if self.dd:
                dig = self._recv_exact(4)
                assert crc32c(padded) == int.from_bytes(dig, "little"), "bad data digest"
            data = padded[:dlen]
        p = Pdu(hdr, data)
        if p.op in (0x21, 0x23, 0x24, 0x26, 0x20) or (p.op == 0x25 and p.flags & 0x01):
            if p.itt != 0xFFFFFFFF:
                self.exp_statsn = (p.w24 + 1) & 0xFFFFFFFF
        return p

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
            first = {}
        else:
            base["AuthMethod"] = "None"
            r = self._login_pdu(itt, 0, 1, True, base)
            got.update(r.text())
            first = {}
        op = {"HeaderDigest": "None", "DataDigest": "None", **(keys or {}), **first}
        r = self._login_pdu(itt, 1, 3, True, op)
        got.update(r.text())
        assert r.flags & 0x80, "target did not move to full feature phase"
        self.hd = got.get("HeaderDigest") == "CRC32C"
        self.dd = got.get("DataDigest") == "CRC32C"
        self.cmdsn = r.w28
        return got

    def _login_pdu(self, itt: int, csg: int, nsg: int, transit: bool, keys: dict) -> Pdu:
        data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
        flags = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
        hdr = pack(0x43, flags, len(data), self.isid + b"\0\0", itt, 0, self.cmdsn,
                   self.exp_statsn, b2=0, b3=0)  # fmt: skip
        self.send(hdr, data)
        r = self.recv()
        status = r.w36 >> 16
        if status:
            raise LoginFailed(status)
        return r

    # ------------------------------------------------------------- commands
    def scsi(self, cdb: bytes, read_len: int = 0, data_out: bytes = b"",
             immediate_len: int | None = None) -> tuple[int, bytes, bytes, Pdu]:  # fmt: skip
        """Run one command; returns (status, data-in, sense, final PDU). Handles R2T."""
        itt = self.next_itt()
        flags = 0x80 | (0x40 if read_len else 0) | (0x20 if data_out else 0)
        edtl = read_len or len(data_out)
        imm = data_out[: immediate_len if immediate_len is not None else 8192]
        hdr = pack(0x01, flags, len(imm), bytes(8), itt, edtl, self.cmdsn, self.exp_statsn,
                   *struct.unpack(">IIII", cdb.ljust(16, b"\0")))  # fmt: skip
        self.cmdsn += 1
        self.send(hdr, imm)
        data = bytearray()
        while True:
            p = self.recv()
            if p.op == 0x31:  # R2T
                off, length = p.w40, p.w44
                sn = 0
                while length > 0:
                    n = min(length, 8192)
                    final = 0x80 if n == length else 0
                    h = pack(0x05, final, n, bytes(8), itt, p.w20, 0, self.exp_statsn, 0, sn,
                             off)  # fmt: skip
                    self.send(h, data_out[off : off + n])
                    off += n
                    length -= n
                    sn += 1
                continue
            if p.op == 0x25:
                data[p.w40 : p.w40 + len(p.data)] = p.data
                if p.flags & 0x01:
                    return p.b3, bytes(data), b"", p
                continue
            if p.op == 0x21:
                sense = p.data[2 : 2 + int.from_bytes(p.data[:2], "big")] if p.data else b""
                return p.b3, bytes(data), sense, p
            if p.op == 0x20:  # target NOP-In ping: answer it
                if p.w20 != 0xFFFFFFFF:
                    self.send(pack(0x40, 0x80, 0, bytes(8), 0xFFFFFFFF, p.w20, self.cmdsn,
                                   self.exp_statsn))  # fmt: skip
                continue
            raise AssertionError(f"unexpected PDU opcode {p.op:#x}")

    def nop(self, immediate: bool = True, data: bytes = b"") -> Pdu:
        """NOP-Out ping; with `immediate` the CmdSN is not consumed."""
        itt = self.next_itt()
        hdr = pack(0x00 | (0x40 if immediate else 0), 0x80, len(data), bytes(8), itt,
                   0xFFFFFFFF, self.cmdsn, self.exp_statsn)  # fmt: skip
        if not immediate:
            self.cmdsn += 1
        self.send(hdr, data)
        while True:
            p = self.recv()
            if p.op == 0x20 and p.itt == itt:
                return p

    def logout(self) -> Pdu:
        """Close the session."""
        itt = self.next_itt()
        self.send(pack(0x46, 0x80, 0, bytes(8), itt, 0, self.cmdsn, self.exp_statsn))
        return self.recv()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
