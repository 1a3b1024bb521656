"""Which of two UDP sockets on one port a datagram lands in: the peer's traffic
apart from everyone else's, decided by the kernel before anything is queued.

A flood of handshake initiations fills a socket's receive buffer faster than
Python can empty it; whatever shares that buffer is lost with the flood. So the
UDP transport binds two sockets to the listen port in one SO_REUSEPORT group and
attaches this classic-BPF program to the group (SO_ATTACH_REUSEPORT_CBPF). The
program returns the index of the socket in the group:

    1 (the peer's):     every datagram from the peer's IP address; while no
                        peer is known, every transport message (type 4)
    0 (the strangers'): everything else: handshakes from elsewhere, roaming;
                        and anything the program cannot read (a load past the
                        end aborts a classic-BPF program with 0)

The kernel runs it with the packet's data at the UDP payload (reuseport
selection pulls the UDP header) and the IP header reachable at SKF_NET_OFF, so
it can read both the message type and the source address. An IPv4 peer on a
dual-stack socket arrives with an IPv4 header and matches as IPv4.

Pure: returns the program's bytes; the transport attaches them.
"""

from __future__ import annotations

import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # include/uapi/asm-generic/socket.h
SKF_NET_OFF = -0x100000  # include/uapi/linux/filter.h: loads relative to the network header

# classic BPF opcodes (include/uapi/linux/bpf_common.h)
LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
LDW_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

STRANGER, PEER = 0, 1  # socket indexes in the group, in bind order
TRANSPORT_MESSAGE = 4

_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def _net(offset: int) -> int:
    return (SKF_NET_OFF + offset) & 0xFFFFFFFF


def program(peer_ip: bytes | None) -> list[tuple[int, int, int, int]]:
    """The instructions: (code, jt, jf, k). `peer_ip`: 4 or 16 packed bytes (an
    IPv4-mapped IPv6 address is given as its 4 IPv4 bytes), or None."""
    if peer_ip is None:
        return [
            (LDB_ABS, 0, 0, 0),  # the message type
            (JEQ_K, 0, 1, TRANSPORT_MESSAGE),
            (RET_K, 0, 0, PEER),
            (RET_K, 0, 0, STRANGER),
        ]
    words = [int.from_bytes(peer_ip[i:i + 4], "big") for i in range(0, len(peer_ip), 4)]
    version, first = (4, 12) if len(words) == 1 else (6, 8)  # source address offset in the IP header
    code = [(LDB_ABS, 0, 0, _net(0)), (RSH_K, 0, 0, 4)]  # the IP version
    # each compare falls through on a match and jumps to "stranger" otherwise; the
    # jump distance is counted from the next instruction to the STRANGER return
    checks = 1 + 2 * len(words)
    code.append((JEQ_K, 0, checks, version))
    for i, word in enumerate(words):
        left = checks - 1 - 2 * i  # instructions after this load, up to and including RET PEER
        code.append((LDW_ABS, 0, 0, _net(first + 4 * i)))
        code.append((JEQ_K, 0, left - 1, word))
    code += [(RET_K, 0, 0, PEER), (RET_K, 0, 0, STRANGER)]
    return code


def encode(instructions: list[tuple[int, int, int, int]]) -> bytes:
    """The array of struct sock_filter the kernel reads."""
    return b"".join(_INSN.pack(*insn) for insn in instructions)


def run(instructions: list[tuple[int, int, int, int]], payload: bytes, ip_header: bytes) -> int:
    """A classic-BPF interpreter for this program's instructions, for tests: the
    socket index the kernel would pick for `payload` arriving under `ip_header`."""
    a, pc = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        if code in (LDB_ABS, LDW_ABS):
            size = 1 if code == LDB_ABS else 4
            data, off = (ip_header, k - _net(0)) if k >= _net(0) else (payload, k)
            if off + size > len(data):
                return 0  # the kernel aborts the program with 0
            a = int.from_bytes(data[off:off + size], "big")
        elif code == RSH_K:
            a >>= k
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"opcode {code:#x}")
