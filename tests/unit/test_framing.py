"""The TCP framing decoder, one row per case (kernel selftest style)."""

import pytest

from tunneld.conn.framing import FrameDecoder, FramingError, encode


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


P1, P2, P3 = b"\x45" * 20, b"\x60" * 40, b"x" * 1420

# (name, chunks fed one by one, frames expected after each chunk, error kind or None)
CASES = [
    ("one frame", [frame(P1)], [[P1]], None),
    ("split inside the header", [frame(P1)[:1], frame(P1)[1:]], [[], [P1]], None),
    ("split inside the body", [frame(P2)[:10], frame(P2)[10:]], [[], [P2]], None),
    ("byte by byte", [bytes([b]) for b in frame(P1)], [[]] * 21 + [[P1]], None),
    ("many frames in one read", [frame(P1) + frame(P2) + frame(P3)], [[P1, P2, P3]], None),
    ("a frame and a half", [frame(P1) + frame(P2)[:7], frame(P2)[7:]], [[P1], [P2]], None),
    ("largest allowed frame", [frame(P3)], [[P3]], None),
    ("one-byte frame", [frame(b"\x45")], [[b"\x45"]], None),
    ("empty read", [b"", frame(P1)], [[], [P1]], None),
    ("zero length", [b"\x00\x00"], [], "zero-length"),
    ("zero length after a good frame", [frame(P1) + b"\x00\x00"], [], "zero-length"),
    ("oversize by one", [frame(P3 + b"y")], [], "oversize"),
    ("oversize header alone", [b"\xff\xff"], [], "oversize"),
    ("oversize after a split header", [b"\x05", b"\x8d"], [[]], "oversize"),
]


@pytest.mark.parametrize("name,chunks,expected,error", CASES, ids=[c[0] for c in CASES])
def test_decoder(name, chunks, expected, error):
    d = FrameDecoder(max_frame=1420)
    got = []
    try:
        for chunk in chunks:
            got.append(d.feed(chunk))
    except FramingError as e:
        assert e.kind == error
        assert got == expected
        return
    assert error is None, f"expected a {error} error"
    assert got == expected
    d.eof()  # ended on a frame boundary: no complaint


@pytest.mark.parametrize("held", [b"\x00", frame(P1)[:5], frame(P2)[:-1]])
def test_truncated_at_eof(held):
    d = FrameDecoder(1420)
    assert d.feed(held) == []
    assert d.pending == len(held)
    with pytest.raises(FramingError) as e:
        d.eof()
    assert e.value.kind == "truncated"
    assert str(e.value) == f"stream ended {len(held)} bytes into a frame"


def test_error_messages():
    with pytest.raises(FramingError, match="^1421-byte frame exceeds the 1420-byte limit$"):
        FrameDecoder(1420).feed(frame(P3 + b"y"))
    with pytest.raises(FramingError, match="^zero-length frame$"):
        FrameDecoder(1420).feed(b"\x00\x00")


def test_encode_is_header_then_packet_in_one_buffer():
    assert encode(b"abc") == b"\x00\x03abc"
    assert encode(memoryview(P3)) == b"\x05\x8c" + P3
    with pytest.raises(ValueError):
        encode(b"")
    with pytest.raises(ValueError):
        encode(b"x" * 65536)


def test_limit_follows_configuration():
    jumbo = b"j" * 9014
    assert FrameDecoder(9014).feed(frame(jumbo)) == [jumbo]
    with pytest.raises(FramingError):
        FrameDecoder(1514).feed(frame(jumbo))


# --- property-based: any byte stream, cut anywhere ----------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _reference(stream: bytes, max_frame: int):
    """Frames and the error kind (or None) a correct decoder finds in `stream`."""
    frames, pos = [], 0
    while len(stream) - pos >= 2:
        n = int.from_bytes(stream[pos:pos + 2], "big")
        if n == 0:
            return frames, "zero-length"
        if n > max_frame:
            return frames, "oversize"
        if pos + 2 + n > len(stream):
            break
        frames.append(stream[pos + 2:pos + 2 + n])
        pos += 2 + n
    return frames, ("truncated" if pos < len(stream) else None)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.binary(min_size=1, max_size=40)).map(lambda fs: b"".join(len(f).to_bytes(2, "big") + f for f in fs))),
       st.lists(st.integers(min_value=1, max_value=50), max_size=30))
