#!/usr/bin/env python3
"""Raw Ethernet frames through a TAP tunnel, for byte-for-byte checks.

    frames.py send DEV SEED      writes the frames of the table below out of DEV
                                 (AF_PACKET: the TAP's reader, tunneld, gets them)
    frames.py recv DEV SEED N    prints how many of the expected frames arrived on DEV
                                 intact, and the lengths of any that arrived altered

Every frame starts with a marker source MAC so the receiver ignores the
kernel's own traffic (IPv6 router solicitations and the like).
"""

import random
import socket
import struct
import sys
import time

MARK = bytes.fromhex("02746e6c6400")  # source MAC of every test frame
DST = bytes.fromhex("02746e6c64ff")
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
EXPERIMENTAL = b"\x88\xb5"  # IEEE 802 local experimental EtherType


def frames(seed: int) -> list[bytes]:
    """Untagged frames of every length 15..1514, 802.1Q-tagged 20..1518 (a full
    1500-byte payload plus a tag): each unique, payload random. (The kernel's
    receive path drops a tagged frame with under 2 bytes after its inner
    EtherType before any socket sees it, so tagged ones start at 20.)"""
    rng = random.Random(seed)
    out = []
    for n in range(15, 1515):
        out.append(DST + MARK + EXPERIMENTAL + rng.randbytes(n - 14))
    for n in range(20, 1519):
        tag = b"\x81\x00" + (100 + n % 3000).to_bytes(2, "big")  # 802.1Q, a VLAN id per length
        out.append(DST + MARK + tag + EXPERIMENTAL + rng.randbytes(n - 18))
    return out


def send(dev: str, seed: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    for i, f in enumerate(frames(seed)):
        s.send(f)
        if i % 32 == 31:
            time.sleep(0.005)  # the TAP's queue holds 500; tunneld drains it far faster than this


def recv(dev: str, seed: int, wait: float) -> None:
    want = {f: 0 for f in frames(seed)}
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    # the receive path moves an 802.1Q tag out of the frame into the skb; like tcpdump,
    # put it back from the packet's auxiliary data
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.settimeout(wait)
    print("listening", flush=True)
    altered = []
    got = 0
    try:
        while got < len(want):
            data, anc, _, addr = s.recvmsg(65536, 64)
            if addr[2] == socket.PACKET_OUTGOING or data[6:12] != MARK:
                continue
            for level, kind, aux in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", aux[:20])
                    if status & TP_STATUS_VLAN_VALID:
                        tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
            if data in want and want[data] == 0:
                want[data] = 1
                got += 1
            else:
                altered.append(len(data))
    except socket.timeout:
        pass
    missing = sorted(len(f) for f, seen in want.items() if not seen)
    print(f"intact {got} of {len(want)}; altered {altered[:20]}; missing lengths {missing[:20]}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]))
    else:
        recv(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
