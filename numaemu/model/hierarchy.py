"""One node's caches and TLBs as a hardware profile describes them, access by access (pure logic).

`Hierarchy` simulates, for one core of a node, exactly what `hardware.HardwareProfile` gives:
set-associative L1i, L1d, private L2 and the node's LLC, each with LRU replacement; an L1 iTLB,
an L1 dTLB and a shared second-level TLB; and a page-walk cache for the entries above the leaf.
Every kernel fetch goes through them in program order, compiled by numba (a per-access Python
loop would run at ~1 M accesses/s; this runs at tens of millions, ``numaemu calibrate`` says
how many on this host).

What is simulated, and the simplifications (each the same for every policy):

* Caches are keyed by *physical* line: the line of the ``mem`` segment the node's page table maps
  the access to. Under ``replicate`` each node fetches its own copy, under ``single`` every node
  fetches node 0's, so set conflicts differ between policies as they do in hardware.
* Fills go into every level (non-inclusive, non-exclusive). Sandy Bridge's LLC is inclusive and
  Zen 3's L3 is a victim cache of L2; both differ from this only in which lines a miss evicts.
* LRU everywhere. Real L1/L2s are tree-PLRU and LLCs adaptive (RRIP-like); for a loop whose path
  fits, all of them hit, and for one that does not, LRU is the pessimistic case.
* Set index = line modulo sets; real LLCs hash lines over slices first.
* An LLC that a profile shares among several nodes (``llc.nodes`` > 1) holds one copy per node
  under ``replicate``: each node then keeps `ways // copies` of its ways (`llc_ways`).
* Instruction fetches (``.text``) look up L1i and the iTLB; everything else (``.rodata``) L1d and
  the dTLB. Both L1 TLBs refill from the shared second-level TLB; a miss there is a page walk.
* A walk looks up the page-walk cache for the entry above the leaf (one per 1 GiB of kernel
  address space: x86 PDPTE / arm64 L1); on a miss it reads that entry too. Each entry read is a
  data access in L2 and then the LLC, keyed by a line of the page tables of the node that holds
  them (`walk_key`), and on a miss a read of that node's memory.
* Cold caches (``--cache cold``): every key carries the request's number (its *epoch*), so
  nothing a request left behind hits for the next one: every cache and TLB starts empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from numaemu.model.arrays import I64, Ints

__all__ = ["Level", "HierarchyCounts", "Hierarchy", "LEVELS", "TEXT", "DATA", "LINE_BITS"]

LEVELS = ("l1", "l2", "llc", "memory")  # where an access was served
TEXT, DATA = 0, 1  # kinds of access: instruction fetch, data read
LINE_BITS = 40  # keys: epoch << 40 | physical line (lines < 2**40)
_LINE_MASK = (1 << LINE_BITS) - 1
_MAX_EPOCH = (1 << (63 - LINE_BITS)) - 1  # keys stay positive int64s
_TABLES = 1 << 39  # walk keys sit above every line of the mem segment (which is < 2**39 lines)
_PWC_SHIFT = 30
_ORDER = ("l1i", "l1d", "l2", "llc", "itlb", "dtlb", "stlb_i", "stlb_d", "pwc")  # the compiled loop's level numbers  # one page-walk-cache entry per 1 GiB of address space (x86 PDPTE, arm64 L1)


@dataclass(frozen=True)
class Level:
    """One set-associative, LRU cache (or TLB): `sets` x `ways` keys, each set's in recency order.
    No ways: a TLB that holds no entries of the page size in use (every lookup misses)."""

    sets: int
    ways: int

    def __post_init__(self) -> None:
        if self.sets < 1 or self.ways < 0:
            raise ValueError("a cache level needs at least one set, and ways >= 0")


@dataclass
class HierarchyCounts:
    """What the hierarchy did, accumulated: where accesses were served, by kind (`TEXT`, `DATA`)
    and level (`LEVELS`); memory reads by home node; TLB misses and walks."""

    n_nodes: int
    served: I64 = field(init=False)  # [kind, level]
    memory_by_home: I64 = field(init=False)  # [kind, node]: the accesses served by memory
    tlb: I64 = field(init=False)  # [L1 iTLB misses, L1 dTLB misses, STLB misses (walks), PWC misses]
    walk_served: I64 = field(init=False)  # walk entry reads by level (l1 unused: walks start at L2)

    def __post_init__(self) -> None:
        self.served = np.zeros((2, len(LEVELS)), dtype=np.int64)
        self.memory_by_home = np.zeros((2, self.n_nodes), dtype=np.int64)
        self.tlb = np.zeros(4, dtype=np.int64)
        self.walk_served = np.zeros(len(LEVELS), dtype=np.int64)

    def clear(self) -> None:
        for a in (self.served, self.memory_by_home, self.tlb, self.walk_served):
            a.fill(0)

    def add(self, other: HierarchyCounts) -> None:
        self.served += other.served
        self.memory_by_home += other.memory_by_home
        self.tlb += other.tlb
        self.walk_served += other.walk_served

    def to_json(self) -> dict[str, object]:
        return {
            "served": {kind: dict(zip(LEVELS, self.served[k].tolist(), strict=True)) for k, kind in enumerate(("text", "data"))},
            "memory_by_home": {kind: self.memory_by_home[k].tolist() for k, kind in enumerate(("text", "data"))},
            "itlb_misses": int(self.tlb[0]),
            "dtlb_misses": int(self.tlb[1]),
            "walks": int(self.tlb[2]),
            "pwc_misses": int(self.tlb[3]),
            "walk_reads_served": dict(zip(LEVELS[1:], self.walk_served[1:].tolist(), strict=True)),
        }


class Hierarchy:
    """One core's caches and TLBs. `run` simulates a batch of requests and adds to `counts`.

    `page_shift`: the page size the kernel image is mapped with (12: 4 KiB, 21: 2 MiB).
    `walk_home`: the node whose memory holds the page tables this node walks.
    """

    def __init__(self, levels: dict[str, tuple[int, int]], *, n_nodes: int, page_shift: int, walk_home: int, walk_table: int = 0, shared_stlb: bool = True) -> None:
        missing = [k for k in _ORDER if k not in levels]
        if missing:
            raise ValueError(f"hierarchy levels missing: {', '.join(missing)}")
        if not 12 <= page_shift <= 30:
            raise ValueError("page_shift must be 12..30")
        self.levels = {k: Level(*levels[k]) for k in _ORDER}
        # Every level's keys in one array and its sets' epochs in another, found by offset (a
        # tuple of arrays indexed at run time costs numba a copy of the tuple per access).
        sizes = np.array([[lv.sets * lv.ways, lv.sets] for lv in self.levels.values()], dtype=np.int64)
        offsets = np.cumsum(sizes, axis=0) - sizes
        # Per level: key offset, epoch offset, sets, ways, and sets - 1 where sets is a power of
        # two (a mask instead of a division), else -1.
        self.geom = np.array([[offsets[i, 0], offsets[i, 1], lv.sets, lv.ways, lv.sets - 1 if lv.sets & (lv.sets - 1) == 0 else -1]
                              for i, lv in enumerate(self.levels.values())], dtype=np.int64)
        if shared_stlb:  # one second-level TLB for both kinds: the data side's row is the same one
            self.geom[_ORDER.index("stlb_d")] = self.geom[_ORDER.index("stlb_i")]
        self.keys = np.empty(int(sizes[:, 0].sum()), dtype=np.int64)
        self.epochs = np.empty(int(sizes[:, 1].sum()), dtype=np.int64)
        self.clear()
        self.page_shift = page_shift
        self.walk_home = walk_home
        # Distinct tables (a node's own under replicate) have distinct keys.
        self.walk_key = _TABLES | (walk_table << 30)
        self.counts = HierarchyCounts(n_nodes)

    def clear(self) -> None:
        self.keys.fill(-1)
        self.epochs.fill(0)
        self.next_epoch = 1  # cold requests' epochs; 0 is the hot caches' only one

    def run(self, vlines: I64, lens: Ints, line_base: I64, page_home: Ints, page_kind: Ints, cold: bool) -> HierarchyCounts:
        """Simulate the accesses `vlines` (virtual lines of the image, requests of `lens` lines
        each, in order). `line_base[p]` is the physical line of image page p, `page_home[p]` the
        node holding its frame, `page_kind[p]` `TEXT` or `DATA`. Cold: each request is the next
        epoch. Returns this batch's counts (also added to `counts`)."""
        first_epoch = 0
        if cold:
            if self.next_epoch + len(lens) > _MAX_EPOCH:
                # Epochs share a key's top 23 bits: start again from empty caches, which every
                # cold request starts from anyway, rather than let an old epoch number match.
                self.clear()
                self.next_epoch = 1
            first_epoch = self.next_epoch
            self.next_epoch += len(lens)
        out = HierarchyCounts(self.counts.n_nodes)
        _compiled()(
            vlines, np.asarray(lens, dtype=np.int64), line_base, np.asarray(page_home, dtype=np.int64), np.asarray(page_kind, dtype=np.int8),
            np.int64(first_epoch), cold, self.page_shift - 12,
            self.keys, self.epochs, self.geom,
            np.int64(self.walk_key),
            out.served, out.memory_by_home, out.tlb, out.walk_served,
        )
        self.counts.add(out)
        return out


