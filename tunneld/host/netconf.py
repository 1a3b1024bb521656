"""Interface set-up over rtnetlink: MTU, MAC, bridge, addresses, link up,
routes and the full-tunnel rules (`routing.py`).

The kernel is the truth: every change first reads what the device really
has, adds what is missing and removes what we had and no longer want. A
change is all or nothing: when a step fails, the steps already done are
walked back and the error names the interface and the step:

    tap0: cannot join bridge br9: no such device

What we added is remembered, and written down (kept.py) for `tunneld down`.
A device we created vanishes with its fd, taking its addresses, routes and
bridge port along. What outlives it, the full tunnel's rules and guard routes
and everything on a persistent device, is what stops the tunnel's traffic
from taking another route in clear while no daemon runs: a stop for a restart
(`leave`) keeps it, a real stop (`undo`) walks it back, and a start adopts
what a predecessor kept.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Callable, Protocol

from tunneld.host import kept as keptmod
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
    """`kept_path`: the file that says what a restart keeps (kept.py); what it
    held when we start is what a predecessor kept, adopted by `apply`."""

    def __init__(self, name: str, persistent: bool, nl: rtnl.Netlink | None = None, kept_path: str | None = None):
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
        self.kept_path = kept_path
        self.previous: keptmod.Kept | None = None  # what a predecessor kept, read at apply
        self.adopted: set = set()  # what of it (or of a full tunnel's guard) we found in place
        self.link_undo_before: list[tuple[str, dict]] = []  # a predecessor's link_undo, run after ours
        self.brought_up_before = False  # a predecessor brought the persistent device up
        self.saving = False  # the file is the predecessor's until apply has adopted it

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
        """Start-up: link properties, addresses, up, then routes and rules; then
        adopt what a predecessor kept."""
        self._read_previous()
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
        self._adopt()

    def _read_previous(self) -> None:
        if self.kept_path is None:
            return
        try:
            self.previous = keptmod.load(self.kept_path)
        except ValueError as e:
            log.warning("%s: ignoring %s: %s", self.name, self.kept_path, e)

    def _adopt(self) -> None:
        """After the first change: what a predecessor kept is ours now when we
        still want it (a later real stop removes it), and gone when we do not."""
        prev = self.previous
        self.saving = True
        if prev is None:
            self._save()
            return
        wanted = {*self.addresses, *self.routes, *self.rules}
        same = prev.device == self.name and self.persistent
        theirs = {*prev.rules, *(r for r in prev.routes if r.unreachable)}
        if same:
            theirs |= {*prev.addresses, *prev.routes}
            self.link_undo_before = list(prev.link_undo)
            self.brought_up_before = prev.brought_up
        self.adopted |= theirs & wanted
        self.added |= theirs & wanted
        if theirs & wanted:
            log.info("%s: adopted what the last run kept: %s", self.name, self.kept().describe())
        stale = keptmod.Kept(prev.device, same, tuple(r for r in prev.rules if r not in wanted),
                             tuple(r for r in prev.routes if r not in wanted and (same or r.unreachable)),
                             tuple(a for a in prev.addresses if a not in wanted and same))
        if stale:
            for line in keptmod.remove(stale, self.nl):
                log.warning("%s: what the last run kept: %s", self.name, line)
            log.info("%s: removed what the last run kept and this config no longer wants: %s",
                     self.name, stale.describe())
        self._save()

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
            ("route", self.routes, routes, routes if up else tuple(r for r in routes if r.unreachable), have_routes,
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
        # Ours: what we add, and our rules and guards even when already there (a
        # tunneld that stopped for a restart, or was killed, left them; they name
        # our mark and table; the next real stop takes them away).
        guards = [r for r in routes if r.unreachable]
        added = [x for _, _, _, now, have, _, _ in kinds[:2] for x in now if x not in have] + list(rules) + guards
        self.adopted |= {x for x in (*rules, *guards) if x in have_rules or x in have_routes}
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
        self.adopted &= self.added
        self._save()
        return [what for what, _, _ in steps]

    def restore(self) -> list[str]:
        """The link came back up: the kernel dropped its routes (and its IPv6
        addresses) when it went down. Put back what is missing; a failure is logged."""
        return self.change(self.addresses, self.routes, self.rules)

    def kept(self) -> keptmod.Kept:
        """What a stop for a restart leaves: our rules and guard routes; on a
        persistent device also our addresses and routes and its link state."""
        guards = tuple(r for r in self.routes if r.unreachable and r in self.added)
        rules = tuple(r for r in self.rules if r in self.added)
        if not self.persistent:
            return keptmod.Kept(self.name, False, rules, guards)
        return keptmod.Kept(self.name, True, rules, tuple(r for r in self.routes if r in self.added),
                            tuple(a for a in self.addresses if a in self.added),
                            self.brought_up or self.brought_up_before,
                            tuple(self.link_undo_before + self.link_undo))

    def _save(self) -> None:
        if self.kept_path is None or not self.saving:
            return
        try:
            keptmod.save(self.kept_path, self.kept())
        except OSError as e:
            log.warning("%s: cannot write %s (%s): after a stop, remove what it keeps by hand "
                        "(docs/full-tunnel.md)", self.name, self.kept_path, e.strerror)

    def leave(self) -> keptmod.Kept:
        """A stop for a restart: change nothing; what stays (the file already says so)."""
        return self.kept()

    def spare_at_failed_start(self) -> set:
        """What a start that fails leaves: what a predecessor kept, which still
        guards the traffic it was keeping for us."""
        prev = self.previous
        if prev is None:
            return set(self.adopted)
        return self.adopted | {*prev.rules, *prev.routes, *prev.addresses}

    def undo(self, spare: frozenset | set = frozenset()) -> None:
        """A real stop: remove our rules and guards; for a persistent device also
        our routes and addresses, and restore its link properties. `spare`: what
        to leave (a failed start leaves what a predecessor kept, with its link
        state). A failure is logged, not raised."""
        nl, index = self.nl, self.index
        steps: list[tuple[str, Callable]] = [(f"remove rule {r}", lambda r=r: nl.del_rule(r))
                                             for r in reversed(self.rules) if r in self.added and r not in spare]
        steps += [(f"remove route {r}", lambda r=r: nl.del_route(index, r))
                  for r in reversed(self.routes) if r.unreachable and r in self.added and r not in spare]
        if self.persistent:
            steps += [(f"remove route {r}", lambda r=r: nl.del_route(index, r))
                      for r in reversed(self.routes) if not r.unreachable and r in self.added and r not in spare]
            steps += [(f"remove address {a}", lambda a=a: nl.del_address(index, a))
                      for a in reversed(self.addresses) if a in self.added and a not in spare]
            if self.brought_up or (self.brought_up_before and not spare):
                steps.append(("bring the link down", lambda: nl.set_link(index, "bring the link down", up=False)))
            link_undo = self.link_undo + ([] if spare else self.link_undo_before)
            steps += [(what, lambda what=what, u=u: nl.set_link(index, what, **u)) for what, u in reversed(link_undo)]
        failed = set()  # rules, routes and addresses still there: the record keeps them for `tunneld down`
        removing = {f"remove rule {r}": r for r in self.rules} | {f"remove route {r}": r for r in self.routes} \
            | {f"remove address {a}": a for a in self.addresses}
        for what, step in steps:
            try:
                step()
            except NetlinkError as e:
                if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV):
                    log.warning("%s: cannot undo '%s': %s", self.name, what, _plain(e.errno))
                    if what in removing:
                        failed.add(removing[what])
        self.added &= set(spare) | failed
        self.link_undo.clear()
        self.brought_up = False
        if not spare:
            self.link_undo_before.clear()
            self.brought_up_before = False
        self._save()

    def pending_undo(self) -> int:
        """How many changes undo() has to walk back."""
        return len([x for x in self.added if routing.is_guard(x) or self.persistent]) + (
            len(self.link_undo) + len(self.link_undo_before) + self.brought_up if self.persistent else 0)

    def close(self) -> None:
        self.nl.close()


def _plain(code: int) -> str:
    """The errno's text, in the words of the rest of our log."""
    if code == errno.ENODEV:
        return "no such device"
    text = os.strerror(code)
    return text[:1].lower() + text[1:]
