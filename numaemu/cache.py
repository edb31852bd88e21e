"""The emulated cache in front of each node's kernel-text fetches (pure logic).

A direct-mapped cache of 64-byte lines, simulated exactly but a whole batch at a time: Python
cannot afford a branch per access (one ``perf_counter_ns()`` alone costs as much as an emulated
access, BACKGROUND.md s.5), while a direct-mapped cache vectorises. An access hits iff the previous
access to the same set, in program order, had the same key. Sorting the batch by set (stably, so
program order survives within a set) puts each access beside its predecessor in the same set; the
first access of each set in the batch compares with the tag left by the previous batch.

Cold caches (``--cache cold``, the x86 series' cold-cache microbenchmarks flush between runs) key
each line with the request that fetched it, so nothing survives from one request to the next,
while repeats inside one request still hit.

Direct mapping is a simplification of real set-associative LLCs: it overstates conflict misses a
little. It is applied the same way to every policy, so ratios between policies are what it is for.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DirectMappedCache", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 1 << 20  # the share of a server LLC left to kernel text (an assumption)
_EMPTY = np.int64(-1)


class DirectMappedCache:
    def __init__(self, size_bytes: int = DEFAULT_CACHE_BYTES, line_size: int = 64) -> None:
        n_sets = size_bytes // line_size
        if n_sets < 1 or n_sets & (n_sets - 1) or n_sets > 1 << 16:
            raise ValueError("cache size / line size must be a power of two in 1..65536")
        self.n_sets = n_sets
        self.tags = np.full(n_sets, _EMPTY, dtype=np.int64)

    def clear(self) -> None:
        self.tags.fill(_EMPTY)

    def access(self, lines: np.ndarray, epochs: np.ndarray | None = None) -> np.ndarray:
        """Access `lines` (int64 line numbers) in order; return a bool array, True where hit.

        With `epochs` (one int per access, < 2**23), lines of different epochs never hit each
        other: the cold-cache mode passes the request number.
        """
        n = len(lines)
        if n == 0:
            return np.zeros(0, dtype=bool)
        # uint16 sets let numpy use its O(n) radix sort for kind="stable".
        sets = (lines & (self.n_sets - 1)).astype(np.uint16)
        keys = lines if epochs is None else (epochs.astype(np.int64) << 40) | lines
        order = np.argsort(sets, kind="stable")
        s = sets[order]
        k = keys[order]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = k[:-1]
        prev[first] = self.tags[s[first]]
        last = np.empty(n, dtype=bool)
        last[-1] = True
        last[:-1] = first[1:]
        self.tags[s[last]] = k[last]
        hit = np.empty(n, dtype=bool)
        hit[order] = prev == k
        return hit
