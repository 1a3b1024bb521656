"""A list of transports as one Transport: every entry open at once, the tunnel on one.

    member i reads --tagged--> relay.messages(batch, Via(addr, i))   the core sees the entry
    relay send_many(messages, Via) --> member i.send_many(messages, raw address)
    PeerMoved (relay -> peer_moved) --> Failover.authenticated(i): the tunnel follows the peer
    HandshakeCompleted (daemon -> on_event) --> Failover.authenticated(i)
    HandshakeRetry (daemon -> on_event) --> Failover.unanswered(): maybe the next entry
    the probe timer --> Failover.handle_timer(): one initiation over the preferred entry

The policy is core/failover.py, pure; this carries it out with the members
(conn/udp.py, conn/tcp.py), the core (set_endpoint, set_stream; transport_up
and transport_down and probes through the relay) and one loop timer. Every
address the core sees is a `Via`: the peer's address and the entry it is on,
so a UDP and a TCP peer on the same host and port stay apart.

UDP entries and TCP listeners are open from the start; a TCP client dials only
while its entry carries the tunnel or is being probed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import NamedTuple

from tunneld.conn import sockopts as netaddr
from tunneld.conn.endpoint import TransportConfig
from tunneld.conn.tcp import TcpTransport
from tunneld.conn.udp import UdpTransport
from tunneld.core.contract import FollowsPeer, TakesBigFrames, format_address
from tunneld.core.counters import Counters
from tunneld.core.events import HandshakeCompleted, HandshakeRetry
from tunneld.core.failover import Failover

log = logging.getLogger("tunneld")


class Via(NamedTuple):
    """The peer's address on entry `entry` of the list. [0] and [1] are host and
    port, as in a socket address, so it formats and rate-limits like one."""
    host: str
    port: int
    protocol: str
    entry: int
    raw: tuple  # the socket address as the member reports and takes it


def via(addr: tuple, protocol: str, entry: int) -> Via:
    return Via(addr[0], addr[1], protocol, entry, addr)


def describe(t: TransportConfig) -> str:
    return t.protocol + "".join(f" {k} {v}" for k, v in (("listen", t.listen), ("remote", t.remote)) if v)


class TransportSet:
    """Contract: core.contract.Transport, FollowsPeer and TakesBigFrames."""

    def __init__(self, entries: tuple[TransportConfig, ...], core, relay, failback: float,
                 clock=time.monotonic):
        self.entries = entries
        self.core, self.relay, self.clock = core, relay, clock
        self.policy = Failover(tuple(t.remote is not None for t in entries), failback)
        self.members: list = []
        self.remotes: list[Via | None] = [None] * len(entries)  # a UDP entry's resolved remote
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._probing_tcp: int | None = None  # a TCP client entry dialled to be probed
        self._started = False

    @classmethod
    async def open(cls, cfg, core, relay, opening) -> "TransportSet":
        """Open every entry (a bind or a lookup failing closes those opened and raises)."""
        self = cls(cfg.transports, core, relay, cfg.failback)
        try:
            for i, t in enumerate(cfg.transports):
                on_messages = self._tagged(i, t.protocol)
                if t.protocol == "udp":
                    member, remote = await UdpTransport.open(t, on_messages, cfg.max_message,
                                                             relay.transport_error, steer=True)
                    if remote is None and t.remote is not None:  # a host name: looked up now, and at a reload
                        try:
                            _, remote = await netaddr.resolve(t.remote, member.sock.family, socket.SOCK_DGRAM)
                        except BaseException:
                            member.close()
                            raise
                    self.remotes[i] = via(remote, "udp", i) if remote is not None else None
                else:
                    member = await TcpTransport.open(t, cfg.max_message, on_messages, self._on_up(i), self._on_down(i),
                                                     relay.transport_error, authenticated=True, note=relay.note,
                                                     opening=opening, counters=core.counters.add(Counters()))
                self.members.append(member)
        except BaseException:
            self.close()
            raise
        self._enter(self.policy.active)
        log.info("transport: %d entries, %s first", len(self.entries), describe(self.entries[self.policy.active]))
        return self

    # --- the Transport contract ---------------------------------------------------------

    def send(self, message, addr) -> bool:
        if isinstance(addr, Via):
            return self.members[addr.entry].send(message, addr.raw)
        return False  # every address the core has came from here: nothing else to send to

    def send_many(self, messages: list, addr) -> int:
        if isinstance(addr, Via):
            return self.members[addr.entry].send_many(messages, addr.raw)
        return 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for member in self.members:
            member.close()

    # --- abilities: the relay tells ----------------------------------------------------

    def peer_moved(self, addr) -> None:
        """The core follows the peer to `addr` (it authenticated there)."""
        if not isinstance(addr, Via):
            return
        if self.policy.authenticated(addr.entry, self.clock()):
            self._moved(f"the peer authenticated on it from {format_address(addr.raw)}")
        member = self.members[addr.entry]
        if isinstance(member, FollowsPeer):
            member.peer_moved(addr.raw)
        self._rearm()

    def allow_big_frames(self, allow: bool) -> None:
        for member in self.members:
            if isinstance(member, TakesBigFrames):
                member.allow_big_frames(allow)

    # --- the daemon tells ------------------------------------------------------------------

    def start_connecting(self) -> None:
        """Start-up is done (privileges dropped): a TCP client entry in use dials."""
        self._started = True
        self._dial_as_needed()
        self._rearm()

    def on_event(self, event) -> None:
        """Every event of the core, after the relay logged it: handshakes move the policy."""
        if isinstance(event, HandshakeRetry):
            target = self.policy.unanswered(self.clock())
            if target is not None:
                self._failover(target)
        elif isinstance(event, HandshakeCompleted) and isinstance(event.peer, Via):
            if self.policy.authenticated(event.peer.entry, self.clock()):
                self._moved("a handshake completed there")
        else:
            return
        self._rearm()

    def status(self) -> dict:
        i, changes = self.policy.active, self.policy.changes
        n = len(self.entries)
        return {
            "transport": f"{describe(self.entries[i])} (entry {i + 1} of {n}: "
                         f"{', '.join(t.protocol for t in self.entries)}; {changes} change{'' if changes == 1 else 's'})",
            "transport_active": self.entries[i].protocol,
            "transport_entry": i,
            "transport_changes": self.policy.changes,
        }

    # --- reload -----------------------------------------------------------------------------

    async def resolve(self, entries: tuple[TransportConfig, ...]) -> list[Via | None]:
        """The UDP remotes of a reloaded list, resolved (StartupError naming the entry)."""
        from tunneld.errors import StartupError
        out: list[Via | None] = []
        for i, (member, t) in enumerate(zip(self.members, entries)):
            if t.protocol != "udp" or t.remote is None:
                out.append(None)
                continue
            if t.remote == self.entries[i].remote and self.remotes[i] is not None:
                out.append(self.remotes[i])
                continue
            try:
                _, addr = await netaddr.resolve(t.remote, member.sock.family, socket.SOCK_DGRAM)
            except StartupError as e:
                raise StartupError(f"transport[{i}].remote: {e}") from None
            out.append(via(addr, "udp", i))
        return out

    def reload(self, entries: tuple[TransportConfig, ...], remotes: list[Via | None], failback: float) -> None:
        """Apply what resolve() prepared: new remotes, a new probe interval. Cannot fail."""
        now = self.clock()
        old, self.entries = self.entries, entries
        for i, (before, t) in enumerate(zip(old, entries)):
            if before.remote == t.remote:
                continue
            if t.protocol == "udp":
                self.remotes[i] = remotes[i]
                if i == self.policy.active:
                    self.core.set_endpoint(remotes[i], pinned=False)
            else:
                self.members[i].set_remote(t.remote)
        # whether an entry can be dialled is its protocol and listen's doing (a restart's), so the policy stands
        if failback != self.policy.failback:
            self.policy.set_failback(failback, now)
        self._rearm()

    # --- carrying out the policy ------------------------------------------------------------

    def _enter(self, i: int) -> None:
        """Start on entry i: send to its remote, if it has one we know."""
        self.core.set_stream(self.entries[i].protocol == "tcp")
        if self.entries[i].protocol == "udp" and self.remotes[i] is not None:
            self.core.set_endpoint(self.remotes[i], pinned=False)

    def _moved(self, why: str) -> None:
        """The policy put the tunnel on another entry (it followed the peer there)."""
        i = self.policy.active
        self._probing_tcp = None
        self.core.set_stream(self.entries[i].protocol == "tcp")
        self._dial_as_needed()
        log.info("transport: now on %s (entry %d of %d): %s", describe(self.entries[i]), i + 1, len(self.entries), why)

    def _failover(self, target: int) -> None:
        """Handshakes went unanswered on the active entry: on to `target`, and a handshake there now."""
        t = self.entries[target]
        self._probing_tcp = None
        self.core.set_stream(t.protocol == "tcp")
        log.warning("transport: %d handshake attempts went unanswered; moving to %s (entry %d of %d)",
                    self.policy.after, describe(t), target + 1, len(self.entries))
        if t.protocol == "udp":
            remote = self.remotes[target]
            self.core.set_endpoint(remote, pinned=False, why="failover")
            self._dial_as_needed()
            if remote is not None:
                self.relay.probe(remote)  # the initiation that went nowhere goes here now, at once
            return
        member = self.members[target]
        if member.conn is not None:  # already connected (a probe dialled it): handshake on it
            self.relay.peer_up(via(member.conn.addr, "tcp", target), True)
        else:
            self.core.set_endpoint(None, pinned=False)  # nothing to send to until it connects
        self._dial_as_needed()

    def _dial_as_needed(self) -> None:
        """A TCP client entry dials while it carries the tunnel or is being probed; no other does."""
        if not self._started:
            return
        active = self.policy.active
        for i, (t, member) in enumerate(zip(self.entries, self.members)):
            if t.protocol != "tcp" or t.remote is None:
                continue
            if i == active or i == self._probing_tcp:
                member.start_connecting()
            elif member.connecting:
                member.stop_connecting()

    def _on_up(self, i: int):
        def up(addr, dialled: bool) -> None:
            """A connection on entry i became the peer's: the one in use, or a probe's."""
            v = via(addr, "tcp", i)
            if i == self.policy.active or not dialled:
                self.relay.peer_up(v, dialled)
            else:
                self.relay.probe(v)  # the endpoint stays where the tunnel is until the peer answers here
        return up

    def _on_down(self, i: int):
        def down() -> None:
            if i == self.policy.active:
                self.relay.peer_down()
            # another entry's connection (one we left, or one the peer left) carries nothing of ours
        return down

    def _tagged(self, i: int, protocol: str):
        deliver = self.relay.messages
        last_raw = last_via = None

        def on_messages(batch, addr) -> None:
            nonlocal last_raw, last_via
            if addr != last_raw:  # one Via per sender, not per read
                last_raw, last_via = addr, via(addr, protocol, i)
            deliver(batch, last_via)
        return on_messages

    def _probe(self, i: int) -> None:
        t = self.entries[i]
        log.debug("transport: trying %s again (entry %d of %d)", describe(t), i + 1, len(self.entries))
        if t.protocol == "udp":
            if self.remotes[i] is not None:
                self.relay.probe(self.remotes[i])
            return
        member = self.members[i]
        if member.conn is not None:
            self.relay.probe(via(member.conn.addr, "tcp", i))
        else:
            self._probing_tcp = i
            self._dial_as_needed()  # the initiation goes once it connects (_on_up)

    def _rearm(self) -> None:
        when = self.policy.get_timer()
        if when == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = when
        if when is not None:
            self._timer = self.loop.call_later(max(0.0, when - self.clock()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._armed_at = None
        target = self.policy.handle_timer(self.clock())
        if target is not None:
            self._probe(target)
        self._rearm()