# The lookups an access makes, as chains of levels (rows of `geom`) tried in order until one
# hits: the L1 cache of its kind, then L2 and the LLC; an L1 TLB, then the STLB; the page-walk
# cache; a walk's entry read (L2, the LLC). -1 ends a chain.
_CHAINS = np.array([[0, 2, 3], [1, 2, 3], [4, 6, -1], [5, 7, -1], [8, -1, -1], [2, 3, -1]], dtype=np.int64)
_LINE_TEXT, _LINE_DATA, _TLB_TEXT, _TLB_DATA, _PWC, _WALK = range(6)


@cache
def _compiled() -> Any:
    """`_simulate` compiled by numba, on first use (numba takes ~0.2 s to import, and most
    commands simulate nothing; cache=True keeps the machine code beside the module, so later
    processes load it instead of compiling, and forked workers inherit it)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_simulate)


def _simulate(vlines, lens, line_base, page_home, page_kind, first_epoch, cold, tlb_shift, keys, epochs, geom,  # type: ignore[no-untyped-def]
              walk_key, served, memory_by_home, tlb, walk_served):  # pragma: no cover - compiled
    # Every lookup goes through the one loop below (`pending` jobs, each a chain and a key) rather
    # than a function per lookup: numba does not inline a call that takes arrays, and the call
    # cost 4x the lookup (measured on the dev VM: 30 against 124 M lookups/s).
    chains = _CHAINS
    job_chain = np.empty(4, dtype=np.int64)
    job_key = np.empty(4, dtype=np.int64)
    i = 0
    for r in range(len(lens)):
        epoch_no = first_epoch + r if cold else 0
        epoch = epoch_no << LINE_BITS
        last_text = -1  # per kind: the last page its L1 TLB looked up
        last_data = -1
        for _ in range(lens[r]):
            v = vlines[i]
            i += 1
            page = v >> 6
            kind = page_kind[page]
            vpage = page >> tlb_shift
            # The jobs of this access: its translation, if its page is not the one its L1 TLB
            # looked up last (that one is most recent, so it hits), then the line itself.
            n = 0
            if vpage != (last_text if kind == TEXT else last_data):
                if kind == TEXT:
                    last_text = vpage
                else:
                    last_data = vpage
                job_chain[n] = _TLB_TEXT + kind
                job_key[n] = epoch | vpage
                n += 1
            job_chain[n] = kind
            job_key[n] = epoch | (line_base[page] + (v & 63))
            n += 1
            j = 0
            while j < n:
                chain = job_chain[j]
                key = job_key[j]
                # Look the key up in each level of the chain until one holds it; every level
                # it missed in gets it as its most recent (LRU: a set's ways in recency order).
                at = 0
                while at < 3:
                    level = chains[chain, at]
                    if level < 0:
                        break
                    ways = geom[level, 3]
                    if ways == 0:
                        at += 1
                        continue
                    line = key & _LINE_MASK
                    mask = geom[level, 4]
                    st = line & mask if mask >= 0 else line % geom[level, 2]
                    base = geom[level, 0] + st * ways
                    e = geom[level, 1] + st
                    if epochs[e] != epoch_no:
                        # Not filled in this epoch (cold: this request): it holds nothing of it.
                        epochs[e] = epoch_no
                        keys[base] = key
                        at += 1
                        continue
                    w = 0
                    while w < ways and keys[base + w] != key:
                        w += 1
                    hit = w < ways
                    if not hit:
                        w = ways - 1
                    while w > 0:
                        keys[base + w] = keys[base + w - 1]
                        w -= 1
                    keys[base] = key
                    if hit:
                        break
                    at += 1
                if chain <= _LINE_DATA:
                    served[chain, at] += 1
                    if at == 3:
                        memory_by_home[chain, page_home[page]] += 1
                elif chain <= _TLB_DATA:
                    if at >= 1:
                        tlb[chain - _TLB_TEXT] += 1
                    if at == 2:
                        # A walk: the PWC for the entry above the leaf, then the leaf's read,
                        # and the upper entry's if the PWC missed; before the line's job.
                        tlb[2] += 1
                        for q in range(n, j + 1, -1):  # make room after this job (no copy: numba would allocate)
                            job_chain[q] = job_chain[q - 1]
                            job_key[q] = job_key[q - 1]
                        job_chain[j + 1] = _PWC
                        job_key[j + 1] = epoch | (page >> (_PWC_SHIFT - 12))
                        n += 1
                elif chain == _PWC:
                    reads = 1 if at == 0 else 2
                    if at:
                        tlb[3] += 1
                    for k in range(reads):
                        job_chain[n] = job_chain[n - 1]
                        job_key[n] = job_key[n - 1]
                        job_chain[n - 1] = _WALK
                        job_key[n - 1] = epoch | (walk_key + (k << 28) + ((vpage >> (9 * k)) >> 3))
                        n += 1
                else:
                    walk_served[at + 1] += 1
                j += 1
