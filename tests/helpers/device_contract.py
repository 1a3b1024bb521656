"""The Device contract (`tunneld.core.contract.Device`): one suite for the fake and the real device.

Each check takes a device and its kernel side: a `MemorySide` (the in-memory
device's lists, run by tests/host/test_contracts.py) or a `KernelSide` (a real
TUN/TAP in a namespace: this file run as a script, as root, by
tests/netns/test_netns_device.py). A side makes the stack hand the interface a
UDP packet, tells what the stack got from a written one and can make the
interface's queue full. The clauses, one check each:

    check_identity          name and vnet are as opened
    check_idle_read         read() is None when nothing waits, and never blocks
    check_whole_packets     each read is one whole packet, the smallest to a full MTU
    check_buffer_reused     the buffer read() returned is overwritten by the next read
    check_write             write() of a whole packet returns True and the stack gets it
    check_write_full        write() returns False on a full queue and the packet is dropped
    check_close             a closed device is gone

With `vnet` every packet read starts with a virtio header (checked, then
stripped) and every packet written gets one (virtio.PLAIN).

usage: device_contract.py tun|tap NAME [offload]   -> prints "contract ok" or the broken clause
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.packets import ethernet, ipv4_udp  # noqa: E402
from tunneld.packet import virtio  # noqa: E402

MTU = 1420
STACK, PEER = "10.66.0.1", "10.66.0.2"  # the interface's address and the neighbour behind it
STACK_PORT, PEER_PORT = 7777, 9999
PEER_MAC = "02:00:00:00:00:99"
UDP_IP = 28  # IPv4 and UDP headers


def check(cond, what: str) -> None:
    if not cond:
        raise AssertionError(f"contract broken: {what}")


class _Blocked(Exception):
    pass


def never_blocking(call, what: str):
    """call() under a 1 s alarm: a device that blocks fails the clause instead of hanging."""
    def ring(signum, frame):
        raise _Blocked()
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        return call()
    except _Blocked:
        check(False, f"{what} blocked")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def unwrap(dev, pkt) -> bytes:
    """A read packet without its virtio header, which must be a small packet's."""
    pkt = bytes(pkt)
    if dev.vnet:
        check(len(pkt) >= virtio.SIZE, f"a {len(pkt)}-byte read has no room for the virtio header")
        h = virtio.unpack(pkt)
        check(h.gso == virtio.GSO_NONE and h.flags in (0, virtio.F_NEEDS_CSUM), f"a small packet's virtio header {h}")
        pkt = pkt[virtio.SIZE:]
    return pkt


def read_sent(dev, side, payload: bytes, timeout: float = 3.0):
    """read() until the packet carrying `payload` comes (a kernel may send others,
    e.g. IPv6): (the view read() returned, the packet without virtio header)."""
    while True:
        check(side.wait(timeout), f"a packet the stack sent ({len(payload)} bytes of payload) never became readable")
        view = never_blocking(dev.read, "read() of a waiting packet")
        if view is None:
            continue
        pkt = unwrap(dev, view)
        if pkt.endswith(payload) and len(pkt) == side.hdr + UDP_IP + len(payload):
            return view, pkt


def check_identity(dev, side):
    check(dev.name == side.name, f"device name {dev.name!r}, opened as {side.name!r}")
    check(dev.vnet == side.vnet, f"vnet is {dev.vnet}, asked {side.vnet} ({getattr(dev, 'fallback', '')})")


def check_idle_read(dev, side):
    for _ in range(100):  # whatever the kernel sent on its own first
        if never_blocking(dev.read, "read() on an idle device") is None:
            break
    else:
        check(False, "read() never returned None")
    check(never_blocking(dev.read, "a second idle read()") is None, "read() on an idle device returns None")


