"""UDP transport: one message per datagram. The only module that sends UDP.

    socket readable --_readable()--> on_messages([views], addr)   (drains a burst)
    send(message, addr) --> sendto, or False when the socket buffer is full
    send_many(messages, addr) --> one sendmsg per run of equal-size messages

Batches cost one system call, not one per datagram: a run of messages of one
size goes out in one sendmsg with UDP_SEGMENT (GSO: the kernel cuts it into
the datagrams), and UDP_GRO lets one recvmsg return many datagrams from one
sender, joined, with the size to cut them at. Neither changes the wire: every
datagram is an ordinary one, so a peer without either sees nothing new.

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
import errno
import logging
import socket
import struct

from tunneld.conn import sockopts as netaddr, steering
from tunneld.conn.endpoint import TransportConfig, is_ip
from tunneld.core.contract import Address, OnMessages, Segmented, format_address

from tunneld.packet.limits import MAX_GSO_BYTES, UDP_GSO_MAX_SEGMENTS

log = logging.getLogger("tunneld")
DRAIN_BURST = 256  # reads per callback (each up to 64 datagrams); the loop calls again while more wait
STRANGER_BURST = 64  # from the strangers' socket: the peer's socket is served between bursts
SOL_UDP = 17
UDP_SEGMENT = 103  # include/uapi/linux/udp.h; Python's socket module has no names for these
UDP_GRO = 104
GRO_BUFFER = 65536  # bytes: one GRO read is at most one 64 KB super-datagram
ANCILLARY = socket.CMSG_SPACE(4)  # the UDP_GRO segment size, an int


class UdpTransport:
    """Contract: `tunneld.core.contract.Transport`."""

    def __init__(self, sock: socket.socket, on_messages: OnMessages, max_message: int,
                 on_error=None):
        self.sock = sock
        self.on_messages = on_messages
        self.on_error = on_error or (lambda text, kind=None: log.warning("%s", text))
        self.max_message = max_message
        # one more than the largest datagram (a longer one is refused, not cut), or a GRO batch
        self._buf = bytearray(max(GRO_BUFFER, max_message + 1))
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self.gso = True  # until the kernel refuses a UDP_SEGMENT send
        self.gro = _enable_gro(sock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.strangers: socket.socket | None = None  # the second socket of a steered listener
        self.steered_to: bytes | None = None  # the peer IP the kernel steers by, None: by message type

    @classmethod
    async def open(cls, cfg: TransportConfig, on_messages: OnMessages, max_message: int,
                   on_error=None, steer: bool = False) -> tuple["UdpTransport", Address | None]:
        """Bind and start reading; returns the transport and the remote (None: none, or a
        host name, which the caller keeps resolved: conn/resolver.py).
        `steer`: a listener keeps the peer's datagrams apart from strangers' (an
        encrypted session, whose handshakes a stranger can flood; plaintext has none)."""
        family = netaddr.family_of(cfg.listen, cfg.remote)
        remote = None
        if cfg.remote is not None and is_ip(cfg.remote.host):
            family, remote = await netaddr.resolve(cfg.remote, family, socket.SOCK_DGRAM)
        elif family == socket.AF_UNSPEC:  # a host name, looked up later (conn/resolver.py): reach v6 and v4
            family = netaddr.any_family()
        strangers = None
        if steer and cfg.listen is not None:
            strangers, sock = _steered_pair(cfg, family)
        else:  # a client on an ephemeral port: nothing to steer (the port is not published)
            sock = _socket(family, cfg)
        self = cls(sock, on_messages, max_message, on_error)
        self.strangers = strangers
        if strangers is not None:
            _enable_gro(strangers)
        if strangers is not None and not self.steer(netaddr.packed_ip(remote) if remote else None):
            strangers.close()
            self.strangers = None
        self.start(asyncio.get_running_loop())
        where = format_address(sock.getsockname())
        log.info("udp: listening on %s%s", where, f", peer {format_address(remote)}" if remote else
                 f", peer {cfg.remote}, resolved in the background" if cfg.remote else ", peer learned from the first packet")
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
        recv, bufs, view, deliver = sock.recvmsg_into, self._bufs, self._view, self.on_messages
        limit = self.max_message
        for _ in range(burst):
            try:
                n, ancillary, _, addr = recv(bufs, ANCILLARY)
            except BlockingIOError:
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket
                self.on_error(f"udp: receive failed: {netaddr.reason(e)}", "udp-receive")
                return
            size = n
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = int.from_bytes(data[:4], "little") or n
            if size > limit:
                self.on_error(f"udp: dropped an oversize datagram from {format_address(addr)} (over {limit} bytes)", "udp-oversize")
                continue
            if size >= n:
                deliver((view[:n],), addr)
            else:
                whole = view[:n]
                deliver([whole[i:i + size] for i in range(0, n, size)], addr)

    def send(self, message: bytes | memoryview, addr: Address) -> bool:
        try:
            self.sock.sendto(message, addr)
        except BlockingIOError:
            return False
        return True

    def send_many(self, messages: list, addr: Address) -> int:
        """Runs of equal-size messages (the last of a run may be shorter) in one
        sendmsg each with UDP_SEGMENT; how many went, in order."""
        count = len(messages)
        if count == 1:
            first = messages[0]
            if type(first) is Segmented:
                return int(self._send_segmented(first, addr))
            return self._send_each(messages, addr)
        if any(type(m) is Segmented for m in messages):  # with a handshake or keepalive beside it
            for k, m in enumerate(messages):
                if not (self._send_segmented(m, addr) if type(m) is Segmented else self._send_each((m,), addr)):
                    return k
            return count
        if not self.gso:
            return self._send_each(messages, addr)
        sock, sent, i = self.sock, 0, 0
        while i < count:
            size = len(messages[i])
            j, total = i + 1, size
            while j < count and j - i < UDP_GSO_MAX_SEGMENTS and total + size <= MAX_GSO_BYTES and len(messages[j]) == size:
                total += size
                j += 1
            if j < count and j - i < UDP_GSO_MAX_SEGMENTS and len(messages[j]) < size and total + len(messages[j]) <= MAX_GSO_BYTES:
                j += 1  # a shorter message may end a run
            try:
                if j - i == 1:
                    sock.sendto(messages[i], addr)
                else:
                    sock.sendmsg(messages[i:j], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, addr)
            except BlockingIOError:
                return sent
            except OSError as e:
                if j - i == 1 or not self.gso:
                    raise
                self.gso = False  # EIO, EINVAL: this socket's route cannot segment; say so once
                log.warning("udp: the kernel refused UDP segmentation offload (%s); sending datagrams one by one",
                            netaddr.reason(e))
                return sent + self._send_each(messages[i:], addr)
            sent += j - i
            i = j
        return sent

    def _send_segmented(self, seg: Segmented, addr: Address) -> bool:
        """A session's chunks, laid out at a fixed stride: one sendmsg per 64 KB."""
        data, size = seg.data, seg.size
        if not self.gso:
            return self._send_each(seg.datagrams(), addr) == -(-len(data) // size)
        step = min(MAX_GSO_BYTES // size, UDP_GSO_MAX_SEGMENTS) * size
        option = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))]
        sendmsg = self.sock.sendmsg
        for at in range(0, len(data), step):
            try:
                sendmsg((data[at:at + step],), option, 0, addr)
            except BlockingIOError:
                return False
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.gso = False
                log.warning("udp: the kernel refused UDP segmentation offload (%s); sending datagrams one by one",
                            netaddr.reason(e))
                rest = Segmented(data[at:], size)
                return self._send_each(rest.datagrams(), addr) == -(-len(rest) // size)
        return True

    def _send_each(self, messages, addr: Address) -> int:
        sendto = self.sock.sendto
        for k, message in enumerate(messages):
            try:
                sendto(message, addr)
            except BlockingIOError:
                return k
        return len(messages)

    def close(self) -> None:
        for sock in (self.sock, self.strangers):
            if sock is None:
                continue
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False  # an old kernel: one datagram per read, as before
    return True


def _socket(family: int, cfg: TransportConfig, reuseport: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        netaddr.dual_stack(sock, cfg.listen)
        netaddr.allow_fragments(sock)
        netaddr.size_buffers(sock)
        netaddr.mark(sock, cfg.fwmark)
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
