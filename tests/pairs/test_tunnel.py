"""The core, driven through the in-memory device and network with a fake clock."""

import logging

from tunneld.service.relay import Relay
from tunneld.core.session import PlaintextSession
from tunneld.conn.memory import MemoryNetwork
from tunneld.core.clock import FakeClock
from tunneld.tun.memory import MemoryDevice
from tunneld.core.tunnel import Tunnel
from tunneld.core.events import EndpointChanged, StreamChanged
from tests.packets import ethernet, ipv4_udp, ipv6_udp

A, B = ("10.77.0.1", 55555), ("10.77.0.2", 55555)
PING = ipv4_udp("10.9.0.1", "10.9.0.2", 1000, 2000, b"hello")
PONG = ipv4_udp("10.9.0.2", "10.9.0.1", 2000, 1000, b"world")


class Site:
    def __init__(self, net, addr, clock, *, endpoint=None, pinned=False, mode="tun", mtu=1420):
        self.core = Tunnel(PlaintextSession(), mode, mtu + (14 if mode == "tap" else 0),
                           endpoint=endpoint, pinned=pinned)
        self.device = MemoryDevice()
        self.relay = Relay(self.core, self.device, clock=clock)
        self.transport = net.transport(addr, self.relay.messages)
        self.relay.transport = self.transport

    def send(self, *packets):
        for p in packets:
            self.device.inject(p)
        self.relay.device_readable()


def pair(**b_kwargs):
    net, clock = MemoryNetwork(), FakeClock()
    a = Site(net, A, clock, endpoint=B, pinned=True)
    b = Site(net, B, clock, **b_kwargs)
    return net, a, b


def test_packets_cross_both_ways_and_are_counted():
    net, a, b = pair()
    a.send(PING, PING)
    net.deliver()
    assert b.device.written == [PING, PING]
    b.send(PONG)  # b learned a's address from the first packet
    net.deliver()
    assert a.device.written == [PONG]
    assert (a.core.counters.tx.packets, a.core.counters.tx.bytes) == (2, 2 * len(PING))
    assert (b.core.counters.rx.packets, b.core.counters.rx.bytes) == (2, 2 * len(PING))
    assert (a.core.counters.rx.packets, b.core.counters.tx.packets) == (1, 1)
    assert b.core.endpoint == A


def test_listener_without_peer_drops_and_counts():
    net, a, b = pair()
    b.send(PONG)
    net.deliver()
    assert a.device.written == []
    assert b.core.counters.tx.drops == 1
    assert b.core.counters.tx.packets == 0


def test_learned_peer_is_followed_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="tunneld")
    net, a, b = pair()
    a.send(PING)
    net.deliver()
    a.transport.move(("10.77.0.9", 40000))  # NAT rebinding
    a.send(PING)
    net.deliver()
    assert b.core.endpoint == ("10.77.0.9", 40000)
    assert b.core.counters.peer_changes == 1
    assert "peer moved from 10.77.0.1:55555 to 10.77.0.9:40000" in caplog.text
    b.send(PONG)
    net.deliver()
    assert a.device.written == [PONG]


def test_pinned_peer_ignores_strangers(caplog):
    net, a, b = pair()
    stranger = net.transport(("10.77.0.66", 1234))
    stranger.send(PONG, A)
    stranger.send(PONG, A)
    net.deliver()
    assert a.device.written == []
    assert a.core.counters.rx.drops == 2
    assert a.core.endpoint == B
    assert caplog.text.count("not the configured peer 10.77.0.2:55555") == 1  # rate-limited


def test_malformed_packets_are_dropped_and_counted():
    net, a, b = pair()
    for bad in (b"\x00" * 40, b"\x75" + b"\x00" * 39, b"", b"\x45" * 1421):
        a.transport.send(bad, B)
    net.deliver()
    assert b.device.written == []
    assert b.core.counters.rx.errors == 4
    a.send(ipv6_udp("fd09::1", "fd09::2", 1, 2, b"v6"))
    net.deliver()
    assert len(b.device.written) == 1


def _ipv4_with_total_length(total: int, ihl: int = 5, size: int = 40) -> bytes:
    p = bytearray(ipv4_udp("10.9.0.1", "10.9.0.2", 1, 2, b"x" * 12)[:size])
    p[0] = 0x40 | ihl
    p[2:4] = total.to_bytes(2, "big")
    return bytes(p)


# (IPv4 total length, IHL in words, bytes on the wire, delivered?)
IPV4_LENGTHS = [
    (0, 5, 40, False), (1, 5, 40, False), (19, 5, 40, False),  # shorter than any IPv4 header
    (20, 5, 40, False),  # a bare header is fine by length, but 20 bytes of padding follow it unpadded
    (23, 6, 40, False),  # shorter than the 24-byte header it announces
    (40, 5, 40, True), (41, 5, 40, False),  # longer than what arrived
    (24, 6, 24, True), (20, 5, 20, True),
]


