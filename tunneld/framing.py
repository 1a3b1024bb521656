"""simpletun's TCP framing: every packet is a 2-byte big-endian length, then the packet.

Nothing else ever goes on the wire. The decoder is pure: bytes in, whole frames
out, and a FramingError naming what was wrong with the stream.
"""

from __future__ import annotations

from tunneld.limits import LENGTH_PREFIX, MAX_LENGTH_FIELD


class FramingError(Exception):
    """The byte stream broke the framing; the connection must be closed.

    `kind` is one of "zero-length", "oversize", "truncated".
    """

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(detail)


def encode(packet: bytes | memoryview) -> bytes:
    """Header and packet in one buffer, so they go out in one write."""
    n = len(packet)
    if not 0 < n <= MAX_LENGTH_FIELD:
        raise ValueError(f"cannot frame a {n}-byte packet")
    return n.to_bytes(LENGTH_PREFIX, "big") + packet


class FrameDecoder:
    """Splits a TCP byte stream into frames of 1 to `max_frame` bytes.

    feed() returns the frames completed by the new bytes (possibly none,
    possibly many); eof() says whether the stream stopped mid-frame.
    The buffer never holds more than one partial frame plus one read.
    """

    def __init__(self, max_frame: int):
        if not 0 < max_frame <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_frame must be 1..{MAX_LENGTH_FIELD}, got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        frames = []
        pos, end = 0, len(buf)
        while end - pos >= LENGTH_PREFIX:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0:
                del buf[:]
                raise FramingError("zero-length", "zero-length frame")
            if n > self.max_frame:
                del buf[:]
                raise FramingError("oversize", f"{n}-byte frame exceeds the {self.max_frame}-byte limit")
            stop = pos + LENGTH_PREFIX + n
            if stop > end:
                break
            frames.append(bytes(buf[pos + LENGTH_PREFIX:stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back."""
        return len(self._buf)

    def eof(self) -> None:
        """The peer closed the stream; raise if it did so mid-frame."""
        if self._buf:
            held = len(self._buf)
            del self._buf[:]
            raise FramingError("truncated", f"stream ended {held} bytes into a frame")
