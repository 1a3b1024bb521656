"""Sessions: what turns a device packet into a wire message and back.

The core hands every packet through a session with this contract:

    seal(packet, now, flags) -> message | None
                                            None: staged or dropped by the session;
                                            flags: wg.constants.FLAG_* (a super-packet,
                                            a partial checksum), only if sends_offload(now)
    seal_many(packets, now, flags) -> [message]
                                            a batch (a super-packet's segments), in order
    sends_offload(now)                      the peer takes those flags now
    opened_flags                            the flags of the last opened packet
    offload_peer                            some keypair carries super-packets
    authenticated                           open() proves who sent what
    open(message, addr, now) -> packet | None
                                            None: nothing for the device; b"": a keepalive
    accepted_from                           the source of the last message the session
                                            accepted (authenticated, when it can tell)
    control                                 (message, addr or None) the session wants sent
    next_deadline() / on_timer(now)         its timers, on the caller's clock
    kick(now)                               the peer became reachable (start, TCP connect)
    stream_up(now)                          we dialled a new stream to the peer
    padded                                  packets may carry padding the core trims

`PlaintextSession` is the explicit `encryption: none` mode, byte-compatible with
simpletun; `tunneld.wg.peer.WireGuardSession` is WireGuard's protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Session(Protocol):
    """The contract above, as a type the core is written against."""

    padded: bool
    authenticated: bool
    opened_flags: int
    offload_peer: bool
    accepted_from: Any
    control: list

    def bind(self, counters, events: list, note) -> None: ...

    def seal(self, packet: bytes | memoryview, now: float, flags: int = 0) -> bytes | memoryview | None: ...

    def seal_many(self, packets, now: float, flags: int = 0) -> list: ...

    def sends_offload(self, now: float) -> bool: ...

    def open(self, message: bytes | memoryview, addr, now: float) -> bytes | memoryview | None: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...

    def kick(self, now: float) -> None: ...

    def stream_up(self, now: float) -> None: ...


class PlaintextSession:
    """No encryption: the message is the packet. Nothing here can be authenticated,
    so the core pins a plaintext tunnel to a configured peer."""

    padded = False
    authenticated = False  # nothing proves who sent a packet
    opened_flags = 0  # plaintext has no capabilities to negotiate
    offload_peer = False

    def __init__(self) -> None:
        self.control: list = []
        self.accepted_from = None
        self.counters = None

    def bind(self, counters, events, note) -> None:
        self.counters = counters

    def seal(self, packet: bytes | memoryview, now: float, flags: int = 0) -> bytes | memoryview:
        return packet

    def seal_many(self, packets, now: float, flags: int = 0) -> list:
        return list(packets)

    def sends_offload(self, now: float) -> bool:
        return False  # simpletun's wire: whole ordinary packets only

    def open(self, message: bytes | memoryview, addr, now: float) -> bytes | memoryview | None:
        if not message:  # an empty datagram carries no packet, and plaintext has no keepalives
            self.accepted_from = None
            self.counters.rx.errors += 1
            return None
        self.accepted_from = addr
        return message

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def kick(self, now: float) -> None:
        pass

    def stream_up(self, now: float) -> None:
        pass
