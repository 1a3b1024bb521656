"""A TCP byte pump for tests: `sink HOST PORT` and `source HOST PORT SIZE`.

Both print the sha256 of what they moved; the sink also prints the byte count.
"""

import hashlib
import random
import socket
import sys


def sink(host: str, port: int) -> None:
    srv = socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("listening", flush=True)
    conn, _ = srv.accept()
    h, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk)
        n += len(chunk)
    print(n, h.hexdigest(), flush=True)


def source(host: str, port: int, size: int) -> None:
    rng = random.Random(size)
    h = hashlib.sha256()
    with socket.create_connection((host, port), timeout=60) as s:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 16))
            s.sendall(chunk)
            h.update(chunk)
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the sink to close: everything arrived
    print(h.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    else:
        source(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
