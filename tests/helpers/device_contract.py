"""Runs inside a fresh namespace as root: the Device contract on a real TUN/TAP.

usage: device_contract.py tun|tap NAME [offload]   -> prints "contract ok" or fails loudly
With `offload`, the device is opened with IFF_VNET_HDR and TSO: every read and
write carries a virtio header, which this contract strips and adds.
"""

import select
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.packets import ethernet, ipv4_udp  # noqa: E402
from tunneld.tun.device import TunTap  # noqa: E402
from tunneld.packet import virtio  # noqa: E402

mode, name = sys.argv[1], sys.argv[2]
offload = sys.argv[3:] == ["offload"]
MTU = 1420
hdr = 14 if mode == "tap" else 0
PEER_MAC = "02:00:00:00:00:99"


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def check(cond, what):
    if not cond:
        print(f"contract broken: {what}")
        sys.exit(1)


def read_matching(dev, match, timeout=3.0):
    """read() until a packet `match`es (the kernel may send others, e.g. IPv6)."""
    while True:
        ready, _, _ = select.select([dev.fileno()], [], [], timeout)
        check(ready, "a packet the stack sent never became readable")
        pkt = dev.read()
        if pkt is None:
            continue
        pkt = bytes(pkt)
        if dev.vnet:
            h = virtio.unpack(pkt)
            check(h.gso == 0 and h.flags in (0, 1), f"a small packet's virtio header {h}")
            pkt = pkt[virtio.SIZE:]
        if match(pkt):
            return pkt


dev = TunTap.open(name, mode, MTU, offload=offload)
check(dev.name == name, f"device name {dev.name!r}")
check(dev.vnet == offload, f"offloads {'on' if offload else 'off'} as asked ({dev.fallback})")
if offload:
    check(Path(f"/sys/class/net/{name}/tun_flags").read_text().strip() != "", "tun_flags readable")
    check(int(Path(f"/sys/class/net/{name}/tun_flags").read_text(), 16) & 0x4000, "IFF_VNET_HDR is set")
check(dev.read() is None, "read() on an idle device returns None without blocking")
subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=False)
ip("link", "set", name, "mtu", str(MTU))
ip("addr", "add", "10.66.0.1/24", "dev", name)
ip("link", "set", name, "up")
if mode == "tap":
    ip("neigh", "add", "10.66.0.2", "lladdr", PEER_MAC, "dev", name)
    my_mac = Path(f"/sys/class/net/{name}/address").read_text().strip()

# stack -> device: every packet read whole, up to the MTU
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for size in (1, 100, MTU - 28):
    payload = bytes([size % 251]) * size
    tx.sendto(payload, ("10.66.0.2", 9999))
    pkt = read_matching(dev, lambda p, payload=payload, size=size: p.endswith(payload) and len(p) == hdr + 28 + size)
    ipkt = pkt[hdr:]
    check(ipkt[0] >> 4 == 4 and ipkt[16:20] == socket.inet_aton("10.66.0.2"), "an IPv4 packet to 10.66.0.2")
    if mode == "tap":
        check(pkt[:6] == bytes.fromhex(PEER_MAC.replace(":", "")), "the frame is addressed to the neighbour's MAC")
check(len(pkt) == MTU + hdr, f"a full-size packet is {MTU + hdr} bytes, got {len(pkt)}")

# device -> stack: a written packet is delivered to a local socket
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("10.66.0.1", 7777))
rx.settimeout(3)
for size in (5, MTU - 28):
    payload = b"w" * size
    packet = ipv4_udp("10.66.0.2", "10.66.0.1", 9999, 7777, payload)
    if mode == "tap":
        packet = ethernet(my_mac, PEER_MAC, 0x0800, packet)
    if dev.vnet:
        packet = virtio.PLAIN + packet
    check(dev.write(memoryview(packet)) is True, "write() of a valid packet returns True")
    data, addr = rx.recvfrom(65535)
    check(data == payload and addr == ("10.66.0.2", 9999), f"the stack got the written packet ({len(data)} bytes)")

dev.close()
check(not Path(f"/sys/class/net/{name}").exists(), "a created device vanishes when closed")
print("contract ok")
