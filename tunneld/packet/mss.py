"""TCP MSS clamping: rewrite the MSS option of SYN and SYN-ACK packets crossing
the tunnel so that TCP through it never needs fragmentation.

The limit is the tunnel MTU minus the IP and TCP headers (40 bytes for IPv4, 60
for IPv6). The TCP checksum is updated incrementally (RFC 1624), so nothing
else in the packet is read. IPv6 extension headers and IPv4 fragments are left
alone (a SYN carries neither in practice).
"""

from __future__ import annotations

TCP = 6
SYN = 0x02
OPT_END, OPT_NOP, OPT_MSS = 0, 1, 2


def limits(mtu: int) -> tuple[int, int]:
    """(IPv4 MSS, IPv6 MSS) that fit a tunnel of this MTU."""
    return mtu - 40, mtu - 60


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _update(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def is_syn(packet: bytes | bytearray | memoryview) -> bool:
    """A TCP SYN or SYN-ACK (what clamp() may rewrite)."""
    n = len(packet)
    if n < 40:
        return False
    version = packet[0] >> 4
    if version == 4:
        tcp = (packet[0] & 0x0F) * 4
        return packet[9] == TCP and n >= tcp + 20 and bool(packet[tcp + 13] & SYN)
    return version == 6 and n >= 60 and packet[6] == TCP and bool(packet[53] & SYN)


def clamp(packet: bytes | bytearray | memoryview, mss4: int, mss6: int) -> bytes | bytearray | memoryview:
    """The packet, with its MSS option lowered to the limit if it was higher:
    the same object when nothing changes, a new bytearray when something did."""
    n = len(packet)
    if n < 20:
        return packet
    version = packet[0] >> 4
    if version == 4:
        if packet[9] != TCP or (packet[6] & 0x3F) or packet[7]:  # not TCP, or a fragment
            return packet
        tcp, limit = (packet[0] & 0x0F) * 4, mss4
    elif version == 6 and n >= 40:
        if packet[6] != TCP:
            return packet
        tcp, limit = 40, mss6
    else:
        return packet
    if n < tcp + 20 or not packet[tcp + 13] & SYN:
        return packet
    end = min(tcp + (packet[tcp + 12] >> 4) * 4, n)
    i = tcp + 20
    while i < end:
        kind = packet[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or packet[i + 1] < 2:
            break  # malformed options: leave the packet as it is
        size = packet[i + 1]
        if kind == OPT_MSS and size == 4 and i + 4 <= end:
            old = (packet[i + 2] << 8) | packet[i + 3]
            if old <= limit:
                return packet
            out = bytearray(packet)
            out[i + 2], out[i + 3] = limit >> 8, limit & 0xFF
            csum = (out[tcp + 16] << 8) | out[tcp + 17]
            if (i + 2 - tcp) % 2:  # the field straddles two checksum words: it counts byte-swapped
                o, nw = ((old & 0xFF) << 8) | (old >> 8), ((limit & 0xFF) << 8) | (limit >> 8)
            else:
                o, nw = old, limit
            csum = _update(csum, o, nw)
            out[tcp + 16], out[tcp + 17] = csum >> 8, csum & 0xFF
            return out
        i += size
    return packet
