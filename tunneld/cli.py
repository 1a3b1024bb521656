"""Command line: `tunneld --config FILE`, `tunneld check FILE`, `tunneld --version`,
WireGuard-style keys: `tunneld genkey`, `tunneld pubkey` (stdin to stdout), `tunneld genpsk`,
`tunneld status [NAME] [--json]`, `tunneld reload NAME`, `tunneld import wg0.conf -o FILE`,
`tunneld down NAME` (remove what a stopped tunnel kept for a restart),
and persistent devices: `tunneld mktun`, `tunneld rmtun`.

Exit codes: 0 after an orderly stop, 1 when the system refuses us at start
(device, address, bridge) or refuses a reload, 2 for a bad command line or
config, 3 when the tunnel asked for is not running. Errors are one line,
never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys

from tunneld import __version__, config
from tunneld.service import logs
from tunneld.errors import StartupError

log = logging.getLogger("tunneld")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunneld", description="Point-to-point TUN/TAP tunnel over UDP or TCP, "
                                "with WireGuard's encryption.")
    p.add_argument("--version", action="version", version=f"tunneld {__version__}")
    p.add_argument("--config", "-c", metavar="FILE", help="run the tunnel this YAML file describes")
    p.add_argument("--log-level", choices=config.LOG_LEVELS, help="override the config's log_level")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", help="validate a config file (and its key files) without touching the system")
    check.add_argument("file", nargs="?", metavar="FILE", help="the config (or give --config before the command)")
    check.add_argument("--config", "-c", metavar="FILE", dest="check_config", help="the config, as an option")
    sub.add_parser("genkey", help="print a new base64 private key (like 'wg genkey')")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key (like 'wg pubkey')")
    sub.add_parser("genpsk", help="print a new base64 preshared key (like 'wg genpsk')")
    status = sub.add_parser("status", help="show a running tunnel's state (all of them without NAME)")
    status.add_argument("name", nargs="?", metavar="NAME", help="the instance: london for london.yaml")
    status.add_argument("--json", action="store_true", help="print JSON")
    reload = sub.add_parser("reload", help="make a running tunnel re-read its config; waits for the outcome")
    reload.add_argument("name", metavar="NAME", help="the instance: london for london.yaml (or its name: key)")
    down = sub.add_parser("down", help="after a stop, remove what the tunnel kept for a restart "
                          "(the full tunnel's rules and unreachable routes, what is on a persistent device)")
    down.add_argument("name", metavar="NAME", help="the instance: london for london.yaml (or its name: key)")
    down.add_argument("--unless-restarting", action="store_true",
                      help="for the systemd unit's ExecStopPost=: keep it when systemd restarts the service "
                      "or the service failed")
    imp = sub.add_parser("import", help="turn a wg-quick config into a WireGuard-compatible tunneld config")
    imp.add_argument("wg_conf", metavar="WG_CONF", help="the wg-quick file, like /etc/wireguard/wg0.conf")
    imp.add_argument("--output", "-o", metavar="FILE", required=True,
                     help="the YAML to write; the key files go beside it (NAME.key, NAME.psk), mode 0600")
    mk = sub.add_parser("mktun", help="create a persistent TUN/TAP device (like ip tuntap add)")
    mk.add_argument("device", metavar="NAME", help="the device name, at most 15 bytes")
    mk.add_argument("--mode", choices=("tun", "tap"), required=True, help="tun for IP packets, tap for Ethernet frames")
    mk.add_argument("--user", help="the user who may attach to it without privileges")
    mk.add_argument("--group", help="the group whose members may attach to it")
    mk.add_argument("--multi-queue", action="store_true", help="IFF_MULTI_QUEUE: one fd per queue")
    rm = sub.add_parser("rmtun", help="delete a persistent TUN/TAP device")
    rm.add_argument("device", metavar="NAME", help="the device made with mktun")
    return p


def _status(name: str | None, as_json: bool) -> int:
    import glob
    import json

    from tunneld.service import control

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
        except PermissionError:
            if name:  # asked by name: say so; listing all: only the ones the caller may query
                print(f"tunneld status: {instance}: permission denied on {path} (run as root or as its run_as user)",
                      file=sys.stderr)
                code = 3
        except OSError as e:
            print(f"tunneld status: {path}: {e.strerror or e}", file=sys.stderr)
            code = 3
    if not name and not results and code == 0:
        print(f"tunneld status: no tunnels you may query in {control.runtime_dir()}", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps(results[0] if name and results else results, indent=2))
    else:
        print("\n".join(f"{r['name']}: not running" if r.get("running") is False else control.format_status(r)
                        for r in results))
    return code


def _reload(name: str) -> int:
    """Ask the daemon to reload and wait for the outcome: 0 applied, 1 refused, 3 not running."""
    from tunneld.service import control

    path = control.socket_path(name)
    try:
        answer = control.query(path, timeout=control.RELOAD_TIMEOUT, request="reload")
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"tunneld reload: {name}: not running (no tunneld answers on {path})", file=sys.stderr)
        return 3
    except PermissionError:
        print(f"tunneld reload: {name}: permission denied on {path} (run as root or as its run_as user)",
              file=sys.stderr)
        return 3
    except (OSError, ValueError) as e:
        print(f"tunneld reload: {name}: no answer: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    if "ok" not in answer:
        print(f"tunneld reload: {name}: {answer.get('error', 'unexpected answer')} (is the daemon older than this command?)",
              file=sys.stderr)
        return 1
    if not answer["ok"]:
        print(f"tunneld reload: {name}: refused: {answer['message']}", file=sys.stderr)
        return 1
    print(answer["message"])
    return 0


def _tun_admin(args) -> int:
    from tunneld.tun import device
    from tunneld.host import privileges

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
    if command != "pubkey":
        _warn_if_readable(sys.stdout, command)
    print(base64.b64encode(key).decode())
    return 0


def _warn_if_readable(stream, command: str) -> None:
    """Like `wg genkey`: a secret going into a file others may read gets a warning."""
    import stat
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"tunneld {command}: warning: writing a secret to a file that group or others may read; "
              "tunneld will refuse it (run 'umask 077' first, or chmod 600 it)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("genkey", "pubkey", "genpsk"):
        return _keys(args.command)
    if args.command == "status":
        return _status(args.name, args.json)
    if args.command in ("mktun", "rmtun"):
        return _tun_admin(args)
    if args.command == "reload":
        return _reload(args.name)
    if args.command == "down":
        from tunneld.service import down
        return down.main(args.name, args.unless_restarting)
    if args.command == "import":
        from tunneld.config import wgquick
        return wgquick.main(args.wg_conf, args.output)
    path = args.config
    if args.command == "check":
        given = [p for p in (args.file, args.check_config, args.config) if p]
        if len(set(given)) > 1:
            parser.error("check: give the config once (FILE or --config FILE)")
        path = given[0] if given else None
    if path is None:
        parser.error("--config FILE is required" if args.command is None else "check: which config? (FILE)")
    try:
        cfg = config.load(path)
        config.refuse_root(cfg)  # run_as uid 0: a config mistake too
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    instance = os.environ.get("TUNNELD_INSTANCE")  # set by tunneld@.service
    if args.command is None and instance and instance != cfg.name:
        print(f"{path}: name: {cfg.name!r} differs from the systemd instance {instance!r}, "
              f"which 'systemctl reload tunneld@{instance}' asks for", file=sys.stderr)
        return 2
    if args.command == "check":
        over = "; then ".join(f"{t.protocol}, " + ", ".join(f"{k} {v}" for k, v in (("listen", t.listen),
                                                                                 ("remote", t.remote)) if v)
                              for t in cfg.transports)
        print(f"{path}: ok ({cfg.interface.mode} over {over}, mtu {cfg.interface.mtu}, "
              f"{_crypto_name(cfg)}, name {cfg.name})")
        for warning in _warnings(cfg):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        return 0
    override = "debug" if args.verbose else args.log_level
    if override:
        from dataclasses import replace
        cfg = replace(cfg, log_level=override)
    return _run(cfg, override)


def _warnings(cfg: config.Config) -> list[str]:
    """What is valid but will not do what its author wants."""
    from tunneld.host import routing
    out = []
    for host in dict.fromkeys(t.remote.host for t in cfg.transports if t.remote):  # each host once
        net = routing.captures(cfg.interface.routes, host)
        if net is None:
            continue
        out.append(f"interface.routes: {net} contains the peer's address {host}: the tunnel's own "
                   "packets would enter the tunnel and nothing would get through; for all traffic use "
                   "0.0.0.0/0 and ::/0 (full tunnel, which keeps the peer's path outside)")
    return out


def _crypto_name(cfg: config.Config) -> str:
    if cfg.encryption is None:
        return "plaintext"
    return "WireGuard-compatible" if cfg.encryption.wireguard_compatible else "encrypted, tunneld mode"


def _run(cfg: config.Config, log_override: str | None = None) -> int:
    import uvloop

    from tunneld.service import daemon

    logs.setup(cfg.log_level)
    log.info("tunneld %s starting with %s", __version__, cfg.source)
    try:
        return uvloop.run(daemon.run(cfg, log_override))
    except StartupError as e:
        log.error("%s", e)
        log.info("stopped")
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
