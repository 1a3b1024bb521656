"""Nothing larger than the interface allows reaches the device, whatever an
authenticated peer sends: a peer whose own MTU is larger (a misconfiguration, or
a compromised peer) has its big packets dropped and counted, and segments joined
for one device write are each within the MTU. Pure: two sessions in cores on the
in-memory network, a fake clock.

    site A (mtu 9000, sends)  --MemoryNetwork-->  site B (mtu 1420, offloads: joins TCP segments)
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.packets import ethernet, ipv4_udp
from tests.unit.test_offload import payload, tcp_super
from tunneld.packet import layout, virtio
from tunneld.service.relay import Relay
from tunneld.core.session import PlaintextSession
from tunneld.conn.memory import MemoryNetwork
from tunneld.core.clock import FakeClock
from tunneld.tun.memory import MemoryDevice
from tunneld.core.tunnel import Tunnel
from tunneld.wg.peer import WireGuardSession
from tunneld.wg.primitives import generate_private, public_of

A, B = ("10.77.0.1", 51820), ("10.77.0.2", 51820)
KEY_A = generate_private(bytes(range(32)))
KEY_B = generate_private(bytes(range(32, 64)))
BIG_MTU, MTU = 9000, 1420


class Site:
    def __init__(self, net, clock, addr, key, peer_key, mtu, *, endpoint=None, encrypted=True, compatible=False,
                 mode="tun", vnet=False, seed=0):
        tap = mode == "tap"
        max_packet = mtu + (22 if tap else 0)
        if encrypted:
            rng = random.Random(seed)
            self.session = WireGuardSession(static_private=key, peer_public=public_of(peer_key), psk=None,
                                            compatible=compatible, max_packet=max_packet, padding_trailer=tap,
                                            wall_offset=1.7e9, rng=rng.randbytes)
        else:
            self.session = PlaintextSession()
        self.core = Tunnel(self.session, mode, max_packet, endpoint=endpoint, vnet=vnet, mtu=mtu)
        self.device = MemoryDevice(vnet=vnet)
        self.relay = Relay(self.core, self.device, clock=clock)
        self.relay.transport = net.transport(addr, self.relay.messages)

    def send(self, *packets):
        for p in packets:
            self.device.inject(p)
        self.relay.device_readable()


def pair(**kw):
    """A (big MTU) dials B (small MTU) and they handshake; B's device is then empty."""
    net, clock = MemoryNetwork(), FakeClock()
    b_vnet = kw.pop("vnet", False)
    a = Site(net, clock, A, KEY_A, KEY_B, BIG_MTU, endpoint=B, seed=1, **kw)
    b = Site(net, clock, B, KEY_B, KEY_A, MTU, seed=2, vnet=b_vnet, **kw)
    hello = ipv4_udp("10.9.0.1", "10.9.0.2", 1, 2, b"hello")
    if kw.get("mode") == "tap":
        hello = ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800, hello)
    a.send(hello)
    net.deliver()
    b.device.written.clear()
    return net, a, b


def udp_packet(size: int) -> bytes:
    return ipv4_udp("10.9.0.1", "10.9.0.2", 1000, 2000, bytes(size - 28))


@pytest.mark.parametrize("encrypted, compatible, mode", [
    (True, True, "tun"),  # WireGuard: no padding
    (True, False, "tun"),  # tunneld mode: padded to 16, the IP length trims it
    (False, False, "tun"),  # plaintext (pinned to the configured peer)
    (True, False, "tap"),  # a frame over MTU + Ethernet header + two VLAN tags
])
def test_a_packet_over_the_mtu_from_the_peer_is_dropped_and_counted(encrypted, compatible, mode):
    net, a, b = pair(encrypted=encrypted, compatible=compatible, mode=mode)
    if encrypted:
        assert b.session.authenticated and b.session.current is not None
    limit = b.core.max_packet
    if mode == "tun":
        fits, over, huge = udp_packet(limit), udp_packet(limit + 1), udp_packet(BIG_MTU)
    else:
        frame = lambda n: ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800, udp_packet(n - 14))
        fits, over, huge = frame(limit), frame(limit + 1), frame(BIG_MTU)
    before = b.core.counters.rx.errors
    a.send(over, fits, huge)
    net.deliver()
    assert b.device.written == [fits]
    assert b.core.counters.rx.errors - before == 2
    assert b.core.counters.rx.packets >= 1


SEG_SIZES = st.lists(st.sampled_from([100, 1000, 1368, 1369, 1380, 2000, 4000, 8948]), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(sizes=SEG_SIZES, psh=st.lists(st.booleans(), min_size=20, max_size=20), compatible=st.booleans())
def test_joined_segments_never_exceed_the_mtu(sizes, psh, compatible):
    """One TCP flow of segments of any size from a peer with a larger MTU:
    every device write is a packet within the MTU, or a super-packet whose
    every segment (headers + gso_size) is."""
    net, a, b = pair(vnet=True, compatible=compatible)
    seq, sent = 5000, []
    for size, push in zip(sizes, psh):
        packet, _ = tcp_super(4, payload(size), seq=seq, flags=0x18 if push else 0x10)
        sent.append(packet)
        seq += size
    a.send(*sent)
    net.deliver()
    fitting = sum(len(p) <= MTU for p in sent)
    delivered = 0
    for buf in b.device.written:
        h = virtio.unpack(buf)
        packet = buf[virtio.SIZE:]
        lay = layout.parse(packet, False)
        assert lay is not None
        if h.gso:
            assert h.hdr_len - lay.l3 + h.gso_size <= MTU, (h, len(packet))
            delivered += -(-(lay.end - lay.headers) // h.gso_size)
        else:
            assert len(packet) <= MTU
            delivered += 1
    assert delivered == fitting
    assert b.core.counters.rx.errors == len(sent) - fitting

