"""Unit tests of the replica wire codec: round trips and every kind of malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jiva_engine.protocol import wire


def test_header_is_40_bytes_big_endian():
    hdr = wire.pack_header(wire.WRITE, 7, payload_len=4096, offset=512, length=1, epoch=3)
    assert len(hdr) == wire.HEADER_SIZE == 40
    assert hdr[:2] == b"JV"
    assert struct.unpack(">HBBIQQQQ", hdr) == (0x4A56, wire.WRITE, 0, 4096, 7, 512, 1, 3)


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 16])
def test_round_trip(payload):
    raw = wire.encode(wire.READ, 2**64 - 1, payload, status=wire.EIO, offset=123, length=9, epoch=5)
    (f,) = wire.FrameReader().feed(raw)
    assert f == wire.Frame(wire.READ, wire.EIO, 2**64 - 1, 123, 9, 5, payload)
    assert (f.op, f.req_id, f.offset, f.length, f.epoch) == (wire.READ, 2**64 - 1, 123, 9, 5)


def test_bad_magic():
    raw = bytearray(wire.encode(wire.PING, 1))
    raw[0:2] = b"XX"
    with pytest.raises(wire.FrameError, match="bad magic"):
        wire.FrameReader().feed(bytes(raw))


def test_oversized_payload_rejected_from_header_alone():
    hdr = struct.pack(">HBBIQQQQ", wire.MAGIC, wire.WRITE, 0, wire.MAX_PAYLOAD + 1, 1, 0, 0, 0)
    with pytest.raises(wire.FrameError, match="exceeds"):
        wire.FrameReader().feed(hdr)  # refused before any payload arrives
    with pytest.raises(wire.FrameError):
        wire.encode(wire.WRITE, 1, bytes(wire.MAX_PAYLOAD + 1))


def test_max_payload_accepted():
    payload = bytes(wire.MAX_PAYLOAD)
    frames = wire.FrameReader().feed(wire.encode(wire.WRITE, 1, payload))
    assert len(frames) == 1 and len(frames[0][6]) == wire.MAX_PAYLOAD


def test_truncated_frame_waits_for_the_rest():
    raw = wire.encode(wire.WRITE, 1, b"abcd" * 10)
    for cut in (20, len(raw) - 1):
        r = wire.FrameReader()
        assert r.feed(raw[:cut]) == [] and r.pending() == cut
        assert [f.payload for f in r.feed(raw[cut:])] == [b"abcd" * 10] and r.pending() == 0


def test_smaller_limit_refuses_big_payloads_from_the_header():
    r = wire.FrameReader(limit=64)
    assert r.feed(wire.encode(wire.SET_META, 1, b"x" * 64))[0].payload == b"x" * 64
    with pytest.raises(wire.FrameError, match="exceeds the 64-byte limit"):
        r.feed(wire.encode(wire.SET_META, 2, b"x" * 65)[:40])


def test_reader_byte_by_byte_and_batches():
    frames = [wire.encode(wire.WRITE, i, bytes([i]) * (i * 100), offset=i) for i in range(1, 6)]
    stream = b"".join(frames)
    r = wire.FrameReader()
    got = []
    for i in range(len(stream)):
        got += r.feed(stream[i : i + 1])
    assert [(f[2], f[3], f[6]) for f in got] == [
        (i, i, bytes([i]) * (i * 100)) for i in range(1, 6)
    ]
    assert r.pending() == 0
    # the same stream in odd-sized chunks
    r = wire.FrameReader()
    got = []
    for i in range(0, len(stream), 333):
        got += r.feed(stream[i : i + 333])
    assert [f[2] for f in got] == [1, 2, 3, 4, 5]
    # all at once
    assert [f[2] for f in wire.FrameReader().feed(stream)] == [1, 2, 3, 4, 5]


def test_reader_keeps_partial_tail():
    a = wire.encode(wire.PING, 1)
    b = wire.encode(wire.WRITE, 2, b"q" * 1000)
    r = wire.FrameReader()
    assert [f[2] for f in r.feed(a + b[:500])] == [1]
    assert r.pending() == 500
    assert [f[6] for f in r.feed(b[500:])] == [b"q" * 1000]


def test_json_helpers():
    assert wire.loads(wire.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    assert wire.loads(b"") is None
    with pytest.raises(wire.FrameError, match="bad JSON"):
        wire.loads(b"{nope")
    with pytest.raises(wire.FrameError, match="bad JSON"):
        wire.loads(b"\xff\xfe")


@given(
    frames=st.lists(
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.binary(max_size=3000),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 40000), max_size=10),
)
@settings(max_examples=200, deadline=None)
def test_reader_reassembles_any_split(frames, cuts):
    stream = b"".join(wire.encode(op, rid, p, offset=off) for op, rid, off, p in frames)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    r = wire.FrameReader()
    got = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        got += r.feed(stream[a:b])
    assert [(f[0], f[2], f[3], f[6]) for f in got] == frames
    assert r.pending() == 0


@given(st.binary(min_size=40, max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_is_either_frames_or_a_frame_error(data):
    r = wire.FrameReader()
    try:
        frames = r.feed(data)
    except wire.FrameError:
        return
    consumed = sum(wire.HEADER_SIZE + len(f[6]) for f in frames)
    assert consumed + r.pending() == len(data)
    assert all(data[:2] == b"JV" for _ in frames)


def test_send_pieces_joins_small_frames_and_sends_big_payloads_alone():
    class T:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(bytes(data))

    small = [wire.pack_header(wire.WRITE, i) for i in range(10)]
    t = T()
    wire.send_pieces(t, small)
    assert t.writes == [b"".join(small)]  # one send
    big = bytes(1 << 20)
    pieces = [small[0], big, small[1], small[2], big]
    t = T()
    wire.send_pieces(t, pieces)
    assert t.writes == [small[0], big, small[1] + small[2], big]
    assert b"".join(t.writes) == b"".join(pieces)  # same bytes, same order
