"""Command line: `tunneld --config FILE`, `tunneld check --config FILE`, `tunneld --version`,
WireGuard-style keys: `tunneld genkey`, `tunneld pubkey` (stdin to stdout), `tunneld genpsk`,
`tunneld status [NAME] [--json]`, and persistent devices: `tunneld mktun`, `tunneld rmtun`.

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
    status = sub.add_parser("status", help="show a running tunnel's state (all of them without NAME)")
    status.add_argument("name", nargs="?", metavar="NAME", help="the instance: london for london.yaml")
    status.add_argument("--json", action="store_true", help="print JSON")
    mk = sub.add_parser("mktun", help="create a persistent TUN/TAP device (like ip tuntap add)")
    mk.add_argument("device", metavar="NAME")
    mk.add_argument("--mode", choices=("tun", "tap"), required=True)
    mk.add_argument("--user", help="the user who may attach to it without privileges")
    mk.add_argument("--group", help="the group whose members may attach to it")
    mk.add_argument("--multi-queue", action="store_true")
    rm = sub.add_parser("rmtun", help="delete a persistent TUN/TAP device")
    rm.add_argument("device", metavar="NAME")
    return p


def _status(name: str | None, as_json: bool) -> int:
    import glob
    import json

    from tunneld import control

    if name:
        paths = [control.socket_path(name)]
    else:
        paths = sorted(glob.glob(control.socket_path("*")))
        if not paths:
            print(f"tunneld status: no tunnels running (no sockets in {control.runtime_dir()})", file=sys.stderr)
            return 3
    results, code = [], 0
    for path in paths:
        instance = os.path.basename(path)[:-len(".sock")]
        try:
            results.append(control.query(path))
        except (FileNotFoundError, ConnectionRefusedError):
            # no socket, or one left by a stopped daemon that had dropped root
            if name:
                print(f"tunneld status: {instance}: not running", file=sys.stderr)
                code = 3
            elif not as_json:
                results.append({"name": instance, "running": False})
        except OSError as e:
            print(f"tunneld status: {path}: {e.strerror or e}", file=sys.stderr)
            code = 3
    if as_json:
        print(json.dumps(results[0] if name and results else results, indent=2))
    else:
        print("\n".join(f"{r['name']}: not running" if r.get("running") is False else control.format_status(r)
                        for r in results))
    return code


def _tun_admin(args) -> int:
    from tunneld import device, privileges

    try:
        if args.command == "mktun":
            uid = gid = None
            if args.user:
                uid, primary = privileges.resolve(args.user, None)
            if args.group:
                _, gid = privileges.resolve(args.user or "root", args.group)
            device.mktun(args.device, args.mode, uid, gid, args.multi_queue)
            print(f"{args.device}: persistent {args.mode} device created")
        else:
            device.rmtun(args.device)
            print(f"{args.device}: deleted")
    except StartupError as e:
        print(f"tunneld {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


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
    if args.command == "status":
        return _status(args.name, args.json)
    if args.command in ("mktun", "rmtun"):
        return _tun_admin(args)
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
