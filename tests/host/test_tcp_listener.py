"""The encrypted TCP listener on loopback (no root): what a candidate may send,
who makes room for whom, and how much one callback takes from any connection.

A fake session stands in for WireGuard's: an opening starting "\\x01auth"
authenticates (the relay would call peer_moved), one starting "\\x01cookie" or a
later "\\x03again" is answered (a cookie reply would be), anything else is
neither. Sources are 127.0.0.x addresses, all local.
"""

import asyncio
import socket

import pytest

from tunneld.conn.candidates import CANDIDATE_MESSAGES, CANDIDATES_MAX, Opening
from tunneld.config import Endpoint, TransportConfig
from tunneld.core.counters import Counters
from tunneld.conn.framing import encode
from tunneld.packet.limits import TCP_RECV_CHUNK
from tunneld.conn.tcp import READ_BYTES, READ_FRAMES, TcpTransport
from tests.host.test_contracts import free_port

OPENING = Opening(16, lambda m: m[:1] == b"\x01")
AUTH, COOKIE, NEITHER = encode(b"\x01auth"), encode(b"\x01cookie"), encode(b"\x01nothing")
TINY = b"\x00\x01\x45" * 21845  # 64 KB of one-byte frames


class Listener:
    def __init__(self, max_frame: int = 1500):
        self.max_frame = max_frame
        self.got: list[tuple[bytes, object]] = []
        self.per_callback: list[list[int]] = []  # [frames, bytes] handed over in each _readable call
        self.ups, self.errors, self.notes = [], [], []
        self.counters = Counters()
        self.t: TcpTransport | None = None
        self.port = free_port()

    async def open(self) -> "Listener":
        self.t = await TcpTransport.open(TransportConfig("tcp", Endpoint("127.0.0.1", self.port), None), self.max_frame,
                                         self.on_messages, lambda addr, dialled=False: self.ups.append(addr),
                                         lambda: None, lambda text, kind="": self.errors.append(text),
                                         authenticated=True, opening=OPENING, counters=self.counters,
                                         note=lambda kind, level, text: self.notes.append(text))
        return self

    def on_messages(self, messages, addr):
        if self.per_callback:
            self.per_callback[-1][0] += len(messages)
            self.per_callback[-1][1] += sum(len(m) + 2 for m in messages)
        for m in messages:
            m = bytes(m)
            self.got.append((m, addr))
            if m.startswith(b"\x01auth"):
                self.t.peer_moved(addr)
            elif m.startswith(b"\x01cookie") or m == b"\x03again":
                self.t.send(b"\x03answer", addr)

    def client(self, source: str, data: bytes = b"") -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        if data:
            s.sendall(data)
        return s

    def addr_of(self, s: socket.socket):
        return s.getsockname()


def closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