def test_any_stream_in_any_pieces(stream, cuts):
    from tunneld.conn.framing import FrameDecoder, FramingError
    dec = FrameDecoder(40)
    got, error, pos = [], None, 0
    pieces = []
    for c in cuts:
        pieces.append(stream[pos:pos + c])
        pos += c
    pieces.append(stream[pos:])
    try:
        for p in pieces:
            got += dec.feed(p)
            assert dec.pending <= 2 + 40 + 50  # one partial frame and one read, at most
        dec.eof()
    except FramingError as e:
        error = e.kind
    want, want_error = _reference(stream, 40)
    assert got == want
    assert error == want_error


# --- a limit per feed: how a reader bounds the work of one callback ---------------------

# (name, chunk, limit, frames from each feed until `more` is false)
LIMIT_CASES = [
    ("under the limit", frame(P1) + frame(P2), 3, [[P1, P2]]),
    ("exactly the limit", frame(P1) + frame(P2), 2, [[P1, P2]]),
    ("one at a time", frame(P1) + frame(P2) + frame(P3), 1, [[P1], [P2], [P3]]),
    ("two, then the rest", frame(P1) * 5, 2, [[P1, P1], [P1, P1], [P1]]),
    ("a partial frame after the limit", frame(P1) + frame(P2)[:5], 1, [[P1], []]),
    ("no limit", frame(P1) * 5, 0, [[P1] * 5]),
]


@pytest.mark.parametrize("name,chunk,limit,expected", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limit(name, chunk, limit, expected):
    d = FrameDecoder(1420)
    got = [d.feed(chunk, limit)]
    while d.more:
        got.append(d.feed(b"", limit))
    assert got == expected


def test_a_read_of_one_byte_frames_is_handed_over_in_slices():
    d = FrameDecoder(1420)
    read = b"\x00\x01\x45" * 21845  # 64 KB: what one recv can bring
    sizes = [len(d.feed(read, 256))]
    while d.more:
        sizes.append(len(d.feed(b"", 256)))
    assert max(sizes) == 256 and sum(sizes) == 21845
    assert d.pending == 0


def test_an_error_past_the_limit_comes_when_it_is_reached():
    d = FrameDecoder(1420)
    assert d.feed(frame(P1) + b"\x00\x00", 1) == [P1]
    assert d.more
    with pytest.raises(FramingError) as e:
        d.feed(b"", 1)
    assert e.value.kind == "zero-length"


def test_max_frame_can_be_raised_between_feeds():
    """A TCP candidate's opening is held to a handshake's size, its later frames are not."""
    d = FrameDecoder(148)
    assert d.feed(frame(b"\x01" * 148) + frame(P3), 1) == [b"\x01" * 148]
    d.max_frame = 1420
    assert d.feed(b"", 1) == [P3]
    with pytest.raises(FramingError):
        FrameDecoder(148).feed(frame(b"\x01" * 149))


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=60), st.integers(min_value=1, max_value=10),
       st.lists(st.integers(min_value=1, max_value=100), max_size=20))
def test_limited_feeds_give_the_same_frames(payloads, limit, cuts):
    """Any stream, cut anywhere, drained `limit` frames at a time: the same frames,
    in order, never more than `limit` per call, and never more than one read held."""
    stream = b"".join(frame(p) for p in payloads)
    pieces, pos = [], 0
    for c in cuts:
        pieces.append(stream[pos:pos + c])
        pos += c
    pieces.append(stream[pos:])
    d, got = FrameDecoder(40), []
    for p in pieces:
        out = d.feed(p, limit)
        while True:
            assert len(out) <= limit
            got += out
            if not d.more:
                break
            out = d.feed(b"", limit)
        assert d.pending <= 2 + 40 + 100
    assert got == payloads
    d.eof()
