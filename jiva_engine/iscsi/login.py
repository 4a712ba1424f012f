"""The login phase (RFC 7143 §6, §13): security (CHAP, RFC 1994) and operational negotiation.

`LoginMachine` is transport-free: feed it each Login Request (header + text) and it returns
what the Login Response says, so the parser and state machine can be fuzzed without sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from jiva_engine.iscsi import pdu as P

# Login status (class << 8 | detail)
SUCCESS = 0x0000
INITIATOR_ERROR = 0x0200
AUTH_FAILURE = 0x0201
AUTHORIZATION_FAILURE = 0x0202
NOT_FOUND = 0x0203
UNSUPPORTED_VERSION = 0x0205
MISSING_PARAMETER = 0x0207
SESSION_NOT_FOUND = 0x020A
SERVICE_UNAVAILABLE = 0x0301  # target error: busy (e.g. a snapshot revert or an import runs)

OUR_MAX_RECV = 262144
OUR_MAX_BURST = 16776192
OUR_FIRST_BURST = 262144
MAX_TEXT = 64 * 1024


@dataclass
class Params:
    """Negotiated operational parameters of one session/connection."""

    header_digest: bool = False
    data_digest: bool = False
    max_recv_dsl: int = OUR_MAX_RECV  # what we accept per PDU
    max_xmit_dsl: int = 8192  # the initiator's MaxRecvDataSegmentLength
    max_burst: int = 262144
    first_burst: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 0
    max_connections: int = 1
    error_recovery_level: int = 0


@dataclass
class LoginResult:
    """One Login Response: flags, status and the text to send."""

    transit: bool
    csg: int
    nsg: int
    status: int
    text: bytes
    done: bool = False  # full feature phase starts after this response
    close: bool = False  # the connection must close after this response


@dataclass
class AuthConfig:
    """What the login machine needs to know about the target it protects."""

    iqn: str
    chap_user: str | None = None
    chap_secret: str | None = None
    mutual_user: str | None = None
    mutual_secret: str | None = None
    allowed_initiators: tuple[str, ...] = ()
    tpgt: int = 1


def _chap_decode(v: str) -> bytes:
    v = v.strip()
    if v[:2].lower() == "0x":
        h = v[2:]
        if len(h) % 2:
            h = "0" + h
        return bytes.fromhex(h)
    if v[:2].lower() == "0b":
        return base64.b64decode(v[2:], validate=True)
    raise ValueError(f"CHAP value {v[:16]!r} is neither 0x-hex nor 0b-base64")


def chap_response(ident: int, secret: bytes, challenge: bytes) -> bytes:
    """MD5(identifier || secret || challenge), RFC 1994 §4.1."""
    return hashlib.md5(bytes([ident & 0xFF]) + secret + challenge).digest()


class LoginMachine:
    """Drives one connection's login; results are in `params`, `initiator`, `session_type`."""

    def __init__(self, cfg: AuthConfig) -> None:
        """Start at the security stage with nothing negotiated."""
        self.cfg = cfg
        self.params = Params()
        self.initiator: str | None = None
        self.session_type = "Normal"
        self.isid = bytes(6)
        self.tsih = 0
        self.stage = 0
        self.authenticated = not cfg.chap_user
        self.chap_state = 0  # 0 none, 1 method agreed, 2 challenge sent, 3 done
        self.chap_id = 0
        self.chap_challenge = b""
        self.first = True
        self.pending_text = b""
        self.declared_tpgt = False
        self.declared_max_recv = False
        self.declared_alias = False
        self.offered: dict[str, str] = {}

    # --------------------------------------------------------------------------------
    def handle(self, req: P.LoginRequest, data: bytes) -> LoginResult:
        """Process one Login Request; never raises for bad input (returns an error status)."""
        try:
            return self._handle(req, data)
        except P.PduError:
            return self._fail(INITIATOR_ERROR)
        except (ValueError, KeyError, UnicodeError):
            return self._fail(INITIATOR_ERROR)

    def _fail(self, status: int) -> LoginResult:
        return LoginResult(False, self.stage, 0, status, b"", close=True)

    def _handle(self, req: P.LoginRequest, data: bytes) -> LoginResult:
        transit, cont, csg, nsg = req.transit, req.cont, req.csg, req.nsg
        if transit and cont:
            return self._fail(INITIATOR_ERROR)
        if self.first:
            if req.version_min > 0:
                return self._fail(UNSUPPORTED_VERSION)
            self.isid = req.isid
            self.tsih = req.tsih
        if csg == 2 or (transit and (nsg == 2 or nsg <= csg)):
            return self._fail(INITIATOR_ERROR)
        if csg < self.stage:
            return self._fail(INITIATOR_ERROR)
        self.stage = csg
        if len(self.pending_text) + len(data) > MAX_TEXT:
            return self._fail(INITIATOR_ERROR)
        text = self.pending_text + bytes(data)
        if cont:  # more text follows in the next PDU
            self.pending_text = text
            return LoginResult(False, csg, 0, SUCCESS, b"")
        self.pending_text = b""
        pairs = P.parse_text(text)
        keys = dict(pairs)
        reply: list[tuple[str, str]] = []
        if self.first:
            self.first = False
            st = self._first_pdu(keys)
            if st:
                return self._fail(st)
            for k in ("InitiatorName", "SessionType", "TargetName", "InitiatorAlias"):
                keys.pop(k, None)
            if self.session_type == "Normal" and not self.declared_tpgt:
                reply.append(("TargetPortalGroupTag", str(self.cfg.tpgt)))
                self.declared_tpgt = True
        else:
            for k in ("InitiatorName", "SessionType", "TargetName", "InitiatorAlias"):
                keys.pop(k, None)
        if csg == 0:
            st = self._security(keys, reply)
            if st:
                return self._fail(st)
        else:
            if not self.authenticated:
                return self._fail(AUTH_FAILURE)
            self._operational(pairs, keys, reply)
        ok_transit = transit
        if transit and csg == 0 and not self.authenticated:
            ok_transit = False  # CHAP exchange is not finished yet
            if self.chap_state == 0 and "AuthMethod" not in keys:
                return self._fail(AUTH_FAILURE)
        done = False
        if ok_transit:
            if csg == 1 or nsg == 3:
                self._declare(reply)
            self.stage = nsg
            done = nsg == 3
        return LoginResult(ok_transit, csg, nsg if ok_transit else 0, SUCCESS,
                           P.build_text(reply), done=done)  # fmt: skip

    def _first_pdu(self, keys: dict[str, str]) -> int:
        name = keys.get("InitiatorName")
        if not name:
            return MISSING_PARAMETER
        self.initiator = name
        st = keys.get("SessionType", "Normal")
        if st not in ("Normal", "Discovery"):
            return INITIATOR_ERROR
        self.session_type = st
        allowed = self.cfg.allowed_initiators
        if st == "Normal":
            tn = keys.get("TargetName")
            if not tn:
                return MISSING_PARAMETER
            if tn.lower() != self.cfg.iqn.lower():
                return NOT_FOUND
            if allowed and name.lower() not in {a.lower() for a in allowed}:
                return AUTHORIZATION_FAILURE
        if self.tsih != 0:
            return SESSION_NOT_FOUND  # no multi-connection sessions (MaxConnections=1)
        if st == "Discovery" or not self.cfg.chap_user:
            self.authenticated = True
        return 0

    # ---------------------------------------------------------------- security stage
    def _security(self, keys: dict[str, str], reply: list[tuple[str, str]]) -> int:
        need_chap = bool(self.cfg.chap_user) and self.session_type == "Normal"
        if "AuthMethod" in keys:
            methods = [m.strip() for m in keys.pop("AuthMethod").split(",")]
            if need_chap:
                if "CHAP" not in methods:
                    return AUTH_FAILURE
                reply.append(("AuthMethod", "CHAP"))
                self.chap_state = 1
            elif "None" in methods:
                reply.append(("AuthMethod", "None"))
                self.authenticated = True
            elif "CHAP" in methods:
                # no credentials configured: CHAP would prove nothing; refuse it
                reply.append(("AuthMethod", "Reject"))
                return AUTH_FAILURE
            else:
                reply.append(("AuthMethod", "Reject"))
                return AUTH_FAILURE
        if "CHAP_A" in keys:
            algs = [a.strip() for a in keys.pop("CHAP_A").split(",")]
            if self.chap_state != 1 or "5" not in algs:
                return AUTH_FAILURE
            self.chap_id = os.urandom(1)[0]
            self.chap_challenge = os.urandom(16)
            reply += [
                ("CHAP_A", "5"),
                ("CHAP_I", str(self.chap_id)),
                ("CHAP_C", "0x" + self.chap_challenge.hex()),
            ]
            self.chap_state = 2
        if "CHAP_R" in keys or "CHAP_N" in keys:
            if self.chap_state != 2:
                return AUTH_FAILURE
            name = keys.pop("CHAP_N", "")
            try:
                resp = _chap_decode(keys.pop("CHAP_R", ""))
            except ValueError:
                return AUTH_FAILURE
            want = chap_response(self.chap_id, (self.cfg.chap_secret or "").encode(),
                                 self.chap_challenge)  # fmt: skip
            if name != self.cfg.chap_user or not hmac.compare_digest(resp, want):
                return AUTH_FAILURE
            if self.cfg.mutual_user:
                if "CHAP_I" not in keys or "CHAP_C" not in keys:
                    return AUTH_FAILURE
                try:
                    mid = int(keys.pop("CHAP_I"), 0)
                    mchal = _chap_decode(keys.pop("CHAP_C"))
                except ValueError:
                    return AUTH_FAILURE
                if not 0 <= mid <= 255 or mchal == self.chap_challenge or len(mchal) < 1:
                    return AUTH_FAILURE
                mresp = chap_response(mid, (self.cfg.mutual_secret or "").encode(), mchal)
                reply += [("CHAP_N", self.cfg.mutual_user), ("CHAP_R", "0x" + mresp.hex())]
            elif "CHAP_I" in keys or "CHAP_C" in keys:
                return AUTH_FAILURE  # the initiator wants mutual CHAP we cannot give
            self.chap_state = 3
            self.authenticated = True
        for k in list(keys):
            if k.startswith("CHAP_"):
                keys.pop(k)
        # operational keys may already appear in the security stage
        self._operational(list(keys.items()), keys, reply)
        return 0

    # ---------------------------------------------------------------- operational stage
    def _operational(
        self, pairs: list[tuple[str, str]], keys: dict[str, str], reply: list[tuple[str, str]]
    ) -> None:
        p = self.params
        for k, v in pairs:
            if k not in keys:
                continue
            self.offered[k] = v
            try:
                r = self._negotiate(p, k, v)
            except ValueError:
                r = "Reject"
            if r is not None:
                reply.append((k, r))

    def _negotiate(self, p: Params, k: str, v: str) -> str | None:
        def num(lo: int, hi: int) -> int:
            n = int(v, 0)
            if not lo <= n <= hi:
                raise ValueError(k)
            return n

        def boolean() -> bool:
            if v not in ("Yes", "No"):
                raise ValueError(k)
            return v == "Yes"

        disc = self.session_type == "Discovery"
        if k in ("HeaderDigest", "DataDigest"):
            choices = [c.strip() for c in v.split(",")]
            pick = next((c for c in choices if c in ("CRC32C", "None")), None)
            if pick is None:
                return "Reject"
            setattr(p, "header_digest" if k == "HeaderDigest" else "data_digest", pick == "CRC32C")
            return pick
        if k == "MaxRecvDataSegmentLength":
            p.max_xmit_dsl = num(512, 2**24 - 1)
            return None  # declarative: we declare ours separately
        if disc and k in (
            "MaxBurstLength",
            "FirstBurstLength",
            "InitialR2T",
            "ImmediateData",
            "MaxOutstandingR2T",
            "DataPDUInOrder",
            "DataSequenceInOrder",
            "MaxConnections",
        ):
            return "Irrelevant"
        if k == "MaxBurstLength":
            p.max_burst = min(num(512, 2**24 - 1), OUR_MAX_BURST)
            p.first_burst = min(p.first_burst, p.max_burst)
            return str(p.max_burst)
        if k == "FirstBurstLength":
            p.first_burst = min(num(512, 2**24 - 1), OUR_FIRST_BURST, p.max_burst)
            return str(p.first_burst)
        if k == "InitialR2T":
            p.initial_r2t = boolean()  # OR with our No
            return "Yes" if p.initial_r2t else "No"
        if k == "ImmediateData":
            p.immediate_data = boolean()  # AND with our Yes
            return "Yes" if p.immediate_data else "No"
        if k == "MaxOutstandingR2T":
            p.max_outstanding_r2t = min(num(1, 65535), 16)
            return str(p.max_outstanding_r2t)
        if k == "MaxConnections":
            num(1, 65535)
            p.max_connections = 1
            return "1"
        if k == "DefaultTime2Wait":
            p.default_time2wait = max(num(0, 3600), 2)
            return str(p.default_time2wait)
        if k == "DefaultTime2Retain":
            p.default_time2retain = min(num(0, 3600), 0)
            return str(p.default_time2retain)
        if k == "ErrorRecoveryLevel":
            num(0, 2)
            p.error_recovery_level = 0
            return "0"
        if k in ("DataPDUInOrder", "DataSequenceInOrder"):
            boolean()
            return "Yes"
        if k in ("IFMarker", "OFMarker"):
            boolean()
            return "No"
        if k in ("OFMarkInt", "IFMarkInt"):
            return "Irrelevant"
        if k in ("TargetAlias", "TargetAddress", "TargetPortalGroupTag"):
            return "Reject"  # target-only keys
        if k == "SendTargets":
            return "Irrelevant"
        if k == "AuthMethod":
            return "None" if "None" in v.split(",") else "Reject"
        return "NotUnderstood"

    def _declare(self, reply: list[tuple[str, str]]) -> None:
        """Keys the target declares once, before full feature phase."""
        have = {k for k, _ in reply}
        if "MaxRecvDataSegmentLength" not in have and not self.declared_max_recv:
            reply.append(("MaxRecvDataSegmentLength", str(OUR_MAX_RECV)))
            self.declared_max_recv = True
        normal = self.session_type == "Normal"
        if normal and "TargetAlias" not in have and not self.declared_alias:
            reply.append(("TargetAlias", self.cfg.iqn.rsplit(":", 1)[-1]))
            self.declared_alias = True
        p = self.params
        if self.session_type == "Normal":
            # defaults the initiator did not negotiate (RFC 7143 §13): InitialR2T=Yes etc.
            if "ImmediateData" not in self.offered:
                p.immediate_data = True
            if "InitialR2T" not in self.offered:
                p.initial_r2t = True
