"""GSO in userspace: cut a TSO/USO super-packet into the packets the wire carries.

A TSO read (virtio gso_type TCPV4/TCPV6) is one IP packet of up to 64 KB with
one TCP header and a partial checksum. Segment i carries payload bytes
[i*gso_size, (i+1)*gso_size), the sequence number advanced by as much, IPv4 id
+ i, its own lengths, CWR only on the first and FIN/PSH only on the last, as
the kernel's tcp_gso_segment does. USO (UDP_L4) gives every segment its own UDP
header. Each segment's checksum is either finished (`full`, for a peer that
expects ordinary packets) or left partial for a tunneld peer's kernel to finish.
"""

from __future__ import annotations

import struct

from tunneld.packet import checksum
from tunneld.packet import layout as L
from tunneld.packet.virtio import TCP_CHECK, UDP_CHECK, Header

TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
_PACK_U16 = struct.Struct("!H")
_PACK_U32 = struct.Struct("!I")
_PACK_V4 = struct.Struct("!HH")  # IPv4 total length, identification


class Unsplittable(ValueError):
    """A device read whose header does not describe its packet."""


def finish(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a partial checksum in place (virtio NEEDS_CSUM on a plain packet):
    the field holds the pseudo-header sum, the rest is summed from csum_start."""
    pos = csum_start + csum_offset
    if csum_start >= len(frame) or pos + 2 > len(frame):
        raise Unsplittable(f"checksum at {csum_start}+{csum_offset} outside a {len(frame)}-byte packet")
    value = checksum.finish(checksum.add(memoryview(frame)[csum_start:]))
    frame[pos:pos + 2] = (value or 0xFFFF if csum_offset == UDP_CHECK else value).to_bytes(2, "big")


def split(frame: bytes | bytearray | memoryview, header: Header, tap: bool, full: bool) -> list[bytearray]:
    """The packets (TUN) or frames (TAP) a super-packet stands for. `full`: each
    with its finished checksum; otherwise each keeps a partial one, described by
    `virtio.partial(...)`."""
    lay = L.parse(frame, tap)
    if lay is None:
        raise Unsplittable("a super-packet that is not TCP or UDP over IP")
    mss = header.gso_size
    if mss <= 0:
        raise Unsplittable("a super-packet with gso_size 0")
    l3, l4, hl, end = lay.l3, lay.l4, lay.headers, lay.end
    tcp = lay.proto == L.TCP
    check_at = l4 + (TCP_CHECK if tcp else UDP_CHECK)
    template = bytearray(frame[:hl])
    src, dst = L.addresses(frame, lay)
    pseudo_base = checksum.add(src) + checksum.add(dst) + lay.proto
    v4 = lay.version == 4
    ip_id = (frame[l3 + 4] << 8) | frame[l3 + 5] if v4 else 0
    seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big") if tcp else 0
    flags = frame[l4 + 13] if tcp else 0
    if v4:  # the header's sum without length, id and checksum: each segment adds its own
        template[l3 + 2:l3 + 6] = bytes(4)
        template[l3 + 10:l3 + 12] = bytes(2)
        ip_base = checksum.add(template[l3:l4])
    template[check_at:check_at + 2] = bytes(2)
    if tcp:
        template[l4 + 4:l4 + 8] = bytes(4)
        template[l4 + 13] = 0
    else:
        template[l4 + 4:l4 + 6] = bytes(2)
    l4_base = checksum.add(template[l4:]) if full else 0  # the transport header's fixed fields
    out = []
    starts = range(hl, end, mss)
    last = len(starts) - 1
    pack = _PACK_U16.pack_into
    for i, start in enumerate(starts):
        stop = min(start + mss, end)
        l4_len = lay.l4_len + stop - start
        h = template[:]
        if v4:
            total, ident = l4 - l3 + l4_len, (ip_id + i) & 0xFFFF
            _PACK_V4.pack_into(h, l3 + 2, total, ident)
            pack(h, l3 + 10, checksum.finish(ip_base + total + ident))
        else:
            pack(h, l3 + 4, l4_len)
        if tcp:
            f = flags
            if i:
                f &= ~TCP_CWR
            if i != last:
                f &= ~(TCP_FIN | TCP_PSH)
            s32 = (seq + start - hl) & 0xFFFFFFFF
            _PACK_U32.pack_into(h, l4 + 4, s32)
            h[l4 + 13] = f
            varying = (s32 >> 16) + (s32 & 0xFFFF) + f  # the flags byte is the low half of its word
        else:
            pack(h, l4 + 4, l4_len)
            varying = l4_len
        pseudo = (pseudo_base + l4_len) % 0xFFFF or 0xFFFF
        if full:
            value = checksum.finish(pseudo + l4_base + varying + checksum.add(frame[start:stop]))
            if not tcp and value == 0:
                value = 0xFFFF  # UDP: 0 means "no checksum"
        else:
            value = pseudo
        pack(h, check_at, value)
        h += frame[start:stop]
        out.append(h)
    return out
