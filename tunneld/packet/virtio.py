"""struct virtio_net_hdr (include/uapi/linux/virtio_net.h), as TUN/TAP use it
with IFF_VNET_HDR: 10 bytes in front of every packet read or written, in the
host's byte order (little-endian here; we never set TUNSETVNETBE).

    u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset

`check()` is the gate for every header that arrives from the network: the
kernel trusts what we write, so nothing the peer says reaches it unchecked.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from tunneld.packet import layout as L

HEADER = struct.Struct("<BBHHHH")
SIZE = HEADER.size  # 10; TUNSETVNETHDRSZ is left at this default

F_NEEDS_CSUM = 1  # checksum from csum_start to the end, stored at csum_start + csum_offset
F_DATA_VALID = 2  # (receive side) the checksum was verified already

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO, IP fragmentation of UDP: never enabled, always refused
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO: UDP segmentation, every segment a whole datagram
GSO_ECN = 0x80  # TSO with ECN: CWR on the first segment only

TCP_CHECK = 16  # offset of the checksum in a TCP header
UDP_CHECK = 6  # and in a UDP header

PLAIN = bytes(SIZE)  # no offload: a whole packet with a whole checksum


class Header(NamedTuple):
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @property
    def gso(self) -> int:
        return self.gso_type & ~GSO_ECN

    def pack(self) -> bytes:
        return HEADER.pack(*self)


def unpack(buf: bytes | bytearray | memoryview) -> Header:
    return Header(*HEADER.unpack_from(buf))


class BadHeader(ValueError):
    """A header from the network that must not reach the kernel; str() says why."""


def check(header: Header, frame: bytes | bytearray | memoryview, tap: bool, mtu: int, max_packet: int,
          lay: "L.Layout | None" = None) -> Header:
    """The header to write with `frame`, or BadHeader. `mtu`: the interface's
    (every segment of a super-packet must fit it); `max_packet`: the largest
    frame without segmentation (limits.max_packet). hdr_len is recomputed
    from the packet itself (the peer's is a hint, and hints are not trusted).
    `lay`: layout.parse(frame, tap), if the caller has it already."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = header
    if flags & ~F_NEEDS_CSUM:
        raise BadHeader(f"flags {flags:#x}")
    gso = gso_type & ~GSO_ECN
    n = len(frame)
    if gso == GSO_NONE:
        if gso_type or gso_size:
            raise BadHeader(f"gso_type {gso_type:#x} with gso_size {gso_size} on a plain packet")
        if n > max_packet:
            raise BadHeader(f"{n}-byte packet over the {max_packet}-byte limit")
        if not flags:
            return Header(0, 0, 0, 0, 0, 0)
        lay = lay or L.parse(frame, tap)
        if lay is None:
            raise BadHeader("checksum offload on a packet that is not TCP or UDP over IP")
        _check_csum(lay, csum_start, csum_offset)
        return Header(F_NEEDS_CSUM, 0, lay.headers, 0, csum_start, csum_offset)
    if gso not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise BadHeader(f"gso_type {gso_type:#x}")
    if gso_type & GSO_ECN and gso == GSO_UDP_L4:
        raise BadHeader("ECN flag on UDP segmentation")
    if not flags & F_NEEDS_CSUM:
        raise BadHeader("segmentation without checksum offload")
    lay = lay or L.parse(frame, tap)
    if lay is None:
        raise BadHeader("segmentation of a packet that is not TCP or UDP over IP")
    want = {GSO_TCPV4: (4, L.TCP), GSO_TCPV6: (6, L.TCP)}.get(gso)
    if want is not None and (lay.version, lay.proto) != want:
        raise BadHeader(f"gso_type {gso_type:#x} on an IPv{lay.version} packet of protocol {lay.proto}")
    if gso == GSO_UDP_L4 and lay.proto != L.UDP:
        raise BadHeader(f"UDP segmentation of protocol {lay.proto}")
    if lay.end != n:
        raise BadHeader(f"{n - lay.end} bytes past the end of the IP packet")
    _check_csum(lay, csum_start, csum_offset)
    if gso_size == 0 or lay.headers - lay.l3 + gso_size > mtu:
        raise BadHeader(f"gso_size {gso_size} does not fit the {mtu}-byte MTU")
    if lay.proto == L.UDP and ((frame[lay.l4 + 4] << 8) | frame[lay.l4 + 5]) != lay.end - lay.l4:
        raise BadHeader("UDP length disagrees with the IP length")
    if n <= lay.headers:
        raise BadHeader("segmentation of a packet without payload")
    return Header(F_NEEDS_CSUM, gso_type, lay.headers, gso_size, csum_start, csum_offset)


def partial(lay: L.Layout | None) -> Header:
    """The header of a plain packet whose TCP/UDP checksum is left partial (what
    FLAG_PARTIAL stands for). For anything not TCP or UDP over IP (`lay` None) a
    header check() refuses."""
    if lay is None:
        return Header(F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0)
    return Header(F_NEEDS_CSUM, GSO_NONE, lay.headers, 0, lay.l4, TCP_CHECK if lay.proto == L.TCP else UDP_CHECK)


def _check_csum(lay: L.Layout, csum_start: int, csum_offset: int) -> None:
    offset = TCP_CHECK if lay.proto == L.TCP else UDP_CHECK
    if csum_start != lay.l4 or csum_offset != offset:
        raise BadHeader(f"checksum at {csum_start}+{csum_offset}, "
                        f"not in the {'TCP' if lay.proto == L.TCP else 'UDP'} header at {lay.l4}")
