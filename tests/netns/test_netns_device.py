"""The Device contract on a real TUN and TAP device, inside a namespace
(tests/helpers/device_contract.py runs there; this test reads its verdict).

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
