"""rtnetlink: the kernel's own interface for links, addresses, routes and rules.

What `ip link/addr/route/rule` do, without a subprocess: one request message,
one acknowledgement, and the errno the kernel gave when it refused (never
English text to parse). The kernel carries out a request inside the send, so
the answer is already queued when we read it; nothing here waits on the network.

Message layouts are linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h and
fib_rules.h. Building and parsing are pure functions (tested without a kernel);
`Netlink` is the socket.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0

# message types (linux/rtnetlink.h)
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3

# header flags (linux/netlink.h)
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400

RTMGRP_LINK = 0x1  # multicast group: link changes (up, down, renamed, gone)

# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
FRA_PRIORITY, FRA_FWMARK, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_FWMASK = 6, 10, 14, 15, 16

IFF_UP = 0x1
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
RTPROT_BOOT = 3  # what `ip route add` gives a route
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_ERROR = struct.Struct("=i")
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_FIBRULE = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2, action, flags
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
RECV_BUFFER = 1 << 17  # a dump answers in pieces of at most a few pages
TIMEOUT = 5.0  # s: the kernel answers inside the send; this only guards a broken kernel


class NetlinkError(OSError):
    """The kernel refused a request: `errno` says why, `what` names the request."""

    def __init__(self, code: int, what: str):
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


# --- building ----------------------------------------------------------------


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(value), kind) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


# --- parsing -----------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    kind: int
    flags: int
    seq: int
    body: bytes


def messages(data: bytes) -> list[Message]:
    """Split one read into messages; a truncated tail is dropped."""
    out, pos = [], 0
    while pos + _HEADER.size <= len(data):
        length, kind, flags, seq, _ = _HEADER.unpack_from(data, pos)
        if length < _HEADER.size or pos + length > len(data):
            break
        out.append(Message(kind, flags, seq, data[pos + _HEADER.size:pos + length]))
        pos += _align(length)
    return out


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes after a fixed header; a malformed one ends the list."""
    out, pos = {}, offset
    while pos + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, pos)
        if length < _ATTR.size or pos + length > len(data):
            break
        out[kind & 0x3FFF] = data[pos + _ATTR.size:pos + length]  # without NLA_F_NESTED / NET_BYTEORDER
        pos += _align(length)
    return out


def error_code(body: bytes) -> int:
    """NLMSG_ERROR: 0 is an acknowledgement, otherwise a positive errno."""
    return -_ERROR.unpack_from(body)[0] if len(body) >= _ERROR.size else 0


