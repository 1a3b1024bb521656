"""The packet path: Device <-> core <-> Transport, one callback per readable fd.

    device readable --device_readable()--> Tunnel.from_device --> datagrams_to_send() --> Transport.send_many
    transport batch --messages()--> Tunnel.from_network --> packets_to_deliver() --> Device.write

Each callback drains a bounded burst, hands every packet to the core and carries
out what the core asked for at once (so a reused read buffer is never held),
then takes the core's events: logs each (its text is today's line), tells a
transport with the ability to act on one (core/contract.py), and hands them to
the daemon (`on_event`: STATUS=, never per packet). No awaits, queues or thread
hops per packet. The relay counts what it moves in its own part of the counters.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Callable

from tunneld.core.contract import Address, Device, FollowsPeer, TakesBigFrames, Transport, format_address
from tunneld.core.counters import Counters
from tunneld.core.events import OffloadChanged, PeerMoved
from tunneld.core.tunnel import Tunnel

log = logging.getLogger("tunneld")

DRAIN_BURST = 256  # packets per callback before yielding to the loop (level-triggered: it calls again)
_DEVICE_GONE = {errno.EBADFD, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Relay:
    def __init__(self, core: Tunnel, device: Device, transport: Transport | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_fatal: Callable[[str], None] | None = None,
                 arm: Callable[[float], None] | None = None,
                 on_event: Callable[[object], None] | None = None):
        """`arm(when)`: have timer_fired() called at `when` (on `clock`), replacing
        any earlier request; the daemon backs it with one loop.call_later handle.
        `on_event(event)`: every event the core gave (core/events.py), after it
        was logged; the daemon tells systemd."""
        self.core = core
        self.device = device
        self.transport = transport
        self.clock = clock
        self.on_fatal = on_fatal or (lambda why: log.error("%s", why))
        self.arm = arm
        self.on_event = on_event or (lambda event: None)
        self.armed_at = float("inf")
        self.counters = core.counters.add(Counters())  # what the relay moves: sent, written, failed

    def device_readable(self) -> None:
        core, read = self.core, self.device.read
        now = self.clock()
        for _ in range(DRAIN_BURST):
            try:
                packet = read()
            except OSError as e:
                self.counters.tx.errors += 1
                if e.errno in _DEVICE_GONE:
                    self.on_fatal(f"{self.device.name}: device went away ({e.strerror})")
                    break
                core.note(now, "device-read", "warning", f"{self.device.name}: read failed: {e.strerror}")
                break
            if packet is None:
                break
            core.from_device(packet, now)
            datagrams = core.datagrams_to_send()
            if datagrams:
                self._send(datagrams, now)  # at once: the device's read buffer is reused by the next read
        self._carry_out(now)

    def messages(self, batch, addr: Address) -> None:
        """A transport's on_messages callback: what one read brought from `addr`
        (a UDP GRO batch, the frames of one TCP read). The buffers may be reused
        once this returns, so everything is carried out before it does."""
        now = self.clock()
        self.core.from_network(batch, addr, now)
        self._carry_out(now)

    def note(self, kind: str, level: str, text: str) -> None:
        """A transport's rate-limited log line."""
        self.core.note(self.clock(), kind, level, text)
        self.take_events()

    def timer_fired(self) -> None:
        """The one timer: the core decides what, if anything, is due."""
        self.armed_at = float("inf")
        now = self.clock()
        self.core.handle_timer(now)
        self._carry_out(now)

    def _carry_out(self, now: float) -> None:
        """Do what the core asked for: write packets, send messages, take events, re-arm."""
        core = self.core
        packets = core.packets_to_deliver()
        if packets:
            self._deliver(packets, now)
        datagrams = core.datagrams_to_send()
        if datagrams:
            self._send(datagrams, now)
        self.take_events()
        self._rearm()

    def _rearm(self) -> None:
        """Arm the timer only when the core's deadline moved earlier; a timer that
        fires early finds nothing due and re-arms. No cancel/re-create per packet."""
        if self.arm is None:
            return
        deadline = self.core.get_timer()
        if deadline is not None and deadline < self.armed_at:
            self.armed_at = deadline
            self.arm(deadline)

    def transport_error(self, text: str, kind: str | None = None) -> None:
        """A transport refused input from the network: counted and logged. With a
        `kind` (per-datagram events a flood could repeat), at most once per interval."""
        self.counters.rx.errors += 1
        if kind is None:
            log.warning("%s", text)
        else:
            self.core.note(self.clock(), kind, "warning", text)
            self.take_events()

    def start(self) -> None:
        """The transport is ready (or the session new): let the session speak first if it wants to."""
        now = self.clock()
        self.core.start(now)
        self._carry_out(now)

    def peer_up(self, addr: Address, dialled: bool = False) -> None:
        """A stream to the peer is up; `dialled`: we connected (a new connection
        needs a new handshake: the peer may have restarted)."""
        now = self.clock()
        self.core.transport_up(addr, dialled, now)
        self.core.start(now)
        self._carry_out(now)

    def probe(self, addr: Address) -> None:
        """Handshake with the peer at `addr` now, without moving the endpoint there
        (a transport list tries its preferred entry)."""
        now = self.clock()
        self.core.probe(addr, now)
        self._carry_out(now)

    def peer_down(self) -> None:
        self.core.transport_down()
        self.take_events()

    def _send(self, datagrams, now: float) -> None:
        """Runs of messages to one address go in one send_many (UDP GSO: one sendmsg)."""
        n = len(datagrams)
        if n == 1:  # a lone packet (a ping, an ACK): straight out
            message, addr = datagrams[0]
            self._send_run((message,), addr, now)
            return
        start = 0
        for i in range(1, n + 1):
            if i == n or datagrams[i][1] != datagrams[start][1]:
                self._send_run([m for m, _ in datagrams[start:i]], datagrams[start][1], now)
                start = i

    def _send_run(self, run: list, addr: Address, now: float) -> None:
        tx = self.counters.tx
        try:
            sent = self.transport.send_many(run, addr)
        except OSError as e:
            tx.errors += len(run)
            self.core.note(now, "send", "warning", f"send to {format_address(addr)} failed: {e.strerror}")
            return
        tx.drops += len(run) - sent
        tx.packets += sent
        tx.bytes += sum(len(m) for m in run[:sent])

    def _deliver(self, packets, now: float) -> None:
        rx, write = self.counters.rx, self.device.write
        for packet in packets:
            try:
                if write(packet):
                    rx.packets += 1
                    rx.bytes += len(packet)
                else:
                    rx.drops += 1
            except OSError as e:
                rx.errors += 1
                self.core.note(now, "device-write", "warning", f"{self.device.name}: write failed: {e.strerror}")

    def take_events(self) -> None:
        """Log each event, tell a transport that can act on it, hand it to the daemon."""
        core = self.core
        event = core.next_event()
        while event is not None:
            log.log(_LEVELS[event.level], "%s", event)
            transport = self.transport
            if isinstance(event, PeerMoved):
                if isinstance(transport, FollowsPeer):
                    transport.peer_moved(event.new)
            elif isinstance(event, OffloadChanged):
                if isinstance(transport, TakesBigFrames):
                    transport.allow_big_frames(event.offload_peer)
            self.on_event(event)
            event = core.next_event()
