"""The replay window's in-order shortcut changes nothing: on any sequence of
counters it answers exactly as the general RFC 6479 algorithm (kept here as
the reference, as the window had it before the shortcut)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.wg.replay import BIT_MASK, BLOCK_BIT_LOG, BLOCK_MASK, RING_BLOCKS, WINDOW_SIZE, ReplayWindow

LIMIT = (1 << 64) - (1 << 13) - 1


class Reference:
    def __init__(self) -> None:
        self.last = 0
        self.ring = [0] * RING_BLOCKS

    def check_and_update(self, counter: int, limit: int) -> bool:
        if counter >= limit:
            return False
        index_block = counter >> BLOCK_BIT_LOG
        if counter > self.last:
            current = self.last >> BLOCK_BIT_LOG
            diff = min(index_block - current, RING_BLOCKS)
            for i in range(current + 1, current + diff + 1):
                self.ring[i & BLOCK_MASK] = 0
            self.last = counter
        elif self.last - counter > WINDOW_SIZE:
            return False
        block = index_block & BLOCK_MASK
        bit = 1 << (counter & BIT_MASK)
        if self.ring[block] & bit:
            return False
        self.ring[block] |= bit
        return True


steps = st.one_of(st.integers(-3, 70), st.integers(-WINDOW_SIZE - 200, WINDOW_SIZE + 200), st.just(0))


@settings(max_examples=300)
@given(st.integers(0, 1 << 20), st.lists(steps, max_size=400))
def test_the_window_answers_as_the_general_algorithm(start, moves):
    ours, ref = ReplayWindow(), Reference()
    counter = start
    for move in moves:
        counter = max(0, counter + move)
        assert ours.check_and_update(counter, LIMIT) == ref.check_and_update(counter, LIMIT), counter
        assert ours.last == ref.last


def test_in_order_counters_across_blocks_and_their_repeats():
    w = ReplayWindow()
    assert all(w.check_and_update(c, LIMIT) for c in range(1, 1000))
    assert not any(w.check_and_update(c, LIMIT) for c in range(1, 1000))
    assert not w.check_and_update(LIMIT, LIMIT)