def _get_u32(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return _U32.unpack(raw[:4])[0] if raw is not None and len(raw) >= 4 else None


# --- what we ask for ---------------------------------------------------------


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Route:
    """A route through our device: `net` in routing table `table`; or, with
    `unreachable`, one through no device that answers "no route to host" (what
    `ip route add unreachable NET table T metric M` makes). A route through the
    device takes the kernel's default metric (None here); an unreachable one
    names its own, so that it can lie beneath a device route for the same net."""
    net: Network
    table: int = RT_TABLE_MAIN
    unreachable: bool = False
    metric: int | None = None

    def __str__(self) -> str:
        words = (["unreachable"] if self.unreachable else []) + [str(self.net)]
        if self.table != RT_TABLE_MAIN:
            words.append(f"table {self.table}")
        if self.metric is not None:
            words.append(f"metric {self.metric}")
        return " ".join(words)


@dataclass(frozen=True)
class Rule:
    """A policy rule, as `ip rule` shows it: `[not] fwmark M table T` or
    `table T suppress_prefixlength N`."""
    version: int  # 4 or 6
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None

    def __str__(self) -> str:
        words = [f"-{self.version}"] + (["not"] if self.invert else [])
        if self.fwmark is not None:
            words.append(f"fwmark {self.fwmark:#x}")
        words.append(f"table {'main' if self.table == RT_TABLE_MAIN else self.table}")
        if self.suppress_prefixlength is not None:
            words.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return " ".join(words)


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _version(family: int) -> int | None:
    return {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)


def address_body(index: int, address: Interface) -> bytes:
    ip = address.ip
    scope = RT_SCOPE_HOST if ip.is_loopback else RT_SCOPE_LINK if ip.is_link_local else RT_SCOPE_UNIVERSE
    head = _IFADDR.pack(_family(ip.version), address.network.prefixlen, 0, scope, index)
    return head + attr(IFA_LOCAL, ip.packed) + attr(IFA_ADDRESS, ip.packed)


def route_body(index: int, route: Route, delete: bool = False) -> bytes:
    """`index` is the device's; an unreachable route has none and ignores it."""
    net = route.net
    v4 = net.version == 4
    if delete:
        scope = RT_SCOPE_NOWHERE
    else:
        scope = RT_SCOPE_LINK if v4 and not route.unreachable else RT_SCOPE_UNIVERSE
    table = route.table if route.table < 256 else RT_TABLE_UNSPEC
    kind = RTN_UNREACHABLE if route.unreachable else RTN_UNICAST
    head = _RTMSG.pack(_family(net.version), net.prefixlen, 0, 0, table, RTPROT_BOOT, scope, kind, 0)
    dst = attr(RTA_DST, net.network_address.packed) if net.prefixlen else b""
    oif = b"" if route.unreachable else u32(RTA_OIF, index)
    metric = u32(RTA_PRIORITY, route.metric) if route.metric is not None else b""
    return head + dst + oif + metric + u32(RTA_TABLE, route.table)


def rule_body(rule: Rule) -> bytes:
    table = rule.table if rule.table < 256 else RT_TABLE_UNSPEC
    head = _FIBRULE.pack(_family(rule.version), 0, 0, 0, table, 0, 0, FR_ACT_TO_TBL,
                         FIB_RULE_INVERT if rule.invert else 0)
    body = head + u32(FRA_TABLE, rule.table)
    if rule.fwmark is not None:
        body += u32(FRA_FWMARK, rule.fwmark) + u32(FRA_FWMASK, 0xFFFFFFFF)
    if rule.suppress_prefixlength is not None:
        body += u32(FRA_SUPPRESS_PREFIXLEN, rule.suppress_prefixlength)
    return body


def link_body(index: int, up: bool | None = None, mtu: int | None = None, mac: bytes | None = None,
              master: int | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if mtu is not None:
        body += u32(IFLA_MTU, mtu)
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac)
    if master is not None:
        body += u32(IFLA_MASTER, master)  # 0: leave the bridge
    return body


# --- what the kernel has -----------------------------------------------------


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    mtu: int | None
    mac: bytes | None
    master: int | None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def parse_link(body: bytes) -> Link | None:
    if len(body) < _IFINFO.size:
        return None
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    a = attributes(body, _IFINFO.size)
    return Link(index, flags, _get_u32(a, IFLA_MTU), a.get(IFLA_ADDRESS), _get_u32(a, IFLA_MASTER))


def parse_address(body: bytes) -> tuple[int, Interface] | None:
    """(interface index, address/prefix) of an RTM_NEWADDR."""
    if len(body) < _IFADDR.size:
        return None
    family, prefixlen, _, _, index = _IFADDR.unpack_from(body)
    version = _version(family)
    a = attributes(body, _IFADDR.size)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if version is None or raw is None or len(raw) != (4 if version == 4 else 16):
        return None
    try:
        return index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen))
    except ValueError:  # a prefix longer than the address
        return None


def parse_route(body: bytes) -> tuple[int | None, Route] | None:
    """(output interface index, route) of an RTM_NEWROUTE; None for kinds other
    than unicast and unreachable. An unreachable route's index is None (IPv6
    names the loopback device for it) and its metric is kept; a unicast route's
    metric is left out (it is the kernel's default for ours)."""
    if len(body) < _RTMSG.size:
        return None
    family, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(body)
    version = _version(family)
    if version is None or kind not in (RTN_UNICAST, RTN_UNREACHABLE):
        return None
    a = attributes(body, _RTMSG.size)
    width = 4 if version == 4 else 16
    raw = a.get(RTA_DST, bytes(width))
    if len(raw) != width or dst_len > width * 8:
        return None
    try:
        net = ipaddress.ip_network((ipaddress.ip_address(raw), dst_len))
    except ValueError:
        return None
    table = _get_u32(a, RTA_TABLE) or table
    if kind == RTN_UNREACHABLE:
        return None, Route(net, table, unreachable=True, metric=_get_u32(a, RTA_PRIORITY) or 0)
    return _get_u32(a, RTA_OIF), Route(net, table)


def parse_rule(body: bytes) -> Rule | None:
    if len(body) < _FIBRULE.size:
        return None
    family, _, _, _, table, _, _, action, flags = _FIBRULE.unpack_from(body)
    version = _version(family)
    if version is None or action != FR_ACT_TO_TBL:
        return None
    a = attributes(body, _FIBRULE.size)
    suppress = _get_u32(a, FRA_SUPPRESS_PREFIXLEN)
    return Rule(version, _get_u32(a, FRA_TABLE) or table, _get_u32(a, FRA_FWMARK),
                bool(flags & FIB_RULE_INVERT), None if suppress == 0xFFFFFFFF else suppress)  # -1: none


