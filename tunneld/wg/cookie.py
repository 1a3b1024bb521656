"""mac1, mac2 and cookie replies (whitepaper 5.3, 5.4.7): the DoS defence.

mac1 proves the sender knows our public key, so nothing that fails it gets an
answer. Under load a responder answers an initiation without a valid mac2 with
a cookie reply instead of doing Diffie-Hellman; the initiator returns the cookie
as mac2, proving it owns its source address.
"""

from __future__ import annotations

import hmac
from typing import Callable

from tunneld.wg import messages
from tunneld.wg.constants import COOKIE_NONCE_SIZE, COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1, MAC_SIZE
from tunneld.wg.primitives import HASH, MAC, InvalidTag, xaead_open, xaead_seal

ZERO_MAC = bytes(MAC_SIZE)


def mac_offsets(message: bytes | memoryview) -> tuple[int, int]:
    mac1 = messages.MAC1_OFFSET[message[0]]
    return mac1, mac1 + MAC_SIZE


class CookieChecker:
    """The receiving side, keyed on our own public key."""

    def __init__(self, own_public: bytes, rng: Callable[[int], bytes]):
        self.mac1_key = HASH(LABEL_MAC1 + own_public)
        self.cookie_key = HASH(LABEL_COOKIE + own_public)
        self.rng = rng
        self._secret = b""
        self._secret_born = float("-inf")

    def check_mac1(self, message: bytes | memoryview) -> bool:
        m1, m2 = mac_offsets(message)
        return hmac.compare_digest(MAC(self.mac1_key, bytes(message[:m1])), bytes(message[m1:m2]))

    def _cookie(self, source: bytes, now: float) -> bytes:
        if now - self._secret_born >= COOKIE_REFRESH_TIME:
            self._secret, self._secret_born = self.rng(32), now
        return MAC(self._secret, source)

    def check_mac2(self, message: bytes | memoryview, source: bytes, now: float) -> bool:
        m1, m2 = mac_offsets(message)
        expected = MAC(self._cookie(source, now), bytes(message[:m2]))
        return hmac.compare_digest(expected, bytes(message[m2:m2 + MAC_SIZE]))

    def reply(self, message: bytes | memoryview, source: bytes, now: float) -> bytes:
        """A cookie reply to `message` (its sender index and mac1 are echoed in it)."""
        m1, m2 = mac_offsets(message)
        sender = bytes(message[4:8])
        nonce = self.rng(COOKIE_NONCE_SIZE)
        sealed = xaead_seal(self.cookie_key, nonce, self._cookie(source, now), bytes(message[m1:m2]))
        return messages.HEADER_COOKIE_REPLY + sender + nonce + sealed


class CookieGenerator:
    """The sending side, keyed on the peer's public key: adds mac1 and mac2."""

    def __init__(self, peer_public: bytes):
        self.mac1_key = HASH(LABEL_MAC1 + peer_public)
        self.cookie_key = HASH(LABEL_COOKIE + peer_public)
        self.cookie = b""
        self.cookie_born = float("-inf")
        self.last_mac1 = b""

    def add_macs(self, body: bytes, now: float) -> bytes:
        """`body` is the message up to mac1; returns it with mac1 and mac2."""
        mac1 = MAC(self.mac1_key, body)
        self.last_mac1 = mac1
        if self.cookie and now - self.cookie_born < COOKIE_REFRESH_TIME:
            mac2 = MAC(self.cookie, body + mac1)
        else:
            mac2 = ZERO_MAC
        return body + mac1 + mac2

    def consume_reply(self, reply: bytes | memoryview, now: float) -> bool:
        """Store the cookie from a reply to our last handshake message; False if not authentic."""
        if not self.last_mac1:
            return False
        _, _, nonce, sealed = messages.COOKIE_REPLY.unpack(reply)
        try:
            cookie = xaead_open(self.cookie_key, nonce, sealed, self.last_mac1)
        except InvalidTag:
            return False
        self.cookie, self.cookie_born = cookie, now
        return True
