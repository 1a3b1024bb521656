"""A UDP byte pump for tests that sends with UDP GSO, so a TUN/TAP device with
USO sees UDP super-packets: `sink HOST PORT SIZE` and `source HOST PORT SIZE`.

Datagrams carry an 8-byte sequence number and up to PAYLOAD bytes. UDP may lose
datagrams (a full socket buffer), so the source asks (b"END") what is missing
and sends it again, until the sink says b"DONE". Both print the sha256 of the
data in order; the sink also prints the byte count.
"""

import hashlib
import random
import socket
import sys
import time

PAYLOAD = 1200
BATCH = 48  # datagrams per GSO send: 48 * 1208 bytes stays under 65,507
SOL_UDP, UDP_SEGMENT = 17, 103


def chunks(size: int) -> list[bytes]:
    data = random.Random(size).randbytes(size)
    return [data[i:i + PAYLOAD] for i in range(0, size, PAYLOAD)]


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def sink(host: str, port: int, size: int) -> None:
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, port))
    total = -(-size // PAYLOAD)
    got: dict[int, bytes] = {}
    print("listening", flush=True)
    while True:
        data, addr = sock.recvfrom(65535)
        if data == b"END":
            missing = [s for s in range(total) if s not in got]
            if not missing:
                sock.sendto(b"DONE", addr)
                break
            sock.sendto(b"".join(s.to_bytes(4, "big") for s in missing[:4000]), addr)
        elif len(data) > 8:
            got[int.from_bytes(data[:8], "big")] = data[8:]
    whole = b"".join(got[s] for s in range(total))
    print(len(whole), hashlib.sha256(whole).hexdigest(), flush=True)


def source(host: str, port: int, size: int) -> None:
    parts = chunks(size)
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.connect((host, port))
    sock.settimeout(2)

    def blast(seqs: list[int]) -> None:
        for i in range(0, len(seqs), BATCH):
            group = [s.to_bytes(8, "big") + parts[s] for s in seqs[i:i + BATCH]]
            sock.sendmsg(group, [(SOL_UDP, UDP_SEGMENT, (8 + PAYLOAD).to_bytes(2, "little"))])
            time.sleep(0.0005)  # a pace the 2-core test machine keeps up with; losses are resent

    blast(list(range(len(parts))))
    for _ in range(60):
        sock.send(b"END")
        try:
            reply = sock.recv(65535)
        except TimeoutError:
            continue
        if reply == b"DONE":
            break
        blast([int.from_bytes(reply[i:i + 4], "big") for i in range(0, len(reply), 4)])
    else:
        raise SystemExit("the sink never had everything")
    print(hashlib.sha256(b"".join(parts)).hexdigest(), flush=True)


if __name__ == "__main__":
    (sink if sys.argv[1] == "sink" else source)(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