async def until(predicate, what: str, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def listener(request):
    lst = await Listener(getattr(request, "param", 1500)).open()
    clients: list[socket.socket] = []
    lst.clients = clients
    yield lst
    lst.t.close()
    for s in clients:
        s.close()


def keep(lst, s):
    lst.clients.append(s)
    return s


async def test_a_stranger_streaming_one_byte_frames_is_closed_at_its_first(listener):
    s = keep(listener, listener.client("127.0.0.2"))
    s.setblocking(False)
    try:
        s.send(TINY)
    except BlockingIOError:
        pass
    await until(lambda: closed(s), "the stranger to be closed")
    assert listener.got == []  # not one of its frames reached the session
    assert listener.counters.candidates_refused == 1
    assert listener.t.candidates == {}
    assert any("not a handshake initiation" in n for n in listener.notes)


async def test_an_opening_larger_than_a_handshake_is_a_bad_frame(listener):
    s = keep(listener, listener.client("127.0.0.2", b"\x00\x11" + b"\x01" * 17))
    await until(lambda: closed(s), "the stranger to be closed")
    assert listener.got == [] and listener.counters.candidates_refused == 1
    assert listener.errors == ["tcp: 127.0.0.2:%d sent a bad frame (17-byte frame exceeds the 16-byte limit); "
                               "closing that connection" % listener.addr_of(s)[1]]


async def test_an_opening_neither_authenticated_nor_answered_closes_it(listener):
    s = keep(listener, listener.client("127.0.0.2", NEITHER + COOKIE))
    await until(lambda: closed(s), "the stranger to be closed")
    assert [m for m, _ in listener.got] == [b"\x01nothing"]  # the session saw the opening, and no more


async def test_an_answered_candidate_waits_then_takes_over(listener):
    s = keep(listener, listener.client("127.0.0.2", COOKIE))
    await until(lambda: listener.got, "the opening")
    s.settimeout(5)
    assert s.recv(100) == encode(b"\x03answer")  # what the session addressed to it
    assert listener.ups == []
    s.sendall(AUTH + encode(b"\x45" * 40) * 3)
    await until(lambda: len(listener.got) == 5, "its messages")
    assert listener.ups == [listener.addr_of(s)]
    assert listener.t.conn is not None and listener.t.candidates == {}


async def test_a_candidate_has_a_message_budget(listener):
    s = keep(listener, listener.client("127.0.0.2", COOKIE + encode(b"\x03again") * CANDIDATE_MESSAGES))
    await until(lambda: closed(s), "the chatty candidate to be closed")
    assert len(listener.got) == CANDIDATE_MESSAGES  # the opening and 7 more; the 9th closed it
    assert any(f"sent {CANDIDATE_MESSAGES} messages without authenticating" in n for n in listener.notes)


async def test_silent_connections_wait_in_the_kernel(listener):
    """TCP_DEFER_ACCEPT: a connection that sends nothing is not even accepted."""
    assert listener.t.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    keep(listener, listener.client("127.0.0.2"))
    keep(listener, listener.client("127.0.0.3", b"\x00"))  # connected after it, one byte sent
    await until(lambda: len(listener.t.candidates) == 1, "the one that spoke to become a candidate")
    assert [a[0] for a in listener.t.candidates] == ["127.0.0.3"]


async def test_newcomers_evict_the_oldest_and_the_peer_always_gets_in(listener):
    holders = [keep(listener, listener.client(f"127.0.0.{10 + i}", b"\x00")) for i in range(CANDIDATES_MAX)]
    await until(lambda: len(listener.t.candidates) == CANDIDATES_MAX, "the slots to be taken")
    late = keep(listener, listener.client("127.0.0.30", b"\x00"))
    await until(lambda: closed(holders[0]), "the oldest to make room")
    assert not any(closed(h) for h in holders[1:]) and not closed(late)
    assert listener.addr_of(late) in listener.t.candidates
    peer = keep(listener, listener.client("127.0.0.40", AUTH))
    await until(lambda: listener.ups, "the peer to take over")
    assert listener.ups == [listener.addr_of(peer)]
    assert len(listener.t.candidates) == CANDIDATES_MAX  # it never needed a slot
    assert listener.counters.candidates_refused == 1


async def test_a_third_connection_from_one_source_closes_that_sources_oldest(listener):
    first = keep(listener, listener.client("127.0.0.50", b"\x00"))
    second = keep(listener, listener.client("127.0.0.50", b"\x00"))
    await until(lambda: len(listener.t.candidates) == 2, "two candidates")
    third = keep(listener, listener.client("127.0.0.50", b"\x00"))
    await until(lambda: closed(first), "the source's oldest to make room")
    assert not closed(second) and not closed(third)


@pytest.mark.parametrize("listener", [65535], indirect=True)
async def test_the_peers_input_is_handed_over_in_bounded_slices(listener, monkeypatch):
    """One-byte frames as fast as they come, then packet-size and 60 KB ones: every
    frame arrives, in order, and no callback takes more than READ_FRAMES frames or
    READ_BYTES and one read."""
    original = TcpTransport._readable

    def counted(self, conn):
        listener.per_callback.append([0, 0])
        original(self, conn)
    monkeypatch.setattr(TcpTransport, "_readable", counted)
    s = keep(listener, listener.client("127.0.0.2", AUTH))
    await until(lambda: listener.ups, "the peer to take over")
    stream = TINY * 8 + encode(b"\x45" * 1400) * 2000 + encode(b"\x46" * 60000) * 300
    want = 1 + 21845 * 8 + 2000 + 300

    async def send():
        loop = asyncio.get_running_loop()
        s.setblocking(False)
        await loop.sock_sendall(s, stream)
    await asyncio.gather(send(), until(lambda: len(listener.got) == want, "every frame", timeout=60))
    assert listener.got[1][0] == b"\x45" and listener.got[-301][0] == b"\x45" * 1400
    assert listener.got[-1][0] == b"\x46" * 60000
    assert max(f for f, _ in listener.per_callback) <= READ_FRAMES
    assert max(b for _, b in listener.per_callback) <= READ_BYTES + TCP_RECV_CHUNK
    assert sum(f for f, _ in listener.per_callback) == want - 1  # the opening went by the candidate's reader


async def test_out_of_descriptors_evicts_a_candidate_then_pauses_instead_of_spinning(listener, monkeypatch):
    waiting = keep(listener, listener.client("127.0.0.2", COOKIE))  # answered: it waits as a candidate
    await until(lambda: listener.t.candidates, "the candidate to wait")
    import errno

    calls = []

    def no_descriptors():
        calls.append(1)
        raise OSError(errno.EMFILE, "Too many open files")

    acceptor = listener.t.acceptor
    fake = type("NoFds", (), {"accept": staticmethod(no_descriptors), "fileno": listener.t.listener.fileno})()
    acceptor.sock = fake
    keep(listener, listener.client("127.0.0.3", COOKIE))  # the listener is readable, accept fails
    await asyncio.sleep(0.3)
    assert closed(waiting)  # room was made: the waiting candidate went
    assert listener.t.candidates == {}
    assert acceptor.starved >= 2  # one failure freed room, the next one found nothing to free
    assert len(calls) <= 4  # then it paused: no busy loop on a listener that stays readable
