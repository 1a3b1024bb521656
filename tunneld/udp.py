"""UDP transport: one packet per datagram. The only module that sends UDP.

    socket readable --_readable()--> on_message(view, addr)   (drains a burst)
    send(message, addr) --> sendto, or False when the socket buffer is full
"""

from __future__ import annotations

import asyncio
import logging
import socket

from tunneld import netaddr
from tunneld.config import TransportConfig
from tunneld.io import Address, OnMessage, format_address

log = logging.getLogger("tunneld")
DRAIN_BURST = 256  # datagrams per callback; the loop calls again while more wait


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

    @classmethod
    async def open(cls, cfg: TransportConfig, on_message: OnMessage, max_message: int,
                   on_error=None) -> tuple["UdpTransport", Address | None]:
        """Bind and start reading; returns the transport and the resolved remote (or None)."""
        family = netaddr.family_of(cfg.listen, cfg.remote)
        remote = None
        if cfg.remote is not None:
            family, remote = await netaddr.resolve(cfg.remote, family, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
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
        self = cls(sock, on_message, max_message, on_error)
        self.start(asyncio.get_running_loop())
        where = format_address(sock.getsockname())
        log.info("udp: listening on %s%s", where, f", peer {format_address(remote)}" if remote else ", peer learned from the first packet")
        return self, remote

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        recv, buf, view, deliver = self.sock.recvfrom_into, self._buf, self._view, self.on_message
        limit = self.max_message
        for _ in range(DRAIN_BURST):
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
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
