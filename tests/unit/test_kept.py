"""What a restart keeps (host/kept.py, netconf.LinkSetup) and when `tunneld down`
removes it (service/down.py): against a kernel made of sets, no netlink."""

import errno
import ipaddress
import socket
from types import SimpleNamespace

import json

import pytest

from tunneld.host import kept as keptmod
from tunneld.host import routing
from tunneld.host.netconf import LinkSetup
from tunneld.host.rtnl import RT_TABLE_MAIN, Link, NetlinkError, Route, Rule
from tunneld.service import down

V4, V6 = ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")
LAN = ipaddress.ip_network("192.168.7.0/24")
ADDR = ipaddress.ip_interface("10.9.0.1/24")
INDEX = socket.if_nametoindex("lo")  # LinkSetup looks its device up by name


class Nl:
    """Just enough of rtnetlink (rtnl.Netlink's calls): one link, and sets of
    addresses, routes and rules; removing what is not there is ENOENT."""

    def __init__(self):
        self.up, self.mtu = False, 1500
        self.addrs, self.routes_, self.rules_ = set(), set(), []
        self.calls: list[str] = []

    def _gone(self, what):
        raise NetlinkError(errno.ENOENT, what)

    def link(self, index):
        return Link(index, 1 if self.up else 0, self.mtu, None, None)

    def set_link(self, index, what, up=None, mtu=None, **_):
        self.calls.append(what)
        self.up = self.up if up is None else up
        self.mtu = self.mtu if mtu is None else mtu

    def addresses(self, index):
        return set(self.addrs)

    def add_address(self, index, a):
        self.addrs.add(a)

    def del_address(self, index, a):
        self.addrs.remove(a) if a in self.addrs else self._gone(str(a))

    def routes(self, index):
        return set(self.routes_)

    def add_route(self, index, r):
        self.routes_.add(r)

    def del_route(self, index, r):
        self.routes_.remove(r) if r in self.routes_ else self._gone(str(r))

    def rules(self):
        return list(self.rules_)

    def add_rule(self, r):
        self.rules_.append(r)

    def del_rule(self, r):
        self.rules_.remove(r) if r in self.rules_ else self._gone(str(r))

    def close(self):
        pass


def spec(routes=(V4, V6), addresses=(ADDR,)):
    return SimpleNamespace(mtu=1420, mac=None, bridge=None, addresses=addresses, routes=routes)


def full(nl, path=None, persistent=False, routes=(V4, V6)) -> LinkSetup:
    link = LinkSetup("lo", persistent, nl=nl, kept_path=path)
    link.apply(spec(routes), routing.FULL_TUNNEL_MARK)
    return link


GUARDS = set(routing.guards((V4, V6), routing.FULL_TUNNEL_MARK))
RULES = routing.rules((V4, V6), routing.FULL_TUNNEL_MARK)


def test_a_full_tunnel_puts_its_guards_beneath_and_a_restart_keeps_them_and_the_rules(tmp_path):
    nl, path = Nl(), str(tmp_path / "t.kept")
    link = full(nl, path)
    assert GUARDS <= nl.routes_ and Route(V4, routing.FULL_TUNNEL_MARK) in nl.routes_
    assert set(nl.rules_) == set(RULES)
    k = keptmod.load(path)  # written at start: a kill -9 leaves it true
    assert set(k.rules) == set(RULES) and set(k.routes) == GUARDS and not k.addresses
    link.leave()
    assert GUARDS <= nl.routes_ and set(nl.rules_) == set(RULES)
    assert keptmod.load(path) == k


def test_the_next_start_adopts_what_was_kept_and_a_real_stop_then_removes_it(tmp_path):
    nl, path = Nl(), str(tmp_path / "t.kept")
    full(nl, path).leave()
    nl.routes_ -= {Route(V4, routing.FULL_TUNNEL_MARK), Route(V6, routing.FULL_TUNNEL_MARK)}  # the device went
    link = full(nl, path)  # no "File exists": what is there is adopted
    assert nl.rules_.count(RULES[0]) == 1
    assert GUARDS | set(RULES) <= link.adopted
    link.undo()
    assert nl.rules_ == [] and not GUARDS & nl.routes_
    assert keptmod.load(path) is None


def test_rules_and_guards_found_without_the_file_are_ours_too(tmp_path):
    """The file is gone (an older tunneld was killed, /run was cleaned): our mark's
    rules and guards are still recognised, and a real stop removes them."""
    nl, path = Nl(), tmp_path / "t.kept"
    full(nl, str(path)).leave()
    path.unlink()
    full(nl, str(path)).undo()
    assert nl.rules_ == [] and not GUARDS & nl.routes_


def test_a_failed_start_leaves_what_a_predecessor_kept_but_not_what_it_added_itself(tmp_path):
    nl, path = Nl(), str(tmp_path / "t.kept")
    full(nl, path, routes=(V4,)).leave()  # the predecessor: IPv4 only
    link = full(nl, path)  # this start adds IPv6, then fails
    link.undo(spare=link.spare_at_failed_start())
    v4_rules = set(routing.rules((V4,), routing.FULL_TUNNEL_MARK))
    v4_guard = set(routing.guards((V4,), routing.FULL_TUNNEL_MARK))
    assert set(nl.rules_) == v4_rules and {r for r in nl.routes_ if r.unreachable} == v4_guard
    assert set(keptmod.load(path).rules) == v4_rules
    # and a first start that fails leaves nothing
    nl2, path2 = Nl(), str(tmp_path / "u.kept")
    link = full(nl2, path2)
    link.undo(spare=link.spare_at_failed_start())
    assert nl2.rules_ == [] and not GUARDS & nl2.routes_ and keptmod.load(path2) is None


