"""Hooks (tunneld/host/hooks.py): done when the shell exits, whatever it left running
with our pipe; a hook past its time takes its whole process group down; output
logged line by line and bounded. As root, and as a run_as user (a child
process that dropped to nobody runs the same checks)."""

import asyncio
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lab import require, wait_for
from tunneld.host import hooks


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


async def check_background_helper(tmp: Path) -> None:
    """A hook that leaves `sleep 30` holding its stdout: run() returns while the
    helper runs, and what the helper writes later is still logged."""
    pidfile = tmp / "helper.pid"
    try:
        await asyncio.wait_for(hooks.run("up", [f"(sleep 0.3; echo later from the helper; exec sleep 30) & "
                                                f"echo $! > {pidfile}; echo started"], dict(os.environ)), 20)
        assert alive(pids(pidfile)[0]), "run() returned only after the helper was gone"
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "up hook: later from the helper" in [r.getMessage() for r in logging.getLogger("tunneld").handlers[0].records]:
                break
    finally:
        for pid in pids(pidfile) if pidfile.exists() else []:
            if alive(pid):
                os.kill(pid, 9)


async def check_timeout_kills_the_group(tmp: Path) -> None:
    pidfile = tmp / "group.pid"
    try:
        with pytest.raises(hooks.HookError) as e:
            await hooks.run("up", [f"sleep 300 & echo $! > {pidfile}; echo $$ >> {pidfile}; echo waiting; sleep 300"],
                            dict(os.environ), timeout=0.5)
        assert e.value.code == -9 and e.value.output == "killed after 0.5 s"
        wait_for(lambda: not any(alive(p) for p in pids(pidfile)), 5, what="the hook's process group to die")
    finally:
        for pid in pids(pidfile) if pidfile.exists() else []:
            if alive(pid):
                os.kill(pid, 9)


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def records():
    log = logging.getLogger("tunneld")
    handler = Records()
    old = log.handlers[:], log.level
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    yield handler.records
    log.handlers[:], level = old
    log.setLevel(level)


async def test_a_helper_left_holding_stdout_does_not_hold_up_run(tmp_path, records):
    await check_background_helper(tmp_path)
    lines = [r.getMessage() for r in records]
    assert lines[:2] == ["up hook: started", f"up hook {records[1].args[1]!r} done"]
    assert "up hook: later from the helper" in lines


async def test_a_hook_past_its_time_loses_its_whole_process_group(tmp_path, records):
    await check_timeout_kills_the_group(tmp_path)
    assert [r.getMessage() for r in records] == ["up hook: waiting"]


async def test_output_is_logged_by_line_and_cut(tmp_path, records):
    with pytest.raises(hooks.HookError) as e:
        await hooks.run("down", ["echo one; echo two >&2; head -c 3000000 /dev/zero | tr '\\0' a; echo; "
                                 "echo the reason; exit 3"], dict(os.environ))
    assert e.value.code == 3 and e.value.output == "the reason"
    lines = [r.getMessage() for r in records]
    assert lines[:2] == ["down hook: one", "down hook: two"] and lines[-1] == "down hook: the reason"
    assert lines[2] == "down hook: " + "a" * hooks.MAX_LINE + f" ... ({3000000 - hooks.MAX_LINE} more bytes cut)"
    assert len(lines) == 4


@pytest.mark.parametrize("error, words", [(PermissionError(13, "Permission denied"), "Permission denied"),
                                          (ValueError("embedded null byte"), "embedded null byte")])
async def test_a_shell_that_cannot_start_is_a_hook_error(monkeypatch, error, words):
    async def refuse(*args, **kw):
        raise error
    monkeypatch.setattr(asyncio, "create_subprocess_shell", refuse)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(hooks.HookError) as e:
        await hooks.run("up", ["true"], dict(os.environ))
    assert e.value.code == 127 and e.value.output == f"cannot start /bin/sh: {words}"
    assert len(os.listdir("/proc/self/fd")) == before  # both ends of the pipe closed


AS_USER = """
import asyncio, logging, os, sys, uvloop
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.host import test_hooks as t  # everything imported while root may still read it
log = logging.getLogger("tunneld"); log.handlers[:] = [t.Records()]; log.setLevel(logging.INFO)
os.setgroups([]); os.setresgid({gid}, {gid}, {gid}); os.setresuid({uid}, {uid}, {uid})
async def main():
    await t.check_background_helper(Path({tmp!r}))
    await t.check_timeout_kills_the_group(Path({tmp!r}))
    print("uid", os.getuid(), "ok")
uvloop.run(main())
"""


def test_the_same_as_a_run_as_user():
    """Down hooks run after the privilege drop, as the run_as user."""
    require(os.geteuid() == 0, "this test needs root (to become nobody)")
    nobody = pwd.getpwnam("nobody")
    tmp = tempfile.mkdtemp(prefix="tunneld-hooks-")
    try:
        os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
        root = str(Path(__file__).resolve().parents[2])
        p = subprocess.run([sys.executable, "-c", AS_USER.format(root=root, uid=nobody.pw_uid, gid=nobody.pw_gid,
                                                                 tmp=tmp)],
                           capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert p.returncode == 0 and p.stdout == f"uid {nobody.pw_uid} ok\n", p.stdout + p.stderr


async def test_event_hooks_run_one_at_a_time_in_order_and_a_failure_does_not_stop_the_next(tmp_path, records):
    out = tmp_path / "order"
    runner = hooks.EventHooks()
    env = hooks.environment("tun0", "tun", 1420, [], "10.77.0.2:55555", TUNNELD_PEER="10.77.0.9:55555",
                            TUNNELD_EVENT="peer_down")
    assert env["TUNNELD_PEER"] == "10.77.0.9:55555"  # an event's own value wins
    runner.add("peer_down", [f"sleep 0.3; echo down $TUNNELD_PEER >> {out}", "exit 4"], env)
    runner.add("peer_up", [f"echo up >> {out}"], env)
    runner.add("endpoint_changed", [], env)  # no commands: nothing queued
    assert len(runner.pending) == 2
    await asyncio.sleep(0.5)
    assert runner._task is None and not out.exists()  # held while the daemon starts
    runner.release()
    await asyncio.wait_for(runner._task, 10)
    assert out.read_text() == "down 10.77.0.9:55555\nup\n"  # the slow one first: never side by side
    assert "peer_down hook 'exit 4' exited with 4: (no output)" in [r.getMessage() for r in records]
    for _ in range(hooks.MAX_PENDING + 3):  # bounded: what does not fit is logged and skipped
        runner.add("peer_up", ["sleep 5"], env)
    assert len(runner.pending) == hooks.MAX_PENDING
    runner.close()
    assert runner.pending == type(runner.pending)()
