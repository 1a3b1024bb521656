"""up/down hooks, like OpenVPN's --up/--down: shell commands with the tunnel
described in the environment."""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger("tunneld")
HOOK_TIMEOUT = 60.0  # s a hook may run before it counts as failed


class HookError(Exception):
    def __init__(self, command: str, code: int, output: str):
        self.command, self.code, self.output = command, code, output
        super().__init__(f"hook {command!r} exited with {code}")


def environment(name: str, mode: str, mtu: int, addresses, peer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(TUNNELD_INTERFACE=name, TUNNELD_MODE=mode, TUNNELD_MTU=str(mtu),
               TUNNELD_ADDRESSES=" ".join(str(a) for a in addresses), TUNNELD_PEER=peer or "")
    return env


async def run(kind: str, commands, env: dict[str, str]) -> None:
    """Run each command in order; raise HookError on the first that fails."""
    for command in commands:
        proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT, env=env)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise HookError(command, -9, f"killed after {HOOK_TIMEOUT:g} s") from None
        text = out.decode(errors="replace").strip()
        for line in text.splitlines():
            log.info("%s hook: %s", kind, line)
        if proc.returncode != 0:
            raise HookError(command, proc.returncode, text)
        log.info("%s hook %r done", kind, command)
