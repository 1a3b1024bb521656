"""simpletun's TCP framing: every packet is a 2-byte big-endian length, then the packet.

Nothing else goes on the wire, with one exception that exists only between two
tunneld that agreed on super-packets in an authenticated handshake: a message
over 65,535 bytes is framed as a zero length (which simpletun's framing never
uses) followed by a 4-byte big-endian length. A decoder accepts that only once
told to (`big_limit`), and only then frames between `max_frame` and 65,535
bytes too; plaintext never is. The decoder is pure: bytes in, whole
frames out, and a FramingError naming what was wrong with the stream.
"""

from __future__ import annotations

from tunneld.packet.limits import LENGTH_PREFIX, MAX_LENGTH_FIELD

BIG_PREFIX = LENGTH_PREFIX + 4  # 0x0000, then a 4-byte length


class FramingError(Exception):
    """The byte stream broke the framing; the connection must be closed.

    `kind` is one of "zero-length", "oversize", "truncated".
    """

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(detail)


def encode(packet: bytes | memoryview, big: bool = False) -> bytes:
    """Header and packet in one buffer, so they go out in one write. `big`: a
    message over 65,535 bytes may use the big framing (see above)."""
    n = len(packet)
    if 0 < n <= MAX_LENGTH_FIELD:
        return n.to_bytes(LENGTH_PREFIX, "big") + packet
    if big and n > MAX_LENGTH_FIELD and n < 1 << 32:
        return bytes(LENGTH_PREFIX) + n.to_bytes(4, "big") + packet
    raise ValueError(f"cannot frame a {n}-byte packet")


class FrameDecoder:
    """Splits a TCP byte stream into frames of 1 to `max_frame` bytes.

    feed() returns the frames completed by the new bytes (possibly none,
    possibly many); eof() says whether the stream stopped mid-frame.
    With a `limit`, feed() returns at most that many and keeps the rest,
    setting `more`: call feed(b"", limit) until `more` is false before
    feeding another read, and the buffer never holds more than one partial
    frame plus one read. (A limit is how a reader bounds the work of one
    callback: a 64 KB read can hold 21,845 one-byte frames.)
    """

    def __init__(self, max_frame: int):
        if not 0 < max_frame <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_frame must be 1..{MAX_LENGTH_FIELD}, got {max_frame}")
        self.max_frame = max_frame
        self.big_limit = 0  # > 0: big frames (over 65,535 bytes, up to this) are accepted
        self.more = False  # the last feed() stopped at its limit: frames may be waiting
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview, limit: int = 0) -> list[bytes]:
        """The frames the buffered bytes and `data` complete; at most `limit` (> 0)."""
        buf = self._buf
        if data:
            buf += data
        frames = []
        pos, end = 0, len(buf)
        cap = limit if limit > 0 else -1  # a length never equals -1: no limit
        self.more = False
        while end - pos >= LENGTH_PREFIX:
            if len(frames) == cap:
                self.more = True
                break
            n = (buf[pos] << 8) | buf[pos + 1]
            prefix = LENGTH_PREFIX
            if n == 0:
                if not self.big_limit:
                    del buf[:]
                    raise FramingError("zero-length", "zero-length frame")
                if end - pos < BIG_PREFIX:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 6], "big")
                if not MAX_LENGTH_FIELD < n <= self.big_limit:
                    del buf[:]
                    raise FramingError("oversize", f"{n}-byte big frame outside {MAX_LENGTH_FIELD + 1}..{self.big_limit}")
                prefix = BIG_PREFIX
            elif n > self.max_frame and not self.big_limit:  # agreed super-packets use any 2-byte length
                del buf[:]
                raise FramingError("oversize", f"{n}-byte frame exceeds the {self.max_frame}-byte limit")
            stop = pos + prefix + n
            if stop > end:
                break
            frames.append(bytes(buf[pos + prefix:stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back: an unfinished frame, and frames a limit left for later."""
        return len(self._buf)

    def eof(self) -> None:
        """The peer closed the stream; raise if it did so mid-frame."""
        if self._buf:
            held = len(self._buf)
            del self._buf[:]
            raise FramingError("truncated", f"stream ended {held} bytes into a frame")
