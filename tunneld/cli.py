"""Command line: `tunneld --config FILE`, `tunneld check --config FILE`, `tunneld --version`,
and WireGuard-style keys: `tunneld genkey`, `tunneld pubkey` (stdin to stdout), `tunneld genpsk`.

Exit codes: 0 after an orderly stop, 1 when the system refuses us at start
(device, address, bridge), 2 for a bad command line or config. Errors are one
line, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys

from tunneld import __version__, config, logs
from tunneld.errors import StartupError

log = logging.getLogger("tunneld")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunneld", description="Point-to-point TUN/TAP tunnel over UDP or TCP.")
    p.add_argument("--version", action="version", version=f"tunneld {__version__}")
    p.add_argument("--config", "-c", metavar="FILE", help="run the tunnel this YAML file describes")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", help="validate a config file without touching the system")
    check.add_argument("--config", "-c", metavar="FILE", required=True)
    sub.add_parser("genkey", help="print a new base64 private key (like 'wg genkey')")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key (like 'wg pubkey')")
    sub.add_parser("genpsk", help="print a new base64 preshared key (like 'wg genpsk')")
    return p


def _keys(command: str) -> int:
    from tunneld.config import decode_key
    from tunneld.wg.primitives import generate_private, public_of

    if command == "genkey":
        key = generate_private(os.urandom(32))
    elif command == "genpsk":
        key = os.urandom(32)
    else:
        private = decode_key(sys.stdin.read())
        if private is None:
            print("tunneld pubkey: stdin is not a base64 private key of 32 bytes", file=sys.stderr)
            return 1
        key = public_of(private)
    print(base64.b64encode(key).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("genkey", "pubkey", "genpsk"):
        return _keys(args.command)
    if args.command is None and not args.config:
        parser.error("--config FILE is required")
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command == "check":
        t = cfg.transport
        ends = ", ".join(f"{k} {v}" for k, v in (("listen", t.listen), ("remote", t.remote)) if v)
        print(f"{args.config}: ok ({cfg.interface.mode} over {t.protocol}, {ends}, mtu {cfg.interface.mtu}, "
              f"{_crypto_name(cfg)})")
        return 0
    return _run(cfg)


def _crypto_name(cfg: config.Config) -> str:
    if cfg.encryption is None:
        return "plaintext"
    return "WireGuard-compatible" if cfg.encryption.wireguard_compatible else "encrypted, tunneld mode"


def _run(cfg: config.Config) -> int:
    import uvloop

    from tunneld import daemon

    logs.setup(cfg.log_level)
    log.info("tunneld %s starting with %s", __version__, cfg.source)
    try:
        return uvloop.run(daemon.run(cfg))
    except StartupError as e:
        log.error("%s", e)
        log.info("stopped")
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
