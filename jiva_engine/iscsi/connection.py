"""One target connection as a protocol state machine: PDU framing, login, the full feature phase
of its session (CmdSN ordering, SCSI commands with R2T/Data-Out and Data-In, task management,
NOP keepalive, SendTargets, logout).

It does no I/O of its own: bytes come in through `receive()`, PDUs leave through `_emit()`, and
the asyncio side (protocol.py) supplies the transport, the timer and the tasks, the way asyncpg
keeps its CoreProtocol apart from the asyncio Protocol.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from jiva_engine.buffers import POOL
from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.crc import crc32c
from jiva_engine.iscsi.eager import start_eagerly
from jiva_engine.iscsi.framing import Buffer, append_pdu, lengths, pad_len
from jiva_engine.iscsi.login import SERVICE_UNAVAILABLE, LoginMachine, LoginResult, Params
from jiva_engine.iscsi.pdu import RejectReason as Rej
from jiva_engine.iscsi.pdu import TmfFunction as Tmf
from jiva_engine.iscsi.pdu import TmfResponse
from jiva_engine.iscsi.session import CMD_WINDOW, Numbered, Session
from jiva_engine.iscsi.task import ScsiTask
from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Nexus, Result

if TYPE_CHECKING:
    import asyncio

    from jiva_engine.iscsi.target import TargetServer

log = logging.getLogger(__name__)

HARD_MAX_PDU = 16 * 1024 * 1024 + 4096  # beyond this we do not even buffer: close
LOGIN_RX_LIMIT = 64 * 1024  # data segment bytes buffered per PDU before login sets the limit
MAX_WRITE_EDTL = 32 * 1024 * 1024  # larger writes are refused before any buffer is allocated
WRITE_BUDGET = 256 * 1024 * 1024  # write data buffered per connection; beyond: TASK SET FULL
SN_MASK = 0xFFFFFFFF
RBUF = 256 * 1024  # receive buffer to start with (grows to hold the biggest PDU accepted)
RBUF_MIN_FREE = 64 * 1024  # room a receive into `rbuf` gets at least
DIRECT_MIN = 64 * 1024  # Data-Out segments this big are received straight into the task


class ConnState(Enum):
    """Where a target connection is (after RFC 7143 §8.1.3; at ErrorRecoveryLevel 0 there is no
    cleanup state, and transport-up and in-login are one)."""

    FREE = "free"  # no transport yet, or closed: nothing is handled or sent
    IN_LOGIN = "in login"  # only Login Requests until the login completes
    LOGGED_IN = "logged in"  # full feature phase
    IN_LOGOUT = "in logout"  # a Logout Request was accepted: no new SCSI commands


# The states as module names: on Python 3.11 reaching an Enum member through its class is a
# lookup that costs as much as the rest of a state check, and the receive path checks per PDU.
FREE = ConnState.FREE
IN_LOGIN = ConnState.IN_LOGIN
LOGGED_IN = ConnState.LOGGED_IN
IN_LOGOUT = ConnState.IN_LOGOUT


class Connection(ABC):
    """One connection of the target: login, then the full feature phase of its session."""

    def __init__(self, server: TargetServer) -> None:
        """A connection of `server`, FREE until `opened()`."""
        self.server = server
        self.state = FREE
        self.peer = ""
        self.local: tuple[str, int] = ("", 0)
        self.login: LoginMachine | None = None
        self.session: Session | None = None
        self.params = Params()
        self.header_digest = False
        self.data_digest = False
        self.stat_sn = 0
        self.tasks: dict[int, ScsiTask] = {}
        self.by_ttt: dict[int, ScsiTask] = {}
        self.next_ttt = 1
        self.rbuf = bytearray(RBUF)  # received bytes; rbuf[rstart:rend] not parsed yet
        self.rmv = memoryview(self.rbuf)
        self.rstart = self.rend = 0
        self._direct: memoryview | None = None  # a Data-Out's data segment, received in place
        self._direct_filled = 0
        self._direct_hdr = b""
        self.rx_placed = 0  # Data-Out bytes received straight into a task's buffer
        # data segments above the negotiated MaxRecvDataSegmentLength get a Reject, but only up
        # to this many bytes are ever buffered; beyond it the connection is closed
        self.rx_limit = LOGIN_RX_LIMIT
        self.buffered = 0  # bytes of write buffers held by tasks on this connection
        self.opened_at = self.last_rx = time.monotonic()
        self.nop_sent: float | None = None  # when the unanswered keepalive NOP-In left
        self.nop_ttt = 0x40000000

    # ------------------------------------------------------------------ the asyncio side
    @abstractmethod
    def _emit(self, parts: list[Buffer], pdus: int = 1) -> None:
        """Queue the pieces of `pdus` PDUs for sending, in order."""

    @abstractmethod
    def close(self, why: str = "") -> None:
        """Close after sending what is queued; the state becomes FREE."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the connection now (what is queued goes to the transport first)."""

    @abstractmethod
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task of its own."""

    @abstractmethod
    async def _wait(self, running: Sequence[asyncio.Task[None]], timeout: float) -> None:
        """Wait until every one of `running` is done, or `timeout` seconds."""

    # ------------------------------------------------------------------ life cycle
    def opened(self, peer: str, local: tuple[str, int]) -> None:
        """The transport is up: start the login phase."""
        self.peer, self.local = peer, local
        self.login = LoginMachine(self.server.config)  # a TargetConfig is an AuthConfig
        self.state = IN_LOGIN

    def lost(self) -> None:
        """The transport is gone: abort the tasks, end the session."""
        self.state = FREE
        for t in self.tasks.values():
            t.aborted = True
        self.tasks.clear()
        self.by_ttt.clear()
        if self.session is not None:
            self.server.session_ended(self.session)

    def tick(self, now: float) -> None:
        """Once a second: login timeout, keepalive NOP-In, its timeout, idle timeout."""
        if self.state is FREE:
            return
        cfg = self.server.config
        idle = now - self.last_rx
        s = self.session
        if s is None:
            # from the connection's start, not the last byte: a sender trickling one byte at a
            # time must not hold a connection (and its buffer) forever
            if now - self.opened_at > cfg.login_timeout:
                self.close("login timed out")
            return
        if self.nop_sent is not None and now - self.nop_sent > cfg.nop_timeout:
            self.abort()
            log.warning("%s did not answer NOP-In for %.0fs", self.peer, cfg.nop_timeout)
            return
        if cfg.idle_timeout and idle > cfg.idle_timeout and not self.tasks:
            self.close("idle timeout")
            return
        keepalive = cfg.nop_interval and not s.discovery
        if keepalive and self.nop_sent is None and idle >= cfg.nop_interval:
            self._send_nop_in(now)

    # ------------------------------------------------------------------ receive path
    # Bytes arrive the way a BufferedProtocol receives them: the transport reads into
    # `get_buffer()` and reports `buffer_updated(n)`. PDUs gather in `rbuf[rstart:rend]`,
    # except the data segment of a big Data-Out, which is received straight into its place
    # in the task's write buffer (`_direct`): the buffer that goes to the replicas.

    def get_buffer(self, _sizehint: int = -1) -> memoryview:
        """Where the next received bytes go."""
        d = self._direct
        if d is not None:
            return d[self._direct_filled :]
        if self.rend == len(self.rbuf):  # full: keep the unparsed tail, at the front
            self._make_room(self.rend - self.rstart + RBUF_MIN_FREE)
        return self.rmv[self.rend :]

    def _make_room(self, need: int) -> None:
        """Move the unparsed bytes to the front of `rbuf`, a new one if it holds < `need`."""
        keep = self.rend - self.rstart
        if len(self.rbuf) < need:
            new = bytearray(max(2 * len(self.rbuf), need))
            new[:keep] = self.rmv[self.rstart : self.rend]
            self.rbuf, self.rmv = new, memoryview(new)
        elif keep:
            tail = self.rmv[self.rstart : self.rend]
            self.rbuf[:keep] = tail if self.rstart >= keep else bytes(tail)  # no overlap
        self.rstart, self.rend = 0, keep

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` more were received into the last `get_buffer()`: handle every complete PDU."""
        self.last_rx = time.monotonic()
        if self._direct is not None:
            self._direct_filled += nbytes
            if self._direct_filled < len(self._direct):
                return
            hdr = self._direct_hdr
            self._direct = None
            self._direct_hdr = b""
            self._dispatch_placed(hdr)
            return
        self.rend += nbytes
        self._parse()

    def receive(self, data: Buffer) -> None:
        """Handle received bytes given as one piece (as get_buffer/buffer_updated would)."""
        view = memoryview(data)
        while len(view) and self.state is not FREE:
            dest = self.get_buffer()
            n = min(len(dest), len(view))
            dest[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _parse(self) -> None:
        """Handle every complete PDU in `rbuf[rstart:rend]`; start receiving a big Data-Out's
        data segment in place when one begins."""
        buf = self.rbuf
        pos, n = self.rstart, self.rend
        need = 0  # bytes of the PDU that is not all here yet
        while self.state is not FREE and n - pos >= P.BHS_LEN:
            hd, dd = self.header_digest, self.data_digest
            ahs, dlen, total = lengths(buf, pos, hd, dd)
            if total > HARD_MAX_PDU or dlen > self.rx_limit:
                # never buffer what we would refuse anyway: bounded memory per connection
                self.close(f"PDU with {dlen} data bytes exceeds the limit")
                return
            end_hdr = pos + P.BHS_LEN + ahs
            if n - pos < total:
                if n < end_hdr + (4 if hd else 0) or not self._place(pos, end_hdr, dlen):
                    need = total
                    break
                return  # the rest of this PDU goes straight into a task's buffer
            hdr = bytes(buf[pos:end_hdr])
            if hd:
                if crc32c(hdr) != int.from_bytes(buf[end_hdr : end_hdr + 4], "little"):
                    self.close("header digest error")
                    return
                end_hdr += 4
            seg = b""
            if dlen:
                seg = bytes(self.rmv[end_hdr : end_hdr + dlen])
                if dd:
                    dpos = end_hdr + dlen + pad_len(dlen)
                    if crc32c(buf[end_hdr:dpos]) != int.from_bytes(buf[dpos : dpos + 4], "little"):
                        self.close("data digest error")
                        return
            pos += total
            self.rstart = pos  # a handler may close: what was handled stays handled
            try:
                self._dispatch(hdr, seg)
            except Exception:  # a bug must not take the process down
                log.exception("error handling PDU from %s", self.peer)
                self.close("internal error")
                return
        if pos >= n:
            self.rstart = self.rend = 0
        else:
            self.rstart = pos
            if len(buf) - pos < need:  # the rest of this PDU does not fit after it
                self._make_room(need)

    def _place(self, pos: int, end_hdr: int, dlen: int) -> bool:
        """The PDU at `pos` (header here, data still coming): if it is a big Data-Out the
        target would take, copy the part of its data segment already here into the task's
        buffer and receive the rest there (no digest, no padding: then True)."""
        buf = self.rbuf
        if (
            self.state is not LOGGED_IN
            or buf[pos] & P.OPCODE_MASK != P.Opcode.DATA_OUT
            or dlen < DIRECT_MIN
            or dlen % 4
            or self.data_digest
            or dlen > self.params.max_recv_dsl
        ):
            return False
        hdr = bytes(buf[pos:end_hdr])
        data_at = end_hdr
        if self.header_digest:
            if crc32c(hdr) != int.from_bytes(buf[end_hdr : end_hdr + 4], "little"):
                return False  # the normal path closes the connection when it is all here
            data_at += 4
        d = P.DataOut.parse(hdr)
        t = self._data_out_task(d)
        if t is None or not isinstance(t.buf, bytearray) or d.offset + dlen > t.edtl:
            return False
        if d.datasn != self._data_out_sn(d, t) or t.started:
            return False
        dest = memoryview(t.buf)[d.offset : d.offset + dlen]
        have = self.rend - data_at
        dest[:have] = self.rmv[data_at : self.rend]
        self.rstart = self.rend = 0
        self._direct, self._direct_filled, self._direct_hdr = dest, have, hdr
        self.rx_placed += dlen
        return True

    def _dispatch(self, hdr: bytes, data: bytes) -> None:
        op = hdr[0] & P.OPCODE_MASK
        if self.state is IN_LOGIN:
            if op != P.Opcode.LOGIN_REQUEST:
                self.close(f"opcode {op:#x} before login completed")
                return
            self._on_login(P.LoginRequest.parse(hdr), data)
            return
        if len(data) > self.params.max_recv_dsl:
            self._reject(hdr, Rej.PROTOCOL_ERROR, "data segment exceeds MaxRecvDataSegmentLength")
            return
        handler = _FULL_FEATURE.get(op)
        if handler is not None:
            handler(self, hdr, data)
        elif op == P.Opcode.LOGIN_REQUEST:
            self._reject(hdr, Rej.PROTOCOL_ERROR, "login in full feature phase")
        elif op == P.Opcode.SNACK:
            self._reject(hdr, Rej.SNACK_REJECT, "SNACK not supported at ErrorRecoveryLevel 0")
        else:
            self._reject(hdr, Rej.COMMAND_NOT_SUPPORTED, f"opcode {op:#x}")

    # ------------------------------------------------------------------ login
    def _on_login(self, req: P.LoginRequest, data: bytes) -> None:
        lm = self.login
        assert lm is not None
        res = lm.handle(req, data)
        sess = None
        refusal = None
        gate = self.server.login_gate
        if res.done and res.status == 0 and lm.session_type != "Discovery" and gate is not None:
            refusal = gate()
            if refusal:
                res = LoginResult(False, res.csg, 0, SERVICE_UNAVAILABLE, b"", close=True)
        if res.done:
            nexus = Nexus(lm.initiator or "", lm.isid, self.server.config.tpgt)
            sess = Session(self, self.server.next_tsih(), lm.initiator or "", nexus,
                           lm.session_type == "Discovery", req.cmdsn)  # fmt: skip
        if self.stat_sn == 0:
            self.stat_sn = req.exp_statsn
        rsp = P.LoginResponse(
            itt=req.itt,
            isid=lm.isid,
            tsih=sess.tsih if sess else 0,
            transit=res.transit,
            csg=res.csg,
            nsg=res.nsg,
            status=res.status,
            statsn=self._next_stat(),
            exp_cmdsn=req.cmdsn,
            max_cmdsn=(req.cmdsn + CMD_WINDOW - 1) & SN_MASK,
            data_len=len(res.text),
        )
        self._send(rsp.pack(), res.text)
        if res.status != 0 or res.close:
            log.warning("login from %s (%s) refused: status %#06x%s", self.peer, lm.initiator,
                        res.status, f": {refusal}" if refusal else "")  # fmt: skip
            self.close()
            return
        if sess is not None:
            self.params = lm.params
            self.rx_limit = 2 * lm.params.max_recv_dsl
            self.header_digest = lm.params.header_digest
            self.data_digest = lm.params.data_digest
            self.session = sess
            self.login = None
            self.state = LOGGED_IN
            self.server.session_started(sess)
            log.info("%s session %s from %s (%s)",
                     "discovery" if sess.discovery else "normal", sess.tsih, self.peer,
                     sess.initiator)  # fmt: skip

    # ------------------------------------------------------------------ sending
    def _send(self, header: bytes, data: Buffer = b"") -> None:
        if self.state is FREE:
            return
        parts: list[Buffer] = []
        append_pdu(parts, header, data, self.header_digest, self.data_digest)
        self._emit(parts)

    def _next_stat(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & SN_MASK
        return sn

    def _reject(self, raw: bytes, reason: Rej, why: str) -> None:
        log.warning("reject from %s: %s", self.peer, why)
        s = self.session
        rsp = P.Reject(
            reason,
            statsn=self._next_stat(),
            exp_cmdsn=s.exp_cmdsn if s else 0,
            max_cmdsn=s.max_cmdsn() if s else 0,
            data_len=P.BHS_LEN,
        )
        self._send(rsp.pack(), raw[: P.BHS_LEN])

    # ------------------------------------------------------------------ CmdSN ordering
    def _in_order(self, req: Numbered, data: bytes) -> None:
        """Handle a numbered PDU now if its turn has come, then any held one it unblocks."""
        s = self.session
        assert s is not None
        if req.immediate:
            self._handle_numbered(req, data)
        elif s.admit(req, data):
            self._handle_numbered(req, data)
            self._run_held()

    def _on_task_management(self, hdr: bytes, data: bytes) -> None:
        self._in_order(P.TaskManagementRequest.parse(hdr), data)

    def _on_text_request(self, hdr: bytes, data: bytes) -> None:
        self._in_order(P.TextRequest.parse(hdr), data)

    def _on_logout_request(self, hdr: bytes, data: bytes) -> None:
        self._in_order(P.LogoutRequest.parse(hdr), data)

    def _run_held(self) -> None:
        s = self.session
        assert s is not None
        while (item := s.next_in_order()) is not None:
            self._handle_numbered(*item)

    def _handle_numbered(self, req: Numbered, data: bytes) -> None:
        if isinstance(req, P.ScsiCommand):
            self._start_command(req, data)
        elif isinstance(req, P.NopOut):
            self._nop_reply(req, data)
        elif isinstance(req, P.TaskManagementRequest):
            self._spawn(self._task_management(req))
        elif isinstance(req, P.TextRequest):
            self._on_text(req, data)
        else:
            self._on_logout(req)

    # ------------------------------------------------------------------ NOP
    def _on_nop_out(self, hdr: bytes, data: bytes) -> None:
        req = P.NopOut.parse(hdr)
        if req.itt == P.RESERVED_TAG:
            # an answer to our NOP-In (or an unsolicited ping that wants no reply)
            if req.ttt != P.RESERVED_TAG:
                self.nop_sent = None
            return
        self.nop_sent = None
        self._in_order(req, data)

    def _nop_reply(self, req: P.NopOut, data: bytes) -> None:
        s = self.session
        assert s is not None
        rsp = P.NopIn(itt=req.itt, lun=req.lun, statsn=self._next_stat(), exp_cmdsn=s.exp_cmdsn,
                      max_cmdsn=s.max_cmdsn(), data_len=len(data))  # fmt: skip
        self._send(rsp.pack(), data)

    def _send_nop_in(self, now: float) -> None:
        s = self.session
        assert s is not None
        self.nop_ttt = (self.nop_ttt + 1) & 0x7FFFFFFF or 1
        self.nop_sent = now
        ping = P.NopIn(itt=P.RESERVED_TAG, ttt=self.nop_ttt, statsn=self.stat_sn,
                       exp_cmdsn=s.exp_cmdsn, max_cmdsn=s.max_cmdsn())  # fmt: skip
        self._send(ping.pack())

    # ------------------------------------------------------------------ text / SendTargets
    def _on_text(self, req: P.TextRequest, data: bytes) -> None:
        s = self.session
        assert s is not None
        try:
            pairs = P.parse_text(data)
        except P.PduError as e:
            self._reject(req.raw, Rej.PROTOCOL_ERROR, str(e))
            return
        reply: list[tuple[str, str]] = []
        for k, v in pairs:
            if k == "SendTargets":
                cfg = self.server.config
                allowed = {a.lower() for a in cfg.allowed_initiators}
                if allowed and s.initiator.lower() not in allowed:
                    continue
                if v in ("All", cfg.iqn) or (v == "" and not s.discovery):
                    reply.append(("TargetName", cfg.iqn))
                    for portal in self.server.portals(self.local):
                        reply.append(("TargetAddress", f"{portal},{cfg.tpgt}"))
            else:
                reply.append((k, "NotUnderstood"))
        text = P.build_text(reply)
        rsp = P.TextResponse(itt=req.itt, lun=req.lun, statsn=self._next_stat(),
                             exp_cmdsn=s.exp_cmdsn, max_cmdsn=s.max_cmdsn(),
                             data_len=len(text))  # fmt: skip
        self._send(rsp.pack(), text)

    # ------------------------------------------------------------------ logout
    def _on_logout(self, req: P.LogoutRequest) -> None:
        if req.reason in (P.LogoutReason.CLOSE_SESSION, P.LogoutReason.CLOSE_CONNECTION):
            resp = P.LogoutResponseCode.SUCCESS
        else:  # connection recovery needs ErrorRecoveryLevel 2
            resp = P.LogoutResponseCode.RECOVERY_NOT_SUPPORTED
        self.state = IN_LOGOUT
        self._spawn(self._logout(req, resp))

    async def _logout(self, req: P.LogoutRequest, resp: P.LogoutResponseCode) -> None:
        """Answer once the commands still running have completed (5 s at most)."""
        running = [t.running for t in self.tasks.values() if t.running and not t.running.done()]
        if running:
            await self._wait(running, timeout=5)
        s = self.session
        assert s is not None
        rsp = P.LogoutResponse(itt=req.itt, response=resp, statsn=self._next_stat(),
                               exp_cmdsn=s.exp_cmdsn, max_cmdsn=s.max_cmdsn(),
                               time2wait=2)  # fmt: skip
        self._send(rsp.pack())
        if resp == P.LogoutResponseCode.SUCCESS:
            self.close()

    # ------------------------------------------------------------------ SCSI commands
    def _on_command(self, hdr: bytes, data: bytes) -> None:
        cmd = P.ScsiCommand.parse(hdr)
        s = self.session
        assert s is not None
        if s.discovery:
            self._reject(cmd.raw, Rej.PROTOCOL_ERROR, "SCSI command in a discovery session")
            return
        if self.state is IN_LOGOUT:
            self._reject(cmd.raw, Rej.WAITING_FOR_LOGOUT, "logout in progress")
            return
        if cmd.itt in self.tasks:
            self._reject(cmd.raw, Rej.INVALID_PDU_FIELD, "initiator task tag already in use")
            return
        if s.admit(cmd, data):
            self._start_command(cmd, data)
            if s.pending:
                self._run_held()

    def _start_command(self, cmd: P.ScsiCommand, data: bytes) -> None:
        t = ScsiTask(cmd)
        p = self.params
        if t.write and t.edtl:
            if len(data) > t.edtl or (data and not p.immediate_data):
                self._reject(cmd.raw, Rej.PROTOCOL_ERROR, "immediate data not allowed or too long")
                return
            if len(data) > p.first_burst:
                self._reject(cmd.raw, Rej.PROTOCOL_ERROR, "immediate data exceeds FirstBurstLength")
                return
            if t.edtl > MAX_WRITE_EDTL or self.buffered + t.edtl > WRITE_BUDGET:
                # refuse before allocating: bounded memory whatever EDTL the initiator sends
                if t.edtl > MAX_WRITE_EDTL:
                    sense = S.fixed_sense(S.ILLEGAL_REQUEST, *S.INVALID_FIELD_IN_CDB)
                    self._respond(t, Result(S.CHECK_CONDITION, sense=sense))
                else:
                    self._respond(t, Result(S.TASK_SET_FULL))
                return
            self.tasks[t.itt] = t
            if len(data) == t.edtl:
                t.buf = data
                t.received = len(data)
                self._start(t)
                return
            # zeroed: an initiator that leaves a gap writes zeroes there, never old data
            t.buf = POOL.take(t.edtl, zero=True)
            POOL.lend(t.buf)  # reused once the command is done with it
            self.buffered += t.edtl
            t.buf[: len(data)] = data
            t.received = len(data)
            unsol_limit = min(p.first_burst, t.edtl)
            if not p.initial_r2t and not cmd.flags & P.FINAL:
                t.unsol_left = unsol_limit - len(data)
            t.next_r2t = unsol_limit if t.unsol_left else len(data)
            if not t.unsol_left:
                self._send_r2ts(t)
            return
        self.tasks[t.itt] = t
        # data with a command that does not write: the payload is ignored
        t.buf = data if t.write else b""
        self._start(t)

    def _send_r2ts(self, t: ScsiTask) -> None:
        s = self.session
        assert s is not None
        p = self.params
        while len(t.r2ts) < p.max_outstanding_r2t and t.next_r2t < t.edtl:
            length = min(p.max_burst, t.edtl - t.next_r2t)
            ttt = self.next_ttt
            self.next_ttt = (self.next_ttt + 1) & 0x3FFFFFFF or 1
            t.r2ts[ttt] = [t.next_r2t, length, 0]
            self.by_ttt[ttt] = t
            r2t = P.R2T(itt=t.itt, ttt=ttt, offset=t.next_r2t, length=length, r2tsn=t.r2tsn,
                        statsn=self.stat_sn, exp_cmdsn=s.exp_cmdsn, max_cmdsn=s.max_cmdsn(),
                        lun=t.lun)  # fmt: skip
            t.r2tsn += 1
            t.next_r2t += length
            self._send(r2t.pack())

    def _data_out_task(self, d: P.DataOut) -> ScsiTask | None:
        """The task a Data-Out is for, if it is expecting one like it (nothing changes)."""
        if d.ttt == P.RESERVED_TAG:
            t = self.tasks.get(d.itt)
            return t if t is not None and t.unsol_left > 0 else None
        found = self.by_ttt.get(d.ttt)
        return found if found is not None and found.itt == d.itt else None

    @staticmethod
    def _data_out_sn(d: P.DataOut, t: ScsiTask) -> int:
        """The DataSN due next in the sequence `d` belongs to."""
        return t.unsol_datasn if d.ttt == P.RESERVED_TAG else t.r2ts[d.ttt][2]

    def _on_data_out(self, hdr: bytes, data: bytes) -> None:
        self._data_out(P.DataOut.parse(hdr), data, len(data))

    def _dispatch_placed(self, hdr: bytes) -> None:
        """A Data-Out whose data segment `_place` received straight into its task's buffer."""
        d = P.DataOut.parse(hdr)
        try:
            self._data_out(d, None, d.data_len)
        except Exception:  # a bug must not take the process down
            log.exception("error handling PDU from %s", self.peer)
            self.close("internal error")

    def _data_out(self, d: P.DataOut, data: bytes | None, n: int) -> None:
        """Check a Data-Out against its sequence and take its `n` bytes (already in place
        when `data` is None)."""
        ttt = d.ttt
        t = self._data_out_task(d)
        if t is None:
            if ttt == P.RESERVED_TAG:
                self._reject(d.raw, Rej.PROTOCOL_ERROR, "unexpected unsolicited Data-Out")
            elif self.by_ttt.get(ttt) is not None or d.itt in self.tasks:
                self._reject(d.raw, Rej.INVALID_PDU_FIELD, "Data-Out with unknown TTT")
            return  # else data for an aborted task: dropped silently
        want_sn = self._data_out_sn(d, t)
        if ttt == P.RESERVED_TAG:
            t.unsol_datasn += 1
        else:
            t.r2ts[ttt][2] += 1
        if d.datasn != want_sn:
            # a sequence error: Reject the PDU and drop the task (it never completes; at
            # ErrorRecoveryLevel 0 the initiator's timeout/abort handles it, the session lives)
            self._reject(d.raw, Rej.PROTOCOL_ERROR, f"DataSN {d.datasn} where {want_sn} was due")
            t.aborted = True
            self.tasks.pop(t.itt, None)
            for k in t.r2ts:
                self.by_ttt.pop(k, None)
            self._release(t)
            return
        off = d.offset
        if off + n > t.edtl or not isinstance(t.buf, bytearray):
            self._reject(d.raw, Rej.PROTOCOL_ERROR, "Data-Out beyond expected transfer length")
            return
        if data is not None:
            t.buf[off : off + n] = data
        t.received += n
        if ttt == P.RESERVED_TAG:
            t.unsol_left -= n
            if d.final or t.unsol_left <= 0:
                t.unsol_left = 0
                if t.received < t.edtl:
                    self._send_r2ts(t)
        elif d.final:
            self.by_ttt.pop(ttt, None)
            t.r2ts.pop(ttt, None)
            if t.next_r2t < t.edtl:
                self._send_r2ts(t)
        complete = t.received >= t.edtl and not t.r2ts and t.unsol_left <= 0
        if complete and not t.started and not t.aborted:
            self._start(t)

    def _release(self, t: ScsiTask) -> None:
        """Give a task's write buffer back to the connection's budget."""
        if isinstance(t.buf, bytearray):
            self.buffered -= len(t.buf)
        t.buf = None

    def _start(self, t: ScsiTask) -> None:
        """Run the command now; only if it has to wait (real I/O) does it become a task."""
        t.started = True
        try:
            t.running = start_eagerly(self._run(t), self._spawn)
        except Exception:
            log.exception("command failed on %s", self.peer)
            self.close("internal error")

    async def _run(self, t: ScsiTask) -> None:
        """Execute `t` on its logical unit and answer it."""
        s = self.session
        assert s is not None
        data: bytes | memoryview | None = None
        if t.write:
            data = memoryview(t.buf) if isinstance(t.buf, bytearray) else t.buf
        res = await self.server.device.unit(t.lun).execute(s.nexus, t.cdb, data)
        self._release(t)
        if t.aborted or self.state is FREE:
            return
        self.tasks.pop(t.itt, None)
        self._respond(t, res)

    def _respond(self, t: ScsiTask, res: Result) -> None:
        """Data-In (with the status in the last one when GOOD) and/or a SCSI Response."""
        s = self.session
        assert s is not None
        flags, residual, data = t.residual(res)
        if data is not None:
            self._send_data_in(t, data, res, flags, residual)
            if res.status == S.GOOD and res.sense is None:
                return
        sense = b""
        if res.sense:
            sense = len(res.sense).to_bytes(2, "big") + res.sense
        # positional, like the Data-In: keyword arguments cost a measurable share of a command
        statsn = self._next_stat()
        rsp = P.ScsiResponse(t.itt, res.status, P.FINAL | flags, statsn, s.exp_cmdsn,
                             s.max_cmdsn(), t.datasn_in, residual, len(sense))  # fmt: skip
        self._send(rsp.pack(), sense)

    def _send_data_in(
        self, t: ScsiTask, data: Buffer, res: Result, res_flags: int, res_residual: int
    ) -> None:
        """Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength, F at every burst's
        end; the last carries the status when it is GOOD without sense."""
        s = self.session
        assert s is not None
        mv = memoryview(data)
        total = len(mv)
        seg = self.params.max_xmit_dsl
        burst = self.params.max_burst
        with_status = res.status == S.GOOD and res.sense is None
        hd, dd = self.header_digest, self.data_digest
        parts: list[Buffer] = []
        pdu = P.DataIn(t.itt)  # one header, packed again for every segment
        pdu.lun, pdu.exp_cmdsn, pdu.max_cmdsn = t.lun, s.exp_cmdsn, s.max_cmdsn()
        offset = datasn = 0
        while offset < total:
            n = min(seg, total - offset)
            last = offset + n >= total
            pdu.offset, pdu.datasn, pdu.data_len = offset, datasn, n
            pdu.flags = P.FINAL if last or (offset + n) % burst == 0 else 0
            if last and with_status:
                pdu.flags |= P.STATUS | res_flags
                pdu.status, pdu.statsn, pdu.residual = res.status, self._next_stat(), res_residual
            append_pdu(parts, pdu.pack(), mv[offset : offset + n], hd, dd)
            offset += n
            datasn += 1
        t.datasn_in = datasn
        self._emit(parts, datasn)

    # ------------------------------------------------------------------ task management
    async def _task_management(self, req: P.TaskManagementRequest) -> None:
        fn = req.function
        server = self.server
        resp = TmfResponse.COMPLETE
        if fn == Tmf.ABORT_TASK:
            t = self.tasks.get(req.rtt)
            if t is None:
                resp = TmfResponse.NO_SUCH_TASK  # already completed
            else:
                await self.abort_tasks([t])
        elif fn in (Tmf.ABORT_TASK_SET, Tmf.CLEAR_TASK_SET):
            await self.abort_tasks(list(self.tasks.values()))
        elif fn == Tmf.CLEAR_ACA:
            resp = TmfResponse.NOT_SUPPORTED
        elif fn == Tmf.LOGICAL_UNIT_RESET:
            if not server.device.has_unit(req.lun):
                resp = TmfResponse.NO_SUCH_LUN
            else:
                await server.abort_all()
                server.device.lu.reset()
        elif fn in (Tmf.TARGET_WARM_RESET, Tmf.TARGET_COLD_RESET):
            await server.abort_all()
            server.device.lu.reset(cold=fn == Tmf.TARGET_COLD_RESET)
        elif fn == Tmf.TASK_REASSIGN:
            resp = TmfResponse.REASSIGN_NOT_SUPPORTED  # not at ErrorRecoveryLevel 0
        else:
            resp = TmfResponse.REJECTED
        s = self.session
        if s is None or self.state is FREE:
            return
        rsp = P.TaskManagementResponse(itt=req.itt, response=resp, statsn=self._next_stat(),
                                       exp_cmdsn=s.exp_cmdsn, max_cmdsn=s.max_cmdsn())  # fmt: skip
        self._send(rsp.pack())
        if fn == Tmf.TARGET_COLD_RESET and resp == TmfResponse.COMPLETE:
            server.drop_all()

    async def abort_tasks(self, tasks: list[ScsiTask]) -> None:
        """Abort `tasks`: none will be answered; wait (10 s at most) for those executing."""
        running = []
        for t in tasks:
            t.aborted = True
            self.tasks.pop(t.itt, None)
            for ttt in t.r2ts:
                self.by_ttt.pop(ttt, None)
            if t.running is not None and not t.running.done():
                running.append(t.running)
            elif not t.started:
                self._release(t)  # still collecting Data-Out: free its buffer now
        if running:
            await self._wait(running, timeout=10)


# full feature phase requests by opcode: each handler parses its own header
_FULL_FEATURE: dict[int, Callable[[Connection, bytes, bytes], None]] = {
    P.Opcode.SCSI_COMMAND: Connection._on_command,
    P.Opcode.DATA_OUT: Connection._on_data_out,
    P.Opcode.NOP_OUT: Connection._on_nop_out,
    P.Opcode.TASK_MANAGEMENT_REQUEST: Connection._on_task_management,
    P.Opcode.TEXT_REQUEST: Connection._on_text_request,
    P.Opcode.LOGOUT_REQUEST: Connection._on_logout_request,
}
