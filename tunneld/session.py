"""Sessions: what turns a device packet into a wire message and back.

The core hands every packet through a session. `PlaintextSession` is the
explicit `encryption: none` mode, byte-compatible with simpletun: the wire
message is the packet itself. The encryption issue adds a WireGuard session
with the same two calls.
"""

from __future__ import annotations


class PlaintextSession:
    """No encryption: the message is the packet. Nothing here can be authenticated,
    so a plaintext tunnel only follows a peer that the config did not pin."""

    authenticated = False

    def seal(self, packet: bytes | memoryview, now: float) -> bytes | memoryview:
        return packet

    def open(self, message: bytes | memoryview, now: float) -> bytes | memoryview | None:
        return message
