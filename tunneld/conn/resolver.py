"""Following a peer's host name: ask again, and try every address it has.

    Resolver.start()        a lookup now (getaddrinfo, in the loop's thread pool)
    lookup done             ResolvePolicy.resolved() / failed(): the address to use, when to ask next
    Resolver.unanswered()   a handshake to the address in use went unanswered: the
                            name's next address, or, every one tried, a new lookup
    Resolver.refresh()      a reload: ask now
    on_change(new, old, why)  called (from the loop, never inside one of the calls
                            above) when the address to use changes

`ResolvePolicy` holds the decisions, pure and clock-free (`now` is passed in)
and tested on a fake clock; `Resolver` is its asyncio side: one lookup at a
time, one timer.

The system resolver (getaddrinfo: /etc/hosts, nsswitch, DNS, systemd-resolved)
does not say how long an answer holds, so a name is asked again every
`ceiling` seconds; a TTL, where a lookup reports one, is honoured between
`floor` and `ceiling`. A new answer that still holds the address in use keeps
it (a round-robin name does not flip the tunnel); one that does not moves to
its first address. An unanswered handshake moves to the next address at once;
once every address was tried, the name is asked again, at most once per
`floor`. A name that does not resolve is asked again after 1 s, doubling to 30 s
(never later than `ceiling`); the last answer stays in use meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

from tunneld.conn.endpoint import Endpoint
from tunneld.core.contract import Address, format_address

log = logging.getLogger("tunneld")

RETRY_INITIAL = 1.0  # s after a failed lookup; doubles
RETRY_MAX = 30.0  # s: the longest wait after failures (or the ceiling, if shorter)
RESOLVE_FLOOR = 5.0  # s: defaults of transport.resolve_min and transport.resolve_max
RESOLVE_CEILING = 300.0


class ResolvePolicy:
    """When to look a name up and which of its addresses to use; no I/O, no clock."""

    def __init__(self, floor: float = RESOLVE_FLOOR, ceiling: float = RESOLVE_CEILING):
        self.floor, self.ceiling = floor, ceiling
        self.addresses: tuple = ()  # the last answer, in the resolver's order (RFC 6724)
        self.index = 0  # the one in use
        self.tried = 0  # addresses that went unanswered since the last answer or lookup
        self.due = float("-inf")  # when to look up next: at once
        self.asked = float("-inf")  # when the last lookup started
        self.failures = 0  # lookups failed in a row
        self.error: str | None = None  # the last failure's reason, until a lookup succeeds

    @property
    def current(self) -> Address | None:
        return self.addresses[self.index] if self.addresses else None

    def asking(self, now: float) -> None:
        """A lookup starts."""
        self.asked = now

    def resolved(self, now: float, addresses, ttl: float | None = None) -> Address | None:
        """A lookup answered (an empty answer counts as a failure); the new address to
        use, or None when it stays the same."""
        addresses = tuple(dict.fromkeys(addresses))  # duplicates (one per socket type) out, order kept
        if not addresses:
            self.failed(now, "no address")
            return None
        self.failures, self.error = 0, None
        self.due = now + (self.ceiling if ttl is None else min(max(ttl, self.floor), self.ceiling))
        old = self.current
        if addresses == self.addresses:
            return None
        self.addresses = addresses
        self.index = addresses.index(old) if old in addresses else 0
        self.tried = 0
        return self.current if self.current != old else None

    def failed(self, now: float, why: str) -> None:
        self.failures += 1
        self.error = why
        self.due = now + min(RETRY_INITIAL * 2 ** (self.failures - 1), RETRY_MAX, self.ceiling)

    def unanswered(self, now: float) -> Address | None:
        """A handshake to the address in use went unanswered: the next address to try
        (None: none other), and, once every address was tried, a lookup as soon as
        the floor allows."""
        if not self.addresses:
            return None
        self.tried += 1
        if self.tried >= len(self.addresses):
            self.tried = 0
            self.due = min(self.due, max(now, self.asked + self.floor))
        if len(self.addresses) == 1:
            return None
        self.index = (self.index + 1) % len(self.addresses)
        return self.current

    def refresh(self, now: float) -> None:
        """Look up now (a reload)."""
        self.due = now


def usable(infos, family: int, dual: bool) -> list:
    """The socket addresses of getaddrinfo's answer that a socket of `family` can
    send to, in order: IPv4 as v4-mapped on a dual-stack IPv6 socket."""
    out = []
    for fam, _, _, _, sockaddr in infos:
        if fam == family:
            out.append(sockaddr[:2] + (0, 0) if fam == socket.AF_INET6 else sockaddr[:2])
        elif fam == socket.AF_INET and family == socket.AF_INET6 and dual:
            out.append((f"::ffff:{sockaddr[0]}", sockaddr[1], 0, 0))
    return out


async def lookup(ep: Endpoint) -> tuple[list, float | None]:
    """getaddrinfo's answer for a UDP endpoint, every family, and no TTL (it gives none)."""
    infos = await asyncio.get_running_loop().getaddrinfo(ep.host, ep.port, family=socket.AF_UNSPEC,
                                                          type=socket.SOCK_DGRAM)
    return infos, None


