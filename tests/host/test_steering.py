"""The reuseport steering program, run through a small classic-BPF interpreter:
one row per packet shape."""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from tunneld.conn import steering
from tunneld.conn.steering import PEER, STRANGER


def v4(src: str) -> bytes:
    return bytes([0x45]) + bytes(11) + ipaddress.IPv4Address(src).packed + bytes(4)


def v6(src: str) -> bytes:
    return bytes([0x60]) + bytes(7) + ipaddress.IPv6Address(src).packed + bytes(16)


PEER4, PEER6 = ipaddress.IPv4Address("10.77.0.1").packed, ipaddress.IPv6Address("2001:db8::1").packed

# (peer IP the program steers by, payload, IP header, socket)
ROWS = [
    (None, b"\x04\0\0\0", v4("10.78.0.3"), PEER),  # no peer yet: transport messages first
    (None, b"\x01\0\0\0", v4("10.77.0.1"), STRANGER),
    (None, b"", v4("10.77.0.1"), STRANGER),  # nothing to read: the program aborts with 0
    (PEER4, b"\x01\0\0\0", v4("10.77.0.1"), PEER),  # anything from the peer's address
    (PEER4, b"\x04\0\0\0", v4("10.77.0.1"), PEER),
    (PEER4, b"", v4("10.77.0.1"), PEER),
    (PEER4, b"\x04\0\0\0", v4("10.77.0.2"), STRANGER),  # a roaming peer's first packets: strangers'
    (PEER4, b"\x01\0\0\0", v4("10.78.0.3"), STRANGER),
    (PEER4, b"\x01\0\0\0", v6("::a4d:1"), STRANGER),  # an IPv6 packet never matches an IPv4 peer
    (PEER6, b"\x01\0\0\0", v6("2001:db8::1"), PEER),
    (PEER6, b"\x01\0\0\0", v6("2001:db8::2"), STRANGER),
    (PEER6, b"\x01\0\0\0", v6("2001:db9::1"), STRANGER),
    (PEER6, b"\x01\0\0\0", v6("3001:db8::1"), STRANGER),
    (PEER6, b"\x01\0\0\0", v4("32.1.13.184"), STRANGER),  # the v6 peer's first word, as IPv4
]


def test_steering_table():
    for peer, payload, header, want in ROWS:
        assert steering.run(steering.program(peer), payload, header) == want, (peer, payload, header)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.binary(max_size=8))
def test_ipv4_steering_matches_exactly_the_peer(peer, src, payload):
    header = bytes([0x45]) + bytes(11) + src + bytes(4)
    assert steering.run(steering.program(peer), payload, header) == (PEER if src == peer else STRANGER)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_ipv6_steering_matches_exactly_the_peer(peer, src):
    header = bytes([0x60]) + bytes(7) + src + bytes(16)
    assert steering.run(steering.program(peer), b"\x04", header) == (PEER if src == peer else STRANGER)


def test_encoding_is_struct_sock_filter():
    code = steering.program(PEER4)
    raw = steering.encode(code)
    assert len(raw) == 8 * len(code)
    assert raw[:8] == bytes([0x30, 0, 0, 0]) + ((steering.SKF_NET_OFF) & 0xFFFFFFFF).to_bytes(4, "little")


async def test_the_kernel_steers_the_peers_datagrams_to_their_own_socket():
    """On loopback: the peer is 127.0.0.1, a stranger sends from 127.0.0.2."""
    import asyncio
    import socket

    from tests.host.test_contracts import free_port
    from tunneld.config import Endpoint, TransportConfig
    from tunneld.conn.udp import UdpTransport

    port, peer_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    t, _ = await UdpTransport.open(TransportConfig("udp", Endpoint("127.0.0.1", port), Endpoint("127.0.0.1", peer_port)),
                                   lambda m, a: None, 2000, steer=True)
    loop = asyncio.get_running_loop()
    for sock in (t.sock, t.strangers):  # read by hand below, not by the loop
        loop.remove_reader(sock.fileno())
    try:
        for src, payload in (("127.0.0.1", b"\x01peer"), ("127.0.0.2", b"\x01stranger"), ("127.0.0.2", b"\x04stranger")):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                s.sendto(payload, ("127.0.0.1", port))
        await asyncio.sleep(0.1)

        def drain(sock):
            got = []
            while True:
                try:
                    got.append(sock.recv(100))
                except BlockingIOError:
                    return got
        assert drain(t.sock) == [b"\x01peer"]
        assert drain(t.strangers) == [b"\x01stranger", b"\x04stranger"]
        t.peer_moved(("127.0.0.2", 9))  # the peer roamed: steer by its new address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.sendto(b"\x04moved", ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        assert drain(t.sock) == [b"\x04moved"]
    finally:
        t.close()
