"""The Internet checksum (RFC 1071), computed with Python's big integers.

A ones'-complement sum of 16-bit words equals the bytes read as one big-endian
integer, modulo 0xFFFF (because 2**16 is 1 modulo 0xFFFF), so one
`int.from_bytes` and one `%` sum a whole segment in C. Sums here are "folded":
0..0xFFFF, where 0 and 0xFFFF both mean zero; `finish` turns a sum into the
value a header carries.
"""

from __future__ import annotations


def add(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of `data` (odd length: padded with a zero byte)."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return v % 0xFFFF if v else 0


def combine(*sums: int) -> int:
    return sum(sums) % 0xFFFF


def finish(total: int) -> int:
    """The checksum field for a folded sum: its complement. A sum of non-zero
    data that is 0 modulo 0xFFFF is 0xFFFF, whose complement is 0."""
    r = total % 0xFFFF
    return 0xFFFF - r if r else 0


def pseudo(version: int, src: bytes | memoryview, dst: bytes | memoryview, proto: int, length: int) -> int:
    """The folded sum of the IPv4 or IPv6 pseudo-header (RFC 793, RFC 8200 8.1)
    for an upper-layer packet of `length` bytes. Also what a partial checksum
    field holds (virtio NEEDS_CSUM, CHECKSUM_PARTIAL): the kernel adds the rest."""
    return (add(src) + add(dst) + proto + length) % 0xFFFF or 0xFFFF


def ipv4_header(header: bytes | bytearray | memoryview) -> int:
    """The IPv4 header checksum for `header` whose checksum field is zero."""
    return finish(add(header))
