"""The big-buffer pool: a buffer is handed out again only once nothing refers to it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from jiva_engine.buffers import MIN_POOLED, BufferPool, tune_malloc

MiB = 1 << 20


def test_reused_only_when_unreferenced() -> None:
    pool = BufferPool()
    a = pool.take(MiB)
    pool.lend(a)
    a[:4] = b"live"
    b = pool.take(MiB)  # `a` is still held here: a new buffer
    assert b is not a and a[:4] == b"live"
    ident = id(a)
    del a
    c = pool.take(MiB)
    assert id(c) == ident and pool.reused == 1


def test_a_memoryview_keeps_it_busy() -> None:
    pool = BufferPool()
    a = pool.take(MiB)
    pool.lend(a)
    view = memoryview(a)[10:20]  # e.g. a frame payload or a queued transport write
    ident = id(a)
    del a
    assert id(pool.take(MiB)) != ident
    view.release()
    assert id(pool.take(MiB)) == ident


def test_zeroed_on_request_and_exact_size() -> None:
    pool = BufferPool()
    a = pool.take(MiB)
    a[:] = b"\xff" * MiB
    pool.lend(a)
    del a
    z = pool.take(MiB, zero=True)
    assert len(z) == MiB and z.count(0) == MiB
    assert len(pool.take(MiB + 512)) == MiB + 512  # another size: its own buffer


def test_small_buffers_and_the_idle_bound() -> None:
    pool = BufferPool(max_bytes=2 * MiB)
    small = pool.take(MIN_POOLED - 1)
    pool.lend(small)
    assert pool._lent == type(pool._lent)()  # not watched
    bufs = [pool.take(MiB) for _ in range(4)]
    for b in bufs:
        pool.lend(b)
    del bufs, b
    pool.take(512 * 1024)  # collects: at most 2 MiB kept idle
    assert pool._free_bytes <= 2 * MiB


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_buffer_sent_on_a_socket_is_not_changed_under_the_send(loop_kind: str) -> None:
    """While the transport still holds the buffer (a write queued behind a full socket), the
    pool does not hand it out; a transport that copied it no longer needs it. Either way what
    arrives is what was written, though the next buffer taken is overwritten at once."""

    async def main() -> None:
        pool = BufferPool()
        left, right = socket.socketpair()
        left.setblocking(False)
        right.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=left)
        big = 16 * MiB  # more than the socket buffers take: part stays queued
        data = pool.take(big)
        data[:] = b"\x5a" * big
        pool.lend(data)
        transport.write(data)
        del data
        other = pool.take(big)
        other[:] = b"\xa5" * big
        got = 0
        while got < big:
            chunk = await loop.sock_recv(right, 1 << 20)
            assert chunk.count(0x5A) == len(chunk), "the queued send changed under the transport"
            got += len(chunk)
        transport.close()
        right.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is the `fast` extra")
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_tune_malloc_on_glibc() -> None:
    assert tune_malloc() in (True, False)  # False only without glibc; never raises