def test_ipv4_total_length_table():
    for total, ihl, size, delivered in IPV4_LENGTHS:
        net, a, b = pair()
        a.transport.send(_ipv4_with_total_length(total, ihl, size), B)
        net.deliver()
        assert (len(b.device.written) == 1) == delivered, (total, ihl, size)
        assert b.core.counters.rx.errors == (0 if delivered else 1), (total, ihl, size)


def test_tap_frames_need_an_ethernet_header():
    net, clock = MemoryNetwork(), FakeClock()
    a = Site(net, A, clock, endpoint=B, pinned=True, mode="tap", mtu=1500)
    b = Site(net, B, clock, mode="tap", mtu=1500)
    frame = ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0806, b"\x00" * 28)
    full = ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800, b"\x45" * 1500)
    a.send(frame, full)
    a.transport.send(b"\x02" * 13, B)  # shorter than an Ethernet header
    a.transport.send(full + b"x", B)  # one byte over MTU + 14
    net.deliver()
    assert b.device.written == [frame, full]
    assert b.core.counters.rx.errors == 2


def test_slow_transport_drops_at_the_device_and_counts():
    net, a, b = pair()
    a.transport.full = True
    a.send(PING, PING, PING)
    assert a.core.counters.tx.drops == 3
    net.deliver()
    assert b.device.written == [] and a.core.counters.tx.packets == 0
    a.transport.full = False
    a.send(PING)
    net.deliver()
    assert b.device.written == [PING]  # nothing held back to go out later


def test_full_device_drops_and_counts():
    net, a, b = pair()
    b.device.full = True
    a.send(PING, PING)
    net.deliver()
    assert b.core.counters.rx.drops == 2
    b.device.full = False
    a.send(PONG)
    net.deliver()
    assert b.device.written == [PONG]  # the dropped two were not held to be written later


def test_drain_is_bounded_per_callback():
    net, a, b = pair()
    for _ in range(1000):
        a.device.inject(PING)
    a.relay.device_readable()
    assert len(a.device.inbox) == 1000 - 256  # the loop calls again while the fd stays readable
    while a.device.inbox:
        a.relay.device_readable()
    net.deliver()
    assert len(b.device.written) == 1000


def test_stream_peer_up_and_down():
    core = Tunnel(PlaintextSession(), "tun", 1420)
    core.from_device(PING, 0.0)
    assert core.counters.tx.drops == 1
    assert core.datagrams_to_send() == ()
    core.transport_up(("10.77.0.1", 40000))
    core.from_device(PING, 0.0)
    assert core.datagrams_to_send() == [(PING, ("10.77.0.1", 40000))]
    assert core.datagrams_to_send() == ()  # taken once
    core.transport_down()
    core.transport_up(("10.77.0.1", 40001))
    assert core.counters.reconnects == 1
    events = list(iter(core.next_event, None))
    assert [e.peer for e in events if isinstance(e, StreamChanged)] == [("10.77.0.1", 40000), None, ("10.77.0.1", 40001)]
    # the second stream comes from another port: the endpoint moved (not at the first: nothing was known)
    assert [(e.old, e.new, e.why) for e in events if isinstance(e, EndpointChanged)] == \
        [(("10.77.0.1", 40000), ("10.77.0.1", 40001), "stream")]


def test_both_sessions_keep_the_session_contract():
    from tunneld.core.session import PlaintextSession, Session
    from tunneld.wg.peer import WireGuardSession
    from tunneld.wg.primitives import generate_private, public_of
    wg = WireGuardSession(static_private=generate_private(bytes(32)), peer_public=public_of(generate_private(bytes(range(32)))),
                          psk=None, compatible=False, max_packet=1420)
    assert isinstance(PlaintextSession(), Session) and isinstance(wg, Session)
    # isinstance on a runtime-checkable Protocol checks only that the names exist:
    # check the calls' parameters, and what each returns
    import inspect
    from tunneld.core.counters import Counters
    from tunneld.core.events import Event
    from tunneld.core.session import Opened
    for session in (PlaintextSession(), wg):
        for name in ("seal", "open", "sends_offload", "get_timer", "handle_timer", "kick", "stream_up",
                     "next_event", "set_keepalive", "rekey_from"):
            want = list(inspect.signature(getattr(Session, name)).parameters)[1:]
            assert list(inspect.signature(getattr(session, name)).parameters) == want, (type(session).__name__, name)
        assert isinstance(session.counters, Counters)
        assert isinstance(session.seal((PING,), 0.0), (list, tuple))
        opened = session.open([b""], A, 0.0)
        assert isinstance(opened, Opened) and opened.packets == [] and opened.source is None
        assert isinstance(session.handle_timer(0.0), (list, tuple)) and isinstance(session.kick(0.0), (list, tuple))
        event = session.next_event()
        while event is not None:
            assert isinstance(event, Event) and isinstance(str(event), str) and event.level in ("debug", "info", "warning")
            event = session.next_event()
