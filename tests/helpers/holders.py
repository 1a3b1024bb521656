#!/usr/bin/env python3
"""Strangers holding a tunneld TCP listener's candidate slots, for attack tests
and `scripts/bench --attack`: from each SOURCE address, PER_SOURCE connections
at once; each sends the first byte of a 148-byte frame and nothing more (or,
with --initiation, a whole framed handshake initiation with a valid mac1 for
the listener's public key, the rest random) and is held open; the moment the
listener closes one, it is opened again from the same source. Bounded by
SECONDS and by MAX_OPENS connections in all; aimed only at HOST:PORT.

    holders.py HOST PORT SECONDS PER_SOURCE SOURCE [SOURCE ...] [--initiation PUBKEY_B64]

Prints JSON: connections opened, closed by the listener, connect failures,
bytes received from the listener.
"""

import base64
import errno
import hashlib
import json
import os
import selectors
import socket
import sys
import time

MAX_OPENS = 1_000_000
PARTIAL = b"\x00\x94\x01"  # a 148-byte frame announced, one byte of it sent


def initiation(public: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + public).digest()
    body = b"\x01\x00\x00\x00" + os.urandom(112)
    return b"\x00\x94" + body + hashlib.blake2s(body, key=key, digest_size=16).digest() + bytes(16)


def main() -> None:
    args = sys.argv[1:]
    public = None
    if "--initiation" in args:
        i = args.index("--initiation")
        public = base64.b64decode(args[i + 1])
        del args[i:i + 2]
    host, port, seconds, per_source, sources = args[0], int(args[1]), float(args[2]), int(args[3]), args[4:]
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "closed_by_listener": 0, "connect_failures": 0, "bytes_received": 0}
    retry: list[tuple[float, str]] = []  # (when, source): a failed connect is tried again 10 ms later

    def open_from(source: str) -> None:
        if stats["opened"] >= MAX_OPENS:
            return
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((source, 0))
        stats["opened"] += 1
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            stats["connect_failures"] += 1
            retry.append((time.monotonic() + 0.01, source))
            return
        sel.register(s, selectors.EVENT_WRITE, ("connecting", source))

    for source in sources:
        for _ in range(per_source):
            open_from(source)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for when, source in [r for r in retry if r[0] <= now]:
            retry.remove((when, source))
            open_from(source)
        for key, _ in sel.select(timeout=0.01):
            s, (state, source) = key.fileobj, key.data
            if state == "connecting":
                sel.unregister(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    s.close()
                    stats["connect_failures"] += 1
                    retry.append((time.monotonic() + 0.01, source))
                    continue
                try:
                    s.send(initiation(public) if public is not None else PARTIAL)
                except OSError:
                    s.close()
                    stats["closed_by_listener"] += 1
                    open_from(source)
                    continue
                sel.register(s, selectors.EVENT_READ, ("held", source))
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                stats["bytes_received"] += len(data)
                continue
            sel.unregister(s)
            s.close()
            stats["closed_by_listener"] += 1
            open_from(source)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
