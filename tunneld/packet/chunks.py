"""A super-packet carried as chunks: one AEAD message per underlay datagram.

tunneld mode over UDP cuts a super-packet (its virtio header, then up to 64 KB
of frame) at the underlay's size, not the inner MSS: chunk i of n holds bytes
[i*stride, (i+1)*stride) of it, every chunk but the last exactly `stride`
bytes, and chunk i is sealed under counter first + i. The receiver decrypts
each chunk straight into its place here, and when all n arrived the
super-packet goes to the device whole, as the sender's kernel made it: no
per-segment header or checksum work on the common path.

    target(key, index, count, size) -> where to decrypt this chunk, or None
    commit(key, index, count, size) -> the chunk was authentic: record it;
                                       the whole super-packet once complete
    stale(key_prefix, newest)       -> super-packets whose chunks stopped coming
                                       (worth calling once newest > stale_at)
    expired(now) / deadline()       -> the same by time, for the core's timer

`key` names one super-packet: (the keypair's local index, the counter of its
first chunk). Unauthenticated input never allocates, evicts or marks anything:
a chunk whose super-packet has no slot yet is decrypted into a scratch buffer
and copied in at commit; a chunk already held is refused before decryption, so
a forged duplicate cannot overwrite authentic bytes. Slots are few and
preallocated (bounded memory); when all are busy the oldest incomplete one is
given up (returned for salvage).

On loss, `Partial` says which byte ranges did arrive; salvage() rebuilds the
segments that lie wholly inside them.

Pure: no I/O, no clock (`now` is passed in).
"""

from __future__ import annotations

from typing import Hashable, NamedTuple

from tunneld.packet import layout, segment, virtio

MAX_CHUNKS = 64  # chunks of one super-packet: one UDP GSO send carries it whole
SLOTS = 8  # super-packets being joined at once
TIMEOUT = 0.05  # s: an incomplete super-packet is given up this long after its first chunk
# messages later than a super-packet's last chunk before it is given up: small, so that
# what arrived of it reaches the device before the next super-packet is whole (TCP
# inside then sees a hole of the lost segments, not of 64 KB, and retransmits those)
REORDER = 2


_NOT_YET: tuple = (None, ())
_NEVER = float("inf")


class Partial(NamedTuple):
    """What arrived of a super-packet that will never be whole: `data` is its
    buffer, `pieces` the (start, end) byte ranges that hold authentic bytes."""
    key: Hashable
    data: memoryview
    pieces: list[tuple[int, int]]


class _Slot:
    __slots__ = ("buf", "view", "key", "count", "stride", "last", "have", "missing", "tail", "started", "busy")

    def __init__(self, capacity: int):
        self.buf = bytearray(capacity)
        self.view = memoryview(self.buf)
        self.busy = False
        self.key: Hashable = None
        self.count = self.stride = self.last = self.missing = 0  # last: the last chunk's size
        self.have = 0  # bit i: chunk i is here and authentic
        self.tail: bytes | None = None  # the last chunk, held apart until the stride is known
        self.started = 0.0

    def reset(self, key: Hashable, count: int, now: float) -> None:
        self.busy, self.key, self.count, self.missing = True, key, count, count
        self.stride, self.last, self.have, self.tail, self.started = 0, 0, 0, None, now

    def total(self) -> int:
        """Bytes of the whole super-packet (all chunks here, the stride known)."""
        return (self.count - 1) * self.stride + self.last