def check_whole_packets(dev, side):
    payloads = [bytes([n % 251]) * n for n in (1, 100, side.mtu - UDP_IP)]
    for p in payloads:  # all waiting at once: each read is exactly one of them
        side.send(p)
    for p in payloads:
        _, pkt = read_sent(dev, side, p)
        ip = pkt[side.hdr:]
        check(ip[0] >> 4 == 4 and ip[16:20] == socket.inet_aton(PEER), "an IPv4 packet to the neighbour")
        if side.hdr:
            check(pkt[:6] == bytes.fromhex(PEER_MAC.replace(":", "")), "the frame is addressed to the neighbour's MAC")
    check(len(pkt) == side.mtu + side.hdr, f"a full-size packet is {side.mtu + side.hdr} bytes, got {len(pkt)}")
    check_idle_read(dev, side)


def check_buffer_reused(dev, side):
    side.send(b"a" * 64)
    first, _ = read_sent(dev, side, b"a" * 64)
    kept = bytes(first)
    side.send(b"b" * 64)
    second, _ = read_sent(dev, side, b"b" * 64)
    check(bytes(first) != kept and bytes(first) == bytes(second),
          "the buffer read() returned is reused by the next read (a fake must not be kinder than the device)")


def _to_stack(dev, side, payload: bytes) -> bytes:
    packet = side.packet(payload)
    return virtio.PLAIN + packet if dev.vnet else packet


def check_write(dev, side):
    for size in (5, side.mtu - UDP_IP):
        payload = bytes([size % 251]) * size
        check(dev.write(memoryview(_to_stack(dev, side, payload))) is True, "write() of a valid packet returns True")
        got = side.received(3.0)
        check(got == payload, f"the stack got the written {size}-byte payload (got {None if got is None else len(got)})")
    check(dev.write(_to_stack(dev, side, b"bytes too")) is True, "write() takes bytes as well")
    check(side.received(3.0) == b"bytes too", "the stack got a packet written as bytes")


def check_write_full(dev, side):
    side.fill()
    try:
        ok = never_blocking(lambda: dev.write(_to_stack(dev, side, b"dropped")), "write() to a full queue")
        check(ok is False, f"write() to a full queue returns False, got {ok!r}")
    finally:
        side.drain()
    check(side.received(0.3) is None, "a packet written to a full queue is dropped, not delivered later")
    check(dev.write(_to_stack(dev, side, b"room again")) is True, "write() returns True once the queue has room")
    check(side.received(3.0) == b"room again", "the stack got the packet written after the queue drained")


def check_close(dev, side):
    dev.close()
    check(side.gone(), "a closed device is gone")


CHECKS = [check_identity, check_idle_read, check_whole_packets, check_buffer_reused, check_write,
          check_write_full, check_close]


def _stack_payload(hdr: int, packet: bytes) -> bytes | None:
    """The UDP payload of a packet or frame the stack accepts for STACK:STACK_PORT, else None."""
    ip = packet[hdr:]
    if len(ip) < UDP_IP or ip[0] != 0x45 or ip[9] != socket.IPPROTO_UDP or ip[16:20] != socket.inet_aton(STACK):
        return None
    if int.from_bytes(ip[22:24], "big") != STACK_PORT:
        return None
    return ip[UDP_IP:]


class MemorySide:
    """The kernel side of a `tunneld.tun.memory.MemoryDevice`: what a stack would do with its lists."""

    def __init__(self, dev, mode: str, mtu: int = MTU):
        self.dev, self.name, self.vnet, self.mtu = dev, dev.name, dev.vnet, mtu
        self.hdr = 14 if mode == "tap" else 0
        self.stack_mac = "02:00:00:00:00:01"
        self._seen = 0

    def send(self, payload: bytes) -> None:
        packet = ipv4_udp(STACK, PEER, STACK_PORT, PEER_PORT, payload)
        if self.hdr:
            packet = ethernet(PEER_MAC, self.stack_mac, 0x0800, packet)
        self.dev.inject(virtio.PLAIN + packet if self.vnet else packet)

    def wait(self, timeout: float) -> bool:
        return bool(self.dev.inbox)

    def packet(self, payload: bytes) -> bytes:
        packet = ipv4_udp(PEER, STACK, PEER_PORT, STACK_PORT, payload)
        return ethernet(self.stack_mac, PEER_MAC, 0x0800, packet) if self.hdr else packet

    def received(self, timeout: float) -> bytes | None:
        while self._seen < len(self.dev.written):
            packet = self.dev.written[self._seen]
            self._seen += 1
            if self.vnet:  # the kernel reads the header first and refuses a bad one
                if len(packet) < virtio.SIZE or virtio.unpack(packet).gso != virtio.GSO_NONE:
                    continue
                packet = packet[virtio.SIZE:]
            payload = _stack_payload(self.hdr, packet)
            if payload is not None:
                return payload
        return None

    def fill(self) -> None:
        self.dev.full = True

    def drain(self) -> None:
        self.dev.full = False

    def gone(self) -> bool:
        return self.dev.closed


