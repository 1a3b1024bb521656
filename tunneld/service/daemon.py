"""The daemon's lifecycle: open and configure the device, bind the transport,
run the up hooks, drop privileges, tell systemd READY=1; relay until
SIGTERM/SIGINT, reload on SIGHUP; then undo everything in reverse order,
but for what keeps the tunnel's traffic from leaking until the next start
(host/kept.py): SIGTERM and a fatal error leave that, SIGINT removes it.

This is the thin asyncio side: it owns the loop, the fds and the signals;
the packet logic lives in the core (`tunnel.py`) and the relay (`relay.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time

from tunneld import config as configmod
from tunneld.service import control
from tunneld.host import hooks, privileges, routing, rtnl
from tunneld.packet import mss
from tunneld.conn import sockopts as netaddr
from tunneld.conn.candidates import Opening
from tunneld.conn.endpoint import is_ip
from tunneld.conn.resolver import Resolver
from tunneld.config import Config
from tunneld.tun.device import TunTap
from tunneld.errors import StartupError
from tunneld.core.contract import format_address
from tunneld.service.metrics import MetricsServer
from tunneld.host.netconf import LinkSetup
from tunneld.service.relay import Relay
from tunneld.service.reload import plan, restart_needed
from tunneld.service.sdnotify import Notifier
from tunneld.service.transport_set import TransportSet, Via
from tunneld.core.counters import Counters
from tunneld.core.events import (EndpointChanged, HandshakeCompleted, HandshakeRetry, NoReply, PeerDown, PeerMoved,
                                 PeerUp, StreamChanged)
from tunneld.core.session import PlaintextSession
from tunneld.conn.tcp import TcpTransport
from tunneld.core.tunnel import Tunnel
from tunneld.conn.udp import UdpTransport
from tunneld.wg import messages
from tunneld.wg.constants import INITIATION_SIZE, MESSAGE_INITIATION
from tunneld.wg.peer import WireGuardSession
from tunneld.wg.primitives import DHError, public_of

log = logging.getLogger("tunneld")
# events after which STATUS= says something else in short (the peer, the last handshake)
_STATUS_EVENTS = (HandshakeCompleted, PeerMoved, StreamChanged, PeerUp, PeerDown, EndpointChanged)
# the session says a handshake to the endpoint went unanswered: a name's next address, or a new lookup
_UNANSWERED = (HandshakeRetry, NoReply)
STATUS_INTERVAL = 10.0  # s between STATUS= updates to systemd
# what a new TCP connection to an encrypted listener must open with: an initiation
# (type and size; reserved bytes and the rest are the session's to judge)
OPENING = Opening(INITIATION_SIZE, lambda m: messages.classify(m, strict_reserved=False) == MESSAGE_INITIATION)


async def run(cfg: Config, log_override: str | None = None) -> int:
    """Run one tunnel until a signal; the exit code (0 after an orderly stop).
    A StartupError propagates after whatever was set up has been undone.
    `log_override`: the command line's --log-level, kept across reloads."""
    return await Daemon(cfg, log_override).run()