class Reassembly:
    """Joins the chunks of up to `slots` super-packets of at most `capacity` bytes."""

    def __init__(self, capacity: int, slots: int = SLOTS):
        self.capacity = capacity
        self._slots = [_Slot(capacity) for _ in range(slots)]
        self._by_key: dict[Hashable, _Slot] = {}
        self._scratch = bytearray(capacity)
        self._scratch_view = memoryview(self._scratch)
        self.stale_at = _NEVER  # stale() gives something up only for a counter above this
        self.refused = 0  # chunks refused before decryption (held already, bad geometry, no room)
        self.given_up = 0  # super-packets that never became whole

    # --- receiving ---------------------------------------------------------------

    def target(self, key: Hashable, index: int, count: int, size: int) -> memoryview | None:
        """Where to decrypt chunk `index` of `count` (`size` plaintext bytes), or None
        to drop it unread. Marks nothing: call commit() with the same arguments once
        it proved authentic, before the next target() (the scratch buffer is one)."""
        slot = self._by_key.get(key)
        if slot is not None and size == slot.stride and index < count - 1 and slot.count == count \
                and not slot.have >> index & 1:  # the common case, every check below passed already
            return slot.view[index * size:index * size + size]
        if not (1 < count <= MAX_CHUNKS and 0 <= index < count and 0 < size <= self.capacity):
            self.refused += 1
            return None
        slot = self._by_key.get(key)
        last = index == count - 1
        if slot is None:
            if not last and size * count > self.capacity:
                self.refused += 1
                return None
            return self._scratch_view[:size]
        if slot.count != count or slot.have >> index & 1:
            self.refused += 1  # a different super-packet under the same counters, or a duplicate
            return None
        if not last:
            if slot.stride and size != slot.stride:
                self.refused += 1
                return None
            stride = slot.stride or size
            if stride * count > self.capacity or (slot.tail is not None and len(slot.tail) > stride):
                self.refused += 1
                return None
            return slot.view[index * stride:index * stride + size]
        if slot.stride:
            if size > slot.stride or (count - 1) * slot.stride + size > self.capacity:
                self.refused += 1
                return None
            return slot.view[index * slot.stride:index * slot.stride + size]
        return self._scratch_view[:size]  # the stride is not known yet: held apart at commit

    def commit(self, key: Hashable, index: int, count: int, size: int, now: float) -> tuple[memoryview | None, list[Partial]]:
        """The chunk target() placed was authentic. Returns (the whole super-packet if
        this completed it, super-packets given up to make room). The whole one's
        view stays valid until release(key)."""
        slot = self._by_key.get(key)
        if slot is not None and index < count - 1 and slot.tail is None:  # the common case
            slot.stride = size
            slot.have |= 1 << index
            slot.missing -= 1
            if slot.missing:
                return _NOT_YET
            self._watermark()
            return slot.view[:slot.total()], ()
        given_up: list[Partial] = []
        if slot is None:
            slot, given_up = self._new_slot(key, count, now)
            if slot is None:
                self.refused += 1
                return None, given_up
            placed = self._scratch_view[:size]
            if index < count - 1:
                slot.stride = size
                slot.view[index * size:index * size + size] = placed
            else:
                slot.tail = bytes(placed)
        elif index < count - 1:
            slot.stride = size  # target() held it to the stride, or this one sets it
        elif not slot.stride:
            slot.tail = bytes(self._scratch_view[:size])
        if index == count - 1:
            slot.last = size
        slot.have |= 1 << index
        slot.missing -= 1
        if slot.tail is not None and slot.stride:
            at = (count - 1) * slot.stride
            slot.view[at:at + len(slot.tail)] = slot.tail
            slot.tail = None
        if slot.missing:
            return None, given_up
        self._watermark()
        return slot.view[:slot.total()], given_up

    def holds(self, key: Hashable) -> bool:
        """Some chunk of this super-packet is here (it has a slot)."""
        return key in self._by_key

    @property
    def waiting(self) -> bool:
        """Some super-packet is incomplete (cheap: checked once per batch)."""
        return bool(self._by_key)

    def release(self, key: Hashable) -> None:
        """The whole super-packet was written: its slot is free again."""
        slot = self._by_key.pop(key, None)
        if slot is not None:
            slot.busy = False

    # --- giving up ---------------------------------------------------------------

    def stale(self, prefix: Hashable, newest: int) -> list[Partial]:
        """Super-packets under keypair `prefix` whose last chunk's counter is more than
        REORDER behind `newest`, the highest counter committed: their missing chunks
        were lost, not reordered."""
        out = []
        for key, slot in list(self._by_key.items()):
            if not slot.missing or key[0] != prefix:
                continue
            if key[1] + slot.count - 1 + REORDER < newest:
                out.append(self._give_up(slot))
        return out

    def expired(self, now: float) -> list[Partial]:
        """Incomplete super-packets older than TIMEOUT."""
        return [self._give_up(s) for s in list(self._by_key.values()) if s.missing and s.started + TIMEOUT <= now]

    def deadline(self) -> float | None:
        starts = [s.started for s in self._by_key.values() if s.missing]
        return min(starts) + TIMEOUT if starts else None

    def _new_slot(self, key: Hashable, count: int, now: float) -> tuple[_Slot | None, list[Partial]]:
        given_up = []
        free = next((s for s in self._slots if not s.busy), None)
        if free is None:
            waiting = [s for s in self._slots if s.missing]
            if not waiting:
                return None, given_up  # every slot holds a whole super-packet not yet released
            oldest = min(waiting, key=lambda s: s.started)
            given_up.append(self._give_up(oldest))
            free = oldest
        free.reset(key, count, now)
        self._by_key[key] = free
        self._watermark()
        return free, given_up

    def _watermark(self) -> None:
        """stale_at: the lowest counter past which an incomplete super-packet is stale."""
        ends = [k[1] + s.count - 1 for k, s in self._by_key.items() if s.missing]
        self.stale_at = min(ends) + REORDER if ends else _NEVER

    def _give_up(self, slot: _Slot) -> Partial:
        """Stop waiting for `slot`; what arrived is returned (a copy of its own)."""
        self.given_up += 1
        del self._by_key[slot.key]
        slot.busy = False
        pieces: list[tuple[int, int]] = []
        if slot.stride:
            for i in range(slot.count - 1):
                if slot.have >> i & 1:
                    start = i * slot.stride
                    if pieces and pieces[-1][1] == start:
                        pieces[-1] = (pieces[-1][0], start + slot.stride)
                    else:
                        pieces.append((start, start + slot.stride))
            if slot.have >> (slot.count - 1) & 1 and slot.tail is None:
                start = (slot.count - 1) * slot.stride
                end = start + slot.last
                if pieces and pieces[-1][1] == start:
                    pieces[-1] = (pieces[-1][0], end)
                else:
                    pieces.append((start, end))
        end = pieces[-1][1] if pieces else 0
        self._watermark()
        # a copy: the slot may take the next super-packet's chunks before this is salvaged
        return Partial(slot.key, memoryview(bytearray(slot.view[:end])), pieces)


