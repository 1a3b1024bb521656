"""One contract, every implementation: the in-memory fakes must behave like the
real transports (UDP, TCP on loopback, no root needed) so that tests of the core
on fakes say something about the real thing. The Device contract is one suite,
tests/helpers/device_contract.py: here on the in-memory device, in a namespace
on a real TUN/TAP (tests/netns/test_netns_device.py).
"""

import asyncio
import socket

import pytest

from tests.helpers import device_contract
from tunneld.config import Endpoint, TransportConfig
from tunneld.conn.tcp import TcpTransport
from tunneld.conn.memory import MemoryNetwork
from tunneld.tun.memory import MemoryDevice
from tunneld.conn.udp import UdpTransport

MAX = 1514


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    """a and b, each collecting what it receives in `got_a` / `got_b`."""

    def __init__(self):
        self.got_a, self.got_b, self.errors = [], [], []
        self.net = None

    def on_a(self, messages, addr):
        self.got_a.extend((bytes(m), addr) for m in messages)

    def on_b(self, messages, addr):
        self.got_b.extend((bytes(m), addr) for m in messages)

    async def settle(self, want_b: int, timeout: float = 5.0):
        if self.net is not None:
            self.net.deliver()
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.got_b) < want_b and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


async def memory_pair(h):
    h.net = MemoryNetwork()
    a = h.net.transport(("a", 1), h.on_a)
    b = h.net.transport(("b", 2), h.on_b)
    return a, b, ("b", 2), ("a", 1)


async def udp_pair(h):
    pa, pb = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    a, _ = await UdpTransport.open(TransportConfig("udp", Endpoint("127.0.0.1", pa), None), h.on_a, MAX, h.errors.append)
    b, _ = await UdpTransport.open(TransportConfig("udp", Endpoint("127.0.0.1", pb), None), h.on_b, MAX, h.errors.append)
    return a, b, ("127.0.0.1", pb), ("127.0.0.1", pa)


async def udp_steered_pair(h):
    """Listeners that keep their peer's datagrams in a socket of their own (the
    peer known from `remote`): the same contract over the two-socket group."""
    pa, pb = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    a, _ = await UdpTransport.open(TransportConfig("udp", Endpoint("127.0.0.1", pa), Endpoint("127.0.0.1", pb)),
                                   h.on_a, MAX, h.errors.append, steer=True)
    b, _ = await UdpTransport.open(TransportConfig("udp", Endpoint("127.0.0.1", pb), Endpoint("127.0.0.1", pa)),
                                   h.on_b, MAX, h.errors.append, steer=True)
    assert a.strangers is not None and b.steered_to == bytes([127, 0, 0, 1])
    return a, b, ("127.0.0.1", pb), ("127.0.0.1", pa)


async def tcp_pair(h):
    port = free_port()
    ups = []
    b = await TcpTransport.open(TransportConfig("tcp", Endpoint("127.0.0.1", port), None), MAX, h.on_b,
                                lambda addr, dialled=False: ups.append(addr), lambda: None, lambda t, k="": h.errors.append(t))
    a = await TcpTransport.open(TransportConfig("tcp", None, Endpoint("127.0.0.1", port)), MAX, h.on_a,
                                lambda addr, dialled=False: ups.append(addr), lambda: None, lambda t, k="": h.errors.append(t))
    a.start_connecting()
    for _ in range(500):
        if len(ups) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(ups) == 2, "tcp pair did not connect"
    return a, b, ups[0], ups[1]


PAIRS = {"memory": memory_pair, "udp": udp_pair, "udp-steered": udp_steered_pair, "tcp": tcp_pair}


@pytest.fixture(params=list(PAIRS))
async def transports(request):
    h = Harness()
    a, b, to_b, a_seen_by_b = await PAIRS[request.param](h)
    yield h, a, b, to_b, a_seen_by_b
    a.close()
    b.close()


async def test_messages_arrive_whole_and_in_order(transports):
    h, a, b, to_b, _ = transports
    sent = [bytes([i % 256]) * (1 + i * 37 % MAX) for i in range(50)] + [b"\x45" * MAX, b"\x01"]
    for m in sent:
        assert a.send(m, to_b) is True
    await h.settle(len(sent))
    assert [m for m, _ in h.got_b] == sent
    assert h.errors == []


async def test_memoryview_messages(transports):
    h, a, b, to_b, _ = transports
    buf = bytearray(b"\x45" * 100 + b"tail")
    assert a.send(memoryview(buf)[50:], to_b)
    await h.settle(1)
    assert h.got_b[0][0] == bytes(buf[50:])


async def test_reply_reaches_the_sender_address(transports):
    h, a, b, to_b, _ = transports
    a.send(b"ping", to_b)
    await h.settle(1)
    _, from_a = h.got_b[0]
    assert b.send(b"pong", from_a)
    for _ in range(500):
        if h.net is not None:
            h.net.deliver()
        if h.got_a:
            break
        await asyncio.sleep(0.01)
    assert h.got_a[0][0] == b"pong"


async def test_closed_transport_receives_nothing(transports):
    h, a, b, to_b, _ = transports
    b.close()
    a.send(b"late", to_b)
    await h.settle(1, timeout=0.3)
    assert h.got_b == []


async def test_tcp_send_without_connection_is_a_drop():
    h = Harness()
    t = await TcpTransport.open(TransportConfig("tcp", Endpoint("127.0.0.1", free_port()), None), MAX,
                                h.on_b, lambda a: None, lambda: None, lambda t, k="": None)
    try:
        assert t.send(b"\x45" * 20, None) is False
    finally:
        t.close()


async def test_send_many_arrives_whole_and_in_order(transports):
    """A batch (UDP: equal sizes go in one GSO send, a shorter one ends a run)."""
    h, a, b, to_b, _ = transports
    sent = [bytes([i]) * 1000 for i in range(70)] + [b"\x45" * 300, b"\x46" * 1000, b"\x47"]
    assert a.send_many(sent, to_b) == len(sent)
    await h.settle(len(sent))
    assert [m for m, _ in h.got_b] == sent
    assert h.errors == []


@pytest.mark.parametrize("check", device_contract.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "vnet"])
@pytest.mark.parametrize("mode", ["tun", "tap"])
def test_memory_device_contract(mode, vnet, check):
    """The suite the real TUN/TAP passes in tests/netns/test_netns_device.py."""
    dev = MemoryDevice(vnet=vnet)
    check(dev, device_contract.MemorySide(dev, mode))