# --- the socket --------------------------------------------------------------


class Netlink:
    """A NETLINK_ROUTE socket for requests. Blocking with a timeout: every
    answer is queued before the send returns."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _exchange(self, kind: int, flags: int, body: bytes, what: str) -> list[Message]:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        seq = self.seq
        self.sock.send(message(kind, flags | NLM_F_REQUEST, seq, body))
        out: list[Message] = []
        while True:
            try:
                data = self.sock.recv(RECV_BUFFER)
            except socket.timeout:
                raise NetlinkError(errno.ETIMEDOUT, what) from None
            for m in messages(data):
                if m.seq != seq:
                    continue  # an answer to an earlier request that timed out
                if m.kind == NLMSG_ERROR:
                    code = error_code(m.body)
                    if code:
                        raise NetlinkError(code, what)
                    return out
                if m.kind == NLMSG_DONE:
                    return out
                out.append(m)
                if not flags & (NLM_F_ACK | NLM_F_MULTI) and not m.flags & NLM_F_MULTI:
                    return out  # a plain get: one answer, no acknowledgement

    def request(self, kind: int, body: bytes, what: str, flags: int = 0) -> None:
        self._exchange(kind, flags | NLM_F_ACK, body, what)

    def dump(self, kind: int, body: bytes, what: str) -> list[Message]:
        return self._exchange(kind, NLM_F_DUMP, body, what)

    # links

    def link(self, index: int) -> Link:
        found = self._exchange(RTM_GETLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), f"read link {index}")
        link = parse_link(found[0].body) if found else None
        if link is None:
            raise NetlinkError(errno.ENODEV, f"read link {index}")
        return link

    def set_link(self, index: int, what: str, **changes) -> None:
        self.request(RTM_NEWLINK, link_body(index, **changes), what)

    # addresses, routes, rules

    def addresses(self, index: int) -> set[Interface]:
        found = self.dump(RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0), "list addresses")
        parsed = (parse_address(m.body) for m in found if m.kind == RTM_NEWADDR)
        return {addr for p in parsed if p is not None and p[0] == index for addr in (p[1],)}

    def add_address(self, index: int, address: Interface) -> None:
        self.request(RTM_NEWADDR, address_body(index, address), f"add address {address}", NLM_F_CREATE | NLM_F_EXCL)

    def del_address(self, index: int, address: Interface) -> None:
        self.request(RTM_DELADDR, address_body(index, address), f"remove address {address}")

    def routes(self, index: int) -> set[Route]:
        """The routes through device `index`, and every unreachable route (they have no device)."""
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            head = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            found += self.dump(RTM_GETROUTE, head, "list routes")
        parsed = (parse_route(m.body) for m in found if m.kind == RTM_NEWROUTE)
        return {p[1] for p in parsed if p is not None and (p[0] == index or p[1].unreachable)}

    def add_route(self, index: int, route: Route) -> None:
        self.request(RTM_NEWROUTE, route_body(index, route), f"add route {route}", NLM_F_CREATE | NLM_F_EXCL)

    def del_route(self, index: int, route: Route) -> None:
        self.request(RTM_DELROUTE, route_body(index, route, delete=True), f"remove route {route}")

    def rules(self) -> list[Rule]:
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            found += self.dump(RTM_GETRULE, _FIBRULE.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "list rules")
        return [r for r in (parse_rule(m.body) for m in found if m.kind == RTM_NEWRULE) if r is not None]

    def add_rule(self, rule: Rule) -> None:
        self.request(RTM_NEWRULE, rule_body(rule), f"add rule {rule}", NLM_F_CREATE | NLM_F_EXCL)

    def del_rule(self, rule: Rule) -> None:
        self.request(RTM_DELRULE, rule_body(rule), f"remove rule {rule}")


class LinkWatch:
    """A non-blocking socket on the link multicast group: the daemon reads it
    with add_reader and learns when its device goes down or comes back up."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> tuple[list[Link], bool]:
        """Every link message queued, and whether some were lost (ENOBUFS)."""
        links, lost = [], False
        while True:
            try:
                data = self.sock.recv(RECV_BUFFER)
            except BlockingIOError:
                return links, lost
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the queue overflowed; the caller re-reads the state
                    lost = True
                    continue
                raise
            for m in messages(data):
                if m.kind == RTM_NEWLINK and (link := parse_link(m.body)) is not None:
                    links.append(link)

    def close(self) -> None:
        self.sock.close()
