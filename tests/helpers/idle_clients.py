#!/usr/bin/env python3
"""Idle TCP clients against one listener (the metrics endpoint, in tests and
`scripts/bench`): COUNT connections opened as fast as the kernel takes them,
none sending a byte, each reopened when the server closes it. Bounded by
SECONDS and by 20 x COUNT connections in all.

    idle_clients.py HOST PORT COUNT SECONDS
    prints "holding N" once COUNT are open, then at the end: opened, closed by the server
"""

import resource
import select
import socket
import sys
import time

host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
end = time.monotonic() + seconds
budget = 20 * count
opened = closed = 0
held: dict[int, socket.socket] = {}
said = False
poll = select.epoll()


def connect() -> None:
    global opened
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((host, port))  # EINPROGRESS; the kernel completes it from the backlog
    held[s.fileno()] = s
    poll.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    opened += 1


while time.monotonic() < end:
    while len(held) < count and opened < budget:
        connect()
    if not said and len(held) >= count:
        print(f"holding {len(held)}", flush=True)
        said = True
    for fd, _ in poll.poll(0.05):  # readable on an idle client: the server closed it
        s = held.pop(fd)
        poll.unregister(fd)
        s.close()
        closed += 1
for s in held.values():
    s.close()
print(opened, closed, flush=True)
