"""The metrics endpoint against a thousand idle clients, in a daemon short of
file descriptors (RLIMIT_NOFILE 40, so accept runs into EMFILE well before
metrics' own bound): the scrape still works, the daemon keeps its tunnel, and
its log says so once instead of once per failed accept.

    +-------------------------------------------+    veth     +------------------+
    | ns A: tunneld (prlimit --nofile=40)       | 10.77.0.1   | ns B: tunneld    |
    |   metrics 127.0.0.1:9587 <-- 1000 idle    |-------------|  tun 10.9.0.2    |
    |   tun 10.9.0.1   clients, and one scrape  |   10.77.0.2 |                  |
    +-------------------------------------------+             +------------------+
"""

import sys

import pytest

from tests.lab import HELPERS, wait_for
from tests.netns.test_netns_tunnel import site, sites  # noqa: F401 (a fixture)


PORT = 9587
NOFILE = 40  # the daemon holds about 20 itself: EMFILE comes at 20-odd clients, below metrics.MAX_CLIENTS (32)


def scrape(lab, ns: str) -> str:
    return lab.run(ns, sys.executable, "-c",
                   f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', "
                   "timeout=10).read().decode())", timeout=30).stdout


def test_a_thousand_idle_clients_then_a_scrape(lab, sites):
    a, b = sites
    da = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True)
                    + f"metrics: {{listen: '127.0.0.1:{PORT}'}}\n",
                    command=["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "tunneld"]).wait_up()
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False)).wait_up()
    out = lab.tmp / "idle.out"
    idle = lab.spawn(a, sys.executable, str(HELPERS / "idle_clients.py"), "127.0.0.1", str(PORT), "1000", "20",
                     stdout=open(out, "w"))
    wait_for(lambda: "holding" in out.read_text() or idle.poll() is not None, 20, what="1000 idle clients")
    assert "holding 1000" in out.read_text()
    text = scrape(lab, a)  # while the thousand are held and reopened
    assert "# TYPE tunneld_rx_packets_total counter" in text
    evicted = [line for line in text.splitlines() if line.startswith("tunneld_metrics_clients_evicted_total")]
    assert evicted and int(evicted[0].split()[-1]) > 900
    lab.ping(a, "10.9.0.2")  # the tunnel did not notice
    idle.terminate()
    idle.wait(10)
    log = da.log
    assert da.proc.poll() is None and "Traceback" not in log
    starved = [line for line in log.splitlines() if "metrics: accept:" in line]
    assert len(starved) == 1, starved  # EMFILE was reached, and said once
    assert "Too many open files" in starved[0]
    assert len(log.splitlines()) < 200, f"{len(log.splitlines())} log lines"
