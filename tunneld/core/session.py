"""Sessions: what turns device packets into wire messages and back.

The core hands every packet through a session with this contract. Calls take
input with the time and return what to send; nothing is polled afterwards and
nothing is handed in to be written:

    seal(packets, now, flags) -> [message]  messages for the peer's endpoint, in order:
                                            the sealed packets, or the handshake they
                                            started while they wait (staged); flags:
                                            FLAG_* (a super-packet, a partial checksum),
                                            only if sends_offload(now)
    open(batch, addr, now) -> Opened        what one read from `addr` brought:
        .packets   [(packet, flags)]        for the device (b"": a keepalive, left out); with
                                            FLAG_INCOMPLETE, a chunks.Partial to salvage there
        .source    address | None           where an accepted message came from
                                            (authenticated, when the session can tell)
        .send      [(message, addr|None)]   answers (None: to the peer's endpoint)
    sends_chunks(now)                       seal_chunks may be called now (a datagram transport)
    chunks_of(size) -> n                    how many chunks a plaintext of `size` makes (0: none)
    seal_chunks(data, now, flags) -> [m]    one plaintext as chunks at the underlay's size:
                                            [contract.Segmented], one GSO send
    partials() -> [Partial]                 chunked plaintexts given up incomplete
                                            (packet/chunks.py), for the core to salvage
    handle_timer(now) -> [message]          retries, keepalives, rekeys (to the endpoint)
    get_timer() -> float | None             its next deadline, on the caller's clock
    kick(now) -> [message]                  the peer became reachable (start, reload)
    stream_up(now) -> [message]             a new path to the peer (a stream we dialled,
                                            a transport list's probe): handshake now
    next_event() -> Event | None            what happened (core/events.py), oldest first
    counters                                its own Counters (it alone writes them)
    sends_offload(now)                      the peer takes those flags now
    offload_peer                            some keypair carries super-packets
    authenticated                           open() proves who sent what
    padded                                  packets may carry padding the core trims
    last_handshake                          when (caller's clock) a handshake last completed, or None
    set_keepalive(seconds | None)           a persistent keepalive, from now on
    rekey_from(old_session)                 the same peer's earlier session: keep what
                                            must outlive it (the replay guard)

`PlaintextSession` is the explicit `encryption: none` mode, byte-compatible with
simpletun; `tunneld.wg.peer.WireGuardSession` is WireGuard's protocol.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

from tunneld.core.counters import Counters

NOTHING: tuple = ()  # returned when there is nothing to send: no list made per packet


class Opened(NamedTuple):
    packets: list  # [(packet, flags)]
    source: Any  # the address an accepted message came from, or None
    send: list | tuple  # [(message, addr or None)]


@runtime_checkable
class Session(Protocol):
    """The contract above, as a type the core is written against."""

    padded: bool
    authenticated: bool
    offload_peer: bool
    last_handshake: float | None
    counters: Counters

    def seal(self, packets, now: float, flags: int = 0) -> list | tuple: ...

    def sends_offload(self, now: float) -> bool: ...

    def sends_chunks(self, now: float) -> bool: ...

    def chunks_of(self, size: int) -> int: ...

    def seal_chunks(self, data, now: float, flags: int) -> list | tuple: ...

    def partials(self) -> list | tuple: ...

    def open(self, batch, addr, now: float) -> Opened: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> list | tuple: ...

    def kick(self, now: float) -> list | tuple: ...

    def stream_up(self, now: float) -> list | tuple: ...

    def next_event(self): ...

    def set_keepalive(self, seconds: float | None) -> None: ...

    def rekey_from(self, old) -> None: ...


class PlaintextSession:
    """No encryption: the message is the packet. Nothing here can be authenticated,
    so the core pins a plaintext tunnel to a configured peer."""

    padded = False
    authenticated = False  # nothing proves who sent a packet
    offload_peer = False
    last_handshake = None  # no handshakes in plaintext

    def __init__(self) -> None:
        self.counters = Counters()

    def seal(self, packets, now: float, flags: int = 0) -> list | tuple:
        return packets

    def sends_offload(self, now: float) -> bool:
        return False  # simpletun's wire: whole ordinary packets only

    def sends_chunks(self, now: float) -> bool:
        return False  # simpletun's wire: one packet per datagram

    def chunks_of(self, size: int) -> int:
        return 0

    def seal_chunks(self, data, now: float, flags: int) -> tuple:
        raise NotImplementedError("plaintext never chunks (sends_chunks is False)")

    def partials(self) -> tuple:
        return NOTHING

    def open(self, batch, addr, now: float) -> Opened:
        packets = []
        for message in batch:
            if message:
                packets.append((message, 0))  # plaintext has no capabilities to negotiate
            else:  # an empty datagram carries no packet, and plaintext has no keepalives
                self.counters.rx.errors += 1
        return Opened(packets, addr if packets else None, NOTHING)

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> tuple:
        return NOTHING

    def kick(self, now: float) -> tuple:
        return NOTHING

    def stream_up(self, now: float) -> tuple:
        return NOTHING

    def next_event(self) -> None:
        return None

    def set_keepalive(self, seconds: float | None) -> None:
        pass  # nothing to keep alive: no keys, no state in the path

    def rekey_from(self, old) -> None:
        pass
