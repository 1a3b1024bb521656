"""An in-memory TUN/TAP device (`tunneld.core.contract.Device`), for tests of the
core and of anything built on it. It passes the same contract tests as the real
device (tests/host/test_contracts.py) and, like it, hands out views of one buffer
that the next read overwrites: code that keeps a packet past its callback fails
here as it would in production.
"""

from __future__ import annotations

import collections


class MemoryDevice:
    """A Device whose kernel side is a pair of lists.

    `inject(packet)` is a packet the stack hands the interface (read() returns it);
    `written` collects what the tunnel wrote to the interface. Set `full` to make
    writes report a full queue."""

    def __init__(self, name: str = "mem0", max_read: int = 65600, vnet: bool = False):
        """`vnet`: packets read and written carry a virtio header, as a device with offloads."""
        self.name = name
        self.vnet = vnet
        self._buf = bytearray(max_read)
        self._view = memoryview(self._buf)
        self.inbox: collections.deque[bytes] = collections.deque()
        self.written: list[bytes] = []
        self.full = False
        self.closed = False

    def inject(self, packet: bytes) -> None:
        self.inbox.append(bytes(packet))

    def read(self) -> memoryview | None:
        if not self.inbox:
            return None
        packet = self.inbox.popleft()
        self._buf[:len(packet)] = packet
        return self._view[:len(packet)]

    def write(self, packet: bytes | memoryview) -> bool:
        if self.full:
            return False
        self.written.append(bytes(packet))
        return True

    def close(self) -> None:
        self.closed = True
