"""Which units already produced an event: an exact set up to a cap, then a Bloom filter.

The health test counts the first error (and the first slow call) of each unit, so it must
remember the units it has counted, in bounded memory. The first :data:`EXACT_CAP` units are
kept exactly; past the cap they move into a Bloom filter of :data:`BLOOM_BITS` bits (1 MiB)
with :data:`BLOOM_HASHES` hash functions: about 1 % false positives at 880,000 units, 2 %
at a million. A false positive makes a unit's first event look like a repeat, so it is
not counted: the test loses that event. Which units collide does not depend on their arm
(the filter's hash is independent of the bucketing hash), so the test stays valid and only
sees fewer events; past ten million units most first events would be lost.
"""

from __future__ import annotations

import mmh3

__all__ = ["BLOOM_BITS", "BLOOM_HASHES", "EXACT_CAP", "SeenUnits"]

EXACT_CAP = 10_000
"""Units remembered exactly before the filter takes over."""
BLOOM_BITS = 1 << 23
"""Bits of the Bloom filter (1 MiB)."""
BLOOM_HASHES = 7
"""Hash functions of the Bloom filter."""
_SEED = 0x5EED  # independent of the bucketing hash (seed 0)


class SeenUnits:
    """A set of unit keys that only grows, in bounded memory; see the module's documentation."""

    __slots__ = ("_bits", "_exact", "count")

    def __init__(self) -> None:
        self._exact: set[str] = set()
        self._bits: bytearray | None = None
        self.count = 0
        """Keys added as new (false positives of the filter excluded)."""

    def add(self, key: str) -> bool:
        """Remember ``key``; return whether it is new (``False`` if it was seen before)."""
        exact = self._exact
        if key in exact:
            return False
        if self._bits is None:
            if len(exact) < EXACT_CAP:
                exact.add(key)
                self.count += 1
                return True
            self._bits = bytearray(BLOOM_BITS // 8)
            for known in exact:
                self._set(known)
            exact.clear()
        if self._set(key):
            self.count += 1
            return True
        return False

    def _set(self, key: str) -> bool:
        """Set ``key``'s bits in the filter; return whether any was unset (the key is new)."""
        bits = self._bits
        assert bits is not None
        data = key.encode("utf-8", "surrogatepass")
        h1, h2 = mmh3.hash64(data, _SEED, signed=False)
        new = False
        for i in range(BLOOM_HASHES):
            bit = (h1 + i * h2) % BLOOM_BITS
            byte, mask = bit >> 3, 1 << (bit & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                new = True
        return new

    def __contains__(self, key: object) -> bool:
        if key in self._exact:
            return True
        if self._bits is None or not isinstance(key, str):
            return False
        bits = self._bits
        h1, h2 = mmh3.hash64(key.encode("utf-8", "surrogatepass"), _SEED, signed=False)
        for i in range(BLOOM_HASHES):
            bit = (h1 + i * h2) % BLOOM_BITS
            if not bits[bit >> 3] & (1 << (bit & 7)):
                return False
        return True

    def __len__(self) -> int:
        return self.count

    def clear(self) -> None:
        """Forget every key."""
        self._exact = set()
        self._bits = None
        self.count = 0
