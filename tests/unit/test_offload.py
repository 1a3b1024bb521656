"""The offload package, pure: checksums against RFC 1071's loop, segmentation and
coalescing with known packets, and the gate for virtio headers from the network
(tables of bad headers, then hypothesis with arbitrary ones)."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.packets import checksum as rfc1071
from tunneld.packet import checksum, coalesce, layout, segment, virtio
from tunneld.packet.virtio import BadHeader, Header

V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("fd00::1", "fd00::2")
TS_OPTION = b"\x01\x01\x08\x0a" + struct.pack("!II", 1234, 5678)  # NOP NOP timestamp


def tcp_super(version: int, payload: bytes, *, seq=1000, flags=0x18, options=TS_OPTION, ip_id=7,
              tap=False, vlan=False) -> tuple[bytes, int]:
    """A super-packet as a TSO read gives it: whole-payload IP length, the
    pseudo-header sum in the checksum field. Returns (frame, l4 offset)."""
    src, dst = V4 if version == 4 else V6
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 99, (thl // 4) << 4, flags, 512, 0, 0) + options
    l4_len = thl + len(payload)
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, ip_id, 0x4000, 64, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", rfc1071(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, l4_len, 6, 64, s, d)
    pseudo = checksum.pseudo(version, s, d, 6, l4_len)
    tcp = tcp[:16] + struct.pack("!H", pseudo) + tcp[18:]
    l2 = b""
    if tap:
        l2 = b"\x02" * 6 + b"\x04" * 6 + (b"\x81\x00\x00\x05" if vlan else b"")
        l2 += b"\x08\x00" if version == 4 else b"\x86\xdd"
    return l2 + ip + tcp + payload, len(l2) + len(ip)


def udp_super(version: int, payload: bytes) -> tuple[bytes, int]:
    src, dst = V4 if version == 4 else V6
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    l4_len = 8 + len(payload)
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 1, 0x4000, 64, 17, 0, s, d)
        ip = ip[:10] + struct.pack("!H", rfc1071(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, l4_len, 17, 64, s, d)
    udp = struct.pack("!HHHH", 5000, 6000, l4_len, checksum.pseudo(version, s, d, 17, l4_len))
    return ip + udp + payload, len(ip)


def valid_l4(frame: bytes, tap: bool = False) -> bool:
    """The packet's transport checksum verifies (RFC 1071 over pseudo-header + segment)."""
    lay = layout.parse(frame, tap)
    src, dst = layout.addresses(frame, lay)
    length = lay.end - lay.l4
    if lay.version == 4:
        pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, lay.proto, length)
    else:
        pseudo = bytes(src) + bytes(dst) + struct.pack("!IxxxB", length, lay.proto)
    return rfc1071(pseudo + bytes(frame[lay.l4:lay.end])) == 0


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


# --- checksum -----------------------------------------------------------------

@given(st.binary(min_size=1, max_size=3000))
def test_checksum_agrees_with_rfc1071(data):
    assert checksum.finish(checksum.add(data)) == rfc1071(data) or (rfc1071(data) == 0xFFFF and not any(data))


def test_ipv4_header_checksum():
    frame, _ = udp_super(4, b"x")
    header = bytearray(frame[:20])
    header[10:12] = b"\0\0"
    assert checksum.ipv4_header(header) == struct.unpack("!H", frame[10:12])[0]


