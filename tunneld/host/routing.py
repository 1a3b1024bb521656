"""What the kernel should hold for a config's routes: pure, no kernel access.

A route of prefix length 0 (0.0.0.0/0, ::/0) means "everything through the
tunnel", done as wg-quick does it, not by replacing the default route:

    ip route add 0.0.0.0/0 dev tun0 table M
    ip rule add not fwmark M table M
    ip rule add table main suppress_prefixlength 0

The tunnel's own sockets carry mark M (SO_MARK, `transport.fwmark`), so they
keep using the main table and its default route: the path to the peer stays
outside the tunnel whatever address the peer roams to. Every other packet
looks in main first, ignoring main's default route (suppress_prefixlength 0),
so the LAN stays reachable; what main has no specific route for goes to table
M and into the tunnel. Rules are added in that order without a priority: the
kernel numbers each new one below the last, so the suppress rule is tried first.

Beneath the device's default route, table M also gets a guard:

    ip route add unreachable 0.0.0.0/0 table M metric 4294967295

While the device is there its route wins (the lower metric); when the device
goes (the daemon killed, crashed or restarting, the link down) the guard is
what is left, and a packet meant for the tunnel gets "no route to host"
instead of falling through to main's default route in clear. The guard and
the rules are the full tunnel's kill switch: they outlive the daemon and only
a real stop removes them (`tunneld down`, netconf.py).

Other routes go into the main table as they are. A set of them that contains
the peer's own address (0.0.0.0/1 + 128.0.0.0/1, OpenVPN's def1 without its
host route) would send the tunnel's packets into the tunnel: `captures` finds it.
"""

from __future__ import annotations

import ipaddress

from tunneld.host.rtnl import RT_TABLE_MAIN, Route, Rule

FULL_TUNNEL_MARK = 51820  # wg-quick's default fwmark and table number
GUARD_METRIC = 0xFFFFFFFF  # the largest: beneath any route for the same net (IPv6 ones default to 1024)


def is_default(net) -> bool:
    return net.prefixlen == 0


def full_tunnel(routes) -> bool:
    return any(is_default(n) for n in routes)


def routes(nets, fwmark: int | None) -> tuple[Route, ...]:
    """The guards, then the routes through our device: a default route in table
    `fwmark` (above its guard), the rest in main."""
    return guards(nets, fwmark) + tuple(Route(n, fwmark if is_default(n) and fwmark is not None else RT_TABLE_MAIN)
                                        for n in nets)


def guards(nets, fwmark: int | None) -> tuple[Route, ...]:
    """An unreachable default route in table `fwmark` for each family that has a
    default route through the tunnel: where its packets go while no device is."""
    if fwmark is None:
        return ()
    return tuple(Route(n, fwmark, unreachable=True, metric=GUARD_METRIC) for n in nets if is_default(n))


def is_guard(x) -> bool:
    """A rule or guard route: the part of a full tunnel that a restart keeps."""
    return isinstance(x, Rule) or (isinstance(x, Route) and x.unreachable)


def rules(nets, fwmark: int | None) -> tuple[Rule, ...]:
    """Two rules for each family that has a default route, in the order they are added."""
    out: list[Rule] = []
    if fwmark is None:
        return ()
    for version in (4, 6):
        if any(is_default(n) and n.version == version for n in nets):
            out.append(Rule(version, fwmark, fwmark=fwmark, invert=True))
            out.append(Rule(version, RT_TABLE_MAIN, suppress_prefixlength=0))
    return tuple(out)


def captures(nets, peer: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The configured route that would carry packets for the peer's own address
    into the tunnel (default routes excepted: they live behind the fwmark rule)."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return None  # a host name: checked once resolved
    hits = [n for n in nets if not is_default(n) and n.version == ip.version and ip in n]
    return max(hits, key=lambda n: n.prefixlen) if hits else None
