"""The asyncio side of a target connection: transport events, batched sends, the keepalive
timer, and the tasks commands run in (the protocol itself is connection.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from jiva_engine.iscsi.connection import FREE, Connection
from jiva_engine.iscsi.framing import Buffer

if TYPE_CHECKING:
    from jiva_engine.iscsi.target import TargetServer

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between timeout checks


class TargetProtocol(Connection, asyncio.BufferedProtocol):
    """A target connection on an asyncio transport.

    A BufferedProtocol: the transport receives into the connection's own buffers (a big
    Data-Out's data straight into its command's write buffer, see Connection.get_buffer).

    Responses are queued and leave once per event-loop iteration in one `writelines` (headers,
    digests and data views, nothing copied): inside a receive burst `data_received` flushes at
    its end; otherwise the first queued PDU schedules a flush for the next iteration, so every
    response completed in the same iteration (e.g. by one replica reply batch) shares one send.
    """

    def __init__(self, server: TargetServer) -> None:
        """Not connected yet."""
        super().__init__(server)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._out: list[Buffer] = []
        self._flush_handle: asyncio.Handle | None = None
        self._in_burst = False  # data_received is running: it flushes at its end
        self.tx_writes = 0  # transport writes issued (to see batching at work)
        self.tx_pdus = 0  # PDUs queued for sending

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the login phase and the timer."""
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname") or ("", 0)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened(f"{peer[0]}:{peer[1]}" if peer else "?", (local[0], local[1]))
        self.server.conns.add(self)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tear down: abort the tasks, end the session."""
        if self.timer:
            self.timer.cancel()
        self._drop_queue()
        self.server.conns.discard(self)
        self.lost()
        log.info("connection %s closed%s", self.peer, f": {exc}" if exc else "")

    def buffer_updated(self, nbytes: int) -> None:
        """Handle every complete PDU; the responses leave in one batch at the end."""
        self._in_burst = True
        try:
            super().buffer_updated(nbytes)
        finally:
            self._in_burst = False
            self._flush()

    def data_received(self, data: bytes) -> None:
        """Bytes handed over as one piece (tests; a transport without buffered reads)."""
        self.receive(data)

    def pause_writing(self) -> None:
        """The socket buffer is full: stop reading until it drains (bounded memory)."""
        if self.transport:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The socket drained: read again."""
        if self.transport and self.state is not FREE:
            self.transport.resume_reading()

    def close(self, why: str = "") -> None:
        """Close this connection after flushing what is queued."""
        if why:
            log.warning("closing %s: %s", self.peer, why)
        if self.state is not FREE and self.transport:
            self._flush()
            self.state = FREE
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, without waiting for the peer or the socket to drain.

        What is already queued is handed to the transport first (as an unbatched target would
        have sent it already: e.g. the TMF response before a cold reset drops every
        connection); whatever the socket has not taken is discarded with the abort.
        """
        if self.transport:
            if self.state is not FREE:
                self._flush()
            self.state = FREE
            self._drop_queue()
            self.transport.abort()

    # ------------------------------------------------------------------ sending
    def _emit(self, parts: list[Buffer], pdus: int = 1) -> None:
        if self.state is FREE or self.transport is None:
            return
        self._out += parts
        self.tx_pdus += pdus
        if not self._in_burst and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._scheduled_flush)

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
        if self.transport is not None and self.state is not FREE:
            self.transport.writelines(out)
            self.tx_writes += 1

    def _drop_queue(self) -> None:
        """Forget queued PDUs (the connection is gone or aborted: nothing may be sent)."""
        self._out = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # ------------------------------------------------------------------ timer
    def _arm_timer(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.tick(time.monotonic())
        if self.state is not FREE:
            self._arm_timer()

    # ------------------------------------------------------------------ tasks
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.server.spawn(coro)

    async def _wait(self, running: Sequence[asyncio.Task[None]], timeout: float) -> None:
        await asyncio.wait(running, timeout=timeout)