def test_a_start_removes_what_was_kept_for_a_config_that_no_longer_wants_it(tmp_path):
    nl, path = Nl(), str(tmp_path / "t.kept")
    full(nl, path).leave()
    link = LinkSetup("lo", False, nl=nl, kept_path=path)
    link.apply(spec(routes=(LAN,)), None)  # no full tunnel any more
    assert nl.rules_ == [] and not GUARDS & nl.routes_
    assert keptmod.load(path) is None


def test_a_persistent_device_keeps_its_addresses_routes_and_link_for_a_restart(tmp_path):
    nl, path = Nl(), str(tmp_path / "t.kept")
    link = LinkSetup("lo", True, nl=nl, kept_path=path)
    link.apply(spec(routes=(LAN,)), None)
    assert nl.up and nl.mtu == 1420 and ADDR in nl.addrs and Route(LAN) in nl.routes_
    link.leave()
    k = keptmod.load(path)
    assert k.persistent and k.addresses == (ADDR,) and k.routes == (Route(LAN),) and k.brought_up
    assert ("set MTU 1420", {"mtu": 1500}) in k.link_undo
    link = LinkSetup("lo", True, nl=nl, kept_path=path)  # the restart: nothing to add, all adopted
    link.apply(spec(routes=(LAN,)), None)
    link.undo()  # the real stop: as we found it
    assert not nl.addrs and not nl.routes_ and not nl.up and nl.mtu == 1500


def test_the_file_round_trips_and_refuses_what_it_is_not(tmp_path):
    k = keptmod.Kept("tun0", True, tuple(RULES), tuple(sorted(GUARDS, key=str)) + (Route(LAN),), (ADDR,), True,
                     (("set MAC address 02:00:00:00:00:01", {"mac": bytes.fromhex("020000000009")}),
                      ("set MTU 1420", {"mtu": 1500})))
    assert keptmod.loads(keptmod.dumps(k)) == k
    path = str(tmp_path / "x.kept")
    keptmod.save(path, k)
    assert keptmod.load(path) == k
    keptmod.save(path, keptmod.Kept("tun0"))  # nothing kept: no file
    assert keptmod.load(path) is None
    for text in ("{", "[]", '{"device": "tun0"}'):
        with pytest.raises(ValueError, match="not a tunneld state file"):
            keptmod.loads(text)
    # link changes the run_as user could have written: anything but link_body's keywords and types is refused
    good = json.loads(keptmod.dumps(k))
    for bad in ({"colour": 1}, {"mtu": "1500"}, {"mtu": -1}, {"up": 1}, {"mac": "0200"}, {"mac": "zz"}, {"master": True}):
        text = json.dumps({**good, "link_undo": [["set it", bad]]})
        with pytest.raises(ValueError, match="not a tunneld state file"):
            keptmod.loads(text)


def test_remove_touches_only_full_tunnel_rules_and_our_guards_whatever_the_file_says():
    nl = Nl()
    foreign_rule = Rule(4, RT_TABLE_MAIN, fwmark=7)  # not one of the two shapes
    foreign_route = Route(V4, RT_TABLE_MAIN, unreachable=True, metric=5)
    nl.rules_ = [*RULES, foreign_rule]
    nl.routes_ = {*GUARDS, foreign_route}
    # a persistent device that is not a TUN/TAP one (lo): its addresses are left alone
    k = keptmod.Kept("lo", True, (*RULES, foreign_rule), (*GUARDS, foreign_route, Route(LAN)), (ADDR,))
    nl.addrs = {ADDR}
    lines = keptmod.remove(k, nl)
    assert nl.rules_ == [foreign_rule] and nl.routes_ == {foreign_route} and nl.addrs == {ADDR}
    assert any("left alone" in line and "fwmark 0x7" in line for line in lines)
    assert any("lo: not a TUN/TAP device" in line for line in lines)
    assert keptmod.remove(k, nl) == lines  # a second time: already gone is fine


@pytest.mark.parametrize("job, result, keep", [
    ("restart", "success", True),        # systemctl restart
    ("try-restart", None, True),
    ("stop", "success", False),          # systemctl stop, shutdown
    ("stop", "timeout", False),          # a stop that had to kill: still a stop
    (None, "success", False),            # it exited by itself, cleanly
    (None, "signal", True),              # kill -9: Restart= brings it back
    (None, "exit-code", True),           # a fatal error
    (None, "watchdog", True),
    (None, None, False),                 # no systemd at all
])
def test_what_systemd_says_decides_between_a_real_stop_and_a_restart(job, result, keep):
    env = {} if result is None else {"SERVICE_RESULT": result}
    assert (down.keep_reason(env, job) is not None) == keep


def test_a_removal_that_fails_stays_in_the_record(tmp_path):
    """A real stop that cannot remove a rule (EPERM) keeps it in the file, so
    that `tunneld down` can try again; what went is forgotten."""
    nl, path = Nl(), str(tmp_path / "t.kept")
    link = full(nl, path)
    stuck = RULES[0]
    removed = nl.del_rule

    def del_rule(r):
        if r == stuck:
            raise NetlinkError(errno.EPERM, "remove rule")
        removed(r)
    nl.del_rule = del_rule
    link.undo()
    k = keptmod.load(path)
    assert k is not None and k.rules == (stuck,) and not k.routes
    assert nl.rules_ == [stuck] and not GUARDS & nl.routes_
