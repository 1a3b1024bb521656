"""The daemon's lifecycle: open and configure the device, bind the transport,
relay until SIGTERM/SIGINT, then undo everything in reverse order.

This is the thin asyncio side: it owns the loop, the fds and the signals;
the packet logic lives in the core (`tunnel.py`) and the relay (`relay.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from tunneld.config import Config
from tunneld.device import TunTap
from tunneld.netconf import LinkSetup
from tunneld.relay import Relay
from tunneld.session import PlaintextSession
from tunneld.tcp import TcpTransport
from tunneld.tunnel import Tunnel
from tunneld.udp import UdpTransport

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
    if cfg.encryption is None:
        log.warning("encryption: none: packets cross the network in plaintext, unauthenticated")
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

        core = Tunnel(PlaintextSession(), icfg.mode, icfg.max_packet)
        relay = Relay(core, device, on_fatal=lambda why: stop(why, 1))
        if tcfg.protocol == "udp":
            transport, remote = await UdpTransport.open(tcfg, relay.message, icfg.max_packet, relay.transport_error)
            core.endpoint = remote
            core.roaming = remote is None  # plaintext cannot prove who sent a packet: a configured peer is pinned
        else:
            transport = await TcpTransport.open(tcfg, icfg.max_packet, relay.message,
                                                relay.peer_up, relay.peer_down, relay.transport_error)
        relay.transport = transport
        undo.callback(transport.close)
        loop.add_reader(device.fileno(), relay.device_readable)
        undo.callback(loop.remove_reader, device.fileno())

        log.info("%s: up, %s over %s", device.name, icfg.mode, tcfg.protocol)
        reason, code = await stopping
        log.info("stopping: %s", reason)
    if core is not None:
        log.info("counters: %s", core.counters.summary())
    log.info("stopped")
    return code
