"""The daemon's lifecycle: open and configure the device, bind the transport,
run the up hooks, drop privileges, tell systemd READY=1; relay until
SIGTERM/SIGINT, reload on SIGHUP; then undo everything in reverse order.

This is the thin asyncio side: it owns the loop, the fds and the signals;
the packet logic lives in the core (`tunnel.py`) and the relay (`relay.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import time

from tunneld import config as configmod
from tunneld import control, hooks, mss, privileges
from tunneld.config import Config
from tunneld.device import TunTap
from tunneld.errors import StartupError
from tunneld.io import format_address
from tunneld.metrics import MetricsServer
from tunneld.netconf import LinkSetup
from tunneld.relay import Relay
from tunneld.reload import apply_reload, restart_needed
from tunneld.sdnotify import Notifier
from tunneld.session import PlaintextSession
from tunneld.tcp import TcpTransport
from tunneld.tunnel import Tunnel
from tunneld.udp import UdpTransport
from tunneld.wg.peer import WireGuardSession
from tunneld.wg.primitives import DHError, public_of

log = logging.getLogger("tunneld")
STATUS_INTERVAL = 10.0  # s between STATUS= updates to systemd


async def run(cfg: Config) -> int:
    """Run one tunnel until a signal; the exit code (0 after an orderly stop).
    A StartupError propagates after whatever was set up has been undone."""
    return await Daemon(cfg).run()


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.notifier = Notifier()
        self.stopping: asyncio.Future[tuple[str, int]] = self.loop.create_future()
        self.started = time.monotonic()
        self.device: TunTap | None = None
        self.link: LinkSetup | None = None
        self.core: Tunnel | None = None
        self.relay: Relay | None = None
        self.transport = None
        self.can_net_admin = True
        self._timer: asyncio.TimerHandle | None = None
        self._reloading = False

    def stop(self, reason: str, code: int = 0) -> None:
        if not self.stopping.done():
            self.stopping.set_result((reason, code))

    async def run(self) -> int:
        loop, cfg = self.loop, self.cfg
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        icfg, tcfg = cfg.interface, cfg.transport
        code = 1
        with contextlib.ExitStack() as undo:
            undo.callback(self._remove_signal_handlers)
            undo.callback(self.notifier.close)
            uid_gid = privileges.resolve(cfg.run_as.user, cfg.run_as.group) if cfg.run_as else None
            self.device = device = TunTap.open(icfg.name, icfg.mode, icfg.mtu, icfg.persistent, icfg.offload)
            undo.callback(device.close)
            log.info("%s: %s %s device, mtu %d", device.name,
                     "attached to persistent" if icfg.persistent else "created", icfg.mode, icfg.mtu)
            if device.vnet:
                log.info("%s: offloads on (%s): super-packets of up to 64 KB", device.name, device.offload_names)
            elif icfg.offload:
                log.warning("%s: offloads off, one packet per read: %s", device.name, device.fallback)
            session = make_session(cfg, offload=device.vnet)
            self.link = LinkSetup(device.name, restore=icfg.persistent)
            undo.callback(self._undo_link)
            self.link.apply(icfg)

            enc = cfg.encryption
            self.core = core = Tunnel(session, icfg.mode, icfg.max_packet,
                                      allowed_ips=enc.allowed_ips if enc else None,
                                      clamp=mss.limits(icfg.mtu) if icfg.clamp_mss else None,
                                      vnet=device.vnet, mtu=icfg.mtu, stream=tcfg.protocol == "tcp")
            self.relay = relay = Relay(core, device, on_fatal=lambda why: self.stop(why, 1), arm=self._arm)
            undo.callback(lambda: self._timer and self._timer.cancel())
            await self._open_transport()
            undo.callback(lambda: self.transport.close())
            loop.add_reader(device.fileno(), relay.device_readable)
            undo.callback(loop.remove_reader, device.fileno())

            ctl = control.ControlServer(control.socket_path(cfg.name), self.snapshot)
            try:
                await ctl.start()
                undo.callback(ctl.close)
            except OSError as e:
                log.warning("status: no control socket at %s: %s", ctl.path, e.strerror)
            if cfg.metrics is not None:
                metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, self.snapshot)
                await metrics.start()
                undo.callback(metrics.close)

            if cfg.hooks.up:
                try:
                    await hooks.run("up", cfg.hooks.up, self._hook_env())
                except hooks.HookError as e:
                    raise StartupError(f"up hook {e.command!r} exited with {e.code}"
                                       + (f": {e.output.splitlines()[-1]}" if e.output else "")) from None
            if uid_gid is not None:
                if ctl.server is not None:
                    ctl.chown(*uid_gid)
                privileges.drop(*uid_gid, cfg.run_as.keep_net_admin)
                self.can_net_admin = privileges.has_net_admin()
                log.info("running as %s:%s, %s", cfg.run_as.user, cfg.run_as.group or "(primary group)",
                         "keeping CAP_NET_ADMIN" if self.can_net_admin else "with no capabilities")

            log.info("%s: up, %s over %s", device.name, icfg.mode, tcfg.protocol)
            if tcfg.protocol == "tcp":
                self.transport.start_connecting()
            relay.start()
            self.notifier.ready(self.status_line())
            self._tick_watchdog()
            self._tick_status()
            reason, code = await self.stopping
            log.info("stopping: %s", reason)
            self.notifier.stopping()
            if cfg.hooks.down:
                try:
                    await hooks.run("down", cfg.hooks.down, self._hook_env())
                except hooks.HookError as e:
                    log.warning("down hook %r exited with %d: %s", e.command, e.code, e.output or "(no output)")
        if self.core is not None:
            log.info("counters: %s", self.core.counters.summary())
        log.info("stopped")
        return code

    # --- pieces of start-up ----------------------------------------------------

    async def _open_transport(self) -> None:
        cfg, core, relay = self.cfg, self.core, self.relay
        tcfg = cfg.transport
        if tcfg.protocol == "udp":
            self.transport, remote = await UdpTransport.open(tcfg, relay.messages, cfg.max_message, relay.transport_error,
                                                             steer=cfg.encryption is not None)
            core.endpoint = remote
            # plaintext cannot prove who sent a packet: a configured peer is pinned
            core.pinned = cfg.encryption is None and remote is not None
        else:
            self.transport = await TcpTransport.open(tcfg, cfg.max_message, relay.messages,
                                                     relay.peer_up, relay.peer_down, relay.transport_error,
                                                     authenticated=cfg.encryption is not None, note=relay.note,
                                                     counters=core.counters)
        relay.transport = self.transport

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(0.0, when - time.monotonic()), self.relay.timer_fired)

    def _undo_link(self) -> None:
        if self.link.undo_steps and not self.can_net_admin:
            log.warning("%s: no CAP_NET_ADMIN left to undo %d changes to the persistent device",
                        self.device.name, len(self.link.undo_steps))
        self.link.undo()

    def _remove_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)

    def _hook_env(self) -> dict[str, str]:
        icfg = self.cfg.interface
        return hooks.environment(self.device.name, icfg.mode, icfg.mtu, icfg.addresses, _peer(self.core))

    # --- systemd: watchdog and status ----------------------------------------------

    def _tick_watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: if the loop hangs, the pings stop."""
        interval = self.notifier.watchdog_interval
        if interval is None or self.stopping.done():
            return
        self.notifier.watchdog()
        self.loop.call_later(interval, self._tick_watchdog)

    def _tick_status(self) -> None:
        if self.notifier.sock is None or self.stopping.done():
            return
        self.notifier.status(self.status_line())
        self.loop.call_later(STATUS_INTERVAL, self._tick_status)

    def status_line(self) -> str:
        st = self.snapshot()
        peer = f"peer {st['peer']}" if st["peer"] else "no peer yet"
        if st["encryption"] == "plaintext":
            return f"{st['interface']} up, {peer} (plaintext)"
        hs = st["last_handshake_seconds_ago"]
        return f"{st['interface']} up, {peer}, " + ("no handshake yet" if hs is None else f"handshake {hs:.0f} s ago")

    def snapshot(self) -> dict:
        cfg, core = self.cfg, self.core
        c = core.counters
        session = core.session
        last = getattr(session, "last_handshake", None)
        now = time.monotonic()
        enc = cfg.encryption
        return {
            "name": cfg.name,
            "interface": self.device.name,
            "mode": cfg.interface.mode,
            "mtu": cfg.interface.mtu,
            "transport": f"{cfg.transport.protocol}" + "".join(
                f" {k} {v}" for k, v in (("listen", cfg.transport.listen), ("remote", cfg.transport.remote)) if v),
            "encryption": "plaintext" if enc is None else ("wireguard" if enc.wireguard_compatible else "tunneld"),
            "offload": self._offload_state(),
            "peer": _peer(core),
            "last_handshake_seconds_ago": None if last is None else round(now - last, 1),
            "rx": vars(c.rx).copy(),
            "tx": vars(c.tx).copy(),
            "auth_failures": c.auth_failures,
            "cookies_sent": c.cookies_sent,
            "handshakes_shed": c.handshakes_shed,
            "candidates_refused": c.candidates_refused,
            "super_reads": c.super_reads,
            "super_writes": c.super_writes,
            "handshakes": c.handshakes,
            "reconnects": c.reconnects,
            "peer_changes": c.peer_changes,
            "uptime_seconds": round(now - self.started, 1),
            "pid": os.getpid(),
        }

    def _offload_state(self) -> str:
        """What the device and the peer do with super-packets, in a few words."""
        device = self.device
        if not device.vnet:
            return f"off ({device.fallback})"
        session = self.core.session
        if session.offload_peer:
            wire = "whole over tcp" if self.cfg.transport.protocol == "tcp" else "segments with partial checksums"
            return f"{device.offload_names}; peer takes super-packets ({wire})"
        return f"{device.offload_names}; cut into packets for the peer"

    # --- reload ------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read the file; apply what can change live, or refuse and keep running."""
        if self._reloading or self.stopping.done():
            return
        self._reloading = True
        self.notifier.reloading()
        try:
            try:
                new = configmod.load(self.cfg.source)
            except configmod.ConfigError as e:
                log.error("reload refused, keeping the running config: %s", e)
                return
            why = restart_needed(self.cfg, new)
            if why:
                log.error("reload refused, keeping the running config: %s", why)
                return
            try:
                changed = await apply_reload(self, new)
            except StartupError as e:
                log.error("reload stopped half-way: %s", e)
                return
            self.cfg = new
            log.info("reloaded %s: %s", new.source, ", ".join(changed) if changed else "nothing changed")
        finally:
            self._reloading = False
            self.notifier.ready(self.status_line())


