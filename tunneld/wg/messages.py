"""The four WireGuard messages (whitepaper 5.4.2-5.4.7), little-endian.

Every message starts with a type byte and 3 reserved bytes. WireGuard requires
the reserved bytes to be zero. tunneld's own mode sends zeros too but accepts
any value in a handshake message and binds the 4-byte header into the
handshake transcript (noise.py), so a later version can announce capabilities
there, authenticated, and today's version will still complete its handshake.
"""

from __future__ import annotations

import struct

from tunneld.wg.constants import (COOKIE_REPLY_SIZE, INITIATION_SIZE, MESSAGE_COOKIE_REPLY,
                                  MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT,
                                  RESPONSE_SIZE, TRANSPORT_MIN_SIZE)

INITIATION = struct.Struct("<4sI32s48s28s16s16s")  # header, sender, ephemeral, static, timestamp, mac1, mac2
RESPONSE = struct.Struct("<4sII32s16s16s16s")  # header, sender, receiver, ephemeral, empty, mac1, mac2
COOKIE_REPLY = struct.Struct("<4sI24s32s")  # header, receiver, nonce, encrypted cookie
TRANSPORT_HEADER = struct.Struct("<4sIQ")  # header, receiver, counter

HEADER_INITIATION = bytes([MESSAGE_INITIATION, 0, 0, 0])
HEADER_RESPONSE = bytes([MESSAGE_RESPONSE, 0, 0, 0])
HEADER_COOKIE_REPLY = bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0])
HEADER_TRANSPORT = bytes([MESSAGE_TRANSPORT, 0, 0, 0])

# mac1 covers everything before it; mac2 everything before it (mac1 included)
INITIATION_MAC1 = 116
RESPONSE_MAC1 = 60
SIZES = {MESSAGE_INITIATION: INITIATION_SIZE, MESSAGE_RESPONSE: RESPONSE_SIZE,
         MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE}
MAC1_OFFSET = {MESSAGE_INITIATION: INITIATION_MAC1, MESSAGE_RESPONSE: RESPONSE_MAC1}

if INITIATION.size != INITIATION_SIZE or RESPONSE.size != RESPONSE_SIZE or COOKIE_REPLY.size != COOKIE_REPLY_SIZE:
    raise ImportError("message layouts disagree with the spec sizes")


def classify(message: bytes | memoryview, strict_reserved: bool) -> int:
    """The message type, or 0 for anything to drop unanswered: an unknown type, a
    handshake message of the wrong size, a short transport message, and (in
    WireGuard mode) nonzero reserved bytes."""
    n = len(message)
    if n < 4:
        return 0
    kind = message[0]
    if strict_reserved and (message[1] or message[2] or message[3]):
        return 0
    if kind == MESSAGE_TRANSPORT:
        return kind if n >= TRANSPORT_MIN_SIZE else 0
    return kind if SIZES.get(kind) == n else 0
