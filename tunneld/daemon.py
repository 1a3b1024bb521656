"""The daemon's lifecycle: open and configure the device, bind the transport,
relay until SIGTERM/SIGINT, then undo everything in reverse order.

This is the thin asyncio side: it owns the loop, the fds and the signals;
the packet logic lives in the core (`tunnel.py`) and the relay (`relay.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import signal
import time

from tunneld.config import Config
from tunneld.device import TunTap
from tunneld.netconf import LinkSetup
from tunneld.relay import Relay
from tunneld.session import PlaintextSession
from tunneld.tcp import TcpTransport
from tunneld.tunnel import Tunnel
from tunneld.udp import UdpTransport
from tunneld.wg.peer import WireGuardSession
from tunneld.wg.primitives import public_of

log = logging.getLogger("tunneld")


async def run(cfg: Config) -> int:
    """Run one tunnel until a signal; the exit code (0 after an orderly stop).
    A StartupError propagates after whatever was set up has been undone."""
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[tuple[str, int]] = loop.create_future()

    def stop(reason: str, code: int = 0) -> None:
        if not stopping.done():
            stopping.set_result((reason, code))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)

    icfg, tcfg = cfg.interface, cfg.transport
    session = _session(cfg)
    core = None
    with contextlib.ExitStack() as undo:
        undo.callback(lambda: [loop.remove_signal_handler(s) for s in (signal.SIGTERM, signal.SIGINT)])
        device = TunTap.open(icfg.name, icfg.mode, icfg.max_packet, icfg.persistent)
        undo.callback(device.close)
        log.info("%s: %s %s device, mtu %d", device.name,
                 "attached to persistent" if icfg.persistent else "created", icfg.mode, icfg.mtu)
        link = LinkSetup(device.name, restore=icfg.persistent)
        undo.callback(link.undo)
        link.apply(icfg)

        enc = cfg.encryption
        core = Tunnel(session, icfg.mode, icfg.max_packet, allowed_ips=enc.allowed_ips if enc else None)
        timer: list[asyncio.TimerHandle] = []

        def arm(when: float) -> None:
            if timer:
                timer.pop().cancel()
            timer.append(loop.call_later(max(0.0, when - time.monotonic()), relay.timer_fired))

        relay = Relay(core, device, on_fatal=lambda why: stop(why, 1), arm=arm)
        undo.callback(lambda: [t.cancel() for t in timer])
        if tcfg.protocol == "udp":
            transport, remote = await UdpTransport.open(tcfg, relay.message, cfg.max_message, relay.transport_error)
            core.endpoint = remote
            # plaintext cannot prove who sent a packet: a configured peer is pinned
            core.pinned = enc is None and remote is not None
        else:
            transport = await TcpTransport.open(tcfg, cfg.max_message, relay.message,
                                                relay.peer_up, relay.peer_down, relay.transport_error)
        relay.transport = transport
        undo.callback(transport.close)
        loop.add_reader(device.fileno(), relay.device_readable)
        undo.callback(loop.remove_reader, device.fileno())

        log.info("%s: up, %s over %s", device.name, icfg.mode, tcfg.protocol)
        relay.start()
        reason, code = await stopping
        log.info("stopping: %s", reason)
    if core is not None:
        log.info("counters: %s", core.counters.summary())
    log.info("stopped")
    return code


def _session(cfg: Config):
    enc = cfg.encryption
    if enc is None:
        log.warning("encryption: none: packets cross the network in plaintext, unauthenticated")
        return PlaintextSession()
    keys = enc.keys
    mode = "WireGuard-compatible" if enc.wireguard_compatible else "tunneld mode"
    log.info("encryption: %s, public key %s, peer %s%s", mode, base64.b64encode(public_of(keys.private)).decode(),
             base64.b64encode(enc.peer_public_key).decode(), ", with preshared key" if keys.psk else "")
    return WireGuardSession(static_private=keys.private, peer_public=enc.peer_public_key, psk=keys.psk,
                            compatible=enc.wireguard_compatible, max_packet=cfg.interface.max_packet,
                            persistent_keepalive=cfg.transport.keepalive,
                            wall_offset=time.time() - time.monotonic())
