"""Underlay addresses: picking the socket family, resolving endpoints, socket tuning.

Shared by the UDP and TCP transports, the only modules that open sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket

from tunneld.conn.endpoint import Endpoint, is_ip
from tunneld.errors import StartupError
from tunneld.packet.limits import SOCKET_BUFFER

# Linux values the socket module does not export (include/uapi/linux/in.h, in6.h, asm/socket.h)
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33


def family_of(listen: Endpoint | None, remote: Endpoint | None) -> int:
    """The socket family: the listen address decides, else the remote's literal
    address; a remote host name leaves it open (AF_UNSPEC) until resolved."""
    for ep in (listen, remote):
        if ep is None:
            continue
        try:
            return socket.AF_INET6 if ipaddress.ip_address(ep.host).version == 6 else socket.AF_INET
        except ValueError:
            continue
    return socket.AF_UNSPEC


async def resolve(ep: Endpoint, family: int, kind: int) -> tuple[int, tuple]:
    """(family, sockaddr) for an endpoint; an IPv4 peer on an IPv6 socket is v4-mapped."""
    flags = socket.AI_V4MAPPED if family == socket.AF_INET6 else 0
    try:
        if is_ip(ep.host):  # no lookup to wait for: answer inline, no thread
            infos = socket.getaddrinfo(ep.host, ep.port, family, kind, 0, flags | socket.AI_NUMERICHOST)
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(ep.host, ep.port, family=family, type=kind, flags=flags)
    except socket.gaierror as e:
        raise StartupError(f"cannot resolve {ep}: {e.strerror}") from None
    if not infos:
        raise StartupError(f"cannot resolve {ep}: no address")
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr


def any_family() -> int:
    """A socket family for a peer known by name only: IPv6, dual-stack (dual_stack()),
    so both of the name's families are reachable; IPv4 where the kernel has no IPv6."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return socket.AF_INET
    return socket.AF_INET6


def is_dual(sock: socket.socket) -> bool:
    """An IPv6 socket that reaches IPv4 peers too (as v4-mapped addresses)."""
    return sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) \
        and sock.getsockname()[0] in ("::", "::ffff:0.0.0.0")


def bind_address(ep: Endpoint, family: int) -> tuple:
    return (ep.host, ep.port, 0, 0) if family == socket.AF_INET6 else (ep.host, ep.port)


def dual_stack(sock: socket.socket, ep: Endpoint | None) -> None:
    """An IPv6 wildcard listener also takes IPv4 peers, as v4-mapped addresses."""
    if sock.family == socket.AF_INET6 and (ep is None or ep.host == "::"):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def allow_fragments(sock: socket.socket) -> None:
    """Clear DF on outer packets and let the kernel fragment what exceeds the path MTU:
    a 1514-byte TAP frame still crosses a 1500-byte underlay (as WireGuard and
    OpenVPN's UDP mode do by default)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    except OSError:
        pass  # an IPv6-only socket has no IPv4 options


def size_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Bounded kernel buffers big enough for bursts; FORCE passes rmem_max when we may."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)



def packed_ip(addr) -> bytes | None:
    """A socket address's IP as packed bytes, an IPv4-mapped IPv6 address as its
    4 IPv4 bytes (what the kernel sees in the packet); None if it is not an IP."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except (ValueError, TypeError, IndexError):
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed


def reason(e: BaseException) -> str:
    """An OS error in the kernel's words ("connection refused"), whatever wrapped it."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower()
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    return str(e) or type(e).__name__


def bind_error(proto: str, ep: Endpoint, e: OSError) -> StartupError:
    return StartupError(f"{proto}: cannot listen on {ep}: {reason(e)}")


SO_MARK = 36  # asm-generic/socket.h


def mark(sock: socket.socket, fwmark: int | None) -> None:
    """Put `transport.fwmark` on a socket, so its packets match `fwmark` rules
    (the full tunnel's way around itself). Needs CAP_NET_ADMIN."""
    if fwmark is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    except OSError as e:
        raise StartupError(f"transport.fwmark: cannot mark the socket with {fwmark}: {e.strerror}") from None