class Daemon:
    def __init__(self, cfg: Config, log_override: str | None = None):
        self.cfg = cfg
        self.log_override = log_override
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
        self._reload_lock = asyncio.Lock()
        self._watch: rtnl.LinkWatch | None = None
        self._link_up = True
        self.real_stop = False
        self.resolver: Resolver | None = None  # keeps a UDP remote given by name resolved
        self.event_hooks = hooks.EventHooks()

    def stop(self, reason: str, code: int = 0, real: bool = False) -> None:
        """`real`: a real stop (Ctrl-C), which removes what a restart keeps."""
        if not self.stopping.done():
            self.real_stop = real
            self.stopping.set_result((reason, code))

    async def run(self) -> int:
        loop, cfg = self.loop, self.cfg
        loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT", 0, True)
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
            # what a predecessor kept is adopted, unless the name is taken (the control
            # socket refuses this start below; the file is the running daemon's)
            kept_path = None if control.running(cfg.name) else control.kept_path(cfg.name)
            self.link = LinkSetup(device.name, persistent=icfg.persistent, kept_path=kept_path)
            undo.callback(self._undo_link)
            self.link.apply(icfg, tcfg.fwmark)
            self._watch_link()
            undo.callback(self._unwatch_link)

            enc = cfg.encryption
            self.core = core = Tunnel(session, icfg.mode, icfg.max_packet,
                                      allowed_ips=enc.allowed_ips if enc else None,
                                      clamp=clamp_limits(cfg) if icfg.clamp_mss else None,
                                      vnet=device.vnet, mtu=icfg.mtu, stream=tcfg.protocol == "tcp",
                                      peer_timeout=cfg.peer_timeout)
            self.relay = relay = Relay(core, device, on_fatal=lambda why: self.stop(why, 1), arm=self._arm,
                                       on_event=self._on_event)
            undo.callback(lambda: self._timer and self._timer.cancel())
            await self._open_transport()
            undo.callback(lambda: self.transport.close())
            undo.callback(self.event_hooks.close)
            undo.callback(lambda: self.resolver and self.resolver.close())
            loop.add_reader(device.fileno(), relay.device_readable)
            undo.callback(loop.remove_reader, device.fileno())

            self._warn_captured()
            ctl = control.ControlServer(control.socket_path(cfg.name), self.snapshot, self.reload)
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
                if kept_path and cfg.run_as.keep_net_admin and os.path.exists(kept_path):
                    os.chown(kept_path, *uid_gid)  # a reload rewrites it
                privileges.drop(*uid_gid, cfg.run_as.keep_net_admin)
                self.can_net_admin = privileges.has_net_admin()
                log.info("running as %s:%s, %s", cfg.run_as.user, cfg.run_as.group or "(primary group)",
                         "keeping CAP_NET_ADMIN" if self.can_net_admin else "with no capabilities")

            log.info("%s: up, %s over %s", device.name, icfg.mode, ", then ".join(t.protocol for t in cfg.transports))
            if tcfg.protocol == "tcp" or isinstance(self.transport, TransportSet):
                self.transport.start_connecting()
            if self.resolver is not None:  # after the privilege drop, as the TCP client's lookups
                self.resolver.start()
            self.event_hooks.release()  # what happened meanwhile (a peer up) runs now, as the run_as user
            relay.start()
            self.notifier.ready(self.status_line())
            self._tick_watchdog()
            self._tick_status()
            reason, code = await self.stopping
            log.info("stopping: %s", reason)
            self.notifier.stopping()
            self.event_hooks.close()
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
        if len(cfg.transports) > 1:  # a list: every entry open, the tunnel on one (transport_set.py)
            self.transport = await TransportSet.open(cfg, core, relay, OPENING)
        elif tcfg.protocol == "udp":
            self.transport, remote = await UdpTransport.open(tcfg, relay.messages, cfg.max_message, relay.transport_error,
                                                             steer=cfg.encryption is not None)
            # plaintext cannot prove who sent a packet: a configured peer is pinned
            core.set_endpoint(remote, pinned=cfg.encryption is None and remote is not None)
            if tcfg.remote is not None and not is_ip(tcfg.remote.host):
                self.resolver = self._resolver(tcfg)
        else:
            self.transport = await TcpTransport.open(tcfg, cfg.max_message, relay.messages,
                                                     relay.peer_up, relay.peer_down, relay.transport_error,
                                                     authenticated=cfg.encryption is not None, note=relay.note,
                                                     opening=OPENING if cfg.encryption is not None else None,
                                                     counters=core.counters.add(Counters()))
        relay.transport = self.transport

    def _resolver(self, tcfg) -> Resolver:
        """A resolver for a UDP remote given by name, for the bound socket's family."""
        sock = self.transport.sock
        return Resolver(tcfg.remote, sock.family, netaddr.is_dual(sock), self._resolved,
                        floor=tcfg.resolve_min, ceiling=tcfg.resolve_max)

    def _resolved(self, new, old, why: str) -> None:
        """The resolver has another address for the peer. A new answer does not
        override an address the peer authenticated from (it roamed there and
        answers); an unanswered handshake moves on whatever it was."""
        core = self.core
        if why == "resolved" and core.endpoint is not None and core.endpoint != old and not core.pinned:
            log.info("%s: keeping %s, where the peer was last heard from", self.cfg.transport.remote,
                     format_address(core.endpoint))
            return
        core.set_endpoint(new, pinned=self.cfg.encryption is None, why=why)
        self.relay.start()  # takes the events; a session with a keepalive says hello to the new address

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(0.0, when - time.monotonic()), self.relay.timer_fired)

    def _undo_link(self) -> None:
        """A real stop undoes; a stop for a restart (SIGTERM, a fatal error) leaves
        what guards the tunnel's traffic; a failed start leaves what a predecessor kept."""
        link, name = self.link, self.device.name
        if not self.stopping.done():
            link.undo(spare=link.spare_at_failed_start())
        elif self.real_stop:
            pending = link.pending_undo()
            if pending and not self.can_net_admin:
                log.warning("%s: no CAP_NET_ADMIN left to undo %d changes: 'tunneld down %s' as root removes them",
                            name, pending, self.cfg.name)
            link.undo()
        else:
            kept = link.leave()
            if kept:
                log.info("%s: kept for a restart: %s ('tunneld down %s' removes them)", name, kept.describe(),
                         self.cfg.name)
        link.close()

    def _warn_captured(self) -> None:
        """Routes that would carry the tunnel's own packets into the tunnel."""
        peer = self.core.endpoint
        net = routing.captures(self.cfg.interface.routes, peer[0]) if peer else None
        if net is not None:
            log.warning("interface.routes: %s contains the peer's address %s: the tunnel's own packets would "
                        "enter the tunnel; use 0.0.0.0/0 or ::/0 (full tunnel) instead", net, peer[0])

    # --- the link: restore our addresses and routes when it comes back up ------------

    def _watch_link(self) -> None:
        try:
            self._watch = rtnl.LinkWatch()
        except OSError as e:
            log.warning("%s: cannot watch the link (%s): routes lost to a down/up come back only at reload",
                        self.device.name, e.strerror)
            return
        self.loop.add_reader(self._watch.fileno(), self._link_event)

    def _unwatch_link(self) -> None:
        if self._watch is not None:
            self.loop.remove_reader(self._watch.fileno())
            self._watch.close()
            self._watch = None

    def _link_event(self) -> None:
        links, lost = self._watch.drain()
        ours = [link for link in links if link.index == self.link.index]
        if lost:
            try:
                ours.append(self.link.nl.link(self.link.index))
            except OSError:
                return
        for link in ours:
            was, self._link_up = self._link_up, link.up
            if link.up and not was and self.can_net_admin:
                try:
                    restored = self.link.restore()
                except StartupError as e:
                    log.warning("link back up, but: %s", e)
                    continue
                log.info("%s: link back up%s", self.device.name,
                         f"; restored {', '.join(restored)}" if restored else "")
            elif not link.up and was:
                log.warning("%s: link down", self.device.name)

    def _remove_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)

    def _hook_env(self, **extra: str) -> dict[str, str]:
        icfg = self.cfg.interface
        return hooks.environment(self.device.name, icfg.mode, icfg.mtu, icfg.addresses, _peer(self.core, plain=True), **extra)

    def _event_hook(self, kind: str, **extra: str) -> None:
        """Queue an event's hooks (hooks.EventHooks: one at a time, beside the packet path)."""
        commands = getattr(self.cfg.hooks, kind)
        if commands and not self.stopping.done():
            self.event_hooks.add(kind, commands, self._hook_env(TUNNELD_EVENT=kind, TUNNELD_TRANSPORT=self._protocol(),
                                                                **extra))

    def _protocol(self) -> str:
        """The transport in use: udp or tcp (a list's active entry)."""
        if isinstance(self.transport, TransportSet):
            return self.transport.status()["transport_active"]
        return self.cfg.transport.protocol

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

    def _on_event(self, event) -> None:
        """What the core reported (core/events.py), already logged: a handshake,
        the peer moved, up or down, a connection lost or back change what
        STATUS= says in short, so systemd hears it now rather than at the next
        tick. The peer's comings and goings run their hooks; an unanswered
        handshake tells the resolver (a transport list: moves it)."""
        if isinstance(self.transport, TransportSet):
            self.transport.on_event(event)  # handshakes answered or not move a transport list
        if isinstance(event, _UNANSWERED) and self.resolver is not None:
            self.resolver.unanswered()
        elif isinstance(event, PeerUp):
            self._event_hook("peer_up")
        elif isinstance(event, PeerDown):
            self._event_hook("peer_down", TUNNELD_PEER=_plain(event.peer), TUNNELD_REASON=event.why)
        elif isinstance(event, EndpointChanged):
            self._event_hook("endpoint_changed", TUNNELD_OLD_ENDPOINT=_plain(event.old),
                             TUNNELD_NEW_ENDPOINT=_plain(event.new), TUNNELD_REASON=event.why)
        if isinstance(event, _STATUS_EVENTS) and self.notifier.sock is not None and not self.stopping.done():
            self.notifier.status(self.status_line())

    def status_line(self) -> str:
        st = self.snapshot()
        lost = self._protocol() == "tcp" and st["peer"] is None and self.core.had_stream
        peer = f"peer {st['peer']}" if st["peer"] else ("connection lost" if lost else
                                                       f"resolving {st['resolving']}" if st["resolving"] else "no peer yet")
        if st["peer"] and st["peer_state"] != "not heard yet":
            peer += f" {st['peer_state']}"  # up, or down since it went silent
        if st["encryption"] == "plaintext":
            return f"{st['interface']} up, {peer} (plaintext)"
        hs = st["last_handshake_seconds_ago"]
        return f"{st['interface']} up, {peer}, " + ("no handshake yet" if hs is None else f"handshake {hs:.0f} s ago")

    def snapshot(self) -> dict:
        cfg, core = self.cfg, self.core
        c = core.counters
        session = core.session
        last = session.last_handshake
        now = time.monotonic()
        enc = cfg.encryption
        return {
            "name": cfg.name,
            "config": os.path.abspath(cfg.source),
            "interface": self.device.name,
            "mode": cfg.interface.mode,
            "mtu": cfg.interface.mtu,
            **self._transport_state(),
            "encryption": "plaintext" if enc is None else ("wireguard" if enc.wireguard_compatible else "tunneld"),
            "offload": self._offload_state(),
            "peer": _peer(core),
            "peer_state": core.peer_state,
            "resolving": self.cfg.transport.remote.host if self.resolver is not None and self.resolver.current is None
            else None,
            "transport_protocol": self._protocol(),
            "last_handshake_seconds_ago": None if last is None else round(now - last, 1),
            "rx": vars(c.rx).copy(),
            "tx": vars(c.tx).copy(),
            "auth_failures": c.auth_failures,
            "cookies_sent": c.cookies_sent,
            "handshakes_shed": c.handshakes_shed,
            "candidates_refused": c.candidates_refused,
            "super_reads": c.super_reads,
            "super_writes": c.super_writes,
            "chunked": c.chunked,
            "salvaged": c.salvaged,
            "handshakes": c.handshakes,
            "reconnects": c.reconnects,
            "peer_changes": c.peer_changes,
            "uptime_seconds": round(now - self.started, 1),
            "pid": os.getpid(),
        }

    def _transport_state(self) -> dict:
        """Which transport carries the tunnel, and how often that changed (a list's)."""
        if isinstance(self.transport, TransportSet):
            return self.transport.status()
        t = self.cfg.transport
        return {"transport": t.protocol + "".join(f" {k} {v}" for k, v in (("listen", t.listen), ("remote", t.remote)) if v),
                "transport_active": t.protocol, "transport_entry": 0, "transport_changes": 0}

    def _offload_state(self) -> str:
        """What the device and the peer do with super-packets, in a few words."""
        device = self.device
        if not device.vnet:
            return f"off ({device.fallback})"
        session = self.core.session
        if session.offload_peer:
            current = session.current if isinstance(session, WireGuardSession) else None
            wire = ("whole over tcp" if self.core.stream else "chunks at the underlay's size"
                    if current is not None and current.chunks else "segments with partial checksums")
            return f"{device.offload_names}; peer takes super-packets ({wire})"
        return f"{device.offload_names}; cut into packets for the peer"

    # --- reload ---------------------------------------------------------------------

    async def reload(self) -> dict:
        """SIGHUP or `tunneld reload`: re-read the file; apply what can change live,
        all of it or none of it, or refuse and keep running. The outcome, as the
        control socket answers it: {"ok": bool, "message": one line}."""
        if self.stopping.done():
            return {"ok": False, "message": "stopping"}
        async with self._reload_lock:  # one at a time; a second waits for the first
            self.notifier.reloading()
            try:
                ok, message = await self._reload()
            finally:
                self.notifier.ready(self.status_line())
        if ok:
            log.info("%s", message)
        else:
            log.error("reload refused, keeping the running config: %s", message)
        return {"ok": ok, "message": message}

    async def _reload(self) -> tuple[bool, str]:
        old = self.cfg
        try:
            new = configmod.load(old.source)
        except configmod.ConfigError as e:
            return False, str(e)
        if self.log_override:
            new = dataclasses.replace(new, log_level=self.log_override)
        why = restart_needed(old, new)
        if why:
            return False, why
        p = plan(old, new)
        core, link = self.core, self.link
        # first what may fail, changing nothing: resolving the peer, making a session
        remote, resolver = core.endpoint, None
        ep = new.transport.remote
        listed = isinstance(self.transport, TransportSet)
        if listed and (p.remote or p.failback):
            try:
                remotes = await self.transport.resolve(new.transports)
            except StartupError as e:
                return False, str(e)
        elif p.remote and new.transport.protocol == "udp":
            remote = None
            if ep is not None and is_ip(ep.host):
                try:
                    _, remote = await netaddr.resolve(ep, self.transport.sock.family, socket.SOCK_DGRAM)
                except StartupError as e:
                    return False, f"transport.remote: {e}"
            elif ep is not None:  # a new name: it must resolve now (then it is followed like the first)
                resolver = self._resolver(new.transport)
                try:
                    remote = await resolver.first()
                except LookupError as e:
                    resolver.close()
                    return False, f"transport.remote: {e}"

        def refuse(why: str) -> tuple[bool, str]:
            if resolver is not None:
                resolver.close()
            return False, why

        session = None
        if p.keys:
            try:
                session = make_session(new, offload=core.vnet)
            except StartupError as e:
                return refuse(str(e))
        # then the kernel, all or nothing, compared with what it really has
        icfg, fwmark = new.interface, new.transport.fwmark
        if p.link and not self.can_net_admin:
            return refuse("addresses or routes changed, but run_as.keep_net_admin is false: "
                          "no capability is left to change them; restart to apply")
        if self.can_net_admin:
            try:
                link.change(icfg.addresses, routing.routes(icfg.routes, fwmark), routing.rules(icfg.routes, fwmark))
            except StartupError as e:
                return refuse(str(e))
        # last what cannot fail
        if p.log_level:
            logging.getLogger("tunneld").setLevel(new.log_level.upper())
        if listed and (p.remote or p.failback):
            self.transport.reload(new.transports, remotes, new.failback)
        elif p.remote:
            if new.transport.protocol == "udp":
                if self.resolver is not None:
                    self.resolver.close()
                self.resolver = resolver
                if resolver is not None:
                    resolver.start()
                core.set_endpoint(remote, pinned=new.encryption is None and remote is not None)
            else:
                self.transport.set_remote(new.transport.remote)
        elif self.resolver is not None:
            self.resolver.refresh()  # every reload asks the name again
        if session is not None:
            core.replace_session(session)  # the same peer's replay guard carries over (rekey_from)
        elif p.keepalive:
            core.set_keepalive(new.transport.keepalive)
        if p.allowed_ips:
            core.set_allowed(new.encryption.allowed_ips)
        if p.peer_timeout:
            core.set_peer_timeout(new.peer_timeout)
        self.cfg = new
        self.relay.start()  # a new session or keepalive may want to speak now
        if p.link or p.remote:
            self._warn_captured()
        changed = p.changed(new)
        return True, f"reloaded {new.source}: {', '.join(changed) if changed else 'nothing changed'}"


def clamp_limits(cfg: Config) -> tuple[int, int]:
    """MSS limits: a TUN tunnel's MTU; frames bridged over UDP (any entry of a list), a
    1500-byte underlay (packet/mss.py)."""
    icfg, enc = cfg.interface, cfg.encryption
    if icfg.mode == "tap" and any(t.protocol == "udp" for t in cfg.transports):
        return mss.bridged_limits(icfg.mtu, enc is not None, bool(enc and enc.wireguard_compatible))
    return mss.limits(icfg.mtu)


def make_session(cfg: Config, offload: bool = False):
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
    return session


def _plain(addr) -> str:
    """An address for a hook's environment: host:port, without a list's transport name."""
    return format_address(addr.raw if isinstance(addr, Via) else addr)


def _peer(core: Tunnel | None, plain: bool = False) -> str | None:
    """The peer's address; `plain`: host:port alone, without a list's transport name."""
    if core is None or core.endpoint is None:
        return None
    addr = core.endpoint
    return format_address(addr.raw if plain and isinstance(addr, Via) else addr)
