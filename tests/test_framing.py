"""The TCP framing decoder, one row per case (kernel selftest style)."""

import pytest

from tunneld.framing import FrameDecoder, FramingError, encode


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
    from tunneld.framing import FrameDecoder, FramingError
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
