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

A request's own repeats never depend on what the cache held before it: only the first access to
each set can. So a request can be reduced once to its *footprint* (`footprint`): which of its
accesses hit on an earlier access of the same request, and, per set it touches, the line it
accesses there first and last. `replay` then runs a batch of footprints exactly as `access` would
run their lines, touching each set once per request instead of once per access.

Direct mapping is a simplification of real set-associative LLCs: it overstates conflict misses a
little. It is applied the same way to every policy, so ratios between policies are what it is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from numaemu.model.arrays import I64, Bool, Intp, Ints

__all__ = ["DirectMappedCache", "DEFAULT_CACHE_BYTES", "Footprint", "REPLAY_LOOP_MIN"]

DEFAULT_CACHE_BYTES = 1 << 20  # the share of a server LLC left to kernel text (an assumption)
_EMPTY = np.int64(-1)
_EPOCH_SHIFT = 40  # cold mode keys: epoch << 40 | line (lines < 2**40, epochs < 2**23)
# `replay` loops over sequences when they touch this many sets on average: a loop step costs
# about as much as sorting ~300 entries on the 2-core dev VM (measured, numpy 2.x).
REPLAY_LOOP_MIN = 256


@dataclass(frozen=True)
class Footprint:
    """One access sequence (a request's lines, in order) as a direct-mapped cache sees it."""

    inner_hit: Bool  # per access: hits on an earlier access of the same sequence
    sets: Intp  # each set the sequence touches, ascending
    first: I64  # per set: the line of the sequence's first access to it
    last: I64  # per set: the line of its last access (what the set holds after)
    first_at: I64  # per set: the position of that first access in the sequence


class DirectMappedCache:
    """A direct-mapped cache of `size_bytes`: one tag (a line number, or a cold-mode key) per set."""

    def __init__(self, size_bytes: int = DEFAULT_CACHE_BYTES, line_size: int = 64) -> None:
        n_sets = size_bytes // line_size
        if n_sets < 1 or n_sets & (n_sets - 1) or n_sets > 1 << 16:
            raise ValueError("cache size / line size must be a power of two in 1..65536")
        self.n_sets = n_sets
        self.tags = np.full(n_sets, _EMPTY, dtype=np.int64)

    def clear(self) -> None:
        self.tags.fill(_EMPTY)

    def access(self, lines: I64, epochs: Ints | None = None) -> Bool:
        """Access `lines` (int64 line numbers) in order; return a bool array, True where hit.

        With `epochs` (one int per access, < 2**23), lines of different epochs never hit each
        other: the cold-cache mode passes the request number.
        """
        if len(lines) == 0:
            return np.zeros(0, dtype=bool)
        keys = _keys(lines, epochs)
        return self._apply(lines & (self.n_sets - 1), keys, keys)

    def footprint(self, lines: I64) -> Footprint:
        """`lines` reduced to what `replay` needs (independent of this cache's state)."""
        # On a cache holding nothing, exactly the accesses that hit an earlier access hit.
        inner_hit = DirectMappedCache(self.n_sets * 64).access(lines)
        sets = (lines & (self.n_sets - 1)).astype(np.intp)
        uniq, first_at = np.unique(sets, return_index=True)
        _, from_end = np.unique(sets[::-1], return_index=True)
        last_at = len(lines) - 1 - from_end
        return Footprint(inner_hit, uniq, lines[first_at], lines[last_at], first_at.astype(np.int64))

    def replay(self, footprints: Sequence[Footprint], epochs: Ints | None = None) -> Bool:
        """Run `footprints` in order (with `epochs`, one per footprint); return, for each entry of
        each in turn, whether that set's first access hit.

        The same as `access` on the footprints' lines: a set's first access in a sequence hits
        iff the last line the set received before, from an earlier sequence of the batch or an
        earlier batch, is the same line (and epoch); the set then holds the sequence's last line.
        """
        if not footprints:
            return np.zeros(0, dtype=bool)
        sizes = [len(f.sets) for f in footprints]
        if sum(sizes) < REPLAY_LOOP_MIN * len(footprints):
            # Many short sequences: one sort-based pass over the whole batch.
            ep = None if epochs is None else np.repeat(epochs, sizes)
            first = _keys(np.concatenate([f.first for f in footprints]), ep)
            last = _keys(np.concatenate([f.last for f in footprints]), ep)
            return self._apply(np.concatenate([f.sets for f in footprints]), first, last)
        # Few long ones: each touches a set at most once, so a gather and a scatter per sequence
        # replay it, several times faster than sorting the batch.
        hits: list[Bool] = []
        for i, f in enumerate(footprints):
            e = None if epochs is None else int(epochs[i])
            hits.append(self.tags[f.sets] == _keys(f.first, e))
            self.tags[f.sets] = _keys(f.last, e)
        return np.concatenate(hits)

    def _apply(self, sets: Ints, key_in: I64, key_out: I64) -> Bool:
        """Entry i hits iff the key the previous entry of its set left (`key_out`), or the
        set's tag for its first entry, equals its own `key_in`; the tags then keep each set's
        last `key_out`. For single accesses key_in is key_out."""
        n = len(sets)
        # uint16 sets let numpy use its O(n) radix sort for kind="stable"; then intp indexes.
        order = np.argsort(sets.astype(np.uint16), kind="stable")
        s = sets[order].astype(np.intp)
        k_out = key_out[order]
        k_in = k_out if key_in is key_out else key_in[order]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = k_out[:-1]
        prev[first] = self.tags[s[first]]
        last = np.empty(n, dtype=bool)
        last[-1] = True
        last[:-1] = first[1:]
        self.tags[s[last]] = k_out[last]
        hit = np.empty(n, dtype=bool)
        hit[order] = prev == k_in
        return hit


def _keys(lines: I64, epochs: Ints | int | None) -> I64:
    if epochs is None:
        return lines
    keys: I64 = (np.asarray(epochs, dtype=np.int64) << _EPOCH_SHIFT) | lines
    return keys
