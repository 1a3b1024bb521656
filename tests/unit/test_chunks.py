"""Super-packets carried as chunks (packet/chunks.py): whatever the network does to
the chunks (loss, reorder, duplication, forged copies), what is written is whole or
exactly the authentic bytes that arrived, and nothing twice."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.packet.chunks import MAX_CHUNKS, REORDER, TIMEOUT, Reassembly, cut

CAPACITY = 65600


def chunks_of(data: bytes, stride: int):
    n = cut(len(data), stride)
    return [(i, n, data[i * stride:(i + 1) * stride]) for i in range(n)]


def deliver(r: Reassembly, key, index, count, payload, now=0.0, forged=False):
    """What the receive path does: place, decrypt (here: copy), and commit if authentic."""
    where = r.target(key, index, count, len(payload))
    if where is None:
        return "refused", None, []
    where[:] = bytes(len(payload)) if forged else payload  # a failed tag writes garbage, then no commit
    if forged:
        return "forged", None, []
    whole, given_up = r.commit(key, index, count, len(payload), now)
    return "ok", (bytes(whole) if whole is not None else None), given_up


def test_in_order_gives_the_whole_once():
    data = random.Random(1).randbytes(60000)
    r = Reassembly(CAPACITY)
    wholes = [w for i, n, c in chunks_of(data, 1420) if (w := deliver(r, (7, 100), i, n, c)[1]) is not None]
    assert wholes == [data]
    r.release((7, 100))


def test_table():
    data = random.Random(2).randbytes(5000)  # 4 chunks of 1420, the last 740
    c = chunks_of(data, 1420)
    rows = [  # (order of chunk indexes, expected outcome per delivery)
        ([0, 1, 2, 3], ["ok", "ok", "ok", "ok"]),
        ([3, 2, 1, 0], ["ok", "ok", "ok", "ok"]),  # the last first: its place unknown until a full chunk came
        ([0, 0, 1, 2, 3], ["ok", "refused", "ok", "ok", "ok"]),  # a duplicate is refused before decryption
        ([3, 3, 0, 1, 2], ["ok", "refused", "ok", "ok", "ok"]),  # so is a repeated last chunk before the stride is known
    ]
    for order, want in rows:
        r = Reassembly(CAPACITY)
        got, whole = [], None
        for i in order:
            outcome, w, _ = deliver(r, (1, 0), i, len(c), c[i][2])
            got.append(outcome)
            whole = w if w is not None else whole
        assert got == want, order
        assert whole == data, order


def test_bad_geometry_is_refused_unread():
    r = Reassembly(CAPACITY)
    assert r.target((1, 0), 0, 1, 100) is None  # one chunk is not a chunked super-packet
    assert r.target((1, 0), 0, MAX_CHUNKS + 1, 100) is None
    assert r.target((1, 0), 5, 5, 100) is None  # index past the count
    assert r.target((1, 0), 0, 64, 2000) is None  # 64 x 2000 bytes do not fit
    deliver(r, (1, 0), 0, 4, b"x" * 1000)
    assert r.target((1, 0), 1, 4, 999) is None  # every chunk but the last is the stride
    assert r.target((1, 0), 3, 4, 1001) is None  # the last is at most the stride
    assert r.target((1, 0), 1, 5, 1000) is None  # another count under the same counters
    assert r.refused == 7


def test_a_forged_chunk_cannot_overwrite_authentic_bytes():
    data = random.Random(3).randbytes(4000)
    c = chunks_of(data, 1420)
    r = Reassembly(CAPACITY)
    deliver(r, (1, 0), 0, 3, c[0][2])
    assert deliver(r, (1, 0), 0, 3, c[0][2], forged=True)[0] == "refused"  # held already: not even decrypted
    assert deliver(r, (1, 0), 1, 3, c[1][2], forged=True)[0] == "forged"  # garbage where chunk 1 goes, not marked
    deliver(r, (1, 0), 1, 3, c[1][2])
    assert deliver(r, (1, 0), 2, 3, c[2][2])[1] == data


def test_unauthenticated_chunks_take_no_slot():
    r = Reassembly(CAPACITY, slots=2)
    for first in range(0, 1000, 10):  # forged first chunks of 100 super-packets
        deliver(r, (1, first), 0, 3, b"y" * 1000, forged=True)
    assert r.deadline() is None and r.given_up == 0


def test_loss_gives_up_by_time_and_by_sequence_with_the_pieces_that_arrived():
    data = random.Random(4).randbytes(6000)
    c = chunks_of(data, 1420)  # 5 chunks
    r = Reassembly(CAPACITY)
    for i in (0, 1, 3, 4):
        deliver(r, (1, 10), i, 5, c[i][2], now=1.0)
    assert r.expired(1.0 + TIMEOUT / 2) == []
    assert r.deadline() == 1.0 + TIMEOUT
    [p] = r.expired(1.0 + TIMEOUT)
    assert p.pieces == [(0, 2840), (4260, 6000)]
    assert all(bytes(p.data[a:b]) == data[a:b] for a, b in p.pieces)
    for i in (0, 2):
        deliver(r, (1, 20), i, 5, c[i][2])
    assert r.stale(1, 20 + 4 + REORDER) == []
    [q] = r.stale(1, 20 + 5 + REORDER)
    assert q.pieces == [(0, 1420), (2840, 4260)]


def test_full_slots_give_up_the_oldest_incomplete():
    r = Reassembly(CAPACITY, slots=2)
    deliver(r, (1, 0), 0, 3, b"a" * 1000, now=1)
    deliver(r, (1, 10), 0, 3, b"b" * 1000, now=2)
    _, _, given_up = deliver(r, (1, 20), 0, 3, b"c" * 1000, now=3)
    assert [p.key for p in given_up] == [(1, 0)]


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1421, 65000), stride=st.integers(1024, 1452), seed=st.integers(0, 2**32),
       loss=st.floats(0, 0.5), dup=st.floats(0, 0.5))
def test_whatever_the_network_does_what_is_written_is_authentic_and_never_twice(size, stride, seed, loss, dup):
    rng = random.Random(seed)
    data = rng.randbytes(size)
    chunks = chunks_of(data, stride)
    n = len(chunks)
    if n < 2:
        return
    sent = [ch for ch in chunks if rng.random() >= loss]
    sent += [ch for ch in sent if rng.random() < dup]
    rng.shuffle(sent)
    r = Reassembly(CAPACITY)
    wholes, arrived = [], set()
    for i, count, payload in sent:
        outcome, whole, _ = deliver(r, (9, 0), i, count, payload)
        if outcome == "ok":
            assert i not in arrived  # never committed twice
            arrived.add(i)
        if whole is not None:
            wholes.append(whole)
    if arrived == set(range(n)):
        assert wholes == [data]
        return
    assert wholes == []
    for p in r.expired(1e9):
        for a, b in p.pieces:
            assert bytes(p.data[a:b]) == data[a:b]
        covered = {i for i in range(n) if any(a <= i * stride and min((i + 1) * stride, size) <= b for a, b in p.pieces)}
        full_known = any(i < n - 1 for i in arrived)  # the last chunk's place needs the stride
        assert covered == (arrived if full_known else set())


def test_salvage_rebuilds_the_segments_wholly_inside_what_arrived():
    from tunneld.packet import segment, virtio
    from tunneld.packet.chunks import salvage
    from tests.unit.test_offload import payload, tcp_super, valid_l4

    mss = 1368  # 1420 - IPv4 - TCP with timestamps
    frame, l4 = tcp_super(4, payload(20 * mss))
    whole = virtio.Header(1, virtio.GSO_TCPV4, 0, mss, l4, 16).pack() + frame
    c = chunks_of(whole, 1420)
    r = Reassembly(CAPACITY)
    lost = {5, 9}
    for i, n, ch in c:
        if i not in lost:
            deliver(r, (1, 0), i, n, ch)
    [p] = r.expired(1e9)
    got = salvage(p, tap=False, mtu=1420, max_packet=1420)
    expect = segment.split(frame, virtio.unpack(whole), tap=False, full=True)
    hl = l4 + 32  # IPv4 and TCP with timestamps
    keep = [k for k in range(20) if not any(i * 1420 < 10 + hl + (k + 1) * mss and 10 + hl + k * mss < (i + 1) * 1420
                                             for i in lost)]
    assert 0 < len(got) == len(keep) < 20
    for k, packet in zip(keep, got):
        header, seg = virtio.unpack(packet), bytearray(packet[10:])
        assert header.flags == virtio.F_NEEDS_CSUM and not header.gso
        segment.finish(seg, header.csum_start, header.csum_offset)
        assert bytes(seg) == bytes(expect[k]) and valid_l4(bytes(seg))


def test_salvage_needs_the_headers():
    from tunneld.packet import virtio
    from tunneld.packet.chunks import salvage
    from tests.unit.test_offload import payload, tcp_super

    frame, l4 = tcp_super(4, payload(10 * 1368))
    whole = virtio.Header(1, virtio.GSO_TCPV4, 0, 1368, l4, 16).pack() + frame
    c = chunks_of(whole, 1420)
    r = Reassembly(CAPACITY)
    for i, n, ch in c[1:]:
        deliver(r, (1, 0), i, n, ch)
    [p] = r.expired(1e9)
    assert salvage(p, tap=False, mtu=1420, max_packet=1420) == []
