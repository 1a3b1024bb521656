#!/usr/bin/env python3
"""A stranger streaming length-1 frames at a tunneld TCP listener as fast as it
can, for attack tests and `scripts/bench --attack`: connect, send 64 KiB
buffers of 3-byte frames (length 1, one byte), and when the listener closes
the connection, connect again. Bounded by SECONDS; aimed only at HOST:PORT.

    tinyframes.py HOST PORT SECONDS

Prints JSON: connections opened, bytes sent, connections the listener closed.
"""

import json
import socket
import sys
import time

CHUNK = b"\x00\x01\x45" * 21845  # 65,535 bytes: 21,845 frames of one byte each


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + seconds
    opened = closed = sent = 0
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=1)
        except OSError:
            time.sleep(0.01)
            continue
        opened += 1
        s.settimeout(0.2)  # a full send buffer: look at the clock again
        try:
            while time.monotonic() < end:
                try:
                    sent += s.send(CHUNK)
                except socket.timeout:
                    continue
        except OSError:  # reset or broken pipe: the listener closed it
            closed += 1
        finally:
            s.close()
    print(json.dumps({"connections": opened, "bytes_sent": sent, "closed_by_listener": closed}), flush=True)


if __name__ == "__main__":
    main()
