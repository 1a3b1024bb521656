"""The Device contract on a real TUN and TAP device, with and without offload
(IFF_VNET_HDR), inside a namespace: the suite of tests/helpers/device_contract.py,
which the in-memory device passes in tests/host/test_contracts.py, runs there as
a script; this test reads its verdict (the first broken clause, or "contract ok").

    ns X:  [kernel stack 10.66.0.1/24] <-> tun/tap "dev" <-> TunTap fd (the checks)
"""

import sys

import pytest

from tests.lab import HELPERS


@pytest.mark.parametrize("offload", ["", "offload"])
@pytest.mark.parametrize("mode", ["tun", "tap"])
def test_tuntap_device_contract(lab, mode, offload):
    ns = lab.ns()
    p = lab.run(ns, sys.executable, str(HELPERS / "device_contract.py"), mode, lab.name("tdd"),
                *([offload] if offload else []), check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith("contract ok"), p.stdout
