"""Hooks, like OpenVPN's --up/--down and tinc's host-up/host-down: shell commands
with the tunnel described in the environment. up and down run in the daemon's
start and stop; the event hooks (peer_up, peer_down, endpoint_changed) run one
at a time, in order, beside the packet path (EventHooks)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal

log = logging.getLogger("tunneld")
HOOK_TIMEOUT = 60.0  # s a hook may run before it counts as failed (and its process group is killed)
KILL_WAIT = 5.0  # s to wait for the shell after SIGKILL to its group
MAX_LINE = 1024  # bytes of one output line logged; the rest of a longer line is cut
READ_CHUNK = 16384  # bytes per read of a hook's output
READS_PER_CALLBACK = 16  # reads per loop callback: then the loop serves the others


class HookError(Exception):
    def __init__(self, command: str, code: int, output: str):
        self.command, self.code, self.output = command, code, output
        super().__init__(f"hook {command!r} exited with {code}")


MAX_PENDING = 16  # event hooks waiting behind a running one; beyond, new events are logged and skipped


def environment(name: str, mode: str, mtu: int, addresses, peer, **extra: str) -> dict[str, str]:
    """The daemon's environment and TUNNELD_*; `extra`: more TUNNELD_* for an event hook."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(TUNNELD_INTERFACE=name, TUNNELD_MODE=mode, TUNNELD_MTU=str(mtu),
               TUNNELD_ADDRESSES=" ".join(str(a) for a in addresses), TUNNELD_PEER=peer or "")
    env.update(extra)  # an event's own, TUNNELD_PEER included (peer_down: where it was)
    return env


class EventHooks:
    """Event hooks run one at a time, in the order of their events, in a task of
    their own: the packet path never waits for them. A failing one is logged and
    the next runs. At most MAX_PENDING wait; close() ends the running one (and
    what it started) and drops the rest. None runs before release(): the daemon
    releases them once started (after the up hook and the privilege drop)."""

    def __init__(self, timeout: float = HOOK_TIMEOUT):
        self.timeout = timeout
        self.pending: collections.deque = collections.deque()
        self._task: asyncio.Task | None = None
        self.held = True  # until release(): events during start wait (the up hook, the privilege drop)

    def release(self) -> None:
        """Start is done: run what waited, and from now on each as it comes."""
        self.held = False
        if self.pending and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event hooks")

    def add(self, kind: str, commands, env: dict[str, str]) -> None:
        if not commands:
            return
        if len(self.pending) >= MAX_PENDING:
            log.warning("%s hooks skipped: %d hooks still wait for the one running", kind, len(self.pending))
            return
        self.pending.append((kind, commands, env))
        if self._task is None and not self.held:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event hooks")

    async def _run(self) -> None:
        try:
            while self.pending:
                kind, commands, env = self.pending.popleft()
                try:
                    await run(kind, commands, env, self.timeout)
                except HookError as e:
                    log.warning("%s hook %r exited with %d: %s", kind, e.command, e.code, e.output or "(no output)")
        finally:
            self._task = None

    def close(self) -> None:
        self.pending.clear()
        if self._task is not None:
            self._task.cancel()


async def run(kind: str, commands, env: dict[str, str], timeout: float = HOOK_TIMEOUT) -> None:
    """Run each command in order; raise HookError on the first that fails."""
    for command in commands:
        await _run_one(kind, command, env, timeout)


async def _run_one(kind: str, command: str, env: dict[str, str], timeout: float) -> None:
    """One hook in a session of its own (so its process group can be killed),
    its stdout and stderr on a pipe we read as it writes. Done when the shell
    exits: not at the pipe's EOF, which a helper it left running may hold for
    days; what that helper writes later is still logged (Output)."""
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    output = Output(loop, rfd, f"{kind} hook")
    try:
        proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.DEVNULL, stdout=wfd,
                                                     stderr=wfd, env=env, start_new_session=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the command (config refuses it first)
        output.close()
        raise HookError(command, 127, f"cannot start /bin/sh: {getattr(e, 'strerror', None) or e}") from None
    finally:
        os.close(wfd)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except BaseException as e:  # the timeout, or the daemon giving up on start-up: take the whole group down
        _kill_group(proc.pid)
        try:
            await asyncio.wait_for(proc.wait(), KILL_WAIT)
        except asyncio.TimeoutError:
            log.warning("%s hook %r: its shell, pid %d, outlived SIGKILL for %g s", kind, command, proc.pid, KILL_WAIT)
        output.finish()
        if not isinstance(e, asyncio.TimeoutError):
            raise
        raise HookError(command, -signal.SIGKILL, f"killed after {timeout:g} s") from None
    output.finish()
    if code != 0:
        raise HookError(command, code, output.last)
    log.info("%s hook %r done", kind, command)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # every process of the group is gone already
    except PermissionError as e:  # a member changed user: what we may kill is dead
        log.warning("hook process group %d: %s", pgid, e.strerror)


class Output:
    """A hook's output, logged line by line as it comes, each line cut at
    MAX_LINE bytes; `last` keeps the last line for the error message. After
    the shell exits, `finish()` reads what is left and, if a process it left
    behind still holds the pipe, keeps logging it until that process lets go:
    the pipe is never closed under a helper (its next write would kill it
    with SIGPIPE), and start-up never waits for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, prefix: str):
        self.loop, self.fd, self.prefix = loop, fd, prefix
        self.last = ""
        self._line = bytearray()
        self._cut = 0  # bytes dropped from the current line past MAX_LINE
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.readable)

    def readable(self) -> None:
        for _ in range(READS_PER_CALLBACK):  # bounded: a chatty helper cannot hold the loop
            try:
                data = os.read(self.fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("%s: reading its output: %s", self.prefix, e.strerror)
                self.close()
                return
            if not data:
                self._flush()
                self.close()
                return
            self._take(data)

    def finish(self) -> None:
        """The shell exited: log what it wrote (all of it is in the pipe by now)."""
        if self.fd >= 0:
            self.readable()
        self._flush()

    def _take(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for i, part in enumerate(lines):
            room = MAX_LINE - len(self._line)
            self._line += part[:room]
            self._cut += max(0, len(part) - room)
            if i < len(lines) - 1:
                self._flush()

    def _flush(self) -> None:
        if not self._line and not self._cut:
            return
        text = self._line.decode(errors="replace").rstrip()
        if self._cut:
            text += f" ... ({self._cut} more bytes cut)"
        self._line.clear()
        self._cut = 0
        if text:
            self.last = text
            log.info("%s: %s", self.prefix, text)

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
