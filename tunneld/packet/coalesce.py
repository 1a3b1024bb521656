"""GRO in userspace: join consecutive TCP segments of one flow into a super-packet.

Only authenticated packets come here (a WireGuard or tunneld session opened
them), and a joined packet is written with a partial checksum the kernel does
not verify: as the kernel's own WireGuard marks decrypted packets
CHECKSUM_UNNECESSARY, the AEAD tag is the integrity check. Segments join when
they continue each other exactly, as the kernel's tcp_gro_receive requires:
same addresses, ports, IP TOS/TTL, ACK number, flags and window, identical TCP
options, the next sequence number, and every segment but the last of one size.
A PSH, a short segment or anything else ends the flow's super-packet.

Every segment of a joined packet fits the MTU because each packet added did
(tunnel.py drops larger ones before they come here): gso_size is the first
segment's payload, every later one is no larger, and all carry its headers.
"""

from __future__ import annotations

from tunneld.packet.limits import GRO_MAX_SEGMENTS, MAX_IP_PACKET
from tunneld.packet import checksum
from tunneld.packet import layout as L
from tunneld.packet.virtio import (F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, TCP_CHECK,
                                    Header)

TCP_PSH = 0x08
TCP_ACK = 0x10


class _Flow:
    __slots__ = ("first", "header", "lay", "parts", "size", "mss", "next_seq", "psh")

    def __init__(self, first, header: bytes, lay: L.Layout, payload_len: int):
        self.first, self.header, self.lay = first, header, lay
        self.parts = [first[lay.headers:lay.end]]
        self.size = payload_len
        self.mss = payload_len
        self.next_seq = (int.from_bytes(first[lay.l4 + 4:lay.l4 + 8], "big") + payload_len) & 0xFFFFFFFF
        self.psh = bool(first[lay.l4 + 13] & TCP_PSH)


class Coalescer:
    """Collects one batch of packets; `flush()` returns the device buffers
    (virtio header + packet), in an order that keeps every flow's own order."""

    def __init__(self, tap: bool, single: bytes):
        """`single`: the header for a packet written alone with its own checksum
        (virtio.PLAIN)."""
        self.tap = tap
        self.single = single
        self.out: list = []  # bytes ready for the device, or an open _Flow
        self.open: dict = {}
        self.joined = 0  # super-packets built by the flush to come

    def add(self, frame: bytes | memoryview, header: bytes | None = None, lay: L.Layout | None = None) -> None:
        """One packet. `header`: its own virtio header, if it came with one (a
        tunneld peer's partial checksum, checked); otherwise `single` applies.
        The frame must stay unchanged until flush(): it is joined then.
        `lay`: layout.parse(frame), if the caller has it already."""
        lay = lay or L.parse(frame, self.tap)
        if lay is None or lay.proto != L.TCP or lay.end != len(frame):
            self.out.append((header or self.single) + bytes(frame))
            return
        l3, l4 = lay.l3, lay.l4
        if lay.version == 4:
            key = (bytes(frame[:l3]), bytes(frame[l3 + 12:l3 + 20]), bytes(frame[l4:l4 + 4]))
        else:
            key = (bytes(frame[:l3]), bytes(frame[l3 + 8:l3 + 40]), bytes(frame[l4:l4 + 4]))
        flags = frame[l4 + 13]
        if lay.end == lay.headers or flags & ~(TCP_PSH | TCP_ACK) or not flags & TCP_ACK:
            self.open.pop(key, None)  # nothing of this flow joins across it
            self.out.append((header or self.single) + bytes(frame))
            return
        payload_len = lay.end - lay.headers
        flow = self.open.get(key)
        if flow is not None:
            if self._joins(flow, frame, lay, payload_len):
                if len(flow.parts) == 1:
                    self.joined += 1
                flow.parts.append(frame[lay.headers:lay.end])
                flow.size += payload_len
                flow.next_seq = (flow.next_seq + payload_len) & 0xFFFFFFFF
                if payload_len < flow.mss or frame[l4 + 13] & TCP_PSH:
                    flow.psh = bool(frame[l4 + 13] & TCP_PSH)
                    del self.open[key]  # ended: nothing may follow it in this super-packet
                return
            del self.open[key]
        flow = _Flow(frame, header or self.single, lay, payload_len)
        self.out.append(flow)
        if not flow.psh:
            self.open[key] = flow

    @staticmethod
    def _joins(flow: _Flow, frame, lay: L.Layout, payload_len: int) -> bool:
        a, b, fl = flow.first, frame, flow.lay
        if lay[:5] != fl[:5] or payload_len > flow.mss or len(flow.parts) >= GRO_MAX_SEGMENTS:
            return False
        if fl.l4 - fl.l3 + fl.l4_len + flow.size + payload_len > MAX_IP_PACKET:
            return False
        l3, l4 = lay.l3, lay.l4
        if int.from_bytes(b[l4 + 4:l4 + 8], "big") != flow.next_seq:
            return False
        if a[l4 + 8:l4 + 13] != b[l4 + 8:l4 + 13] or a[l4 + 14:l4 + 16] != b[l4 + 14:l4 + 16]:
            return False  # ACK number, data offset, window
        if a[l4 + 20:lay.headers] != b[l4 + 20:lay.headers]:
            return False  # options (timestamps included)
        if lay.version == 4:
            # TOS, DF, TTL and protocol; lengths, ids and checksums differ by design
            return a[l3 + 1] == b[l3 + 1] and a[l3 + 6] == b[l3 + 6] and a[l3 + 8:l3 + 10] == b[l3 + 8:l3 + 10] \
                and a[l3 + 20:l4] == b[l3 + 20:l4]
        return a[l3:l3 + 4] == b[l3:l3 + 4] and a[l3 + 6:l3 + 8] == b[l3 + 6:l3 + 8]  # class, flow label, hop limit

    def add_whole(self, buf: bytes) -> None:
        """A device buffer (header and packet) that passes as it is: a super-packet
        the peer sent whole. Open flows end here, so nothing overtakes it."""
        self.open.clear()
        self.out.append(buf)

    def flush(self) -> list[bytes]:
        out = self.out
        for i, item in enumerate(out):
            if type(item) is _Flow:
                out[i] = self._build(item)
        self.out, self.open, self.joined = [], {}, 0
        return out

    def _build(self, flow: _Flow) -> bytes:
        first, lay = flow.first, flow.lay
        if len(flow.parts) == 1:
            return flow.header + bytes(first)
        l3, l4, hl = lay.l3, lay.l4, lay.headers
        h = bytearray(first[:hl])
        l4_len = lay.l4_len + flow.size
        if lay.version == 4:
            h[l3 + 2:l3 + 4] = (l4 - l3 + l4_len).to_bytes(2, "big")
            h[l3 + 10:l3 + 12] = b"\0\0"
            h[l3 + 10:l3 + 12] = checksum.ipv4_header(h[l3:l4]).to_bytes(2, "big")
            gso = GSO_TCPV4
        else:
            h[l3 + 4:l3 + 6] = l4_len.to_bytes(2, "big")
            gso = GSO_TCPV6
        if flow.psh:
            h[l4 + 13] |= TCP_PSH
        src, dst = L.addresses(h, lay._replace(end=hl))
        h[l4 + TCP_CHECK:l4 + TCP_CHECK + 2] = checksum.pseudo(lay.version, src, dst, L.TCP, l4_len).to_bytes(2, "big")
        vnet = Header(F_NEEDS_CSUM, gso, hl, flow.mss, l4, TCP_CHECK).pack()
        return vnet + h + b"".join(flow.parts)
