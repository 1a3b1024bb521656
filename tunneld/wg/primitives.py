"""WireGuard's cryptographic primitives (whitepaper 5.4), on hashlib, hmac and `cryptography`.

Only this module touches key objects from `cryptography`; the rest of the
protocol deals in bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: F401 (re-exported for tests)
from cryptography.exceptions import InvalidTag

__all__ = ["HASH", "HMAC", "MAC", "KDF1", "KDF2", "KDF3", "AEAD", "DH", "InvalidTag",
           "xaead_seal", "xaead_open", "hchacha20", "tai64n", "generate_private", "public_of", "ZERO32"]

ZERO32 = bytes(32)
NONCE = _NONCE = struct.Struct("<4xQ")  # 4 zero bytes, then the little-endian 64-bit counter


def HASH(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte digest (not HMAC)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def KDF1(key: bytes, data: bytes) -> bytes:
    prk = HMAC(key, data)
    return HMAC(prk, b"\x01")


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = HMAC(key, data)
    t1 = HMAC(prk, b"\x01")
    return t1, HMAC(prk, t1 + b"\x02")


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = HMAC(key, data)
    t1 = HMAC(prk, b"\x01")
    t2 = HMAC(prk, t1 + b"\x02")
    return t1, t2, HMAC(prk, t2 + b"\x03")


class AEAD:
    """ChaCha20-Poly1305 under one key, reused for every message under it."""

    __slots__ = ("aead",)

    def __init__(self, key: bytes):
        self.aead = ChaCha20Poly1305(key)  # batch loops call it directly, nonce from NONCE

    def seal(self, counter: int, plaintext: bytes | memoryview, ad: bytes = b"") -> bytes:
        return self.aead.encrypt(_NONCE.pack(counter), plaintext, ad)

    def open(self, counter: int, ciphertext: bytes | memoryview, ad: bytes = b"") -> bytes:
        """Raises InvalidTag when the message is not authentic."""
        return self.aead.decrypt(_NONCE.pack(counter), ciphertext, ad)


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 2.2), from one raw ChaCha20 block.

    `cryptography`'s ChaCha20 takes a 16-byte nonce = counter || nonce, which is
    exactly state words 12-15, so keystream = state_after_rounds + state_before.
    HChaCha20 wants words 0-3 and 12-15 of state_after_rounds: subtract the
    constant words and the nonce words back out (mod 2^32)."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    words = struct.unpack("<16I", block)
    n = struct.unpack("<4I", nonce16)
    out = [(words[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(words[12 + i] - n[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD_XChaCha20_Poly1305 (cookie replies only)."""
    return ChaCha20Poly1305(hchacha20(key, nonce24[:16])).encrypt(bytes(4) + nonce24[16:], plaintext, ad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(hchacha20(key, nonce24[:16])).decrypt(bytes(4) + nonce24[16:], ciphertext, ad)


def generate_private(random32: bytes) -> bytes:
    """A clamped Curve25519 private key from 32 random bytes (as `wg genkey` prints)."""
    k = bytearray(random32)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def public_of(private: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class DHError(Exception):
    """A Diffie-Hellman result was all zeros (a low-order point): the handshake fails."""


def DH(private: bytes, public: bytes) -> bytes:
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # OpenSSL refuses an all-zero result itself
        raise DHError("all-zero shared secret") from None
    if hmac.compare_digest(shared, ZERO32):
        raise DHError("all-zero shared secret")
    return shared


_TAI64_BASE = (1 << 62) + 10  # TAI64 label of 1970-01-01 00:00:00 TAI, + 10 s UTC offset
_WHITENER = 0x1000000 - 1  # nanoseconds rounded down to ~16.8 ms, hiding the clock's fine grain


def tai64n(unix_time: float) -> bytes:
    """TAI64N of a wall-clock time: BE64 seconds label || BE32 nanoseconds."""
    seconds = int(unix_time)
    nanos = int((unix_time - seconds) * 1e9) & ~_WHITENER
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)
