"""TUN/TAP devices through /dev/net/tun (include/uapi/linux/if_tun.h).

A device is one non-blocking fd that reads and writes whole packets (TUN, IP)
or frames (TAP, Ethernet), with IFF_NO_PI: no packet-information header.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from tunneld.errors import StartupError

TUN_PATH = "/dev/net/tun"

# ioctls: _IOW('T', 202..., int) and _IOR('T', 210, unsigned int)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETIFF = 0x800454D2

# ifr_flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # fail with EBUSY instead of attaching to an existing device

IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then the flags of the union; 40 bytes
SYS_NET = "/sys/class/net"


class TunTap:
    """An open TUN or TAP device. Contract: `tunneld.io.Device`."""

    def __init__(self, fd: int, name: str, mode: str, max_packet: int, persistent: bool):
        self.fd, self.name, self.mode, self.persistent = fd, name, mode, persistent
        # One byte more than the largest packet: a longer read means the kernel gave
        # us more than the MTU allows (it cannot today), and it gets dropped, not cut.
        self._buf = bytearray(max_packet + 1)
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self.max_packet = max_packet

    @classmethod
    def open(cls, name: str | None, mode: str, max_packet: int, persistent: bool = False) -> "TunTap":
        """Create a device (name or the kernel's tun%d/tap%d) or, with `persistent`,
        attach to an existing persistent one, never creating it."""
        label = name or f"{mode}%d"
        flags = (IFF_TAP if mode == "tap" else IFF_TUN) | IFF_NO_PI
        if persistent:
            flags |= _existing_flags(label, mode) & IFF_MULTI_QUEUE
        else:
            flags |= IFF_TUN_EXCL
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise StartupError(f"{label}: cannot open {TUN_PATH}: {_why(e)}") from None
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(label.encode(), flags))
        except OSError as e:
            os.close(fd)
            raise StartupError(f"{label}: cannot {'attach to' if persistent else 'create'} {mode} device: "
                               f"{_setiff_why(e, persistent)}") from None
        actual = IFREQ.unpack(result)[0].rstrip(b"\0").decode()
        return cls(fd, actual, mode, max_packet, persistent)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> memoryview | None:
        try:
            n = os.readv(self.fd, self._bufs)
        except BlockingIOError:
            return None
        if n > self.max_packet:
            raise OSError(errno.EMSGSIZE, f"{n}-byte packet exceeds the MTU")
        return self._view[:n]

    def write(self, packet: bytes | memoryview) -> bool:
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # a device we created disappears with its last fd
            self.fd = -1


def _existing_flags(name: str, mode: str) -> int:
    """The flags of an existing persistent TUN/TAP device, checked against `mode`."""
    if not os.path.exists(f"{SYS_NET}/{name}"):
        raise StartupError(f"{name}: persistent device does not exist "
                           f"(create it with 'tunneld mktun {name} --mode {mode}' or 'ip tuntap add dev {name} mode {mode}')")
    try:
        with open(f"{SYS_NET}/{name}/tun_flags") as f:
            flags = int(f.read().strip(), 16)
    except FileNotFoundError:
        raise StartupError(f"{name}: exists but is not a TUN/TAP device") from None
    kind = "tap" if flags & IFF_TAP else "tun"
    if kind != mode:
        raise StartupError(f"{name}: is a {kind} device, but interface.mode is {mode}")
    return flags


def _why(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "no such file (is the tun module loaded?)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{e.strerror} (needs root or CAP_NET_ADMIN)"
    return e.strerror or str(e)


def _setiff_why(e: OSError, persistent: bool) -> str:
    if e.errno == errno.EBUSY:
        if persistent:
            return "device busy (another process has it open)"
        return "device busy (the name exists already; set interface.persistent to attach to a persistent device)"
    if e.errno == errno.EPERM:
        return "operation not permitted (needs CAP_NET_ADMIN, or a persistent device owned by this user)"
    if e.errno == errno.EINVAL:
        return "invalid argument (the existing device has another mode or flags)"
    return e.strerror or str(e)


def mktun(name: str, mode: str, uid: int | None = None, gid: int | None = None, multi_queue: bool = False) -> None:
    """Create a persistent device that `uid`/`gid` may attach to without privileges
    (like `ip tuntap add ... user U group G`, tunctl)."""
    flags = (IFF_TAP if mode == "tap" else IFF_TUN) | IFF_NO_PI | IFF_TUN_EXCL | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = _open_tun(name)
    try:
        _ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags), name, f"create {mode} device")
        if uid is not None:
            _ioctl(fd, TUNSETOWNER, uid, name, f"set owner {uid}")
        if gid is not None:
            _ioctl(fd, TUNSETGROUP, gid, name, f"set group {gid}")
        _ioctl(fd, TUNSETPERSIST, 1, name, "make persistent")
    finally:
        os.close(fd)


def rmtun(name: str) -> None:
    """Delete a persistent TUN/TAP device."""
    if not os.path.exists(f"{SYS_NET}/{name}"):
        raise StartupError(f"{name}: no such device")
    try:
        with open(f"{SYS_NET}/{name}/tun_flags") as f:
            existing = int(f.read().strip(), 16)
    except FileNotFoundError:
        raise StartupError(f"{name}: not a TUN/TAP device") from None
    flags = (existing & (IFF_TUN | IFF_TAP | IFF_MULTI_QUEUE)) | IFF_NO_PI
    fd = _open_tun(name)
    try:
        _ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags), name, "attach")
        _ioctl(fd, TUNSETPERSIST, 0, name, "clear persistence")
    finally:
        os.close(fd)  # the last fd of a non-persistent device: it is gone


def _open_tun(label: str) -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise StartupError(f"{label}: cannot open {TUN_PATH}: {_why(e)}") from None


def _ioctl(fd: int, request: int, arg, name: str, step: str):
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise StartupError(f"{name}: cannot {step}: {_setiff_why(e, persistent=True)}") from None
