"""One node's execution of requests, on plain arrays (no OS calls, so it is unit-testable and
the coordinator can time it in-process to choose the time scale).

A batch of requests is executed with a handful of vectorised numpy operations, because per-access
Python costs more than the latencies being emulated (BACKGROUND.md s.5):

1. translate: virtual line -> page -> (home node, global line in the ``mem`` segment), through
   this node's page table;
2. read: gather every 64-byte line for real from shared memory and sum it into a per-request
   checksum (so the read cannot be skipped, and what was read can be checked);
3. cache: the direct-mapped emulated cache says which fetches hit;
4. charge: a hit costs HIT_NS; a miss costs the latency from this node to the frame's home node;
   user-data reads cost the latency to their home node; compute costs its emulated ns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import DirectMappedCache
from .image import LINE_SIZE, LINES_PER_PAGE, PAGE_SIZE
from .placement import UNMAPPED, PageTable
from .workloads import Workload

__all__ = ["HIT_NS", "Counters", "BatchResult", "NodeEngine", "line_bases", "page_bases"]

HIT_NS = 4.0  # an L2 hit: ~14 cycles at 3.5 GHz (an assumption, the same for every policy)
_LINE_WORDS = LINE_SIZE // 8
_MASK64 = (1 << 64) - 1


@dataclass
class Counters:
    """What one node did, accumulated over a run."""

    n_nodes: int
    requests: int = 0
    cache_hits: int = 0
    text_fetches: np.ndarray = field(init=False)  # kernel fetches that missed, by home node
    user_fetches: np.ndarray = field(init=False)  # user-data reads, by home node
    kernel_ns: float = 0.0
    user_ns: float = 0.0

    def __post_init__(self) -> None:
        self.text_fetches = np.zeros(self.n_nodes, dtype=np.int64)
        self.user_fetches = np.zeros(self.n_nodes, dtype=np.int64)

    @property
    def emulated_ns(self) -> float:
        return self.kernel_ns + self.user_ns


@dataclass(frozen=True)
class BatchResult:
    emulated_ns: float
    checksums: np.ndarray  # uint64, one per request


def page_bases(table: PageTable, part_offset: tuple[int, ...]) -> np.ndarray:
    """Per image page: the byte offset (in the ``mem`` segment) of its frame; UNMAPPED if none."""
    base = np.full(len(table.home), UNMAPPED, dtype=np.int64)
    mapped = table.home != UNMAPPED
    base[mapped] = np.asarray(part_offset, dtype=np.int64)[table.home[mapped]] + table.frame[mapped] * PAGE_SIZE
    return base


def line_bases(table: PageTable, part_offset: tuple[int, ...]) -> np.ndarray:
    """Per image page: the global line number (in the ``mem`` segment) of its first line."""
    base = page_bases(table, part_offset)
    mapped = base != UNMAPPED
    base[mapped] //= LINE_SIZE
    return base


class NodeEngine:
    def __init__(
        self,
        node: int,
        mem: np.ndarray,
        table: PageTable,
        part_offset: tuple[int, ...],
        user_offsets: tuple[int, ...],
        user_bytes: int,
        latency_row: np.ndarray,
        workload: Workload,
        *,
        cold: bool,
        user_local: bool,
        cache: DirectMappedCache | None = None,
        seed: int = 0,
    ) -> None:
        self.node = node
        self.lines = mem.view(np.uint64).reshape(-1, _LINE_WORDS)
        self.base = line_bases(table, part_offset)
        self.home = table.home
        self.lat = np.asarray(latency_row, dtype=np.float64)
        self.n_nodes = len(self.lat)
        self.workload = workload
        self.cold = cold
        self.user_local = user_local
        self.user_first = np.asarray(user_offsets, dtype=np.int64) // LINE_SIZE
        self.user_lines = user_bytes // LINE_SIZE
        self.cache = cache or DirectMappedCache()
        self.rng = np.random.default_rng([seed, node, 0x75736572])  # "user"
        self.counters = Counters(self.n_nodes)
        self.user_sink = 0  # the user reads' sum, so they cannot be skipped

    def run(self, templates: np.ndarray) -> BatchResult:
        wl = self.workload
        k = len(templates)
        lens = wl.lengths[templates]
        vlines = wl.gather(templates)
        pages = vlines // LINES_PER_PAGE
        glines = self.base[pages]
        if glines.min() < 0:
            raise ValueError("a kernel path fetched an unmapped page")
        glines += vlines % LINES_PER_PAGE
        # Read every line for real; one checksum per request.
        words = self.lines.take(glines, axis=0).reshape(-1)
        starts = (np.cumsum(lens) - lens) * _LINE_WORDS
        checksums = np.add.reduceat(words, starts) if len(words) else np.zeros(k, np.uint64)

        if self.cold:
            epochs = np.repeat(np.arange(self.counters.requests, self.counters.requests + k) & 0x7FFFFF, lens)
            hit = self.cache.access(vlines, epochs)
        else:
            hit = self.cache.access(vlines)
        n_hits = int(np.count_nonzero(hit))
        misses = np.bincount(self.home[pages[~hit]], minlength=self.n_nodes)
        kernel_ns = n_hits * HIT_NS + float(misses @ self.lat)

        user_ns = k * wl.compute_ns
        n_user = k * wl.user_accesses
        if n_user:
            if self.user_local:
                homes = np.full(n_user, self.node, dtype=np.int64)
            else:
                homes = self.rng.integers(0, self.n_nodes, n_user)
            ulines = self.user_first[homes] + self.rng.integers(0, self.user_lines, n_user)
            self.user_sink = (self.user_sink + int(self.lines.take(ulines, axis=0).sum(dtype=np.uint64))) & _MASK64
            ucount = np.bincount(homes, minlength=self.n_nodes)
            user_ns += float(ucount @ self.lat)
            self.counters.user_fetches += ucount

        c = self.counters
        c.requests += k
        c.cache_hits += n_hits
        c.text_fetches += misses
        c.kernel_ns += kernel_ns
        c.user_ns += user_ns
        return BatchResult(kernel_ns + user_ns, checksums)
