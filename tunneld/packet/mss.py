"""TCP MSS clamping: rewrite the MSS option of SYN and SYN-ACK packets crossing
the tunnel so that TCP through it never needs fragmentation.

The limit is the tunnel MTU minus the IP and TCP headers (40 bytes for IPv4, 60
for IPv6). The TCP checksum is updated incrementally (RFC 1624), so nothing
else in the packet is read. IPv6 extension headers and IPv4 fragments are left
alone (a SYN carries neither in practice).
"""

from __future__ import annotations

from tunneld.packet.layout import TCP, l3_offset, parse
from tunneld.packet.limits import (ENCRYPTION_OVERHEAD, ETHERNET_HEADER, PADDING_TRAILER_ROOM, UNDERLAY_HEADERS,
                                   UNDERLAY_MTU, VLAN_ROOM)

SYN = 0x02
OPT_END, OPT_NOP, OPT_MSS = 0, 1, 2



def limits(mtu: int) -> tuple[int, int]:
    """(IPv4 MSS, IPv6 MSS) that fit a tunnel of this MTU."""
    return mtu - 40, mtu - 60


def bridged_limits(mtu: int, encrypted: bool, compatible: bool) -> tuple[int, int]:
    """(IPv4 MSS, IPv6 MSS) for TCP in frames bridged over a TAP tunnel on UDP, so
    that the outer datagram fits a 1500-byte underlay (IPv4 or IPv6) whole: the
    LAN's hosts keep their 1500-byte MTU and their TCP needs no IP fragments
    (OpenVPN's mssfix does the same). A frame carries its Ethernet header and room
    for two VLAN tags; tunneld mode adds the transport message and the padding's
    trailer. Never above what the interface's own MTU allows."""
    overhead = (ENCRYPTION_OVERHEAD + (0 if compatible else PADDING_TRAILER_ROOM)) if encrypted else 0
    packet = min(mtu, UNDERLAY_MTU - UNDERLAY_HEADERS - overhead - ETHERNET_HEADER - VLAN_ROOM)
    return limits(packet)


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _update(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def is_syn(packet: bytes | bytearray | memoryview, tap: bool = False) -> bool:
    """A TCP SYN or SYN-ACK (what clamp() may rewrite); `tap`: an Ethernet frame."""
    ip = l3_offset(packet, True) if tap else 0
    if ip is None:
        return False
    n = len(packet) - ip
    if n < 40:
        return False
    version = packet[ip] >> 4
    if version == 4:
        tcp = ip + (packet[ip] & 0x0F) * 4
        return packet[ip + 9] == TCP and len(packet) >= tcp + 20 and bool(packet[tcp + 13] & SYN)
    return version == 6 and n >= 60 and packet[ip + 6] == TCP and bool(packet[ip + 53] & SYN)


def clamp(packet: bytes | bytearray | memoryview, mss4: int, mss6: int,
          tap: bool = False) -> bytes | bytearray | memoryview:
    """The packet (`tap`: the Ethernet frame, VLAN tags and all), with its MSS
    option lowered to the limit if it was higher: the same object when nothing
    changes, a new bytearray when something did."""
    if not is_syn(packet, tap):  # the common case, decided from a few bytes
        return packet
    lay = parse(packet, tap)  # where the TCP header and its options are (no fragments, lengths checked)
    if lay is None or lay.proto != TCP:
        return packet
    tcp, limit = lay.l4, mss4 if lay.version == 4 else mss6
    end = tcp + lay.l4_len
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
