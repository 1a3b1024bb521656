"""MSS clamping as a table: SYN, SYN-ACK, no MSS option, IPv6, odd alignment,
fragments and non-TCP left alone; checksums recomputed from scratch agree."""

import ipaddress
import struct

import pytest

from tunneld.packet.mss import clamp, limits
from tests.packets import checksum

MSS4, MSS6 = limits(1280)  # 1240, 1220


def tcp_packet(version: int, flags: int, options: bytes, frag: int = 0) -> bytes:
    src, dst = ("10.0.0.1", "10.0.0.2") if version == 4 else ("fd00::1", "fd00::2")
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    options += b"\0" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options
    if version == 4:
        pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, frag, 64, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    else:
        pseudo = s + d + struct.pack("!I3xB", len(tcp), 6)
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, s, d)
    csum = checksum(pseudo + tcp)
    return ip + tcp[:16] + struct.pack("!H", csum) + tcp[18:]


def tcp_checksum_ok(packet: bytes) -> bool:
    if packet[0] >> 4 == 4:
        tcp = packet[20:]
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        tcp = packet[40:]
        pseudo = packet[8:40] + struct.pack("!I3xB", len(tcp), 6)
    return checksum(pseudo + tcp) == 0


def mss_of(packet: bytes) -> int | None:
    off = 20 if packet[0] >> 4 == 4 else 40
    i, end = off + 20, off + (packet[off + 12] >> 4) * 4
    while i < end:
        if packet[i] == 0:
            break
        if packet[i] == 1:
            i += 1
            continue
        if packet[i] == 2:
            return struct.unpack("!H", packet[i + 2:i + 4])[0]
        i += packet[i + 1]
    return None


MSS = lambda v: struct.pack("!BBH", 2, 4, v)  # noqa: E731
SACK_OK, NOP = b"\x04\x02", b"\x01"
SYN, SYNACK, ACK = 0x02, 0x12, 0x10

# (case, packet, MSS expected after, changed?)
CASES = [
    ("v4 SYN 1460 -> 1240", tcp_packet(4, SYN, MSS(1460)), 1240, True),
    ("v4 SYN-ACK 1460 -> 1240", tcp_packet(4, SYNACK, MSS(1460) + SACK_OK), 1240, True),
    ("v4 SYN already small", tcp_packet(4, SYN, MSS(536)), 536, False),
    ("v4 SYN at the limit", tcp_packet(4, SYN, MSS(1240)), 1240, False),
    ("v4 SYN without MSS option", tcp_packet(4, SYN, SACK_OK + NOP + NOP), None, False),
    ("v4 SYN, MSS at an odd offset", tcp_packet(4, SYN, NOP + MSS(1460)), 1240, True),
    ("v4 SYN, MSS after SACK_OK", tcp_packet(4, SYN, SACK_OK + MSS(8960)), 1240, True),
    ("v4 ACK with an MSS-looking option is left alone", tcp_packet(4, ACK, MSS(1460)), 1460, False),
    ("v4 fragment left alone", tcp_packet(4, SYN, MSS(1460), frag=0x2000 | 10), 1460, False),
    ("v6 SYN 1440 -> 1220", tcp_packet(6, SYN, MSS(1440)), 1220, True),
    ("v6 SYN-ACK odd offset", tcp_packet(6, SYNACK, NOP + NOP + NOP + MSS(9000)), 1220, True),
    ("v6 SYN without MSS", tcp_packet(6, SYN, b""), None, False),
]


@pytest.mark.parametrize("case,packet,after,changed", CASES, ids=[c[0] for c in CASES])
def test_clamp(case, packet, after, changed):
    assert tcp_checksum_ok(packet)
    out = clamp(packet, MSS4, MSS6)
    assert (out is not packet) is changed
    assert mss_of(bytes(out)) == after
    assert tcp_checksum_ok(bytes(out)), "the incremental checksum update must agree with a full recomputation"
    assert len(out) == len(packet)


@pytest.mark.parametrize("packet", [b"", b"\x45" * 19, bytes(20), b"\x60" + bytes(39),
                                    tcp_packet(4, SYN, MSS(1460))[:30], b"\x45\0\0\x28" + bytes(5) + b"\x11" + bytes(30)])
def test_short_and_other_packets_pass_untouched(packet):
    assert clamp(packet, MSS4, MSS6) is packet


def test_malformed_options_do_not_loop_or_raise():
    p = bytearray(tcp_packet(4, SYN, b"\x08\x00\x00\x00" + MSS(1460)))  # option with length 0
    assert clamp(bytes(p), MSS4, MSS6) == bytes(p)


ETH = bytes.fromhex("020000000002" "020000000001")
TYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}
VLAN = b"\x81\x00\x00\x2a"

# (case, frame, MSS expected after, changed?): bridged frames over a TAP tunnel
FRAMES = [
    ("untagged v4 SYN 1460 -> 1240", ETH + TYPE[4] + tcp_packet(4, SYN, MSS(1460)), 1240, True),
    ("802.1Q v4 SYN-ACK 1460 -> 1240", ETH + VLAN + TYPE[4] + tcp_packet(4, SYNACK, MSS(1460) + SACK_OK), 1240, True),
    ("QinQ v6 SYN odd offset", ETH + b"\x88\xa8\x00\x01" + VLAN + TYPE[6] + tcp_packet(6, SYN, NOP + MSS(1440)),
     1220, True),
    ("untagged v4 ACK left alone", ETH + TYPE[4] + tcp_packet(4, ACK, MSS(1460)), 1460, False),
    ("ARP left alone", ETH + b"\x08\x06" + bytes(28), None, False),
]


@pytest.mark.parametrize("case,frame,after,changed", FRAMES, ids=[c[0] for c in FRAMES])
def test_clamp_in_bridged_frames(case, frame, after, changed):
    from tunneld.packet.layout import l3_offset
    from tunneld.packet.mss import is_syn
    out = clamp(frame, MSS4, MSS6, tap=True)
    assert (out is not frame) is changed
    assert is_syn(frame, tap=True) is ("SYN" in case)
    ip = l3_offset(frame, True)
    if after is not None:
        assert mss_of(bytes(out[ip:])) == after and tcp_checksum_ok(bytes(out[ip:]))
    assert len(out) == len(frame) and out[:ip] == frame[:ip]


def test_bridged_limits_fit_a_1500_byte_underlay_whole():
    """The largest clamped segment, in a tagged frame, sealed, in IPv6 + UDP: at most 1500 bytes."""
    from tunneld.packet.mss import bridged_limits
    for encrypted, compatible, overhead in ((True, False, 32 + 16), (True, True, 32), (False, False, 0)):
        mss4, mss6 = bridged_limits(1500, encrypted, compatible)
        assert 40 + 8 + overhead + 14 + 8 + 40 + mss4 <= 1500
        assert 40 + 8 + overhead + 14 + 8 + 60 + mss6 <= 1500
        assert 40 + 8 + overhead + 14 + 8 + 40 + mss4 + 1 > 1500 - 0  # and no smaller than it must be
    assert bridged_limits(1280, True, False) == limits(1280)  # a smaller LAN MTU is the tighter bound
