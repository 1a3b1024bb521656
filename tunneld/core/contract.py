"""The two I/O contracts the core is carried over.

Real implementations: `tunneld.tun.device.TunTap`, `tunneld.conn.udp.UdpTransport`,
`tunneld.conn.tcp.TcpTransport`. Fakes with the same contracts: `tunneld.tun.memory`, `tunneld.conn.memory`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

Address = Any  # a socket address tuple as the transport reports it, or a fake's label
OnMessage = Callable[[bytes | memoryview, Address], None]
OnMessages = Callable[[list, Address], None]  # the messages one read brought, all from one address


# What a packet is besides a whole plain one: the core passes these to a session's
# seal() and reads them back from what it opens. In tunneld mode they travel in the
# second byte of an authenticated transport message header (wg/constants.py).
FLAG_VNET = 0x01  # the packet leads with a virtio_net_hdr: a super-packet
FLAG_PARTIAL = 0x02  # a plain packet whose TCP/UDP checksum is left partial
# Never on the wire: what a session's open() hands the core besides packets.
FLAG_INCOMPLETE = 0x100  # a chunked plaintext that will never be whole (packet/chunks.Partial): salvage it


class Segmented:
    """Datagrams of `size` bytes laid back to back in `data`, the last one
    possibly shorter: what a datagram transport sends with one UDP GSO sendmsg.
    A session makes one only for a datagram transport; its buffer is reused by
    the next seal, so it is sent at once, like every message the core gives."""

    __slots__ = ("data", "size")

    def __init__(self, data: memoryview, size: int):
        self.data = data
        self.size = size

    def __len__(self) -> int:
        return len(self.data)

    def datagrams(self) -> list:
        """One view per datagram, for a transport without GSO."""
        data, size = self.data, self.size
        return [data[i:i + size] for i in range(0, len(data), size)]


def format_address(addr: Address) -> str:
    """host:port, [v6]:port, a v4-mapped address as plain IPv4; "nobody" for None.
    An address that names its transport (one of a list's) leads with it: "tcp 10.0.0.2:443"."""
    if addr is None:
        return "nobody"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        text = f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
        protocol = getattr(addr, "protocol", None)
        return f"{protocol} {text}" if protocol else text
    return str(addr)


class Device(Protocol):
    """A network interface that moves whole packets (TUN) or frames (TAP).

    `read()` returns one whole packet, or None when none is waiting; it never
    blocks. The returned buffer may be reused by the next read, so use it first.
    `write(packet)` hands one whole packet to the interface: True when taken,
    False when the interface queue is full and the packet was dropped. Other
    failures raise OSError. With `vnet`, every packet read and written starts
    with a virtio_net_hdr and may be a 64 KB super-packet (packet/).
    """

    name: str
    vnet: bool

    def read(self) -> bytes | memoryview | None: ...

    def write(self, packet: bytes | memoryview) -> bool: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Carries whole messages to and from the peer.

    `send(message, addr)` sends one whole message: True when handed to the
    network, False when dropped because the link cannot take it now (no
    connection, a full queue). It never blocks and never buffers without bound.
    `send_many(messages, addr)` sends a batch in as few system calls as the
    transport can (UDP GSO, one TCP write) and returns how many it took, in
    order: the rest were dropped. A datagram transport may be given a
    `Segmented` among them: its datagrams, one message as far as counting goes. Received messages are passed, whole and in
    order of arrival, to the `on_messages(messages, addr)` callback given at
    construction, as many as one read brought; those buffers may be reused
    after the callback returns.
    """

    def send(self, message: bytes | memoryview, addr: Address) -> bool: ...

    def send_many(self, messages: list, addr: Address) -> int: ...

    def close(self) -> None: ...


# Optional abilities of a transport, checked with isinstance (wireguard-go's
# conn.PeekLookAtSocketFd): the shell tells a transport that has one, and no other.

@runtime_checkable
class TakesBigFrames(Protocol):
    """A stream transport that can take frames over 64 KB from the peer (super-packets)."""

    def allow_big_frames(self, allow: bool) -> None: ...


@runtime_checkable
class FollowsPeer(Protocol):
    """A transport that wants to know where the authenticated peer is now (TCP
    promotes that candidate; UDP steers that source first)."""

    def peer_moved(self, addr: Address) -> None: ...
