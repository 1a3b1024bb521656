"""`tunneld down NAME`: the real stop's last step. A tunnel that stops for a
restart keeps what stops its traffic from leaking (host/kept.py); this removes
it, as root, once no daemon runs.

The systemd unit runs it after every stop of the daemon (ExecStopPost=) with
`--unless-restarting`, and it tells a real stop from a restart by asking
systemd, as the unit itself cannot:

- the unit's job is a restart (`systemctl restart`, `try-restart`, a package
  upgrade's restart): keep;
- the job is a stop (`systemctl stop`, the target's stop, shutdown): remove;
- no job: the daemon exited by itself. $SERVICE_RESULT says how: `success`
  (it was asked to stop outside systemctl): remove; anything else (a crash,
  kill -9, the watchdog, a fatal error): keep, so that nothing leaks while
  Restart= brings it back, or until an admin runs `tunneld down NAME`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tunneld.host import kept as keptmod
from tunneld.host.rtnl import Netlink
from tunneld.service import control

RESTART_JOBS = ("restart", "try-restart", "reload-or-restart", "reload-or-try-restart")


def own_unit() -> str | None:
    """The systemd unit whose cgroup we run in (ExecStopPost= runs in the unit's)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                last = line.rstrip("\n").rsplit("/", 1)[-1]
                if last.endswith(".service"):
                    return last
    except OSError:
        pass
    return None


def job_type(unit: str) -> str | None:
    """The type of the job systemd is running on `unit` ("stop", "restart"), or
    None: no job, or no systemd to ask."""
    try:
        p = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--no-pager", "--full", unit],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in p.stdout.splitlines():
        words = line.split()  # JOB UNIT TYPE STATE
        if len(words) >= 4 and words[1] == unit:
            return words[2]
    return None


def keep_reason(env, job: str | None) -> str | None:
    """Why a stop is not a real one (what is kept stays), or None: remove it."""
    if job in RESTART_JOBS:
        return f"systemd is restarting the service ({job} job)"
    if job == "stop":
        return None
    result = env.get("SERVICE_RESULT")
    if result and result != "success":
        return f"the service failed (SERVICE_RESULT={result}): kept until it runs again"
    return None


def main(name: str, unless_restarting: bool) -> int:
    prog = f"tunneld down {name}"
    if control.running(name):
        print(f"{prog}: the tunnel is running; stop it first (its stop keeps what a restart needs)", file=sys.stderr)
        return 1
    path = control.kept_path(name)
    try:
        kept = keptmod.load(path)
    except ValueError as e:
        print(f"{prog}: {path}: {e}", file=sys.stderr)
        return 1
    if not kept:
        print(f"{prog}: nothing kept")
        return 0
    if unless_restarting:
        unit = own_unit() or f"tunneld@{name}.service"
        why = keep_reason(os.environ, job_type(unit))
        if why:
            print(f"{prog}: {why}: kept {kept.describe()}")
            return 0
    try:
        nl = Netlink()
    except OSError as e:
        print(f"{prog}: no netlink socket: {e.strerror}", file=sys.stderr)
        return 1
    try:
        failed = keptmod.remove(kept, nl)
    finally:
        nl.close()
    for line in failed:
        print(f"{prog}: {line}" + (" (run as root)" if "not permitted" in line else ""), file=sys.stderr)
    if failed:
        return 1
    keptmod.forget(path)
    print(f"{prog}: removed {kept.describe()}")
    return 0
