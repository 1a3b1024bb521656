"""The pure core of one point-to-point tunnel.

    device packet --from_device()--> session.seal --> self.datagrams --> transport
    transport message --from_network()--> session.open --> checks --> self.packets --> device

No I/O and no clock: every entry point takes `now`; outputs are appended to
`datagrams` (message, address), `packets` (for the device) and `events`
(level, text) for the I/O side to carry out and clear. The counters live here.
"""

from __future__ import annotations

from typing import Any

from tunneld.counters import Counters
from tunneld.limits import ETHERNET_HEADER

Address = Any  # a socket address tuple as the transport reports it

LOG_INTERVAL = 10.0  # s: at most one log line per kind of dropped input per interval


class Tunnel:
    def __init__(self, session, mode: str, max_packet: int, *,
                 endpoint: Address | None = None, roaming: bool = True):
        """`endpoint`: the peer to send to, if known in advance.
        `roaming`: follow the source of packets the session accepts (a plaintext UDP
        tunnel with a configured remote is pinned to it, like OpenVPN without --float)."""
        self.session = session
        self.mode = mode
        self.max_packet = max_packet
        self.min_packet = ETHERNET_HEADER if mode == "tap" else 1
        self.endpoint = endpoint
        self.roaming = roaming
        self.counters = Counters()
        self.datagrams: list[tuple[bytes | memoryview, Address]] = []
        self.packets: list[bytes | memoryview] = []
        self.events: list[tuple[str, str]] = []
        self._quiet_until: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._had_stream = False

    # --- device -> network ---------------------------------------------------

    def from_device(self, packet: bytes | memoryview, now: float) -> None:
        if self.endpoint is None:
            self.counters.tx.drops += 1  # no peer to send to yet
            return
        self.datagrams.append((self.session.seal(packet, now), self.endpoint))

    # --- network -> device ---------------------------------------------------

    def from_network(self, message: bytes | memoryview, addr: Address, now: float) -> None:
        rx = self.counters.rx
        if not self.roaming and addr != self.endpoint:
            rx.drops += 1
            self.note(now, "stranger", "warning", f"dropped a packet from {_fmt(addr)}: not the configured peer {_fmt(self.endpoint)}")
            return
        packet = self.session.open(message, now)
        if packet is None:
            rx.errors += 1
            return
        n = len(packet)
        if n > self.max_packet or n < self.min_packet or (self.mode == "tun" and packet[0] >> 4 not in (4, 6)):
            rx.errors += 1
            self.note(now, "malformed", "warning", f"dropped a malformed {n}-byte packet from {_fmt(addr)}")
            return
        if addr != self.endpoint:
            self._follow(addr)
        self.packets.append(packet)

    # --- connection-oriented transports (TCP) -----------------------------------

    def peer_up(self, addr: Address) -> None:
        """A stream to the peer is established: send to it from now on."""
        if self._had_stream:
            self.counters.reconnects += 1
        self._had_stream = True
        self.endpoint = addr

    def peer_down(self) -> None:
        self.endpoint = None

    def _follow(self, addr: Address) -> None:
        if self.endpoint is None:
            self.events.append(("info", f"peer is {_fmt(addr)}"))
        else:
            self.counters.peer_changes += 1
            self.events.append(("info", f"peer moved from {_fmt(self.endpoint)} to {_fmt(addr)}"))
        self.endpoint = addr

    # --- events ---------------------------------------------------------------

    def note(self, now: float, kind: str, level: str, text: str) -> None:
        """An event, at most once per LOG_INTERVAL per kind, saying how many were held back."""
        if now < self._quiet_until.get(kind, float("-inf")):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        held = self._suppressed.pop(kind, 0)
        self._quiet_until[kind] = now + LOG_INTERVAL
        self.events.append((level, f"{text} (and {held} more like it)" if held else text))


def _fmt(addr: Address) -> str:
    if addr is None:
        return "nobody"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)
