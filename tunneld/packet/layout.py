"""Where a frame's IP and transport headers are, read from the bytes alone.

A TUN packet starts with its IP header; a TAP frame with an Ethernet header,
perhaps one or two VLAN tags (802.1Q 0x8100, 802.1ad 0x88A8), then IP.
Only what super-packets need is understood: IPv4 (any IHL, not a fragment),
IPv6 with TCP or UDP as the first next header (no extension headers: the
kernel's TSO/USO never produces them, and we refuse to cut what we cannot read).
"""

from __future__ import annotations

from typing import NamedTuple

TCP = 6
UDP = 17
ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8


class Layout(NamedTuple):
    l3: int  # offset of the IP header
    version: int  # 4 or 6
    proto: int  # TCP or UDP
    l4: int  # offset of the TCP/UDP header
    l4_len: int  # length of the TCP/UDP header (TCP: its data offset; UDP: 8)
    end: int  # offset just past the IP packet, from its own length field

    @property
    def headers(self) -> int:
        """Bytes of headers in front of the payload, the link layer's included."""
        return self.l4 + self.l4_len


def l3_offset(frame: bytes | bytearray | memoryview, tap: bool) -> int | None:
    """Offset of the IP header, or None when the frame carries no IP."""
    if not tap:
        return 0
    off, n = 12, len(frame)
    for _ in range(3):
        if n < off + 2:
            return None
        ethertype = (frame[off] << 8) | frame[off + 1]
        if ethertype in (ETH_IPV4, ETH_IPV6):
            return off + 2
        if ethertype not in (ETH_VLAN, ETH_QINQ):
            return None
        off += 4
    return None


def parse(frame: bytes | bytearray | memoryview, tap: bool) -> Layout | None:
    """The layout of a TCP or UDP packet over IP, or None for anything else
    (other protocols, fragments, IPv6 extension headers, truncated headers,
    lengths that disagree with the buffer)."""
    l3 = l3_offset(frame, tap)
    if l3 is None:
        return None
    n = len(frame)
    if n < l3 + 20:
        return None
    version = frame[l3] >> 4
    if version == 4:
        ihl = (frame[l3] & 15) * 4
        total = (frame[l3 + 2] << 8) | frame[l3 + 3]
        if ihl < 20 or total < ihl or l3 + total > n:
            return None
        if ((frame[l3 + 6] & 0x3F) << 8) | frame[l3 + 7]:  # MF set or a fragment offset
            return None
        proto, l4, end = frame[l3 + 9], l3 + ihl, l3 + total
    elif version == 6:
        if n < l3 + 40:
            return None
        proto, l4 = frame[l3 + 6], l3 + 40
        end = l4 + ((frame[l3 + 4] << 8) | frame[l3 + 5])
        if end > n:
            return None
    else:
        return None
    if proto == TCP:
        if end < l4 + 20:
            return None
        l4_len = (frame[l4 + 12] >> 4) * 4
        if l4_len < 20 or l4 + l4_len > end:
            return None
    elif proto == UDP:
        if end < l4 + 8:
            return None
        l4_len = 8
    else:
        return None
    return Layout(l3, version, proto, l4, l4_len, end)


def addresses(frame, lay: Layout) -> tuple[bytes | memoryview, bytes | memoryview]:
    """(source, destination) IP address bytes."""
    if lay.version == 4:
        return frame[lay.l3 + 12:lay.l3 + 16], frame[lay.l3 + 16:lay.l3 + 20]
    return frame[lay.l3 + 8:lay.l3 + 24], frame[lay.l3 + 24:lay.l3 + 40]
