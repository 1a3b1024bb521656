"""The peer's comings and goings as the core reports them (PeerUp, PeerDown,
EndpointChanged), two WireGuard cores on a fake clock: up with the first
authenticated message, down after the peer timeout of silence or a lost
stream, up again; the endpoint's moves, old and new."""

from tunneld.core.events import EndpointChanged, PeerDown, PeerUp
from tunneld.core.session import PlaintextSession
from tunneld.core.tunnel import PEER_TIMEOUT, Tunnel
from tests.pairs.test_wg_session import PING, PONG, World

A, B = ("10.77.0.1", 51820), ("10.77.0.2", 51820)


def watched(**kw) -> World:
    """A World whose relays keep every event they take from the cores."""
    w = World(**kw)
    for site in (w.a, w.b):
        site.events = []
        site.relay.on_event = site.events.append
    return w


def taken(site, *kinds):
    """The events the relay took from the core since the last call, of these kinds."""
    site.relay.take_events()
    events, site.events[:] = list(site.events), []
    return [e for e in events if isinstance(e, kinds)]


def test_up_with_the_first_authenticated_message_down_after_the_timeout_and_up_again():
    w = watched(compatible=False)
    w.a.send(PING)  # a initiates; b is up when the initiation authenticates, a when the response does
    w.run(1)
    assert [e.peer for e in taken(w.b, PeerUp)] == [A]
    assert [e.peer for e in taken(w.a, PeerUp)] == [B]
    assert w.a.core.peer_state == "up"
    w.b.send(PONG)
    w.run(1)
    start = w.clock.now
    w.drop = lambda message, src, dst: True  # b falls silent (a's own retries go nowhere)
    w.run(PEER_TIMEOUT - 3)
    assert taken(w.a, PeerDown) == []  # the last message from b came 1 s before: not yet
    w.run(5)
    down = taken(w.a, PeerDown)
    assert [(e.peer, e.why) for e in down] == [(B, "nothing from it for 180 s")]
    assert w.a.core.peer_state == "down" and w.clock.now - start < PEER_TIMEOUT + 3
    w.drop = lambda message, src, dst: False
    w.a.send(PING)  # the keypair expired: a new handshake, and b is heard again
    w.run(10)
    assert [e.peer for e in taken(w.a, PeerUp)] == [B]
    assert w.a.core.peer_state == "up"


def test_keepalives_keep_the_peer_up_and_a_shorter_timeout_applies():
    w = watched(compatible=False, keepalive=5)
    for s in (w.a, w.b):
        s.core.set_peer_timeout(10)
    w.a.send(PING)
    w.run(60)  # persistent keepalives every 5 s both ways: never 10 s of silence
    assert taken(w.a, PeerDown) == [] and w.a.core.peer_up
    w.drop = lambda message, src, dst: src == B
    w.run(11)
    assert [e.why for e in taken(w.a, PeerDown)] == ["nothing from it for 10 s"]


def test_the_endpoint_moves_only_from_one_address_to_another():
    w = watched(compatible=False)
    w.b.send(PONG)  # b has no endpoint: nothing goes, nothing moves
    w.a.send(PING)
    w.run(1)
    assert taken(w.b, EndpointChanged) == []  # its first address comes with PeerUp, not as a move
    w.b.core.set_endpoint(("10.77.0.9", 51820), pinned=False, why="resolved")
    w.b.core.set_endpoint(("10.77.0.9", 51820), pinned=False, why="resolved")  # the same: no move
    assert [(e.old, e.new, e.why) for e in taken(w.b, EndpointChanged)] == [(A, ("10.77.0.9", 51820), "resolved")]
    w.a.send(PING)  # a's next message brings b back to where a really is: roamed
    w.run(1)
    assert [(e.old, e.new, e.why) for e in taken(w.b, EndpointChanged)] == [(("10.77.0.9", 51820), A, "roamed")]


def test_a_lost_stream_is_the_peer_down_at_once():
    core = Tunnel(PlaintextSession(), "tun", 1420, stream=True)
    core.transport_down()  # never up: nothing to say
    core.transport_up(("10.77.0.1", 40000))
    assert core.peer_state == "not heard yet"
    core.from_network([PING], ("10.77.0.1", 40000), 5.0)
    core.transport_down()
    events = list(iter(core.next_event, None))
    assert [type(e) for e in events if isinstance(e, (PeerUp, PeerDown))] == [PeerUp, PeerDown]
    assert [e.why for e in events if isinstance(e, PeerDown)] == ["the TCP connection was lost"]
    assert core.get_timer() is None  # down: no silence deadline armed


def test_nothing_accepted_nothing_up():
    core = Tunnel(PlaintextSession(), "tun", 1420, endpoint=A, pinned=True)
    core.from_network([PING], ("10.77.0.66", 51820), 1.0)  # a stranger to a pinned tunnel: dropped
    assert [e for e in iter(core.next_event, None) if isinstance(e, PeerUp)] == []
    assert core.peer_state == "not heard yet" and core.get_timer() is None
