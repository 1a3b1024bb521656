"""Interface set-up with iproute2: MTU, MAC, bridge, addresses, link up, routes.

Each step that changes something records how to undo it. A device we created
vanishes with its fd, taking its addresses, routes and bridge port along, so
only a persistent device (which outlives us) is walked back step by step.
Every failure names the interface and the step:

    tap0: cannot join bridge br9: no such device
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Callable

from tunneld.config import InterfaceConfig
from tunneld.errors import StartupError

log = logging.getLogger("tunneld")
SYS_NET = "/sys/class/net"

Runner = Callable[[list[str]], tuple[int, str]]


def run_ip(args: list[str]) -> tuple[int, str]:
    """Run `ip ARGS`; return its exit code and the first line of its complaint."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    try:
        p = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return 127, "the ip command (iproute2) is not installed"
    except subprocess.TimeoutExpired:
        return 124, "ip did not answer within 30 s"
    text = (p.stderr or p.stdout).strip().splitlines()
    first = text[0] if text else ""
    for prefix in ("Error: ", "RTNETLINK answers: "):
        first = first.removeprefix(prefix)
    return p.returncode, first.rstrip(".")


class LinkSetup:
    def __init__(self, name: str, restore: bool, run: Runner = run_ip):
        """`restore`: undo every change on stop (a persistent device outlives us)."""
        self.name = name
        self.restore = restore
        self.run = run
        self.undo_steps: list[tuple[str, list[str]]] = []

    def _do(self, step: str, args: list[str], undo: list[str] | None = None, exists_ok: bool = False) -> bool:
        code, why = self.run(args)
        if code != 0:
            if exists_ok and "exists" in why.lower():
                return False  # there before us: not ours to remove
            raise StartupError(f"{self.name}: cannot {step}: {_plain(why)}")
        if undo is not None and self.restore:
            self.undo_steps.append((step, undo))
        return True

    def apply(self, cfg: InterfaceConfig) -> None:
        dev = self.name
        old_mtu = _sysfs(dev, "mtu")
        if old_mtu != str(cfg.mtu):
            self._do(f"set MTU {cfg.mtu}", ["link", "set", "dev", dev, "mtu", str(cfg.mtu)],
                     ["link", "set", "dev", dev, "mtu", old_mtu or str(cfg.mtu)])
        if cfg.mac:
            old_mac = _sysfs(dev, "address")
            if old_mac != cfg.mac:
                self._do(f"set MAC address {cfg.mac}", ["link", "set", "dev", dev, "address", cfg.mac],
                         ["link", "set", "dev", dev, "address", old_mac] if old_mac else None)
        if cfg.bridge:
            br = cfg.bridge
            if not os.path.exists(f"{SYS_NET}/{br}"):
                raise StartupError(f"{dev}: cannot join bridge {br}: no such device")
            if not os.path.isdir(f"{SYS_NET}/{br}/bridge"):
                raise StartupError(f"{dev}: cannot join bridge {br}: not a bridge")
            self._do(f"join bridge {br}", ["link", "set", "dev", dev, "master", br],
                     ["link", "set", "dev", dev, "nomaster"])
        for addr in cfg.addresses:
            self.add_address(addr)
        if not _is_up(dev):
            self._do("bring the link up", ["link", "set", "dev", dev, "up"], ["link", "set", "dev", dev, "down"])
        for net in cfg.routes:
            self.add_route(net)

    def add_address(self, addr) -> None:
        self._do(f"add address {addr}", ["addr", "add", str(addr), "dev", self.name],
                 ["addr", "del", str(addr), "dev", self.name], exists_ok=True)

    def del_address(self, addr) -> None:
        self._forget(["addr", "del", str(addr), "dev", self.name])
        self._do(f"remove address {addr}", ["addr", "del", str(addr), "dev", self.name])

    def add_route(self, net) -> None:
        family = "-6" if net.version == 6 else "-4"
        self._do(f"add route {net}", [family, "route", "add", str(net), "dev", self.name],
                 [family, "route", "del", str(net), "dev", self.name])

    def del_route(self, net) -> None:
        family = "-6" if net.version == 6 else "-4"
        self._forget([family, "route", "del", str(net), "dev", self.name])
        self._do(f"remove route {net}", [family, "route", "del", str(net), "dev", self.name])

    def _forget(self, undo_args: list[str]) -> None:
        self.undo_steps = [(step, args) for step, args in self.undo_steps if args != undo_args]

    def undo(self) -> None:
        """Walk back every recorded change, newest first; a failure is logged, not raised."""
        while self.undo_steps:
            step, args = self.undo_steps.pop()
            code, why = self.run(args)
            if code != 0:
                log.warning("%s: cannot undo '%s': %s", self.name, step, _plain(why))


def _sysfs(dev: str, attr: str) -> str | None:
    try:
        with open(f"{SYS_NET}/{dev}/{attr}") as f:
            return f.read().strip()
    except OSError:
        return None


def _is_up(dev: str) -> bool:
    flags = _sysfs(dev, "flags")
    return flags is not None and int(flags, 16) & 0x1 == 1  # IFF_UP


def _plain(why: str) -> str:
    """iproute2's message, in the words of the rest of our log."""
    low = why.lower()
    if low.startswith("cannot find device"):
        return "no such device"
    return why[:1].lower() + why[1:] if why else "failed"
