"""A lab of network namespaces for one test: unique names, and everything it
made (processes by pid, namespaces and with them their links) removed at the
end even when the test fails.

With CI=true a missing prerequisite (root, /dev/net/tun, a peer program) fails
the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() == "true"
HELPERS = Path(__file__).parent / "helpers"


def require(ok: bool, why: str) -> None:
    if not ok:
        if CI:
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)


def require_netns(*programs: str) -> None:
    require(os.geteuid() == 0, "this test needs root (network namespaces, TUN/TAP)")
    require(os.path.exists("/dev/net/tun"), "this test needs /dev/net/tun")
    for p in ("ip", *programs):
        require(shutil.which(p) is not None, f"this test needs the program {p!r} (scripts/test installs it)")


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """One tunneld process in a namespace; its stderr goes to a file."""

    def __init__(self, lab: "Lab", ns: str, config: Path, log: Path, env: dict | None = None,
                 command: list[str] | None = None):
        self.lab, self.ns, self.config, self.log_path = lab, ns, config, log
        cmd = command or [sys.executable, "-m", "tunneld"]
        self.proc = lab.spawn(ns, *cmd, "--config", str(config), stderr=log, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self, timeout: float = 15) -> "Daemon":
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"tunneld exited with {self.proc.returncode}:\n{self.log}")
            return ": up, " in self.log
        wait_for(ready, timeout, what=f"tunneld in {self.ns} to come up")
        return self

    def wait_log(self, text: str, timeout: float = 15) -> None:
        try:
            wait_for(lambda: text in self.log, timeout, what=f"{text!r} in the log of tunneld in {self.ns}")
        except AssertionError as e:
            raise AssertionError(f"{e}; the log now:\n{self.log}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


class Lab:
    def __init__(self, tmp: Path):
        self.tag = secrets.token_hex(3)
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._files: list = []
        self._n = 0
        self.unmounts: list[Path] = []
        self.containers: list = []

    def name(self, prefix: str) -> str:
        """A name unique to this run, short enough for an interface (15 bytes)."""
        self._n += 1
        return f"{prefix}{self.tag}{self._n}"[:15]

    def ns(self) -> str:
        name = self.name("tdns")
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def run(self, ns: str | None, *cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(full)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(None, "ip", "-n", ns, *args, check=check)

    def spawn(self, ns: str | None, *cmd: str, stderr: Path | None = None, stdout=subprocess.DEVNULL,
              env: dict | None = None) -> subprocess.Popen:
        full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
        err = open(stderr, "wb") if stderr else subprocess.DEVNULL
        if stderr:
            self._files.append(err)
        p = subprocess.Popen(full, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL,
                             env={**os.environ, "RUNTIME_DIRECTORY": str(self.tmp / "run"), **(env or {})})
        self.procs.append(p)
        return p

    def veth(self, ns1: str, addr1: str | None, ns2: str, addr2: str | None, mtu: int = 1500) -> tuple[str, str]:
        """A veth pair from ns1 to ns2, addressed and up."""
        a, b = self.name("tdv"), self.name("tdv")
        subprocess.run(["ip", "link", "add", a, "mtu", str(mtu), "netns", ns1, "type", "veth",
                        "peer", "name", b, "mtu", str(mtu), "netns", ns2], check=True)
        for ns, dev, addr in ((ns1, a, addr1), (ns2, b, addr2)):
            if addr:
                self.ip(ns, "addr", "add", addr, "dev", dev)
            self.ip(ns, "link", "set", dev, "up")
        return a, b

    def config(self, text: str) -> Path:
        path = self.tmp / f"{self.name('cfg')}.yaml"
        path.write_text(text)
        return path

    def keypair(self) -> tuple[Path, str]:
        """A private key file (mode 600) and its base64 public key."""
        import base64
        import os as _os

        from tunneld.wg.primitives import generate_private, public_of
        private = generate_private(_os.urandom(32))
        path = self.tmp / f"{self.name('key')}.key"
        path.touch(mode=0o600)
        path.write_text(base64.b64encode(private).decode() + "\n")
        return path, base64.b64encode(public_of(private)).decode()

    def psk(self) -> Path:
        import base64
        import os as _os
        path = self.tmp / f"{self.name('psk')}.psk"
        path.touch(mode=0o600)
        path.write_text(base64.b64encode(_os.urandom(32)).decode() + "\n")
        return path

    def capture(self, ns: str, dev: str, bpf: str) -> "Capture":
        """tcpdump in `ns` on `dev`, writing a pcap file; stop() returns the UDP payloads seen."""
        return Capture(self, ns, dev, bpf)

    def daemon(self, ns: str, text: str, env: dict | None = None, command: list[str] | None = None) -> Daemon:
        cfg = self.config(text)
        return Daemon(self, ns, cfg, cfg.with_suffix(".log"), env=env, command=command)

    def ping(self, ns: str, addr: str, count: int = 3, check: bool = True, size: int | None = None) -> subprocess.CompletedProcess:
        cmd = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", addr]
        if size is not None:
            cmd[1:1] = ["-s", str(size), "-M", "do"]
        return self.run(ns, *cmd, check=check)

    def wait_ping(self, ns: str, addr: str, timeout: float = 20) -> None:
        """Until one ping gets through: an encrypted tunnel may still be retrying a
        handshake whose first initiation left before the peer listened (5 s apart)."""
        wait_for(lambda: self.ping(ns, addr, count=1, check=False).returncode == 0, timeout,
                 what=f"a ping from {ns} to {addr}")

    def transfer(self, src_ns: str, dst_ns: str, dst_addr: str, size: int = 20_000_000, port: int = 5001) -> tuple[str, str]:
        """Send `size` pseudo-random bytes over TCP through the tunnel; (sent sha256, received sha256)."""
        return self._pump("xfer.py", src_ns, dst_ns, ("sink", "::", str(port)), ("source", dst_addr, str(port), str(size)), size)

    def udp_transfer(self, src_ns: str, dst_ns: str, dst_addr: str, size: int = 20_000_000,
                     port: int = 5002) -> tuple[str, str]:
        """Send `size` bytes over UDP with GSO through the tunnel (tests/helpers/udpxfer.py,
        which resends what got lost); (sent sha256, received sha256)."""
        return self._pump("udpxfer.py", src_ns, dst_ns, ("sink", dst_addr, str(port), str(size)),
                          ("source", dst_addr, str(port), str(size)), size)

    def _pump(self, helper: str, src_ns: str, dst_ns: str, sink_args, source_args, size: int) -> tuple[str, str]:
        out = self.tmp / f"{self.name('sink')}.out"
        sink = self.spawn(dst_ns, sys.executable, str(HELPERS / helper), *sink_args, stdout=open(out, "w"))
        wait_for(lambda: "listening" in out.read_text(), 10, what=f"the {helper} sink to listen")
        sent = self.run(src_ns, sys.executable, str(HELPERS / helper), *source_args, timeout=180).stdout.split()
        sink.wait(60)
        got = out.read_text().split()
        assert got[-2] == str(size), f"received {got[-2]} of {size} bytes"
        return sent[0], got[-1]

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self._files:
            f.close()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Capture:
    def __init__(self, lab: Lab, ns: str, dev: str, bpf: str):
        self.path = lab.tmp / f"{lab.name('cap')}.pcap"
        self.log = lab.tmp / f"{lab.name('cap')}.log"
        self.proc = lab.spawn(ns, "tcpdump", "-i", dev, "-n", "-U", "-s", "0", "-w", str(self.path), bpf, stderr=self.log)
        wait_for(lambda: "listening on" in self.log.read_text(), 10, what="tcpdump to start")

    def stop(self) -> list[tuple[str, int, str, int, bytes]]:
        """(src ip, src port, dst ip, dst port, payload) of every IPv4 UDP packet captured."""
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        return read_pcap_udp(self.path)


def read_pcap_udp(path: Path) -> list[tuple[str, int, str, int, bytes]]:
    import socket as _socket
    import struct as _struct
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic, _, _, _, _, _, linktype = _struct.unpack("<IHHiIII", data[:24])
    assert magic == 0xA1B2C3D4, "expected a little-endian microsecond pcap"
    link = {1: 14, 113: 16, 276: 20}[linktype]  # Ethernet, Linux cooked v1, v2
    out, pos = [], 24
    while pos + 16 <= len(data):
        _, _, caplen, _ = _struct.unpack("<IIII", data[pos:pos + 16])
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        ip = frame[link:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport, length = _struct.unpack("!HHH", ip[ihl:ihl + 6])
        out.append((_socket.inet_ntoa(ip[12:16]), sport, _socket.inet_ntoa(ip[16:20]), dport,
                    ip[ihl + 8:ihl + length]))
    return out
