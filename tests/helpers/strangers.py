#!/usr/bin/env python3
"""Stranger TCP connections against a tunneld listener at 10.78.0.2:55555, for
attack tests and `scripts/bench --attack`: a new connection every 100 ms, a
third each sending a framed fake initiation, a framed fake transport message or
nothing, the last 20 held open and read from. Bounded by SECONDS.

    strangers.py SECONDS      prints: connections opened, bytes received
"""

import socket, sys, time, random
got, opened = 0, 0
end = time.monotonic() + float(sys.argv[1])
held = []
while time.monotonic() < end:
    try:
        s = socket.create_connection(("10.78.0.2", 55555), timeout=2)
    except OSError:
        time.sleep(0.05)
        continue
    opened += 1
    kind = opened % 3
    if kind == 0:
        s.sendall(b"\x00\x94" + b"\x01\x00\x00\x00" + random.randbytes(144))  # a framed fake initiation
    elif kind == 1:
        s.sendall(b"\x00\x20" + random.randbytes(32))  # a framed fake transport message
    held.append(s)
    for h in held:
        h.setblocking(False)
        try:
            data = h.recv(65536)
            got += len(data)
        except (BlockingIOError, OSError):
            pass
    held = held[-20:]
    time.sleep(0.1)
print(opened, got)
