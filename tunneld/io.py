"""The two I/O contracts the core is carried over.

Real implementations: `tunneld.device.TunTap`, `tunneld.udp.UdpTransport`,
`tunneld.tcp.TcpTransport`. Fakes with the same contracts: `tunneld.testing`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

Address = Any
OnMessage = Callable[[bytes | memoryview, Address], None]


class Device(Protocol):
    """A network interface that moves whole packets (TUN) or frames (TAP).

    `read()` returns one whole packet, or None when none is waiting; it never
    blocks. The returned buffer may be reused by the next read, so use it first.
    `write(packet)` hands one whole packet to the interface: True when taken,
    False when the interface queue is full and the packet was dropped. Other
    failures raise OSError.
    """

    name: str

    def read(self) -> bytes | memoryview | None: ...

    def write(self, packet: bytes | memoryview) -> bool: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Carries whole messages to and from the peer.

    `send(message, addr)` sends one whole message: True when handed to the
    network, False when dropped because the link cannot take it now (no
    connection, a full queue). It never blocks and never buffers without bound.
    Received messages are passed, whole and in order of arrival, to the
    `on_message(message, addr)` callback given at construction; that buffer may
    be reused after the callback returns.
    """

    def send(self, message: bytes | memoryview, addr: Address) -> bool: ...

    def close(self) -> None: ...
