"""The packet path: Device <-> core <-> Transport, one callback per readable fd.

    device readable --device_readable()--> Tunnel.from_device --> Transport.send_many
    transport batch --messages()--> Tunnel.from_network (each) --> end_batch --> Device.write

Each callback drains a bounded burst, hands every packet to the core and carries
out what the core asked for at once (so a reused read buffer is never held),
then logs the core's events. No awaits, queues or thread hops per packet.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Callable

from tunneld.core.contract import Address, Device, Transport, format_address
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
                 on_state: Callable[[], None] | None = None):
        """`arm(when)`: have timer_fired() called at `when` (on `clock`), replacing
        any earlier request; the daemon backs it with one loop.call_later handle.
        `on_state()`: called after events (a handshake, the peer moved, a stream
        up or down), never per packet; the daemon tells systemd."""
        self.core = core
        self.device = device
        self.transport = transport
        self.clock = clock
        self.on_fatal = on_fatal or (lambda why: log.error("%s", why))
        self.arm = arm
        self.on_state = on_state or (lambda: None)
        self.armed_at = float("inf")
        self.endpoint_seen = core.endpoint
        self.big_frames = False  # told to a stream transport: the peer may send frames over 64 KB

    def device_readable(self) -> None:
        core, read = self.core, self.device.read
        now = self.clock()
        for _ in range(DRAIN_BURST):
            try:
                packet = read()
            except OSError as e:
                core.counters.tx.errors += 1
                if e.errno in _DEVICE_GONE:
                    self.on_fatal(f"{self.device.name}: device went away ({e.strerror})")
                    break
                core.note(now, "device-read", "warning", f"{self.device.name}: read failed: {e.strerror}")
                break
            if packet is None:
                break
            core.from_device(packet, now)
            if core.datagrams:
                self._send(now)  # at once: the device's read buffer is reused by the next read
        self._carry_out(now)

    def messages(self, batch, addr: Address) -> None:
        """A transport's on_messages callback: what one read brought from `addr`
        (a UDP GRO batch, the frames of one TCP read). The buffers may be reused
        once this returns, so everything is carried out before it does."""
        core = self.core
        now = self.clock()
        for message in batch:
            core.from_network(message, addr, now)
            if core.endpoint is not self.endpoint_seen:  # the core replaces the object only when it moves
                self._endpoint_changed()
        core.end_batch()
        if core.session.offload_peer is not self.big_frames:
            self.big_frames = core.session.offload_peer
            allow = getattr(self.transport, "allow_big_frames", None)
            if allow is not None:
                allow(self.big_frames)
        self._carry_out(now)

    def _endpoint_changed(self) -> None:
        """The core follows the peer to a new address: a transport that cares (TCP
        promotes that candidate; UDP steers that source first) is told."""
        self.endpoint_seen = self.core.endpoint
        moved = getattr(self.transport, "peer_moved", None)
        if moved is not None and self.endpoint_seen is not None:
            moved(self.endpoint_seen)

    def note(self, kind: str, level: str, text: str) -> None:
        """A transport's rate-limited log line."""
        self.core.note(self.clock(), kind, level, text)
        self.log_events()

    def timer_fired(self) -> None:
        """The one timer: the core decides what, if anything, is due."""
        self.armed_at = float("inf")
        core = self.core
        now = self.clock()
        core.on_timer(now)
        self._carry_out(now)

    def _carry_out(self, now: float) -> None:
        """Do what the core asked for: write packets, send messages, log, re-arm."""
        core = self.core
        if core.packets:
            self._deliver(now)
        if core.datagrams:
            self._send(now)
        if core.events:
            self.log_events()
        self._rearm()

    def _rearm(self) -> None:
        """Arm the timer only when the core's deadline moved earlier; a timer that
        fires early finds nothing due and re-arms. No cancel/re-create per packet."""
        if self.arm is None:
            return
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self.armed_at:
            self.armed_at = deadline
            self.arm(deadline)

    def transport_error(self, text: str, kind: str | None = None) -> None:
        """A transport refused input from the network: counted and logged. With a
        `kind` (per-datagram events a flood could repeat), at most once per interval."""
        core = self.core
        core.counters.rx.errors += 1
        if kind is None:
            log.warning("%s", text)
        else:
            core.note(self.clock(), kind, "warning", text)
            self.log_events()

    def start(self) -> None:
        """The transport is ready: let the session speak first if it wants to."""
        self._kick()

    def peer_up(self, addr: Address, dialled: bool = False) -> None:
        """A stream to the peer is up; `dialled`: we connected (a new connection
        needs a new handshake: the peer may have restarted)."""
        self.core.peer_up(addr, dialled, self.clock())
        self.endpoint_seen = self.core.endpoint
        self._kick()
        self.on_state()

    def _kick(self) -> None:
        core = self.core
        now = self.clock()
        core.kick(now)
        self._carry_out(now)

    def peer_down(self) -> None:
        self.core.peer_down()
        self.endpoint_seen = None
        self.on_state()

    def _send(self, now: float) -> None:
        """Runs of messages to one address go in one send_many (UDP GSO: one sendmsg)."""
        core = self.core
        datagrams = core.datagrams
        start = 0
        for i in range(1, len(datagrams) + 1):
            if i == len(datagrams) or datagrams[i][1] != datagrams[start][1]:
                self._send_run([m for m, _ in datagrams[start:i]], datagrams[start][1], now)
                start = i
        datagrams.clear()

    def _send_run(self, run: list, addr: Address, now: float) -> None:
        tx = self.core.counters.tx
        try:
            sent = self.transport.send_many(run, addr)
        except OSError as e:
            tx.errors += len(run)
            self.core.note(now, "send", "warning", f"send to {format_address(addr)} failed: {e.strerror}")
            return
        tx.drops += len(run) - sent
        tx.packets += sent
        tx.bytes += sum(len(m) for m in run[:sent])

    def _deliver(self, now: float) -> None:
        core = self.core
        rx, write = core.counters.rx, self.device.write
        for packet in core.packets:
            try:
                if write(packet):
                    rx.packets += 1
                    rx.bytes += len(packet)
                else:
                    rx.drops += 1
            except OSError as e:
                rx.errors += 1
                core.note(now, "device-write", "warning", f"{self.device.name}: write failed: {e.strerror}")
        core.packets.clear()

    def log_events(self) -> None:
        for level, text in self.core.events:
            log.log(_LEVELS[level], "%s", text)
        self.core.events.clear()
        self.on_state()
