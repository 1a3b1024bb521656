"""Interface set-up over rtnetlink: MTU, MAC, bridge, addresses, link up,
routes and the full-tunnel rules (`routing.py`).

The kernel is the truth: every change first reads what the device really
has, adds what is missing and removes what we had and no longer want. A
change is all or nothing: when a step fails, the steps already done are
walked back and the error names the interface and the step:

    tap0: cannot join bridge br9: no such device

What we added is remembered. Policy rules outlive the device, so they are
always removed at stop; a device we created vanishes with its fd, taking its
addresses, routes and bridge port along, so only a persistent device (which
outlives us) has those walked back too.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Callable, Protocol

from tunneld.host import routing, rtnl
from tunneld.errors import StartupError
from tunneld.host.rtnl import NetlinkError, Route, Rule

log = logging.getLogger("tunneld")
SYS_NET = "/sys/class/net"



class LinkSpec(Protocol):
    """What set-up reads of an interface's configuration (config.InterfaceConfig is one)."""

    mtu: int
    mac: str | None
    bridge: str | None
    addresses: tuple
    routes: tuple

class LinkSetup:
    def __init__(self, name: str, persistent: bool, nl: rtnl.Netlink | None = None):
        self.name = name
        self.persistent = persistent
        self.nl = nl or rtnl.Netlink()
        try:
            self.index = socket.if_nametoindex(name)
        except OSError:
            raise StartupError(f"{name}: no such device") from None
        self.link_undo: list[tuple[str, dict]] = []  # link properties to restore at stop (persistent only)
        self.brought_up = False
        # what the config wants of the kernel, and what of it we added
        self.addresses: tuple = ()
        self.routes: tuple[Route, ...] = ()
        self.rules: tuple[Rule, ...] = ()
        self.added: set = set()  # addresses, Routes and Rules that were not there before us

    def _fail(self, e: NetlinkError, what: str | None = None) -> StartupError:
        return StartupError(f"{self.name}: cannot {what or e.what}: {_plain(e.errno)}")

    def _link(self, what: str, undo: dict | None, **changes) -> None:
        try:
            self.nl.set_link(self.index, what, **changes)
        except NetlinkError as e:
            raise self._fail(e) from None
        if undo is not None and self.persistent:
            self.link_undo.append((what, undo))

    def apply(self, cfg: LinkSpec, fwmark: int | None) -> None:
        """Start-up: link properties, addresses, up, then routes and rules."""
        try:
            link = self.nl.link(self.index)
        except NetlinkError as e:
            raise self._fail(e, "read the link") from None
        if link.mtu != cfg.mtu:
            self._link(f"set MTU {cfg.mtu}", {"mtu": link.mtu}, mtu=cfg.mtu)
        if cfg.mac:
            mac = bytes.fromhex(cfg.mac.replace(":", ""))
            if link.mac != mac:
                self._link(f"set MAC address {cfg.mac}", {"mac": link.mac} if link.mac else None, mac=mac)
        if cfg.bridge:
            br = cfg.bridge
            try:
                master = socket.if_nametoindex(br)
            except OSError:
                raise StartupError(f"{self.name}: cannot join bridge {br}: no such device") from None
            if not os.path.isdir(f"{SYS_NET}/{br}/bridge"):
                raise StartupError(f"{self.name}: cannot join bridge {br}: not a bridge")
            self._link(f"join bridge {br}", {"master": 0}, master=master)
        self.change(cfg.addresses, (), ())
        if not link.up:
            self._link("bring the link up", {"up": False}, up=True)
            self.brought_up = True
        self.change(cfg.addresses, routing.routes(cfg.routes, fwmark), routing.rules(cfg.routes, fwmark))

    def change(self, addresses, routes, rules) -> list[str]:
        """Make the kernel hold these (and no longer what we held before and
        dropped), comparing with what it has now; all or nothing. Routes wait
        while the link is down (the kernel refuses them): `restore` adds them
        when it comes back. The names of what changed."""
        nl, index = self.nl, self.index
        try:
            have_addresses = nl.addresses(index)
            have_routes = nl.routes(index)
            have_rules = nl.rules()
            up = nl.link(index).up
        except NetlinkError as e:
            raise self._fail(e) from None
        # per kind: label, held before, wanted now, to add now (routes wait for the
        # link), what the kernel has, and the two requests
        kinds = [
            ("address", self.addresses, addresses, addresses, have_addresses,
             lambda a: nl.add_address(index, a), lambda a: nl.del_address(index, a)),
            ("route", self.routes, routes, routes if up else (), have_routes,
             lambda r: nl.add_route(index, r), lambda r: nl.del_route(index, r)),
            ("rule", self.rules, rules, rules, have_rules, nl.add_rule, nl.del_rule),
        ]
        removals, additions = [], []  # (what, do, undo); all removals go first
        for label, before, wanted, now, have, add, remove in kinds:
            removals += [(f"{label} -{x}", lambda x=x, f=remove: f(x), lambda x=x, f=add: f(x))
                         for x in before if x not in wanted and x in have]
            additions += [(f"{label} +{x}", lambda x=x, f=add: f(x), lambda x=x, f=remove: f(x))
                          for x in now if x not in have]
        steps = removals + additions
        # Ours: what we add, and our rules even when already there (a tunneld killed
        # with -9 left them; they name our mark and table; the next orderly stop
        # takes them away).
        added = [x for _, _, _, now, have, _, _ in kinds[:2] for x in now if x not in have] + list(rules)
        undo: list[Callable] = []
        for what, do, back in steps:
            try:
                do()
            except NetlinkError as e:
                for step in reversed(undo):
                    try:
                        step()
                    except NetlinkError as e2:
                        log.warning("%s: cannot walk back a step of a failed change: %s", self.name, e2)
                raise self._fail(e) from None
            undo.append(back)
        gone = {x for x in (*self.addresses, *self.routes, *self.rules)} - {*addresses, *routes, *rules}
        self.added = (self.added - gone) | set(added)
        self.addresses, self.routes, self.rules = tuple(addresses), tuple(routes), tuple(rules)
        return [what for what, _, _ in steps]

    def restore(self) -> list[str]:
        """The link came back up: the kernel dropped its routes (and its IPv6
        addresses) when it went down. Put back what is missing; a failure is logged."""
        return self.change(self.addresses, self.routes, self.rules)

    def undo(self) -> None:
        """At stop: remove our rules; for a persistent device also our routes and
        addresses, and restore its link properties. A failure is logged, not raised."""
        nl, index = self.nl, self.index
        steps: list[tuple[str, Callable]] = [(f"remove rule {r}", lambda r=r: nl.del_rule(r))
                                             for r in reversed(self.rules) if r in self.added]
        if self.persistent:
            steps += [(f"remove route {r}", lambda r=r: nl.del_route(index, r))
                      for r in reversed(self.routes) if r in self.added]
            steps += [(f"remove address {a}", lambda a=a: nl.del_address(index, a))
                      for a in reversed(self.addresses) if a in self.added]
            if self.brought_up:
                steps.append(("bring the link down", lambda: nl.set_link(index, "bring the link down", up=False)))
            steps += [(what, lambda u=u: nl.set_link(index, what, **u)) for what, u in reversed(self.link_undo)]
        for what, step in steps:
            try:
                step()
            except NetlinkError as e:
                if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV):
                    log.warning("%s: cannot undo '%s': %s", self.name, what, _plain(e.errno))
        self.added.clear()
        self.link_undo.clear()
        self.brought_up = False

    def pending_undo(self) -> int:
        """How many changes undo() has to walk back."""
        return len([x for x in self.added if isinstance(x, Rule) or self.persistent]) + (
            len(self.link_undo) + self.brought_up if self.persistent else 0)

    def close(self) -> None:
        self.nl.close()


def _plain(code: int) -> str:
    """The errno's text, in the words of the rest of our log."""
    if code == errno.ENODEV:
        return "no such device"
    text = os.strerror(code)
    return text[:1].lower() + text[1:]