def make_session(cfg: Config, previous=None, offload: bool = False):
    """`offload`: the device has virtio headers, so tunneld mode may offer the
    peer super-packets (WireGuard-compatible mode never does)."""
    enc = cfg.encryption
    if enc is None:
        log.warning("encryption: none: packets cross the network in plaintext, unauthenticated")
        return PlaintextSession()
    keys = enc.keys
    mode = "WireGuard-compatible" if enc.wireguard_compatible else "tunneld mode"
    log.info("encryption: %s, public key %s, peer %s%s", mode, base64.b64encode(public_of(keys.private)).decode(),
             base64.b64encode(enc.peer_public_key).decode(), ", with preshared key" if keys.psk else "")
    try:
        session = WireGuardSession(static_private=keys.private, peer_public=enc.peer_public_key, psk=keys.psk,
                                   compatible=enc.wireguard_compatible, max_packet=cfg.interface.max_packet,
                                   persistent_keepalive=cfg.transport.keepalive,
                                   padding_trailer=cfg.interface.mode == "tap" and not enc.wireguard_compatible,
                                   offload=offload and not enc.wireguard_compatible,
                                   wall_clock=time.time)
    except DHError:  # config.parse refuses such a key; this is for a Config built any other way
        raise StartupError("encryption.peer_public_key is a low-order point: no shared secret can come of it") from None
    if previous is not None and previous.handshake.peer_public == enc.peer_public_key:
        # the same peer: its old initiations stay replays after a reload
        session.handshake.last_timestamp = previous.handshake.last_timestamp
    return session


def _peer(core: Tunnel | None) -> str | None:
    if core is None or core.endpoint is None:
        return None
    return format_address(core.endpoint)
