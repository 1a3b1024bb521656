"""An in-memory network of transports (`tunneld.core.contract.Transport`), for
tests of the core and of anything built on it. Its transports pass the same
contract tests as UDP and TCP (tests/host/test_contracts.py) and hand out views of
buffers that the next delivery overwrites, as the real ones do.
"""

from __future__ import annotations

import collections
from typing import Callable

from tunneld.core.contract import Address, OnMessages, Segmented


class MemoryNetwork:
    """A lossless, ordered datagram network between MemoryTransports.

    Messages wait in `in_flight` until `deliver()`, so a reply never recurses
    into its sender. `loss(message, src, dst) -> bool` drops what it returns True for."""

    def __init__(self) -> None:
        self.hosts: dict[Address, MemoryTransport] = {}
        self.in_flight: collections.deque[tuple[bytes, Address, Address]] = collections.deque()
        self.loss: Callable[[bytes, Address, Address], bool] | None = None
        self.delivered = 0

    def transport(self, address: Address, on_messages: OnMessages | None = None) -> "MemoryTransport":
        t = MemoryTransport(self, address, on_messages)
        self.hosts[address] = t
        return t

    def deliver(self, limit: int = 10_000) -> int:
        """Deliver queued messages (and those their handling queues) until none are
        left. Consecutive messages from one source to one host arrive as one batch,
        as a UDP GRO read brings them."""
        n = 0
        while self.in_flight and n < limit:
            message, src, dst = self.in_flight.popleft()
            n += 1
            batch = [message]
            while self.in_flight and self.in_flight[0][1:] == (src, dst) and len(batch) < 64:
                batch.append(self.in_flight.popleft()[0])
                n += 1
            host = self.hosts.get(dst)
            if host is None or host.closed:
                continue
            if self.loss:
                batch = [m for m in batch if not self.loss(m, src, dst)]
            if batch:
                self.delivered += len(batch)
                host.receive(batch, src)
        return n


class MemoryTransport:
    """A Transport on a MemoryNetwork. Set `full` to make sends report a full queue."""

    def __init__(self, network: MemoryNetwork, address: Address, on_messages: OnMessages | None):
        self.network, self.address = network, address
        self.on_messages = on_messages or (lambda messages, addr: None)
        self.full = False
        self.closed = False
        self._buf = bytearray()  # one receive buffer, reused like a socket's (grown when a batch needs it)
        self._view = memoryview(self._buf)

    def receive(self, batch: list[bytes], src: Address) -> None:
        """A batch, in the reused buffer."""
        need = sum(len(m) for m in batch)
        if need > len(self._buf):
            self._buf = bytearray(max(need, 65536))
            self._view = memoryview(self._buf)
        views, pos = [], 0
        for message in batch:
            self._buf[pos:pos + len(message)] = message
            views.append(self._view[pos:pos + len(message)])
            pos += len(message)
        self.on_messages(views, src)

    def send(self, message: bytes | memoryview, addr: Address) -> bool:
        if self.full or self.closed:
            return False
        if isinstance(message, Segmented):  # one GSO send: datagrams, each lost or late on its own
            self.network.in_flight.extend((bytes(d), self.address, addr) for d in message.datagrams())
            return True
        self.network.in_flight.append((bytes(message), self.address, addr))
        return True

    def send_many(self, messages: list, addr: Address) -> int:
        for k, message in enumerate(messages):
            if not self.send(message, addr):
                return k
        return len(messages)

    def move(self, address: Address) -> None:
        """The host gets a new address (a NAT rebinding, a roaming laptop)."""
        del self.network.hosts[self.address]
        self.address = address
        self.network.hosts[address] = self

    def close(self) -> None:
        self.closed = True
