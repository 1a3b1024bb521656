"""The anti-replay sliding window of RFC 6479, as WireGuard sizes it: a ring of
128 blocks of 64 bits, of which 127 blocks (8128 counters) are the window.

Update it only after the message authenticated: an attacker must not be able
to move the window with forged counters.
"""

from __future__ import annotations

BLOCK_BIT_LOG = 6
BLOCK_BITS = 1 << BLOCK_BIT_LOG  # 64
RING_BLOCKS = 1 << 7  # 128
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128
BLOCK_MASK = RING_BLOCKS - 1
BIT_MASK = BLOCK_BITS - 1


class ReplayWindow:
    __slots__ = ("last", "ring")

    def __init__(self) -> None:
        self.last = 0
        self.ring = [0] * RING_BLOCKS

    def check_and_update(self, counter: int, limit: int) -> bool:
        """True (and remembered) if `counter` is new, inside the window and below `limit`."""
        if counter >= limit:
            return False
        last = self.last
        if counter > last and counter >> BLOCK_BIT_LOG == last >> BLOCK_BIT_LOG:
            # in order, within the newest block (most messages): nothing to clear, nothing seen past it
            self.last = counter
            self.ring[(counter >> BLOCK_BIT_LOG) & BLOCK_MASK] |= 1 << (counter & BIT_MASK)
            return True
        index_block = counter >> BLOCK_BIT_LOG
        if counter > self.last:  # move the window forward, clearing the blocks it passes
            current = self.last >> BLOCK_BIT_LOG
            diff = min(index_block - current, RING_BLOCKS)
            ring = self.ring
            for i in range(current + 1, current + diff + 1):
                ring[i & BLOCK_MASK] = 0
            self.last = counter
        elif self.last - counter > WINDOW_SIZE:  # behind the window
            return False
        block = index_block & BLOCK_MASK
        bit = 1 << (counter & BIT_MASK)
        old = self.ring[block]
        if old & bit:
            return False
        self.ring[block] = old | bit
        return True