class Resolver:
    """One endpoint's name kept resolved for a socket of `family` (`dual`: an IPv6
    socket that also reaches IPv4). `on_change(new, old, why)`: the address to use
    changed; why is "resolved" (a new answer) or "unanswered" (the next address)."""

    def __init__(self, ep: Endpoint, family: int, dual: bool, on_change: Callable[[Address, Address | None, str], None],
                 *, floor: float = RESOLVE_FLOOR, ceiling: float = RESOLVE_CEILING,
                 clock: Callable[[], float] = time.monotonic, lookup=lookup):
        self.ep, self.family, self.dual = ep, family, dual
        self.on_change = on_change
        self.policy = ResolvePolicy(floor, ceiling)
        self.clock = clock
        self._lookup = lookup
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._started = False

    @property
    def current(self) -> Address | None:
        return self.policy.current

    async def first(self) -> Address:
        """One lookup now, for a reload that must know before it commits; raises
        LookupError with the reason when the name gives no usable address."""
        now = self.clock()
        self.policy.asking(now)
        try:
            infos, ttl = await self._lookup(self.ep)
        except (OSError, UnicodeError) as e:
            raise LookupError(f"cannot resolve {self.ep}: {_reason(e)}") from None
        addresses = usable(infos, self.family, self.dual)
        if not addresses:
            raise LookupError(f"cannot resolve {self.ep}: {self._no_usable()}")
        self.policy.resolved(now, addresses, ttl)
        log.info("%s resolves to %s", self.ep, _list(addresses))
        return self.policy.current

    def start(self) -> None:
        """Look up when due (at once, unless first() answered), then keep at it."""
        self._started = True
        self._arm()

    def unanswered(self) -> None:
        if self._closed:
            return
        old = self.policy.current
        new = self.policy.unanswered(self.clock())
        if new is not None and new != old:
            log.debug("no answer from %s; trying %s's next address, %s", format_address(old), self.ep.host,
                      format_address(new))
            self._loop.call_soon(self._tell, new, old, "unanswered")
        self._arm()

    def refresh(self) -> None:
        self.policy.refresh(self.clock())
        self._arm()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    # --- the loop side -----------------------------------------------------------

    def _arm(self) -> None:
        if self._closed or not self._started or self._task is not None:
            return  # a lookup in flight re-arms when it ends
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(0.0, self.policy.due - self.clock()), self._due)

    def _due(self) -> None:
        self._timer = None
        if self._closed or self._task is not None:
            return
        if self.clock() < self.policy.due:  # moved later meanwhile
            self._arm()
            return
        self._task = self._loop.create_task(self._ask(), name=f"resolve {self.ep.host}")

    async def _ask(self) -> None:
        policy = self.policy
        now = self.clock()
        policy.asking(now)
        old = policy.current
        try:
            try:
                infos, ttl = await self._lookup(self.ep)
            except (OSError, UnicodeError) as e:
                why = _reason(e)
            else:
                addresses = usable(infos, self.family, self.dual)
                why = None if addresses else self._no_usable()
            now = self.clock()
            if why is not None:
                if why != policy.error:  # each new reason once; the retries are quiet
                    log.warning("cannot resolve %s: %s; trying again in %g s, then backing off to %g s%s", self.ep,
                                why, min(RETRY_INITIAL, policy.ceiling), min(RETRY_MAX, policy.ceiling),
                                f"; still sending to {format_address(old)}" if old is not None else "")
                policy.failed(now, why)
                return
            was_error = policy.error is not None
            new = policy.resolved(now, addresses, ttl)
            if new is not None:
                if old is None:
                    log.info("%s resolves to %s", self.ep, _list(policy.addresses))
                else:
                    log.info("%s now resolves to %s: sending to %s instead of %s", self.ep, _list(policy.addresses),
                             format_address(new), format_address(old))
                self._tell(new, old, "resolved")
            elif was_error:
                log.info("%s resolves again, to %s", self.ep, _list(policy.addresses))
        finally:
            self._task = None
            self._arm()

    def _tell(self, new: Address, old: Address | None, why: str) -> None:
        if not self._closed:
            self.on_change(new, old, why)

    def _no_usable(self) -> str:
        if self.family == socket.AF_INET:
            return "no IPv4 address, and the socket is IPv4 (transport.listen)"
        return "no IPv6 address, and the socket is IPv6 only (transport.listen)" if not self.dual else "no address"


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return e.strerror or str(e)
    if isinstance(e, OSError):
        return (e.strerror or str(e)).lower()
    return str(e) or type(e).__name__


def _list(addresses) -> str:
    return ", ".join(format_address(a) for a in addresses)

