"""Traffic counters: each layer owns a `Counters` it alone writes; a `CounterSet`
sums them for metrics, status and the line logged at stop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Direction:
    packets: int = 0  # whole packets delivered (rx: to the device, tx: to the transport)
    bytes: int = 0  # their payload bytes
    drops: int = 0  # packets let go on purpose: no peer, a full queue, a slow link
    errors: int = 0  # packets refused as malformed, or failed system calls

    def __str__(self) -> str:
        return f"{self.packets} packets, {self.bytes} bytes, {self.drops} drops, {self.errors} errors"


@dataclass
class Counters:
    tx: Direction = field(default_factory=Direction)  # device -> network
    rx: Direction = field(default_factory=Direction)  # network -> device
    reconnects: int = 0  # TCP connections established after the first
    peer_changes: int = 0  # times the UDP peer's address changed
    handshakes: int = 0  # handshakes completed
    auth_failures: int = 0  # messages refused by mac1 or decryption
    replays: int = 0  # authentic messages refused as repeats
    cookies_sent: int = 0  # cookie replies sent while under load
    handshakes_shed: int = 0  # handshake messages dropped unread by a rate limit or budget
    candidates_refused: int = 0  # TCP connections closed unauthenticated (too many, too slow)
    super_reads: int = 0  # device reads that were TSO/USO super-packets
    super_writes: int = 0  # device writes of super-packets (the peer's whole, or segments joined here)
    chunked: int = 0  # plaintexts sent as chunks at the underlay's size (UDP, tunneld mode)
    salvaged: int = 0  # chunked plaintexts that arrived incomplete: their whole segments went on

    def summary(self) -> str:
        return (f"tx {self.tx}; rx {self.rx}; {self.reconnects} reconnects, {self.peer_changes} peer changes, "
                f"{self.handshakes} handshakes, {self.auth_failures} authentication failures, "
                f"{self.cookies_sent} cookie replies, {self.handshakes_shed} handshake messages shed, "
                f"{self.candidates_refused} TCP candidates refused, "
                f"{self.super_reads} super-packets read, {self.super_writes} written, "
                f"{self.chunked} sent as chunks, {self.salvaged} incomplete")


class CounterSet:
    """What metrics, status and the stop line read: the sum of parts, each
    written by one layer only (the core's checks, the session, the relay's
    device and transport I/O, a TCP listener). Reading builds the sums; nobody
    writes through it."""

    def __init__(self, *parts: Counters):
        self.parts: list[Counters] = list(parts)

    def add(self, part: Counters) -> Counters:
        """Count `part` in from now on (its owner keeps writing it)."""
        self.parts.append(part)
        return part

    def replace(self, old: Counters, new: Counters) -> None:
        """A new session's counters take over from the old's, which stay counted."""
        if new is not old:
            self.parts.append(new)

    def total(self) -> Counters:
        out = Counters()
        for name in _SCALARS:
            setattr(out, name, sum(getattr(p, name) for p in self.parts))
        for way in ("tx", "rx"):
            d = getattr(out, way)
            for name in ("packets", "bytes", "drops", "errors"):
                setattr(d, name, sum(getattr(getattr(p, way), name) for p in self.parts))
        return out

    def __getattr__(self, name: str):
        if name == "parts":
            raise AttributeError(name)
        if name in ("tx", "rx") or name in _SCALARS:
            return getattr(self.total(), name)
        raise AttributeError(name)

    def summary(self) -> str:
        return self.total().summary()


_SCALARS = tuple(f for f in Counters.__dataclass_fields__ if f not in ("tx", "rx"))
