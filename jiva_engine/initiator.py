"""A small asyncio iSCSI initiator (RFC 7143): login with optional CHAP, READ(10)/WRITE(10), reconnect.

Written for the crash-torture workload, which must know exactly which writes the target
acknowledged: a write is acknowledged only when its SCSI Response says GOOD.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.framing import Buffer, append_pdu, lengths, pad_len

OUR_MAX_RECV = 262144
SN_MASK = 0xFFFFFFFF
SIMPLE = 0x01  # SCSI Command task attribute


class IscsiError(Exception):
    """Base class of the initiator's errors."""


class LoginError(IscsiError):
    """The target refused the login (status class/detail, RFC 7143 §11.13.5)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or f"login refused with status {status:#06x}")
        self.status = status


class ConnectionLost(IscsiError):
    """The connection went away with the command outstanding: it is NOT acknowledged."""


class ScsiError(IscsiError):
    """The command completed with a non-GOOD status (sense key/ASC/ASCQ when CHECK CONDITION)."""

    def __init__(self, status: int, sense: bytes) -> None:
        self.status = status
        self.sense = sense
        key = asc = ascq = 0
        if len(sense) >= 14 and sense[0] & 0x7F in (0x70, 0x71):
            key, asc, ascq = sense[2] & 0x0F, sense[12], sense[13]
        elif len(sense) >= 4 and sense[0] & 0x7F in (0x72, 0x73):
            key, asc, ascq = sense[1] & 0x0F, sense[2], sense[3]
        self.key, self.asc, self.ascq = key, asc, ascq
        super().__init__(
            f"SCSI status {status:#04x} sense key {key:#x} ASC/ASCQ {asc:#04x}/{ascq:#04x}"
        )


def _keys(data: bytes) -> dict[str, str]:
    """Decode login text leniently (a key without '=' gets an empty value)."""
    out: dict[str, str] = {}
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            out[k] = v
    return out


class _Cmd:
    """One outstanding SCSI command."""

    __slots__ = ("itt", "data_out", "read_buf", "fut")

    def __init__(self, itt: int, data_out: bytes, read_len: int) -> None:
        self.itt = itt
        self.data_out = data_out
        self.read_buf = bytearray(read_len)
        self.fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()


class Initiator:
    """One iSCSI session over one TCP connection to LUN 0 of `target`; commands are pipelined.

    `chap=(user, secret)` does one-way CHAP; `mutual=(user, secret)` also checks the target.
    After a connection loss every outstanding command fails with ConnectionLost; call
    `reconnect()` (or `connect()` again) to log in with a new session.
    """

    def __init__(
        self,
        host: str,
        port: int,
        target: str,
        name: str = "iqn.2026-11.org.jiva-py:initiator",
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        timeout: float = 10.0,
        block_size: int = 512,
    ) -> None:
        self.host, self.port, self.target, self.name = host, port, target, name
        self.chap, self.mutual, self.timeout = chap, mutual, timeout
        self.block_size = block_size
        self.isid = b"\x80" + os.urandom(5)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._cmds: dict[int, _Cmd] = {}
        self._itt = 0
        self.cmdsn = 1
        self.exp_statsn = 0
        self.max_cmdsn = 1
        self._window = asyncio.Event()
        self.params: dict[str, str] = {}
        self.target_max_recv = 8192
        self.first_burst = 65536
        self.immediate = False
        self.connected = False
        self._login_transit = False  # the target's last Login Response had T set

    # ------------------------------------------------------------------ connection
    async def connect(self) -> dict[str, str]:
        """Open the TCP connection and log in (security stage if CHAP, then operational)."""
        await self.close()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        try:
            got = await asyncio.wait_for(self._login(), self.timeout)
        except BaseException:
            self._abort_socket()
            raise
        self.params = got
        self.target_max_recv = int(got.get("MaxRecvDataSegmentLength", "8192"))
        self.immediate = got.get("ImmediateData", "Yes") == "Yes"
        self.first_burst = int(got.get("FirstBurstLength", "65536"))
        self.connected = True
        self._window.set()
        self._task = asyncio.create_task(self._read_loop())
        return got

    async def reconnect(self, deadline: float = 60.0, interval: float = 0.2) -> None:
        """Retry `connect()` until it works or `deadline` seconds pass (then raise the last error)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            try:
                await self.connect()
                return
            except (TimeoutError, OSError, IscsiError, asyncio.IncompleteReadError):
                if loop.time() > end:
                    raise
                await asyncio.sleep(interval)

    async def _login(self) -> dict[str, str]:
        itt = self._next_itt()
        got: dict[str, str] = {}
        base = {"InitiatorName": self.name, "SessionType": "Normal", "TargetName": self.target}
        if self.chap:
            base["AuthMethod"] = "CHAP"
            got.update(await self._login_pdu(itt, 0, 1, False, base))
            t = await self._login_pdu(itt, 0, 1, False, {"CHAP_A": "5"})
            ident, chal = int(t["CHAP_I"], 0), bytes.fromhex(t["CHAP_C"][2:])
            resp = hashlib.md5(bytes([ident]) + self.chap[1].encode() + chal).digest()
            keys = {"CHAP_N": self.chap[0], "CHAP_R": "0x" + resp.hex()}
            mid, mchal = 0, b""
            if self.mutual:
                mid, mchal = os.urandom(1)[0], os.urandom(16)
                keys.update({"CHAP_I": str(mid), "CHAP_C": "0x" + mchal.hex()})
            t = await self._login_pdu(itt, 0, 1, True, keys)
            if self.mutual:
                want = hashlib.md5(bytes([mid]) + self.mutual[1].encode() + mchal).digest()
                r = t.get("CHAP_R", "")
                if t.get("CHAP_N") != self.mutual[0] or r[2:].lower() != want.hex():
                    raise LoginError(0x0201, "the target failed mutual CHAP authentication")
            got.update(t)
        else:
            base["AuthMethod"] = "None"
            got.update(await self._login_pdu(itt, 0, 1, True, base))
        op = {
            "HeaderDigest": "None",
            "DataDigest": "None",
            "InitialR2T": "Yes",
            "ImmediateData": "Yes",
            "MaxRecvDataSegmentLength": str(OUR_MAX_RECV),
            "MaxBurstLength": "262144",
            "FirstBurstLength": "65536",
            "MaxOutstandingR2T": "1",
            "ErrorRecoveryLevel": "0",
        }
        got.update(await self._login_pdu(itt, 1, 3, True, op))
        while not self._login_transit:  # the target is not ready to move on yet
            got.update(await self._login_pdu(itt, 1, 3, True, {}))
        return got

    async def _login_pdu(
        self, itt: int, csg: int, nsg: int, transit: bool, keys: dict[str, str]
    ) -> dict[str, str]:
        data = P.build_text(list(keys.items()))
        req = P.LoginRequest(itt=itt, isid=self.isid, csg=csg, nsg=nsg, transit=transit,
                             cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                             data_len=len(data))  # fmt: skip
        self._send(req.pack(), data)
        hdr, rdata = await self._recv_pdu()
        if P.opcode_of(hdr) != P.Opcode.LOGIN_RESPONSE:
            raise LoginError(0xFFFF, f"unexpected PDU {hdr[0]:#x} during login")
        rsp = P.LoginResponse.parse(hdr)
        if rsp.status:
            raise LoginError(rsp.status)
        self.exp_statsn = (rsp.statsn + 1) & SN_MASK
        self.cmdsn = rsp.exp_cmdsn
        self.max_cmdsn = rsp.max_cmdsn
        self._login_transit = rsp.transit
        return _keys(rdata)

    def _abort_socket(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._writer = self._reader = None

    async def close(self) -> None:
        """Drop the connection; outstanding commands fail with ConnectionLost."""
        self.connected = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        self._abort_socket()
        self._fail_all("connection closed")

    async def logout(self) -> None:
        """Log out cleanly (close the session), then close."""
        if self.connected and self._writer is not None:
            req = P.LogoutRequest(itt=self._next_itt(), cmdsn=self.cmdsn,
                                  exp_statsn=self.exp_statsn, immediate=True)  # fmt: skip
            self._send(req.pack())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain_until_closed(), 2)
        await self.close()

    async def _drain_until_closed(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def _fail_all(self, why: str) -> None:
        cmds, self._cmds = self._cmds, {}
        for c in cmds.values():
            if not c.fut.done():
                c.fut.set_exception(ConnectionLost(why))
                c.fut.exception()  # a caller that timed out will not look at it: no warning
        self._window.set()

    # ------------------------------------------------------------------ PDUs
    def _next_itt(self) -> int:
        self._itt = (self._itt + 1) % 0xFFFFFFF0
        return self._itt

    def _send(self, hdr: bytes, data: bytes | memoryview = b"") -> None:
        if self._writer is None or self._writer.transport.is_closing():
            raise ConnectionLost("not connected")
        parts: list[Buffer] = []
        append_pdu(parts, hdr, data)  # no digests: this initiator offers None
        self._writer.writelines(parts)

    async def _recv_pdu(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        hdr = await self._reader.readexactly(P.BHS_LEN)
        ahs, dlen, _ = lengths(hdr)
        if ahs:
            await self._reader.readexactly(ahs)
        data = b""
        if dlen:
            data = (await self._reader.readexactly(dlen + pad_len(dlen)))[:dlen]
        return hdr, data

    async def _read_loop(self) -> None:
        why = "connection lost"
        try:
            while True:
                hdr, data = await self._recv_pdu()
                self._on_pdu(hdr, data)
        except (asyncio.IncompleteReadError, OSError) as e:
            why = f"connection lost: {e!r}"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a protocol violation by the target: drop the connection
            why = f"protocol error: {e!r}"
        finally:
            self.connected = False
            self._abort_socket()
            self._fail_all(why)

    def _on_pdu(self, hdr: bytes, data: bytes) -> None:
        try:
            rsp = P.parse_response(hdr)
        except P.PduError:
            return  # not something a target sends: ignored
        if isinstance(rsp, (P.LoginResponse, P.TextResponse, P.TaskManagementResponse)):
            return  # never asked for in full feature phase
        if rsp.max_cmdsn != 0 or rsp.exp_cmdsn != 0:
            if (rsp.max_cmdsn - self.max_cmdsn) & 0x80000000 == 0:
                self.max_cmdsn = rsp.max_cmdsn
            self._window.set()
        if isinstance(rsp, (P.ScsiResponse, P.LogoutResponse, P.AsyncMessage, P.Reject)) or (
            isinstance(rsp, P.NopIn) and rsp.itt != P.RESERVED_TAG
        ):
            self.exp_statsn = (rsp.statsn + 1) & SN_MASK
        match rsp:
            case P.DataIn():
                c = self._cmds.get(rsp.itt)
                if c is None:
                    return
                c.read_buf[rsp.offset : rsp.offset + len(data)] = data
                if rsp.flags & P.STATUS:  # status in the last Data-In
                    self.exp_statsn = (rsp.statsn + 1) & SN_MASK
                    self._finish(c, rsp.status, b"")
            case P.ScsiResponse():
                c = self._cmds.get(rsp.itt)
                if c is not None:
                    sense = data[2 : 2 + int.from_bytes(data[:2], "big")] if len(data) >= 2 else b""
                    status = rsp.status if rsp.response == 0 else 0x100 | rsp.response
                    self._finish(c, status, sense)
            case P.R2T():
                c = self._cmds.get(rsp.itt)
                if c is not None:
                    self._data_out(c, ttt=rsp.ttt, off=rsp.offset, length=rsp.length)
            case P.NopIn():
                if rsp.ttt != P.RESERVED_TAG:  # a ping from the target: answer with the same TTT
                    ping = P.NopOut(itt=P.RESERVED_TAG, ttt=rsp.ttt, cmdsn=self.cmdsn,
                                    exp_statsn=self.exp_statsn, immediate=True)  # fmt: skip
                    self._send(ping.pack())
            case P.AsyncMessage():
                if rsp.event == P.AsyncEvent.LOGOUT_REQUESTED:
                    # the target asks us to log out: just drop and let the user reconnect
                    raise ConnectionError("target requested logout")
            case P.Reject():
                rejected = data[: P.BHS_LEN]
                if len(rejected) == P.BHS_LEN:
                    c = self._cmds.get(int.from_bytes(rejected[16:20], "big"))  # its ITT
                    if c is not None and not c.fut.done():
                        c.fut.set_exception(IscsiError(f"command rejected, reason {rsp.reason:#x}"))
                        self._cmds.pop(c.itt, None)
            case P.LogoutResponse():
                raise ConnectionError("logged out")

    def _finish(self, c: _Cmd, status: int, sense: bytes) -> None:
        self._cmds.pop(c.itt, None)
        if c.fut.done():
            return
        if status == 0:
            c.fut.set_result(bytes(c.read_buf))
        else:
            c.fut.set_exception(ScsiError(status, sense))

    def _data_out(self, c: _Cmd, ttt: int, off: int, length: int) -> None:
        sn = 0
        end = off + length
        while off < end:
            n = min(end - off, self.target_max_recv)
            d = P.DataOut(itt=c.itt, ttt=ttt, offset=off, datasn=sn, exp_statsn=self.exp_statsn,
                          final=off + n == end, data_len=n)  # fmt: skip
            self._send(d.pack(), memoryview(c.data_out)[off : off + n])
            off += n
            sn += 1

    # ------------------------------------------------------------------ commands
    async def command(self, cdb: bytes, data_out: bytes = b"", read_len: int = 0) -> bytes:
        """Run one SCSI command on LUN 0; returns Data-In, raises ScsiError / ConnectionLost."""
        if not self.connected:
            raise ConnectionLost("not connected")
        while ((self.max_cmdsn - self.cmdsn) & 0xFFFFFFFF) >= 0x80000000:  # window closed
            self._window.clear()
            await asyncio.wait_for(self._window.wait(), self.timeout)
            if not self.connected:
                raise ConnectionLost("not connected")
        itt = self._next_itt()
        c = _Cmd(itt, data_out, read_len)
        self._cmds[itt] = c
        flags = P.FINAL | SIMPLE | (P.READ if read_len else 0) | (P.WRITE if data_out else 0)
        imm = b""
        if data_out and self.immediate:
            imm = data_out[: min(self.first_burst, self.target_max_recv)]
        req = P.ScsiCommand(itt=itt, cdb=cdb, edtl=read_len or len(data_out), flags=flags,
                            cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                            data_len=len(imm))  # fmt: skip
        self.cmdsn = (self.cmdsn + 1) & SN_MASK
        self._send(req.pack(), imm)
        try:
            return await asyncio.wait_for(asyncio.shield(c.fut), self.timeout)
        except TimeoutError:
            # a command that never completes: treat the connection as dead (not acknowledged)
            await self.close()
            raise ConnectionLost(f"command timed out after {self.timeout}s") from None

    async def write(self, lba: int, data: bytes, fua: bool = False) -> None:
        """WRITE(10) `data` at `lba` (blocks of `block_size`); returns only when acknowledged."""
        n = len(data) // self.block_size
        cdb = struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, n, 0)
        await self.command(cdb, data_out=data)

    async def read(self, lba: int, blocks: int) -> bytes:
        """READ(10) `blocks` blocks at `lba`."""
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
        return await self.command(cdb, read_len=blocks * self.block_size)

    async def sync_cache(self) -> None:
        """SYNCHRONIZE CACHE(10) for the whole LUN."""
        await self.command(bytes([0x35]) + bytes(9))

    async def capacity(self) -> tuple[int, int]:
        """READ CAPACITY(10): (number of blocks, block size)."""
        d = await self.command(bytes([0x25]) + bytes(9), read_len=8)
        last, bs = struct.unpack(">II", d[:8])
        return last + 1, bs
