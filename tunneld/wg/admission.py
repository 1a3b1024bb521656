"""The DoS gate for handshake messages: limiter, mac1, load, cookies, budgets (wireguard-go ratelimiter, cookie.go)."""

from __future__ import annotations

import ipaddress

from tunneld.core.contract import Address
from tunneld.core.contract import format_address as _fmt
from tunneld.core.events import Notice
from tunneld.wg.constants import MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT


_KIND = {MESSAGE_INITIATION: "handshake initiation", MESSAGE_RESPONSE: "handshake response",
         MESSAGE_COOKIE_REPLY: "cookie reply", MESSAGE_TRANSPORT: "transport message"}


class Admission:
    """WireGuardSession's DoS gate, in this order before any DH: the load meter,
    the per-source limiter (the peer's address exempt), mac1, under load mac2 or
    a cookie reply from a budget, then the daemon-wide handshake budget."""

    def _admit(self, kind: int, message: bytes | memoryview, addr: Address, now: float) -> None:
        """A handshake message or cookie reply at the gate: per-source limiter, mac1,
        under load mac2 (or a cookie reply), then the handshake budget, before any DH."""
        source = self._source(addr)
        # load: how fast messages that may ask for DH arrive, checked or not (wireguard-go's queue length)
        under_load = self.load.under_load(now) if kind == MESSAGE_COOKIE_REPLY else self.load.arrive(now)
        if self._peer_addr != self._exempt_for:
            self._exempt_peer()
        # under load, a source over its rate is dropped before any hashing: a flood
        # from one host costs a dict lookup per message, not a MAC
        if under_load and not self.limiter.allow(source[:-2], now):
            self._shed(now, addr)
            return None
        message = bytes(message)
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(message, addr, now)
            return None
        if not self.cookie_checker.check_mac1(message):
            self._auth_failed(now, addr, f"{_KIND[kind]} with a bad mac1 (not for our public key)")
            return None
        if under_load and not self.cookie_checker.check_mac2(message, source, now):
            budget = self.peer_cookie_budget if source[:-2] == self.limiter.exempt else self.cookie_budget
            if not budget.take(now):
                self._shed(now, addr)
                return None
            self._out.append((self.cookie_checker.reply(message, source, now), addr))
            self.counters.cookies_sent += 1
            self._events.append(Notice("cookie", "info", f"under load: asked {_fmt(addr)} to return a cookie"))
            return None
        # the whole daemon's handshake work, load or not; under load only a valid mac2 gets
        # here, and a flood spent at most UNDER_LOAD_BACKLOG of it before (LoadMeter)
        if not self.handshake_budget.take(now):
            self._shed(now, addr)
            return None
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(message, addr, now)
        else:
            self._receive_response(message, addr, now)
        return None

    def _exempt_peer(self) -> None:
        """The peer's current address (where the last authenticated message came
        from) is exempt from the per-source limiter, by IP: a restarted peer may
        come back on another port."""
        self._exempt_for = addr = self._peer_addr
        self.limiter.exempt = None if addr is None else _source(addr)[:-2]

    def _shed(self, now: float, addr: Address) -> None:
        """A handshake message dropped unread by a rate limit or budget."""
        self.counters.rx.drops += 1
        self.counters.handshakes_shed += 1
        self._events.append(Notice("shed", "warning", f"under load: dropping handshake messages from {_fmt(addr)} over the rate limit"))

    def _source(self, addr: Address) -> bytes:
        """The source's IP bytes and port (the cookie's input), remembered for the
        last address: a flood comes from few."""
        if addr != self._last_addr:
            self._last_addr, self._last_source = addr, _source(addr)
        return self._last_source


def _source(addr: Address) -> bytes:
    """The cookie's view of a source address: IP bytes and port."""
    try:
        return ipaddress.ip_address(addr[0]).packed + int(addr[1]).to_bytes(2, "big")
    except (ValueError, TypeError, IndexError):
        return repr(addr).encode()