def cut(size: int, stride: int) -> int:
    """How many chunks a super-packet of `size` bytes makes at `stride`; 0 when
    more than MAX_CHUNKS (send it another way)."""
    n = -(-size // stride)
    return n if n <= MAX_CHUNKS else 0


def salvage(partial: Partial, tap: bool, mtu: int, max_packet: int) -> list[bytes]:
    """The packets of a super-packet that lie wholly inside what arrived, each with
    its virtio header (checksum left partial), ready for the device; [] when its
    headers were lost or do not pass virtio.check."""
    pieces = partial.pieces
    base = partial.data.obj
    if not pieces or pieces[0][0] != 0 or pieces[0][1] <= virtio.SIZE or not isinstance(base, bytearray):
        return []
    buf = memoryview(base)
    header = virtio.unpack(buf)
    lay = layout.parse(buf[virtio.SIZE:], tap)
    if lay is None or not header.gso or virtio.SIZE + lay.headers > pieces[0][1]:
        return []  # not a super-packet we can cut, or its headers did not all arrive
    frame = buf[virtio.SIZE:virtio.SIZE + lay.end]  # bytes in the gaps are stale: no segment keeps them
    try:
        header = virtio.check(header, frame, tap, mtu, max_packet, lay)
        segments = segment.split(frame, header, tap, full=False)
    except (virtio.BadHeader, segment.Unsplittable):
        return []
    hl, mss, end = lay.headers, header.gso_size, lay.end
    kept = []
    for k, seg in enumerate(segments):
        start = virtio.SIZE + hl + k * mss
        stop = virtio.SIZE + min(hl + (k + 1) * mss, end)
        if any(a <= start and stop <= b for a, b in pieces):
            kept.append(virtio.partial(layout.parse(seg, tap)).pack() + seg)
    return kept
