"""UDP transport: one packet per datagram. The only module that sends UDP.

    socket readable --_readable()--> on_message(view, addr)   (drains a burst)
    send(message, addr) --> sendto, or False when the socket buffer is full

A listener binds two sockets to its port in one SO_REUSEPORT group, and the
kernel steers the peer's datagrams into one and everyone else's into the other
(steering.py). A flood from a stranger then fills only the strangers' buffer:
the peer's packets keep their own, and the strangers' socket is drained in
smaller bursts so the loop comes back to the peer's socket soon. Where the
kernel refuses the program, one socket does both jobs, and the log says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct

from tunneld import netaddr, steering
from tunneld.config import TransportConfig
from tunneld.io import Address, OnMessage, format_address

log = logging.getLogger("tunneld")
DRAIN_BURST = 256  # datagrams per callback; the loop calls again while more wait
STRANGER_BURST = 64  # from the strangers' socket: the peer's socket is served between bursts


class UdpTransport:
    """Contract: `tunneld.io.Transport`."""

    def __init__(self, sock: socket.socket, on_message: OnMessage, max_message: int,
                 on_error=None):
        self.sock = sock
        self.on_message = on_message
        self.on_error = on_error or (lambda text, kind=None: log.warning("%s", text))
        self.max_message = max_message
        self._buf = bytearray(max_message + 1)  # one more: a longer datagram is refused, not cut
        self._view = memoryview(self._buf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.strangers: socket.socket | None = None  # the second socket of a steered listener
        self.steered_to: bytes | None = None  # the peer IP the kernel steers by, None: by message type

    @classmethod
    async def open(cls, cfg: TransportConfig, on_message: OnMessage, max_message: int,
                   on_error=None, steer: bool = False) -> tuple["UdpTransport", Address | None]:
        """Bind and start reading; returns the transport and the resolved remote (or None).
        `steer`: a listener keeps the peer's datagrams apart from strangers' (an
        encrypted session, whose handshakes a stranger can flood; plaintext has none)."""
        family = netaddr.family_of(cfg.listen, cfg.remote)
        remote = None
        if cfg.remote is not None:
            family, remote = await netaddr.resolve(cfg.remote, family, socket.SOCK_DGRAM)
        strangers = None
        if steer and cfg.listen is not None:
            strangers, sock = _steered_pair(cfg, family)
        else:  # a client on an ephemeral port: nothing to steer (the port is not published)
            sock = _socket(family, cfg)
        self = cls(sock, on_message, max_message, on_error)
        self.strangers = strangers
        if strangers is not None and not self.steer(netaddr.packed_ip(remote) if remote else None):
            strangers.close()
            self.strangers = None
        self.start(asyncio.get_running_loop())
        where = format_address(sock.getsockname())
        log.info("udp: listening on %s%s", where, f", peer {format_address(remote)}" if remote else ", peer learned from the first packet")
        return self, remote

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable, self.sock, DRAIN_BURST)
        if self.strangers is not None:
            loop.add_reader(self.strangers.fileno(), self._readable, self.strangers, STRANGER_BURST)

    def steer(self, peer_ip: bytes | None) -> bool:
        """Have the kernel put `peer_ip`'s datagrams in the peer's socket (None: every
        transport message). False when the kernel refuses the program."""
        code = steering.program(peer_ip)
        filt = ctypes.create_string_buffer(steering.encode(code))
        prog = struct.pack("HL", len(code), ctypes.addressof(filt))  # struct sock_fprog
        try:
            self.strangers.setsockopt(socket.SOL_SOCKET, steering.SO_ATTACH_REUSEPORT_CBPF, prog)
        except OSError as e:
            log.warning("udp: the kernel refused to steer the peer's datagrams to a socket of their own (%s); "
                        "one socket takes all, so a handshake flood competes with the peer's traffic", netaddr.reason(e))
            return False
        self.steered_to = peer_ip
        return True

    def peer_moved(self, addr: Address) -> None:
        """The core follows the peer to `addr`: steer by its IP from now on."""
        if self.strangers is None:
            return
        ip = netaddr.packed_ip(addr)
        if ip != self.steered_to:
            self.steer(ip)

    def _readable(self, sock: socket.socket, burst: int) -> None:
        recv, buf, view, deliver = sock.recvfrom_into, self._buf, self._view, self.on_message
        limit = self.max_message
        for _ in range(burst):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket
                self.on_error(f"udp: receive failed: {netaddr.reason(e)}", "udp-receive")
                return
            if n > limit:
                self.on_error(f"udp: dropped an oversize datagram from {format_address(addr)} (over {limit} bytes)", "udp-oversize")
                continue
            deliver(view[:n], addr)

    def send(self, message: bytes | memoryview, addr: Address) -> bool:
        try:
            self.sock.sendto(message, addr)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        for sock in (self.sock, self.strangers):
            if sock is None:
                continue
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()


def _socket(family: int, cfg: TransportConfig, reuseport: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        netaddr.dual_stack(sock, cfg.listen)
        netaddr.allow_fragments(sock)
        netaddr.size_buffers(sock)
        if cfg.listen is not None:
            try:
                sock.bind(netaddr.bind_address(cfg.listen, family))
            except OSError as e:
                raise netaddr.bind_error("udp", cfg.listen, e) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _steered_pair(cfg: TransportConfig, family: int) -> tuple[socket.socket, socket.socket]:
    """(strangers' socket, peer's socket) on the listen port, in that group order.
    A plain socket is bound first, alone: if anyone holds the port (another
    tunneld with SO_REUSEPORT included) that fails as it always did, instead of
    our sockets quietly joining someone else's group."""
    _socket(family, cfg).close()
    strangers = _socket(family, cfg, reuseport=True)
    try:
        peer = _socket(family, cfg, reuseport=True)
    except BaseException:
        strangers.close()
        raise
    return strangers, peer
