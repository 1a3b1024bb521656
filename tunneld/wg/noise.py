"""The Noise IKpsk2 handshake for one peer (whitepaper 5.4.2-5.4.5).

    initiator                                   responder
    create_initiation()  -- initiation (148) -->  consume_initiation()
    consume_response()   <-- response (92) ----   create_response()
    derive_keys()                                 derive_keys()

Bytes in, bytes out: no sockets, no clock (`wall` time is passed in for the
TAI64N timestamp). mac1/mac2 are added and checked by cookie.py.
"""

from __future__ import annotations

import enum
import hmac
from typing import Callable

from tunneld.wg import messages
from tunneld.wg.constants import CONSTRUCTION, TAI64N_SIZE
from tunneld.wg.primitives import (AEAD, DH, HASH, KDF1, KDF2, KDF3, ZERO32, DHError, InvalidTag,
                                   generate_private, public_of, tai64n)


class HandshakeError(Exception):
    """A handshake message was refused; it gets no answer."""


class StaleHandshake(HandshakeError):
    """A handshake message for a handshake that is over or was replaced: not an
    authentication failure, just late (wireguard-go drops it by its unknown index)."""


class IllegalTransition(Exception):
    """A handshake step was asked for in the wrong state (a bug, not bad input)."""


class State(enum.Enum):
    ZEROED = "zeroed"
    INITIATION_CREATED = "initiation created"
    INITIATION_CONSUMED = "initiation consumed"
    RESPONSE_CREATED = "response created"
    RESPONSE_CONSUMED = "response consumed"


def _seal(key: bytes, plaintext: bytes, h: bytes) -> bytes:
    return AEAD(key).seal(0, plaintext, h)


def _open(key: bytes, ciphertext: bytes, h: bytes) -> bytes:
    return AEAD(key).open(0, ciphertext, h)


