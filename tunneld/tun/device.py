"""TUN/TAP devices through /dev/net/tun (include/uapi/linux/if_tun.h).

A device is one non-blocking fd that reads and writes whole packets (TUN, IP)
or frames (TAP, Ethernet), with IFF_NO_PI: no packet-information header.

With offloads (the default), it is opened with IFF_VNET_HDR and TUNSETOFFLOAD:
every read and write starts with a 10-byte virtio_net_hdr (packet/virtio.py),
and the kernel hands us TCP (TSO) and UDP (USO, where it knows it) super-packets
of up to 64 KB with their checksums left partial. Where the kernel refuses, the
device is reopened without the header, one packet per read, and `fallback`
says why.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from tunneld.errors import StartupError
from tunneld.packet.limits import device_buffer

TUN_PATH = "/dev/net/tun"

# ioctls: _IOW('T', 202..., int) and _IOR('T', 210, unsigned int)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int): TUN_F_* by value

# TUNSETOFFLOAD bits: what we accept from the kernel
TUN_F_CSUM = 0x01  # partial checksums; needed by all below
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20  # kernel 6.2+
TUN_F_USO6 = 0x40
OFFLOAD_TRIES = (  # the first the kernel accepts is kept
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
)

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
    """An open TUN or TAP device. Contract: `tunneld.core.contract.Device`."""

    def __init__(self, fd: int, name: str, mode: str, max_read: int, persistent: bool,
                 offloads: int = 0, fallback: str | None = None):
        """`max_read`: the largest read, virtio header included (limits.device_buffer)."""
        self.fd, self.name, self.mode, self.persistent = fd, name, mode, persistent
        self.offloads = offloads  # TUN_F_* in force; 0: no virtio header at all
        self.vnet = bool(offloads)
        self.fallback = fallback  # why offloads are off, for the log and status
        # One byte more than the largest read: a longer one means the kernel gave
        # us more than the limit allows (it cannot today), and it gets dropped, not cut.
        self._buf = bytearray(max_read + 1)
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self.max_read = max_read

    @property
    def offload_names(self) -> str:
        names = [n for bit, n in ((TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"), (TUN_F_USO4, "uso4"),
                                  (TUN_F_USO6, "uso6")) if self.offloads & bit]
        return " ".join(names) or "none"

    @classmethod
    def open(cls, name: str | None, mode: str, mtu: int, persistent: bool = False,
             offload: bool = True) -> "TunTap":
        """Create a device (name or the kernel's tun%d/tap%d) or, with `persistent`,
        attach to an existing persistent one, never creating it. `offload`: try
        IFF_VNET_HDR with TSO/USO first (see the module docstring)."""
        if not offload:
            fd, actual = cls._attach(name, mode, persistent, 0)
            return cls(fd, actual, mode, device_buffer(mode, mtu, False), persistent, 0, "interface.offload is false")
        fd, actual = cls._attach(name, mode, persistent, IFF_VNET_HDR)
        why = "the kernel refused IFF_VNET_HDR" if fd < 0 else None
        if fd >= 0:
            for bits in OFFLOAD_TRIES:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, bits)
                    return cls(fd, actual, mode, device_buffer(mode, mtu, True), persistent, bits)
                except OSError as e:
                    why = f"the kernel refused TSO offloads ({e.strerror})"
            os.close(fd)  # a device we created goes with it; we make it again, plain
        fd, actual = cls._attach(name if persistent or fd < 0 else actual, mode, persistent, 0)
        return cls(fd, actual, mode, device_buffer(mode, mtu, False), persistent, 0, why)

    @staticmethod
    def _attach(name: str | None, mode: str, persistent: bool, extra: int) -> tuple[int, str]:
        """(fd, actual name). With `extra` flags (IFF_VNET_HDR) an EINVAL gives (-1, "")
        so the caller can try without them."""
        label = name or f"{mode}%d"
        flags = (IFF_TAP if mode == "tap" else IFF_TUN) | IFF_NO_PI | extra
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
            if extra and e.errno == errno.EINVAL:
                return -1, ""
            raise StartupError(f"{label}: cannot {'attach to' if persistent else 'create'} {mode} device: "
                               f"{_setiff_why(e, persistent)}") from None
        return fd, IFREQ.unpack(result)[0].rstrip(b"\0").decode()

    def fileno(self) -> int:
        return self.fd

    def read(self) -> memoryview | None:
        try:
            n = os.readv(self.fd, self._bufs)
        except BlockingIOError:
            return None
        if n > self.max_read:
            raise OSError(errno.EMSGSIZE, f"{n}-byte read exceeds the {self.max_read}-byte limit")
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
