"""The iSCSI target: TCP server, connections, sessions, SCSI command/data flow, TMF, NOP keepalive.

`start_target(volume, host, port, config)` serves `volume` as LUN 0 and returns a TargetServer.
One asyncio Protocol per connection parses PDUs straight out of its receive buffer; responses
are queued and leave once per event-loop iteration in one `writelines` (header + data views).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from jiva_engine.iscsi import pdu as P
from jiva_engine.iscsi.crc import crc32c
from jiva_engine.iscsi.login import AuthConfig, LoginMachine, Params
from jiva_engine.scsi import sense as S
from jiva_engine.scsi.command import Nexus, Result
from jiva_engine.scsi.device import TargetDevice
from jiva_engine.volume import BlockVolume

log = logging.getLogger(__name__)

HARD_MAX_PDU = 16 * 1024 * 1024 + 4096  # beyond this we do not even buffer: close
MAX_WRITE_EDTL = 32 * 1024 * 1024  # larger writes are refused before any buffer is allocated
WRITE_BUDGET = 256 * 1024 * 1024  # write data buffered per connection; beyond: TASK SET FULL
CMD_WINDOW = 128
IQN_PREFIX = "iqn.2026-11.org.jiva-py:"


@dataclass
class TargetConfig:
    """How the target presents itself and whom it lets in."""

    iqn: str
    chap_user: str | None = None
    chap_secret: str | None = None
    mutual_user: str | None = None
    mutual_secret: str | None = None
    allowed_initiators: tuple[str, ...] = ()
    nop_interval: float = 10.0  # seconds of silence before a NOP-In keepalive (0 = never)
    nop_timeout: float = 30.0  # no answer to a keepalive for this long: drop the connection
    login_timeout: float = 30.0  # a connection must finish login within this
    idle_timeout: float = 0.0  # full-feature sessions silent this long are dropped (0 = never)
    tpgt: int = 1


class _Done:
    """Stands in for an asyncio.Task when a command finished without suspending."""

    @staticmethod
    def done() -> bool:
        return True


_DONE = _Done()


class _Task:
    """One SCSI command in flight on a connection."""

    __slots__ = (
        "itt",
        "lun",
        "cdb",
        "edtl",
        "read",
        "write",
        "buf",
        "received",
        "unsol_left",
        "next_r2t",
        "r2t_out",
        "r2tsn",
        "ttt",
        "aborted",
        "running",
        "cmdsn",
        "datasn_out",
        "unsol_sn",
    )

    def __init__(self, bhs: P.Bhs) -> None:
        self.itt = bhs.itt
        self.lun = bhs.lun
        self.cdb = bhs.cdb
        self.edtl = bhs.w20
        self.read = bool(bhs.flags & 0x40)
        self.write = bool(bhs.flags & 0x20)
        self.buf: bytearray | bytes | memoryview | None = None
        self.received = 0
        self.unsol_left = 0
        self.next_r2t = 0
        self.r2t_out: dict[int, list[int]] = {}  # ttt -> [offset, length, next DataSN]
        self.r2tsn = 0
        self.ttt = P.RSVD
        self.aborted = False
        self.running: asyncio.Task | _Done | None = None
        self.cmdsn = bhs.w24
        self.datasn_out = 0
        self.unsol_sn = 0


class Session:
    """Per-session state: command numbering, the I_T nexus, the connection it runs on."""

    def __init__(self, server: TargetServer, conn: Connection, lm: LoginMachine) -> None:
        self.server = server
        self.conn = conn
        self.discovery = lm.session_type == "Discovery"
        self.initiator = lm.initiator or ""
        self.isid = lm.isid
        self.tsih = server.next_tsih()
        self.exp_cmdsn = 0
        self.pending: dict[int, tuple[P.Bhs, bytes]] = {}
        self.nexus = Nexus(self.initiator, self.isid, server.config.tpgt)

    def max_cmdsn(self) -> int:
        """ExpCmdSN + window - 1, shrunk by commands already queued (bounded buffering)."""
        busy = len(self.conn.tasks) if self.conn else 0
        return (self.exp_cmdsn + max(1, CMD_WINDOW - busy) - 1) & 0xFFFFFFFF


class Connection(asyncio.Protocol):
    """One TCP connection: login, then full feature phase for its session."""

    def __init__(self, server: TargetServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pos = 0
        self.login: LoginMachine | None = None
        self.session: Session | None = None
        self.params = Params()
        self.stat_sn = 0
        self.hd = False
        self.dd = False
        self.tasks: dict[int, _Task] = {}
        self.by_ttt: dict[int, _Task] = {}
        self.next_ttt = 1
        self.closed = False
        self.last_rx = time.monotonic()
        self.opened = self.last_rx  # login must finish within login_timeout of this
        self.nop_sent: float | None = None
        self.nop_ttt = 0x40000000
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""
        self.local = ("", 0)
        self.logout_pending = False
        self.paused = False
        # data segments above the negotiated MaxRecvDataSegmentLength get a Reject, but only
        # up to this many bytes are ever buffered; beyond it the connection is closed
        self.rx_limit = 64 * 1024
        self.buffered = 0  # bytes of write buffers held by tasks on this connection
        # outgoing PDU pieces (headers, digests, data views) waiting for the next flush: one
        # transport write per receive burst / loop iteration instead of one per response
        self._out: list = []
        self._flush_handle: asyncio.Handle | None = None
        self._in_burst = False  # data_received is running: it flushes itself at its end
        self.tx_writes = 0  # transport writes issued (to see batching at work)
        self.tx_pdus = 0  # PDUs queued for sending
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the login phase and its timeout."""
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.local = transport.get_extra_info("sockname") or ("", 0)
        cfg = self.server.config
        host = self.local[0]
        portal = f"[{host}]:{self.local[1]}" if ":" in host else f"{host}:{self.local[1]}"
        self.login = LoginMachine(
            AuthConfig(
                iqn=cfg.iqn,
                chap_user=cfg.chap_user,
                chap_secret=cfg.chap_secret,
                mutual_user=cfg.mutual_user,
                mutual_secret=cfg.mutual_secret,
                allowed_initiators=tuple(cfg.allowed_initiators),
                tpgt=cfg.tpgt,
                portal=portal,
            )
        )
        self.portal = portal
        self.server.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tear down: abort tasks, tell the LU the nexus is gone."""
        self.closed = True
        if self.timer:
            self.timer.cancel()
        self._drop_queue()
        self.server.conns.discard(self)
        for t in self.tasks.values():
            t.aborted = True
        self.tasks.clear()
        self.by_ttt.clear()
        s = self.session
        if s is not None and self.server.sessions_by_isid.get(s.nexus.key) is s:
            del self.server.sessions_by_isid[s.nexus.key]
            if not s.discovery:
                self.server.device.lu.nexus_lost(s.nexus)
        log.info("connection %s closed%s", self.peer, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        """The socket buffer is full: stop reading until it drains (bounded memory)."""
        self.paused = True
        if self.transport:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The socket drained: read again."""
        self.paused = False
        if self.transport and not self.closed:
            self.transport.resume_reading()

    def close(self, why: str = "") -> None:
        """Close this connection (after flushing what is queued)."""
        if why:
            log.warning("closing %s: %s", self.peer, why)
        if not self.closed and self.transport:
            self._flush()
            self.closed = True
            self.transport.close()

    def _emit(self, parts: list, pdus: int = 1) -> None:
        """Queue the pieces of `pdus` PDUs; they leave with the next flush, in queue order.

        Inside a receive burst data_received flushes at its end; otherwise (a command that
        completed after waiting on the volume, a TMF, a keepalive) the first queued PDU
        schedules one flush for the next loop iteration, so all responses completed in the
        same iteration (e.g. by one replica reply batch) share one send.
        """
        if self.closed or self.transport is None:
            return
        self._out += parts
        self.tx_pdus += pdus
        if not self._in_burst and self._flush_handle is None:
            assert self.loop is not None
            self._flush_handle = self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        """Send everything queued in one writelines (one syscall, data views not copied)."""
        h = self._flush_handle
        if h is not None:  # flushed early (end of a receive burst, close): no second call
            self._flush_handle = None
            h.cancel()
        out = self._out
        if not out:
            return
        self._out = []
        if self.transport is not None and not self.closed:
            self.transport.writelines(out)
            self.tx_writes += 1

    def _drop_queue(self) -> None:
        """Forget queued PDUs (the connection is gone or aborted: nothing may be sent)."""
        self._out = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def abort_now(self) -> None:
        """Drop the connection now, without waiting for the peer or the socket to drain.

        What is already queued is handed to the transport first (as an unbatched target would
        have sent it already: e.g. the TMF response before a cold reset drops every
        connection); whatever the socket has not taken is discarded with the abort.
        """
        if self.transport:
            if not self.closed:
                self._flush()
            self.closed = True
            self._drop_queue()
            self.transport.abort()

    # ------------------------------------------------------------------ timers
    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        cfg = self.server.config
        idle = now - self.last_rx
        if self.session is None:
            # from the connection's start, not the last byte: a sender trickling one byte at a
            # time must not hold a connection (and its buffer) forever
            if now - self.opened > cfg.login_timeout:
                self.close("login timed out")
                return
        else:
            if self.nop_sent is not None and now - self.nop_sent > cfg.nop_timeout:
                self.abort_now()
                log.warning("%s did not answer NOP-In for %.0fs", self.peer, cfg.nop_timeout)
                return
            if cfg.idle_timeout and idle > cfg.idle_timeout and not self.tasks:
                self.close("idle timeout")
                return
            if (
                cfg.nop_interval
                and self.nop_sent is None
                and idle >= cfg.nop_interval
                and not self.session.discovery
            ):
                self._send_nop_in()
        self._arm_timer()

    def _send_nop_in(self) -> None:
        s = self.session
        assert s is not None
        self.nop_ttt = (self.nop_ttt + 1) & 0x7FFFFFFF or 1
        self.nop_sent = time.monotonic()
        hdr = P.header(P.NOP_IN, 0x80, itt=P.RSVD, w20=self.nop_ttt, w24=self.stat_sn,
                       w28=s.exp_cmdsn, w32=s.max_cmdsn())  # fmt: skip
        self._send(hdr)

    # ------------------------------------------------------------------ receive path
    def data_received(self, data: bytes) -> None:
        """Handle every complete PDU in the buffer; responses leave in one batch at the end."""
        self._in_burst = True
        try:
            self._receive(data)
        finally:
            self._in_burst = False
            self._flush()

    def _receive(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        buf = self.buf
        buf += data
        pos = self.pos
        n = len(buf)
        hd = 4 if self.hd else 0
        while not self.closed:
            if n - pos < 48:
                break
            b4 = buf[pos + 4]
            dlen = int.from_bytes(buf[pos + 5 : pos + 8], "big")
            ahs = b4 * 4
            dd = 4 if (self.dd and dlen) else 0
            total = 48 + ahs + hd + dlen + (-dlen % 4) + dd
            if total > HARD_MAX_PDU or dlen > self.rx_limit:
                # never buffer what we would refuse anyway: bounded memory per connection
                self.close(f"PDU with {dlen} data bytes exceeds the limit")
                return
            if n - pos < total:
                break
            end_hdr = pos + 48 + ahs
            hdr = bytes(buf[pos:end_hdr])
            if hd:
                got = bytes(buf[end_hdr : end_hdr + 4])
                if crc32c(hdr) != int.from_bytes(got, "little"):
                    self.close("header digest error")
                    return
            ds = end_hdr + hd
            if dlen:
                data_seg = bytes(buf[ds : ds + dlen])
                if dd:
                    dpos = ds + dlen + (-dlen % 4)
                    want = int.from_bytes(buf[dpos : dpos + 4], "little")
                    if crc32c(buf[ds:dpos]) != want:
                        self.close("data digest error")
                        return
            else:
                data_seg = b""
            pos += total
            try:
                self._dispatch(P.Bhs(hdr), data_seg)
            except P.PduError as e:
                self._reject(hdr, P.REJ_PROTOCOL, str(e))
            except Exception:  # a bug must not take the process down
                log.exception("error handling PDU from %s", self.peer)
                self.close("internal error")
                return
            hd = 4 if self.hd else 0
        if pos:
            if pos >= len(buf):
                buf.clear()
            else:
                del buf[:pos]
            pos = 0
        self.pos = pos

    def _dispatch(self, bhs: P.Bhs, data: bytes) -> None:
        op = bhs.opcode
        if self.session is None:
            if op != P.LOGIN_REQ:
                self.close(f"opcode {op:#x} before login completed")
                return
            self._on_login(bhs, data)
            return
        if len(data) > self.params.max_recv_dsl:
            self._reject(bhs.raw, P.REJ_PROTOCOL, "data segment exceeds MaxRecvDataSegmentLength")
            return
        if op == P.SCSI_CMD:
            self._on_command(bhs, data)
        elif op == P.DATA_OUT:
            self._on_data_out(bhs, data)
        elif op == P.NOP_OUT:
            self._on_nop_out(bhs, data)
        elif op == P.TMF_REQ:
            self._sequenced(bhs, data, self._on_tmf)
        elif op == P.TEXT_REQ:
            self._sequenced(bhs, data, self._on_text)
        elif op == P.LOGOUT_REQ:
            self._sequenced(bhs, data, self._on_logout)
        elif op == P.LOGIN_REQ:
            self._reject(bhs.raw, P.REJ_PROTOCOL, "login in full feature phase")
        elif op == P.SNACK:
            self._reject(bhs.raw, P.REJ_SNACK, "SNACK not supported at ErrorRecoveryLevel 0")
        else:
            self._reject(bhs.raw, P.REJ_NOT_SUPPORTED, f"opcode {op:#x}")

    # ------------------------------------------------------------------ login
    def _on_login(self, bhs: P.Bhs, data: bytes) -> None:
        lm = self.login
        assert lm is not None
        res = lm.handle(bhs, data)
        flags = (0x80 if res.transit else 0) | (res.csg << 2) | res.nsg
        tsih = 0
        if res.done:
            sess = Session(self.server, self, lm)
            tsih = sess.tsih
            sess.exp_cmdsn = bhs.w24
        else:
            sess = None
        self.stat_sn = bhs.w28 if lm and self.stat_sn == 0 else self.stat_sn
        exp = bhs.w24
        b8 = bytes(lm.isid) + tsih.to_bytes(2, "big")
        hdr = P.header(P.LOGIN_RSP, flags, 0, 0, len(res.text), b8, bhs.itt,
                       w24=self.stat_sn, w28=exp, w32=exp + CMD_WINDOW - 1,
                       w36=(res.status >> 8) << 24 | (res.status & 0xFF) << 16)  # fmt: skip
        self.stat_sn = (self.stat_sn + 1) & 0xFFFFFFFF
        self._send(hdr, res.text)
        if res.status != 0 or res.close:
            log.warning(
                "login from %s (%s) refused: status %#06x", self.peer, lm.initiator, res.status
            )
            self.close()
            return
        if sess is not None:
            self.params = lm.params
            self.rx_limit = 2 * lm.params.max_recv_dsl
            self.hd = lm.params.header_digest
            self.dd = lm.params.data_digest
            self.session = sess
            self.login = None
            self.server.session_started(sess)
            log.info("%s session %s from %s (%s)",
                     "discovery" if sess.discovery else "normal", sess.tsih, self.peer,
                     sess.initiator)  # fmt: skip

    # ------------------------------------------------------------------ sending helpers
    def _send(self, hdr: bytes, data: bytes | memoryview | bytearray = b"") -> None:
        if self.closed or self.transport is None:
            return
        parts: list = [hdr]
        if self.hd and self.session is not None:
            parts.append(crc32c(hdr).to_bytes(4, "little"))
        if data:
            parts.append(data)
            pad = -len(data) % 4
            if pad:
                parts.append(bytes(pad))
            if self.dd and self.session is not None:
                c = crc32c(bytes(data) + bytes(pad)) if pad else crc32c(data)
                parts.append(c.to_bytes(4, "little"))
        self._emit(parts)

    def _next_stat(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _reject(self, raw: bytes, reason: int, why: str) -> None:
        log.warning("reject from %s: %s", self.peer, why)
        s = self.session
        exp = s.exp_cmdsn if s else 0
        mx = s.max_cmdsn() if s else 0
        hdr = P.header(P.REJECT, 0x80, reason, 0, 48, itt=P.RSVD, w24=self._next_stat(),
                       w28=exp, w32=mx)  # fmt: skip
        self._send(hdr, bytes(raw[:48]))

    # ------------------------------------------------------------------ CmdSN ordering
    def _accept_cmdsn(self, bhs: P.Bhs) -> bool:
        """True if a non-immediate PDU is in window; in-order ones advance ExpCmdSN."""
        s = self.session
        assert s is not None
        if bhs.immediate:
            return True
        sn = bhs.w24
        if sn == s.exp_cmdsn:
            s.exp_cmdsn = (sn + 1) & 0xFFFFFFFF
            return True
        if P.sn_lt(sn, s.exp_cmdsn) or P.sn_lt(s.max_cmdsn(), sn):
            log.info("%s: CmdSN %d outside [%d, %d], ignored", self.peer, sn, s.exp_cmdsn,
                     s.max_cmdsn())  # fmt: skip
            return False
        # ahead of a gap: hold it until the gap fills (bounded by the window)
        s.pending[sn] = (bhs, b"")
        return False

    def _drain_pending(self) -> None:
        s = self.session
        while s is not None and s.exp_cmdsn in s.pending:
            bhs, data = s.pending.pop(s.exp_cmdsn)
            s.exp_cmdsn = (s.exp_cmdsn + 1) & 0xFFFFFFFF
            self._run_ordered(bhs, data)

    def _run_ordered(self, bhs: P.Bhs, data: bytes) -> None:
        op = bhs.opcode
        if op == P.SCSI_CMD:
            self._start_command(bhs, data)
        elif op == P.NOP_OUT:
            self._nop_reply(bhs, data)
        elif op == P.TMF_REQ:
            self._on_tmf(bhs, data)
        elif op == P.TEXT_REQ:
            self._on_text(bhs, data)
        elif op == P.LOGOUT_REQ:
            self._on_logout(bhs, data)

    def _sequenced(self, bhs: P.Bhs, data: bytes, fn) -> None:  # noqa: ANN001
        s = self.session
        assert s is not None
        if bhs.immediate:
            fn(bhs, data)
            return
        if self._accept_cmdsn(bhs):
            fn(bhs, data)
            self._drain_pending()
        elif bhs.w24 in s.pending:
            s.pending[bhs.w24] = (bhs, data)

    # ------------------------------------------------------------------ NOP
    def _on_nop_out(self, bhs: P.Bhs, data: bytes) -> None:
        if bhs.itt == P.RSVD:
            # an answer to our NOP-In (or an unsolicited ping that wants no reply)
            if bhs.w20 != P.RSVD:
                self.nop_sent = None
            return
        self.nop_sent = None
        self._sequenced(bhs, data, self._nop_reply)

    def _nop_reply(self, bhs: P.Bhs, data: bytes) -> None:
        s = self.session
        assert s is not None
        hdr = P.header(P.NOP_IN, 0x80, 0, 0, len(data), bhs.lun, bhs.itt, P.RSVD,
                       self._next_stat(), s.exp_cmdsn, s.max_cmdsn())  # fmt: skip
        self._send(hdr, data)

    # ------------------------------------------------------------------ text / SendTargets
    def _on_text(self, bhs: P.Bhs, data: bytes) -> None:
        s = self.session
        assert s is not None
        try:
            pairs = P.parse_text(data)
        except P.PduError as e:
            self._reject(bhs.raw, P.REJ_PROTOCOL, str(e))
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
        hdr = P.header(P.TEXT_RSP, 0x80, 0, 0, len(text), bhs.lun, bhs.itt, P.RSVD,
                       self._next_stat(), s.exp_cmdsn, s.max_cmdsn())  # fmt: skip
        self._send(hdr, text)

    # ------------------------------------------------------------------ logout
    def _on_logout(self, bhs: P.Bhs, data: bytes) -> None:
        reason = bhs.flags & 0x7F
        resp = 0 if reason in (0, 1) else 2  # 2: connection recovery not supported
        self.logout_pending = True

        async def finish() -> None:
            running = [t.running for t in self.tasks.values() if t.running and not t.running.done()]
            if running:
                await asyncio.wait(running, timeout=5)
            s = self.session
            assert s is not None
            hdr = P.header(P.LOGOUT_RSP, 0x80, resp, 0, 0, bytes(8), bhs.itt, 0,
                           self._next_stat(), s.exp_cmdsn, s.max_cmdsn(), 0,
                           (2 << 16) | 0)  # fmt: skip
            self._send(hdr)
            if resp == 0:
                self.close()

        asyncio.get_running_loop().create_task(finish())

    # ------------------------------------------------------------------ SCSI commands
    def _on_command(self, bhs: P.Bhs, data: bytes) -> None:
        s = self.session
        assert s is not None
        if s.discovery:
            self._reject(bhs.raw, P.REJ_PROTOCOL, "SCSI command in a discovery session")
            return
        if self.logout_pending:
            self._reject(bhs.raw, P.REJ_WAITING_LOGOUT, "logout in progress")
            return
        if bhs.itt in self.tasks:
            self._reject(bhs.raw, P.REJ_INVALID_FIELD, "initiator task tag already in use")
            return
        if bhs.immediate or bhs.w24 == s.exp_cmdsn:
            if not bhs.immediate:
                s.exp_cmdsn = (s.exp_cmdsn + 1) & 0xFFFFFFFF
            self._start_command(bhs, data)
            if s.pending:
                self._drain_pending()
            return
        if self._accept_cmdsn(bhs):  # pragma: no cover - handled above
            self._start_command(bhs, data)
        elif bhs.w24 in s.pending:
            s.pending[bhs.w24] = (bhs, data)

    def _start_command(self, bhs: P.Bhs, data: bytes) -> None:
        t = _Task(bhs)
        p = self.params
        if t.write and t.edtl:
            if len(data) > t.edtl or (data and not p.immediate_data):
                self._reject(bhs.raw, P.REJ_PROTOCOL, "immediate data not allowed or too long")
                return
            if len(data) > p.first_burst:
                self._reject(bhs.raw, P.REJ_PROTOCOL, "immediate data exceeds FirstBurstLength")
                return
            if t.edtl > MAX_WRITE_EDTL or self.buffered + t.edtl > WRITE_BUDGET:
                # refuse before allocating: bounded memory whatever EDTL the initiator sends
                big = t.edtl > MAX_WRITE_EDTL
                status = S.CHECK_CONDITION if big else S.TASK_SET_FULL
                sense = S.fixed_sense(S.ILLEGAL_REQUEST, *S.INVALID_FIELD_IN_CDB) if big else None
                self._respond(t, Result(status, sense=sense))
                return
            self.tasks[t.itt] = t
            if len(data) == t.edtl:
                t.buf = data
                t.received = len(data)
                self._execute(t)
                return
            t.buf = bytearray(t.edtl)
            self.buffered += t.edtl
            t.buf[: len(data)] = data
            t.received = len(data)
            unsol_limit = min(p.first_burst, t.edtl)
            if not p.initial_r2t and not bhs.final:
                t.unsol_left = unsol_limit - len(data)
            t.next_r2t = unsol_limit if t.unsol_left else len(data)
            if not t.unsol_left:
                self._send_r2ts(t)
            return
        if data and not t.write:
            # data with a command that does not write: ignore the payload
            data = b""
        self.tasks[t.itt] = t
        t.buf = data
        self._execute(t)

    def _send_r2ts(self, t: _Task) -> None:
        s = self.session
        assert s is not None
        p = self.params
        while len(t.r2t_out) < p.max_outstanding_r2t and t.next_r2t < t.edtl:
            length = min(p.max_burst, t.edtl - t.next_r2t)
            ttt = self.next_ttt
            self.next_ttt = (self.next_ttt + 1) & 0x3FFFFFFF or 1
            t.r2t_out[ttt] = [t.next_r2t, length, 0]
            self.by_ttt[ttt] = t
            hdr = P.header(P.R2T_OP, 0x80, 0, 0, 0, t.lun, t.itt, ttt, self.stat_sn,
                           s.exp_cmdsn, s.max_cmdsn(), t.r2tsn, t.next_r2t, length)  # fmt: skip
            t.r2tsn += 1
            t.next_r2t += length
            self._send(hdr)

    def _on_data_out(self, bhs: P.Bhs, data: bytes) -> None:
        ttt = bhs.w20
        if ttt == P.RSVD:
            t = self.tasks.get(bhs.itt)
            if t is None or t.unsol_left <= 0:
                self._reject(bhs.raw, P.REJ_PROTOCOL, "unexpected unsolicited Data-Out")
                return
        else:
            t = self.by_ttt.get(ttt)
            if t is None or t.itt != bhs.itt:
                if t is None and bhs.itt not in self.tasks:
                    return  # data for an aborted task: drop silently
                self._reject(bhs.raw, P.REJ_INVALID_FIELD, "Data-Out with unknown TTT")
                return
        off = bhs.w40
        n = len(data)
        if ttt == P.RSVD:
            want_sn = t.unsol_sn
            t.unsol_sn += 1
        else:
            seq = t.r2t_out[ttt]
            want_sn = seq[2]
            seq[2] += 1
        if bhs.w36 != want_sn:
            # a sequence error: Reject the PDU and drop the task (it never completes; at
            # ErrorRecoveryLevel 0 the initiator's timeout/abort handles it, the session lives)
            self._reject(bhs.raw, P.REJ_PROTOCOL, f"DataSN {bhs.w36} where {want_sn} was due")
            t.aborted = True
            self.tasks.pop(t.itt, None)
            for k in t.r2t_out:
                self.by_ttt.pop(k, None)
            self._release(t)
            return
        if off + n > t.edtl or not isinstance(t.buf, bytearray):
            self._reject(bhs.raw, P.REJ_PROTOCOL, "Data-Out beyond expected transfer length")
            return
        t.buf[off : off + n] = data
        t.received += n
        if ttt == P.RSVD:
            t.unsol_left -= n
            if bhs.final or t.unsol_left <= 0:
                t.unsol_left = 0
                if t.received < t.edtl:
                    self._send_r2ts(t)
        elif bhs.final:
            self.by_ttt.pop(ttt, None)
            t.r2t_out.pop(ttt, None)
            if t.next_r2t < t.edtl:
                self._send_r2ts(t)
        if t.received >= t.edtl and not t.r2t_out and t.unsol_left <= 0 and t.running is None:
            if not t.aborted:
                self._execute(t)

    def _release(self, t: _Task) -> None:
        """Give back a task's write buffer to the connection's budget."""
        if isinstance(t.buf, bytearray):
            self.buffered -= len(t.buf)
        t.buf = None

    def _execute(self, t: _Task) -> None:
        """Run the command now; only if it has to wait (real I/O) does it become a Task.

        Most page-cache I/O on a local file completes without suspending, and skipping the
        create_task + scheduling round trip is a large share of the 4K-IOPS budget (Python 3.11
        has no eager task factory).
        """
        coro = self._run(t)
        t.running = _DONE
        try:
            fut = coro.send(None)
        except StopIteration:
            return
        except BaseException:
            log.exception("command failed on %s", self.peer)
            self.close("internal error")
            return
        t.running = asyncio.get_running_loop().create_task(self._resume(coro, fut))

    @staticmethod
    async def _resume(coro, fut) -> None:  # noqa: ANN001
        """Drive a coroutine that suspended on `fut` to completion (what a Task would do)."""
        while True:
            if fut is None:
                await asyncio.sleep(0)
            else:
                # the coroutine's own `await` marked the future as blocking; a Task clears the
                # mark before waiting, and so must we (else awaiting it again is an error)
                fut._asyncio_future_blocking = False
                try:
                    await fut
                except asyncio.CancelledError:
                    if not fut.done():
                        coro.close()
                        raise
                except BaseException:
                    if not fut.done():
                        raise
                    # the future's own error: the coroutine sees it when resumed
            try:
                fut = coro.send(None)
            except StopIteration:
                return

    async def _run(self, t: _Task) -> None:
        s = self.session
        assert s is not None
        unit = self.server.device.unit(t.lun)
        res = await unit.execute(s.nexus, t.cdb, t.buf if t.write else None)  # type: ignore[arg-type]
        if isinstance(t.buf, bytearray):
            self.buffered -= len(t.buf)
            t.buf = None
        if t.aborted or self.closed:
            return
        self.tasks.pop(t.itt, None)
        self._respond(t, res)

    def _respond(self, t: _Task, res: Result) -> None:
        s = self.session
        assert s is not None
        edtl = t.edtl
        data = res.data
        flags_res = 0
        residual = 0
        if t.write:
            want = res.out_len
            if want > edtl:
                flags_res, residual = 0x04, want - edtl
            elif want < edtl and (want or res.status == S.GOOD):
                flags_res, residual = 0x02, edtl - want
        if data is not None and len(data):
            n = len(data)
            if not t.read:
                data = None
                if not t.write:
                    flags_res, residual = 0x04, n
            elif n > edtl:
                flags_res, residual = 0x04, n - edtl
                data = memoryview(data)[:edtl] if edtl else None
            elif n < edtl:
                flags_res, residual = 0x02, edtl - n
        elif t.read and edtl and not t.write:
            flags_res, residual = 0x02, edtl
        if data is not None and len(data):
            self._send_data_in(t, data, res, flags_res, residual)
            if res.status == S.GOOD and res.sense is None:
                return
        sense = b""
        if res.sense:
            sense = len(res.sense).to_bytes(2, "big") + res.sense
        hdr = P.header(P.SCSI_RSP, 0x80 | flags_res, 0, res.status, len(sense), bytes(8),
                       t.itt, 0, self._next_stat(), s.exp_cmdsn, s.max_cmdsn(),
                       t.datasn_out, 0, residual)  # fmt: skip
        self._send(hdr, sense)

    def _send_data_in(self, t: _Task, data, res: Result, flags_res: int, residual: int) -> None:  # noqa: ANN001
        s = self.session
        assert s is not None
        mv = memoryview(data)
        total = len(mv)
        seg = self.params.max_xmit_dsl
        burst = self.params.max_burst
        with_status = res.status == S.GOOD and res.sense is None
        off = 0
        datasn = 0
        parts: list = []
        hd, dd = self.hd, self.dd
        while off < total:
            n = min(seg, total - off)
            last = off + n >= total
            flags = 0
            if last or (off + n) % burst == 0:
                flags |= 0x80
            stat = 0
            if last and with_status:
                flags |= 0x01 | flags_res
                stat = self._next_stat()
            hdr = P.header(P.DATA_IN, flags, 0, res.status if (last and with_status) else 0, n,
                           t.lun, t.itt, P.RSVD, stat, s.exp_cmdsn, s.max_cmdsn(), datasn, off,
                           residual if (last and with_status) else 0)  # fmt: skip
            parts.append(hdr)
            if hd:
                parts.append(crc32c(hdr).to_bytes(4, "little"))
            chunk = mv[off : off + n]
            parts.append(chunk)
            pad = -n % 4
            if pad:
                parts.append(bytes(pad))
            if dd:
                parts.append(crc32c(bytes(chunk) + bytes(pad)).to_bytes(4, "little"))
            off += n
            datasn += 1
        t.datasn_out = datasn
        self._emit(parts, datasn)

    # ------------------------------------------------------------------ task management
    def _on_tmf(self, bhs: P.Bhs, data: bytes) -> None:
        fn = bhs.flags & 0x7F
        ref = bhs.w20
        server = self.server

        async def run() -> None:
            resp = 0
            if fn == 1:  # ABORT TASK
                t = self.tasks.get(ref)
                if t is None:
                    resp = 1  # task does not exist (already completed)
                else:
                    await self._abort([t])
            elif fn in (2, 4):  # ABORT TASK SET / CLEAR TASK SET
                await self._abort(list(self.tasks.values()))
            elif fn == 3:  # CLEAR ACA
                resp = 5
            elif fn == 5:  # LOGICAL UNIT RESET
                if not server.device.has_unit(bhs.lun):
                    resp = 2
                else:
                    await server.abort_all()
                    server.device.lu.reset(cold=False)
            elif fn in (6, 7):  # TARGET WARM / COLD RESET
                await server.abort_all()
                server.device.lu.reset(cold=fn == 7)
            elif fn == 8:
                resp = 4  # task reassign: not at ErrorRecoveryLevel 0
            else:
                resp = 255
            s = self.session
            if s is None or self.closed:
                return
            hdr = P.header(P.TMF_RSP, 0x80, resp, 0, 0, bytes(8), bhs.itt, 0,
                           self._next_stat(), s.exp_cmdsn, s.max_cmdsn())  # fmt: skip
            self._send(hdr)
            if fn == 7 and resp == 0:
                server.drop_all()

        asyncio.get_running_loop().create_task(run())

    async def _abort(self, tasks: list[_Task]) -> None:
        running = []
        for t in tasks:
            t.aborted = True
            self.tasks.pop(t.itt, None)
            for ttt in t.r2t_out:
                self.by_ttt.pop(ttt, None)
            if t.running is not None and not t.running.done():
                running.append(t.running)
            elif t.running is None:
                self._release(t)  # still collecting Data-Out: free its buffer now
        if running:
            await asyncio.wait(running, timeout=10)


class TargetServer:
    """The listening target: owns the LU, the connections and the sessions."""

    def __init__(self, volume: BlockVolume, config: TargetConfig) -> None:
        """Prepare (not yet listening)."""
        self.volume = volume
        self.config = config
        self.device = TargetDevice(volume, target_name=config.iqn)
        self.device.lu.on_fenced = self.drop_all
        self.conns: set[Connection] = set()
        self.sessions_by_isid: dict[tuple, Session] = {}
        self._tsih = 0
        self.server: asyncio.AbstractServer | None = None
        self.started = time.monotonic()

    @property
    def sessions(self) -> int:
        """Number of logged-in normal (non-discovery) sessions."""
        return sum(1 for s in self.sessions_by_isid.values() if not s.discovery)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]

    def next_tsih(self) -> int:
        """A fresh nonzero TSIH."""
        self._tsih = self._tsih % 0xFFFF + 1
        return self._tsih

    def session_started(self, s: Session) -> None:
        """Register a session; a new login with the same I_T nexus reinstates (drops) the old."""
        old = self.sessions_by_isid.get(s.nexus.key)
        if old is not None and old.conn is not None:
            old.conn.abort_now()
            if not old.discovery:
                self.device.lu.nexus_lost(old.nexus)
        self.sessions_by_isid[s.nexus.key] = s
        if not s.discovery:
            self.device.lu.nexus_added(s.nexus)

    def portals(self, local: tuple) -> list[str]:
        """TargetAddress values for SendTargets: the address the initiator reached us on."""
        host, port = local[0], local[1]
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]

    async def abort_all(self) -> None:
        """Abort every task on every connection (LUN / target reset)."""
        await asyncio.gather(*(c._abort(list(c.tasks.values())) for c in list(self.conns)))

    def drop_all(self) -> None:
        """Drop every connection (cold reset, fenced volume)."""
        for c in list(self.conns):
            c.abort_now()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self.server is not None:
            self.server.close()
        self.drop_all()
        if self.server is not None:
            await self.server.wait_closed()


async def start_target(
    volume: BlockVolume, host: str, port: int, config: TargetConfig
) -> TargetServer:
    """Serve `volume` as LUN 0 of target `config.iqn` on host:port; returns the running server."""
    ts = TargetServer(volume, config)
    loop = asyncio.get_running_loop()
    ts.server = await loop.create_server(lambda: Connection(ts), host, port, reuse_address=True)
    log.info("iSCSI target %s listening on %s:%d", config.iqn, host, ts.address[1])
    return ts