class KernelSide:
    """The kernel side of a real TUN/TAP, in the namespace this runs in: the
    interface gets STACK/24 and a neighbour PEER (a permanent MAC on a TAP);
    `send` is a UDP socket, `received` another bound to STACK:STACK_PORT.

    A full queue cannot be made from here: a TUN/TAP write hands the packet to
    the stack at once (with a 16 KB sndbuf and 200 frames held in a bridge
    port's tbf qdisc, all 200 writes still succeed), so `fill` puts a full
    non-blocking socket behind the device's fd, which answers EAGAIN as a full
    tun queue would, and `drain` puts the device back."""

    def __init__(self, dev, mode: str, mtu: int = MTU):
        self.dev, self.name, self.vnet, self.mtu = dev, dev.name, dev.vnet, mtu
        self.hdr = 14 if mode == "tap" else 0
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{self.name}.disable_ipv6=1"], check=False)
        for args in (["link", "set", self.name, "mtu", str(mtu)], ["addr", "add", f"{STACK}/24", "dev", self.name],
                     ["link", "set", self.name, "up"]):
            subprocess.run(["ip", *args], check=True)
        if mode == "tap":
            subprocess.run(["ip", "neigh", "add", PEER, "lladdr", PEER_MAC, "dev", self.name], check=True)
            self.stack_mac = Path(f"/sys/class/net/{self.name}/address").read_text().strip()
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind((STACK, STACK_PORT))
        self._saved = -1
        self._full = None

    def send(self, payload: bytes) -> None:
        self.tx.sendto(payload, (PEER, PEER_PORT))

    def wait(self, timeout: float) -> bool:
        return bool(select.select([self.dev.fileno()], [], [], timeout)[0])

    def packet(self, payload: bytes) -> bytes:
        packet = ipv4_udp(PEER, STACK, PEER_PORT, STACK_PORT, payload)
        return ethernet(self.stack_mac, PEER_MAC, 0x0800, packet) if self.hdr else packet

    def received(self, timeout: float) -> bytes | None:
        self.rx.settimeout(timeout)
        try:
            data, addr = self.rx.recvfrom(65535)
        except TimeoutError:
            return None
        check(addr == (PEER, PEER_PORT), f"the stack got the written packet from {addr}")
        return data

    def fill(self) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        try:
            while True:
                a.send(b"x" * 1024)
        except BlockingIOError:
            pass
        self._saved = os.dup(self.dev.fd)
        os.dup2(a.fileno(), self.dev.fd)
        self._full = (a, b)

    def drain(self) -> None:
        os.dup2(self._saved, self.dev.fd)
        os.close(self._saved)
        for s in self._full:
            s.close()

    def gone(self) -> bool:
        return not Path(f"/sys/class/net/{self.name}").exists()


def main() -> None:
    from tunneld.tun.device import TunTap
    mode, name = sys.argv[1], sys.argv[2]
    offload = sys.argv[3:] == ["offload"]
    dev = TunTap.open(name, mode, MTU, offload=offload)
    if offload:
        flags = int(Path(f"/sys/class/net/{name}/tun_flags").read_text(), 16)
        check(flags & 0x4000, "IFF_VNET_HDR is set")
    side = KernelSide(dev, mode)
    side.vnet = offload  # asked for; check_identity compares it with what the device got
    try:
        for c in CHECKS:
            c(dev, side)
    except AssertionError as e:
        print(f"{c.__name__}: {e}")
        sys.exit(1)
    print("contract ok")


if __name__ == "__main__":
    main()