# --- segmentation ---------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [1, 1367, 1368, 1369, 5000, 65000 - 72])
def test_tcp_split_makes_valid_segments(version, size):
    data = payload(size)
    frame, l4 = tcp_super(version, data, flags=0x18 | 0x80 | 0x01)  # PSH, CWR, FIN
    mss = 1368
    segs = segment.split(frame, Header(1, 1 if version == 4 else 4, 0, mss, l4, 16), tap=False, full=True)
    assert len(segs) == -(-size // mss)
    joined = b""
    for i, seg in enumerate(segs):
        lay = layout.parse(seg, False)
        assert lay is not None and lay.end == len(seg)
        assert valid_l4(seg)
        if version == 4:
            assert rfc1071(bytes(seg[:20])) == 0
            assert struct.unpack("!H", seg[4:6])[0] == 7 + i
        body = seg[lay.headers:]
        assert len(body) == (mss if i < len(segs) - 1 else size - mss * (len(segs) - 1))
        assert struct.unpack("!I", seg[lay.l4 + 4:lay.l4 + 8])[0] == 1000 + i * mss
        flags = seg[lay.l4 + 13]
        assert bool(flags & 0x80) == (i == 0)  # CWR on the first only
        assert bool(flags & 0x09) == (i == len(segs) - 1)  # FIN, PSH on the last only
        assert seg[lay.l4 + 20:lay.headers] == TS_OPTION
        joined += body
    assert joined == data


@pytest.mark.parametrize("version", [4, 6])
def test_udp_split_makes_whole_datagrams(version):
    data = payload(4000)
    frame, l4 = udp_super(version, data)
    segs = segment.split(frame, Header(1, 5, 0, 1400, l4, 6), tap=False, full=True)
    assert [len(s) - l4 - 8 for s in segs] == [1400, 1400, 1200]
    for s in segs:
        assert valid_l4(s)
        assert struct.unpack("!H", s[l4 + 4:l4 + 6])[0] == len(s) - l4
    assert b"".join(bytes(s[l4 + 8:]) for s in segs) == data


@pytest.mark.parametrize("vlan", [False, True])
def test_tap_split_keeps_the_ethernet_header(vlan):
    frame, l4 = tcp_super(4, payload(3000), tap=True, vlan=vlan)
    segs = segment.split(frame, Header(1, 1, 0, 1448, l4, 16), tap=True, full=True)
    assert len(segs) == 3
    for s in segs:
        assert s[:l4 - 20] == frame[:l4 - 20]
        assert valid_l4(s, tap=True)


@pytest.mark.parametrize("version", [4, 6])
def test_partial_split_then_finish_equals_full_split(version):
    frame, l4 = tcp_super(version, payload(7000))
    header = Header(1, 1 if version == 4 else 4, 0, 1300, l4, 16)
    full = segment.split(frame, header, tap=False, full=True)
    partial = segment.split(frame, header, tap=False, full=False)
    for seg in partial:
        h = virtio.partial(layout.parse(seg, False))
        assert virtio.check(h, seg, False, 1420, 1420) == h._replace(hdr_len=h.hdr_len)
        segment.finish(seg, h.csum_start, h.csum_offset)
    assert partial == full


def test_finish_completes_a_plain_partial_checksum():
    frame, l4 = tcp_super(4, payload(100))
    done = bytearray(frame)
    segment.finish(done, l4, 16)
    assert valid_l4(done) and not valid_l4(frame)


def test_split_refuses_what_it_cannot_read():
    with pytest.raises(segment.Unsplittable):
        segment.split(b"\x45" + bytes(30), Header(1, 1, 0, 1000, 20, 16), tap=False, full=True)


# --- coalescing -------------------------------------------------------------------

def split_full(version, size, mss=None, **kw):
    mss = mss or (1368 if version == 4 else 1348)  # a 1420-byte MTU with timestamps
    frame, l4 = tcp_super(version, payload(size), **kw)
    gso = 1 if version == 4 else 4
    return frame, segment.split(frame, Header(1, gso, 0, mss, l4, 16), tap=kw.get("tap", False), full=True)


def joined(packets, tap=False) -> list[bytes]:
    """What one batch of these packets becomes for the device."""
    c = coalesce.Coalescer(tap=tap, single=virtio.PLAIN)
    for p in packets:
        c.add(bytes(p))
    return c.flush()


@pytest.mark.parametrize("version", [4, 6])
def test_coalesced_segments_split_back_to_the_same_segments(version):
    frame, segs = split_full(version, 40000)
    out = joined(segs)
    assert len(out) == 1
    h = virtio.unpack(out[0])
    body = out[0][virtio.SIZE:]
    assert h.gso == (1 if version == 4 else 4) and h.gso_size == (1368 if version == 4 else 1348) and h.flags == 1
    assert virtio.check(h, body, False, 1420, 1420) == h
    again = segment.split(body, h, tap=False, full=True)
    assert [bytes(s) for s in again] == [bytes(s) for s in segs]


def test_coalescing_stops_at_a_gap_and_keeps_order():
    _, segs = split_full(4, 10 * 1368)
    out = joined(segs[:4] + segs[5:])  # segment 4 lost
    assert len(out) == 2
    firsts = [struct.unpack("!I", o[virtio.SIZE + 24:virtio.SIZE + 28])[0] for o in out]
    assert firsts == [1000, 1000 + 5 * 1368]


def test_other_packets_pass_alone_and_flows_stay_apart():
    _, a = split_full(4, 3 * 1368)
    _, b = split_full(6, 3 * 1368)
    udp, _ = udp_super(4, b"hello")
    out = joined((a[0], b[0], udp, a[1], b[1], a[2], b[2]))
    assert len(out) == 3
    assert out[2] == virtio.PLAIN + udp
    assert [virtio.unpack(o).gso for o in out[:2]] == [1, 4]


def test_a_lone_segment_keeps_its_checksum_and_header():
    _, segs = split_full(4, 1000)
    c = coalesce.Coalescer(tap=False, single=virtio.PLAIN)
    c.add(bytes(segs[0]))
    assert c.flush() == [virtio.PLAIN + bytes(segs[0])]


def test_psh_ends_a_super_packet():
    _, first = split_full(4, 2 * 1368, flags=0x18)  # PSH on its last segment
    _, second = split_full(4, 2 * 1368, seq=1000 + 2 * 1368, flags=0x10)
    assert len(joined(first + second)) == 2


def test_tap_frames_coalesce():
    frame, segs = split_full(4, 5 * 1448, mss=1448, tap=True, vlan=True)
    out = joined(segs, tap=True)
    assert len(out) == 1
    h = virtio.unpack(out[0])
    assert virtio.check(h, out[0][virtio.SIZE:], True, 1500, 1522) == h


# --- the gate for headers from the network -------------------------------------------

GOOD_FRAME, GOOD_L4 = tcp_super(4, payload(5000))
GOOD = Header(1, 1, 0, 1368, GOOD_L4, 16)


def test_a_good_header_passes_with_its_hdr_len_recomputed():
    assert virtio.check(GOOD._replace(hdr_len=7), GOOD_FRAME, False, 1420, 1420) == GOOD._replace(hdr_len=GOOD_L4 + 32)


@pytest.mark.parametrize("bad, why", [
    (GOOD._replace(flags=3), "flags"),
    (GOOD._replace(flags=0), "without checksum"),
    (GOOD._replace(gso_type=4), "IPv4"),
    (GOOD._replace(gso_type=3), "gso_type"),
    (GOOD._replace(gso_type=5), "UDP segmentation of protocol"),
    (GOOD._replace(gso_type=0x85), "ECN"),
    (GOOD._replace(gso_type=9), "gso_type"),
    (GOOD._replace(gso_size=0), "gso_size"),
    (GOOD._replace(gso_size=1369), "gso_size"),
    (GOOD._replace(csum_start=0), "checksum at"),
    (GOOD._replace(csum_offset=6), "checksum at"),
    (GOOD._replace(csum_offset=60000), "checksum at"),
])
def test_bad_headers_are_refused(bad, why):
    with pytest.raises(BadHeader, match=why):
        virtio.check(bad, GOOD_FRAME, False, 1420, 1420)


def test_plain_packets_stay_within_the_mtu_and_ask_nothing_odd():
    small, l4 = tcp_super(4, payload(100))
    assert virtio.check(Header(0, 0, 0, 0, 0, 0), small, False, 1420, 1420) == Header(0, 0, 0, 0, 0, 0)
    with pytest.raises(BadHeader, match="limit"):
        virtio.check(Header(0, 0, 0, 0, 0, 0), GOOD_FRAME, False, 1420, 1420)
    with pytest.raises(BadHeader, match="gso_size"):
        virtio.check(Header(0, 0, 0, 100, 0, 0), small, False, 1420, 1420)
    with pytest.raises(BadHeader, match="not TCP or UDP"):
        virtio.check(Header(1, 0, 0, 0, 0, 16), b"\x45" + bytes(40), False, 1420, 1420)


def test_trailing_bytes_and_fragments_are_refused():
    with pytest.raises(BadHeader, match="past the end"):
        virtio.check(GOOD, GOOD_FRAME + b"xx", False, 1420, 1420)
    frag = bytearray(GOOD_FRAME)
    frag[6] |= 0x20  # MF
    with pytest.raises(BadHeader):
        virtio.check(GOOD, frag, False, 1420, 1420)


@settings(max_examples=3000)
@given(st.builds(Header, st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535),
                 st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535)),
       st.sampled_from([GOOD_FRAME, tcp_super(6, payload(3000))[0], udp_super(4, payload(3000))[0],
                        tcp_super(4, payload(300))[0]]),
       st.binary(max_size=80), st.booleans())
def test_any_header_is_refused_or_describes_its_packet(header, frame, noise, garble):
    """Whatever the peer sends, what passes is something the kernel can take:
    a known gso type that matches the packet, a checksum inside it, segments
    that fit the MTU."""
    if garble:
        frame = noise + frame[len(noise):]
    try:
        h = virtio.check(header, frame, False, 1420, 1420)
    except BadHeader:
        return
    assert h.flags in (0, 1)
    if h.flags:
        assert h.csum_start + h.csum_offset + 2 <= len(frame)
    if h.gso:
        lay = layout.parse(frame, False)
        assert lay is not None and lay.end == len(frame)
        assert h.gso in (1, 4, 5) and h.hdr_len == lay.headers
        assert lay.headers + h.gso_size <= 1420 and len(frame) > lay.headers
        segment.split(frame, h, tap=False, full=True)  # and it can be cut
    else:
        assert len(frame) <= 1420


@given(st.binary(max_size=200), st.booleans())
def test_layout_never_reads_past_the_buffer(data, tap):
    lay = layout.parse(data, tap)
    if lay is not None:
        assert lay.headers <= lay.end <= len(data)
