"""Dropping root after the device is open and the sockets are bound: to the
configured user and group, keeping at most CAP_NET_ADMIN (so a reload can still
change addresses and routes over rtnetlink, and hooks inherit it as an ambient
capability). capabilities(7), prctl(2), capset(2) through ctypes.
"""

from __future__ import annotations

import codecs
import ctypes
import grp
import os
import pwd

from tunneld.errors import StartupError

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise StartupError(f"run_as: {what} failed: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))


def resolve(user: str, group: str | None) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"run_as.user: no such user {user!r}") from None
    if group is None:
        return pw.pw_uid, pw.pw_gid
    try:
        return pw.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f"run_as.group: no such group {group!r}") from None


def drop(uid: int, gid: int, keep_net_admin: bool) -> None:
    """Become uid:gid with no supplementary groups and, at most, CAP_NET_ADMIN
    (effective, permitted, inheritable and ambient); the bounding set keeps
    nothing else, and NO_NEW_PRIVS is set, so no later exec (a hook, a setuid
    program it runs) can regain more, with or without systemd's
    NoNewPrivileges=."""
    if uid == 0:  # config refuses it first (config.refuse_root); this keeps any other caller honest
        raise StartupError("run_as: uid 0 keeps every capability: name an unprivileged user")
    # getaddrinfo encodes host names with the idna codec, which Python imports at its first
    # use: import it now, while root can read the standard library (a lookup as the run_as
    # user, a TCP connect or a name looked up again, would fail where it cannot)
    codecs.lookup("idna")
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if not (keep_net_admin and cap == CAP_NET_ADMIN):
            _check(_prctl(PR_CAPBSET_DROP, cap), f"dropping capability {cap} from the bounding set")
    if keep_net_admin:
        _check(_prctl(PR_SET_KEEPCAPS, 1), "PR_SET_KEEPCAPS")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise StartupError(f"run_as: cannot become uid {uid} gid {gid}: {e.strerror}") from None
    if keep_net_admin:
        mask = 1 << CAP_NET_ADMIN
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
        _check(_libc.capset(ctypes.byref(header), data), "capset CAP_NET_ADMIN")
        _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN), "raising ambient CAP_NET_ADMIN")
        _check(_prctl(PR_SET_KEEPCAPS, 0), "clearing PR_SET_KEEPCAPS")


def has_net_admin() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    return False