class Handshake:
    """The handshake with our one peer, and the static state around it."""

    def __init__(self, static_private: bytes, peer_public: bytes, psk: bytes | None,
                 identifier: bytes, bind_header: bool, rng: Callable[[int], bytes]):
        """`bind_header`: tunneld's own mode mixes each handshake message's 4-byte
        header into the transcript, authenticating the reserved bytes for later use."""
        self.static_private = static_private
        self.static_public = public_of(static_private)
        self.peer_public = peer_public
        self.psk = psk or ZERO32
        self.bind_header = bind_header
        self.rng = rng
        self.ss = DH(static_private, peer_public)  # static-static, the same for every handshake
        c0 = HASH(CONSTRUCTION)
        h0 = HASH(c0 + identifier)
        self.c0 = c0
        self.h_initiator = HASH(h0 + peer_public)  # as initiator: the responder's static is theirs
        self.h_responder = HASH(h0 + self.static_public)
        self.state = State.ZEROED
        self.local_index = 0
        self.remote_index = 0
        self.last_timestamp = bytes(TAI64N_SIZE)  # newest initiation timestamp accepted from the peer
        self.last_sent_timestamp = bytes(TAI64N_SIZE)  # newest we sent: the next is always greater
        self.peer_header = b""  # the peer's 4-byte header of its last handshake message
        self._zero()

    def _bind(self, h: bytes, header: bytes) -> bytes:
        """tunneld mode: the message header joins the transcript (see messages.py)."""
        return HASH(h + header) if self.bind_header else h

    def _ephemeral(self, c: bytes, h: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """A fresh ephemeral key pair, mixed in: the `e` token. (c, h, private, public)."""
        eph = generate_private(self.rng(32))
        eph_pub = public_of(eph)
        return KDF1(c, eph_pub), HASH(h + eph_pub), eph, eph_pub

    def _zero(self) -> None:
        self.chain = self.hash = self.ephemeral_private = self.remote_ephemeral = b""

    def zero(self) -> None:
        self._zero()
        self.state = State.ZEROED

    # --- initiator ---------------------------------------------------------

    def create_initiation(self, wall: float, local_index: int, header: bytes = messages.HEADER_INITIATION) -> bytes:
        """The initiation up to mac1 (cookie.py adds the MACs)."""
        c, h, eph, eph_pub = self._ephemeral(self.c0, self._bind(self.h_initiator, header))  # e
        c, k = KDF2(c, DH(eph, self.peer_public))  # es
        static = _seal(k, self.static_public, h)
        h = HASH(h + static)
        c, k = KDF2(c, self.ss)  # ss
        timestamp = _seal(k, self._next_timestamp(wall), h)
        h = HASH(h + timestamp)
        self.chain, self.hash, self.ephemeral_private = c, h, eph
        self.local_index, self.remote_index = local_index, 0
        self.state = State.INITIATION_CREATED
        return header + local_index.to_bytes(4, "little") + eph_pub + static + timestamp

    def _next_timestamp(self, wall: float) -> bytes:
        """TAI64N of `wall`, but never one the peer has seen from us already: a clock
        stepped back (NTP, a daemon started before the clock was set) must not make
        every initiation a replay in the peer's eyes."""
        ts = tai64n(wall)
        if ts <= self.last_sent_timestamp:
            seconds, nanos = int.from_bytes(self.last_sent_timestamp[:8], "big"), int.from_bytes(self.last_sent_timestamp[8:], "big") + 1
            if nanos >= 1_000_000_000:
                seconds, nanos = seconds + 1, 0
            ts = seconds.to_bytes(8, "big") + nanos.to_bytes(4, "big")
        self.last_sent_timestamp = ts
        return ts

    def consume_response(self, message: bytes) -> None:
        header, sender, receiver, eph_pub, empty, _, _ = messages.RESPONSE.unpack(message)
        if self.state is not State.INITIATION_CREATED or receiver != self.local_index:
            # not ours to check: an old response, or one to an initiation we replaced
            # by answering the peer's (both sides initiated at once)
            raise StaleHandshake("a response to no initiation of ours now pending")
        c, h = self.chain, self._bind(self.hash, header)
        try:
            c = KDF1(c, eph_pub)  # e
            h = HASH(h + eph_pub)
            c = KDF1(c, DH(self.ephemeral_private, eph_pub))  # ee
            c = KDF1(c, DH(self.static_private, eph_pub))  # se
            c, tau, k = KDF3(c, self.psk)  # psk
            h = HASH(h + tau)
            _open(k, empty, h)
        except (InvalidTag, DHError):
            raise HandshakeError("response did not authenticate") from None
        h = HASH(h + empty)
        self.chain, self.hash, self.remote_index = c, h, sender
        self.peer_header = header
        self.ephemeral_private = b""
        self.state = State.RESPONSE_CONSUMED

    # --- responder ---------------------------------------------------------

    def consume_initiation(self, message: bytes) -> None:
        """Check an initiation; a stale timestamp is a replay. Any state may be
        replaced: the peer may have restarted, or both sides initiated at once."""
        header, sender, eph_pub, static, timestamp, _, _ = messages.INITIATION.unpack(message)
        c, h = self.c0, self._bind(self.h_responder, header)
        try:
            c = KDF1(c, eph_pub)  # e
            h = HASH(h + eph_pub)
            c, k = KDF2(c, DH(self.static_private, eph_pub))  # es
            peer_static = _open(k, static, h)
            h = HASH(h + static)
            if not hmac.compare_digest(peer_static, self.peer_public):
                raise HandshakeError("initiation from a key that is not our peer's")
            c, k = KDF2(c, self.ss)  # ss
            ts = _open(k, timestamp, h)
        except (InvalidTag, DHError):
            raise HandshakeError("initiation did not authenticate") from None
        if ts <= self.last_timestamp:  # big-endian TAI64N compares as bytes
            raise HandshakeError("initiation replayed (timestamp not newer than the last)")
        self.last_timestamp = ts
        h = HASH(h + timestamp)
        self.chain, self.hash, self.remote_ephemeral, self.remote_index = c, h, eph_pub, sender
        self.peer_header = header
        self.state = State.INITIATION_CONSUMED

    def create_response(self, local_index: int, header: bytes = messages.HEADER_RESPONSE) -> bytes:
        """The response up to mac1."""
        if self.state is not State.INITIATION_CONSUMED:
            raise IllegalTransition(f"create_response in state {self.state.value}")
        c, h, eph, eph_pub = self._ephemeral(self.chain, self._bind(self.hash, header))  # e
        c = KDF1(c, DH(eph, self.remote_ephemeral))  # ee
        c = KDF1(c, DH(eph, self.peer_public))  # se
        c, tau, k = KDF3(c, self.psk)  # psk
        h = HASH(h + tau)
        empty = _seal(k, b"", h)
        h = HASH(h + empty)
        self.chain, self.hash, self.local_index = c, h, local_index
        self.state = State.RESPONSE_CREATED
        return header + local_index.to_bytes(4, "little") + self.remote_index.to_bytes(4, "little") + eph_pub + empty

    # --- both --------------------------------------------------------------

    def derive_keys(self) -> tuple[bytes, bytes, bool]:
        """(send key, receive key, we initiated) for the new keypair; the handshake
        state is zeroed so no key material lingers."""
        if self.state is State.RESPONSE_CONSUMED:
            first, second = KDF2(self.chain, b"")
            keys = (first, second, True)
        elif self.state is State.RESPONSE_CREATED:
            first, second = KDF2(self.chain, b"")
            keys = (second, first, False)
        else:
            raise IllegalTransition(f"derive_keys in state {self.state.value}")
        self.zero()
        return keys
