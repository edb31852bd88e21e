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
   user-data reads cost the latency to their home node; compute costs its emulated ns; with a
   page-table design (``--pt-style``), each request's expected TLB misses cost one leaf-entry
   read each from the node that holds this node's page tables (pagetables.py).

Batches of long requests (db) take a shorter way, 2.6-2.8x faster (`PATH_MIN_FETCHES`): what does
not depend on the batch is worked out once per template (`_Path`, `NodeEngine.prepare`), since
neither the page table nor the templates change during a run. Translation is then done; a line a
request fetches n times is read once and its words counted n times, which is the same checksum (a
sum mod 2**64) for a third of the reads (db: ~2,400 distinct lines of ~6,500 fetches, ~80% of them
fetched once, so only the rest need the multiply); and the cache replays the request's footprint
(`cache.Footprint`), one entry per set it touches, instead of every access. Counters, emulated
time and checksums are exactly those of the direct way (tests/test_engine.py checks both ways
against scalar references and against each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from numaemu.model.arrays import I64, U8, U64, Intp, Ints
from numaemu.model.cache import DirectMappedCache, Footprint
from numaemu.model.hierarchy import Hierarchy, HierarchyCounts
from numaemu.model.image import LINE_SIZE, LINES_PER_PAGE, PAGE_SIZE
from numaemu.model.placement import UNMAPPED, PageTable
from numaemu.model.timing import Charges, ProcessCosts
from numaemu.model.workloads import Workload

__all__ = ["HIT_NS", "PATH_MIN_FETCHES", "Counters", "BatchResult", "NodeEngine", "line_bases", "page_bases"]

HIT_NS = 4.0  # an L2 hit: ~14 cycles at 3.5 GHz (an assumption, the same for every policy)
_LINE_WORDS = LINE_SIZE // 8
_MASK64 = (1 << 64) - 1
_EPOCH_MASK = 0x7FFFFF  # cold mode: request numbers as cache epochs, < 2**23 (cache.py)
# Batches whose requests fetch at least this many lines on average go through `_Path`s; many
# short requests (getpid ~70, compute ~230) are as fast fetch by fetch, in fewer numpy calls.
# Measured on the 2-core dev VM (db templates cut to L lines, paths / direct time per batch,
# hot and cold cache): L=256 0.85-0.92, 512 0.59-0.68, 1024 0.53-0.58, 4096 0.44-0.46; the
# whole db workload 0.36-0.39.
PATH_MIN_FETCHES = 256
WARM_FETCHES = 4 * 16384  # hot caches: fetches run through the hierarchy before a run (NodeEngine.warm)


@dataclass
class Counters:
    """What one node did, accumulated over a run."""

    n_nodes: int
    requests: int = 0
    cache_hits: int = 0
    text_fetches: I64 = field(init=False)  # kernel fetches that missed, by home node
    user_fetches: I64 = field(init=False)  # user-data reads, by home node
    kernel_ns: float = 0.0
    user_ns: float = 0.0
    walks: float = 0.0  # expected page walks (TLB misses) on kernel fetches
    walk_ns: float = 0.0  # their cost, part of kernel_ns
    queue_ns: float = 0.0  # waiting at the memory and links that served the misses, part of kernel_ns
    process_ns: float = 0.0  # the x86 design's per-process PGD work, part of kernel_ns
    forks: float = 0.0  # forks the kernel work stands for, at the workload's measured rate (x86 design)
    hierarchy: HierarchyCounts | None = None  # per level, with a hardware profile

    def __post_init__(self) -> None:
        self.text_fetches = np.zeros(self.n_nodes, dtype=np.int64)
        self.user_fetches = np.zeros(self.n_nodes, dtype=np.int64)

    @property
    def emulated_ns(self) -> float:
        return self.kernel_ns + self.user_ns


@dataclass(frozen=True)
class BatchResult:
    """What one batch of requests cost a node (emulated), and what it read."""

    emulated_ns: float
    checksums: U64  # one per request


@dataclass(frozen=True)
class _Path:
    """One template as one node executes it, up to what depends on the cache's state."""

    once: I64  # lines (of the ``mem`` segment) it fetches once (~80% for db)
    many: I64  # lines it fetches more than once ...
    times: U64  # one a row: ... and how many times
    footprint: Footprint
    first_home: Intp  # home node of each set's first access (charged if it misses)


def page_bases(table: PageTable, part_offset: tuple[int, ...]) -> I64:
    """Per image page: the byte offset (in the ``mem`` segment) of its frame; UNMAPPED if none."""
    base = np.full(len(table.home), UNMAPPED, dtype=np.int64)
    mapped = table.home != UNMAPPED
    base[mapped] = np.asarray(part_offset, dtype=np.int64)[table.home[mapped]] + table.frame[mapped] * PAGE_SIZE
    return base


def line_bases(table: PageTable, part_offset: tuple[int, ...]) -> I64:
    """Per image page: the global line number (in the ``mem`` segment) of its first line."""
    base = page_bases(table, part_offset)
    mapped = base != UNMAPPED
    base[mapped] //= LINE_SIZE
    return base


class NodeEngine:
    """One node's kernel and user work, batch by batch, on its own ``mem`` segment and cache."""

    def __init__(
        self,
        node: int,
        mem: U8,
        table: PageTable,
        part_offset: tuple[int, ...],
        user_offsets: tuple[int, ...],
        user_bytes: int,
        latency_row: npt.ArrayLike,
        workload: Workload,
        *,
        cold: bool,
        user_local: bool,
        cache: DirectMappedCache | None = None,
        seed: int = 0,
        walks: npt.ArrayLike | None = None,
        walk_share: float = 0.0,
        walk_home: int | None = None,
        user_home: int | None = None,
        user_homes: npt.ArrayLike | None = None,
        hierarchy: Hierarchy | None = None,
        charges: Charges | None = None,
        page_kind: npt.ArrayLike | None = None,
        process: ProcessCosts | None = None,
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
        self.seed = seed
        self.rng = np.random.default_rng([seed, node, 0x75736572])  # "user"
        self.counters = Counters(self.n_nodes)
        self.user_sink = 0  # the user reads' sum, so they cannot be skipped
        self._paths: dict[int, _Path] = {}
        # Page walks: per template, translations used (pagetables.walk_profile) x the share that
        # miss, each one leaf read from the tables' node. None: page tables not modelled.
        self.walks = None if walks is None else np.asarray(walks, dtype=np.float64) * walk_share
        # Hot: the leaf entries a walk reads (8 to a line) stay in the cache, so a walk costs a
        # hit; cold: flushed with everything else, a walk reads the tables' node's memory.
        self.walk_ns = 0.0 if walk_home is None else float(self.lat[walk_home]) if cold else HIT_NS
        # User data: a memoryless node's "local" data is in the nearest node with memory, and
        # interleaved data only spans the nodes with memory.
        self.user_home = node if user_home is None else user_home
        self.user_homes = np.arange(self.n_nodes) if user_homes is None else np.asarray(user_homes, dtype=np.int64)
        homes = np.unique(table.home[table.home != UNMAPPED])
        self._sole_home = int(homes[0]) if len(homes) == 1 else -1
        # Per template, once its path is known: fetches that hit an earlier fetch of the same
        # request, and fetches after the first to their set that miss, by home node.
        self._inner_hits = np.zeros(workload.n_templates, dtype=np.int64)
        self._inner_misses = np.zeros((workload.n_templates, self.n_nodes), dtype=np.int64)
        # A hardware profile's caches and TLBs (hierarchy.py) in place of the direct-mapped
        # cache, charged by `charges`; user data then costs its latency / MLP (timing.py).
        self.hierarchy = hierarchy
        self.charges = charges
        self.process = process
        if hierarchy is not None:
            if charges is None or page_kind is None:
                raise ValueError("a hierarchy needs its charges and each page's kind")
            self.page_kind = np.asarray(page_kind, dtype=np.int8)
            self.counters.hierarchy = hierarchy.counts

    def _translate(self, vlines: I64) -> tuple[I64, I64]:
        """Step 1: (image page, line of the ``mem`` segment) of each virtual line."""
        pages = vlines // LINES_PER_PAGE
        glines = self.base[pages]
        if len(glines) and glines.min() < 0:
            raise ValueError("a kernel path fetched an unmapped page")
        glines += vlines % LINES_PER_PAGE
        return pages, glines

    def prepare(self) -> None:
        """Work out every template's `_Path` now, if batches will use them, so that no batch of
        the run pays for it (a worker calls this before its start signal)."""
        if len(self.workload.lengths) and float(self.workload.lengths.mean()) >= PATH_MIN_FETCHES:
            for t in range(self.workload.n_templates):
                self._path(t)

    def warm(self, fetches: int = WARM_FETCHES) -> None:
        """Hot caches: run requests through the hierarchy before the run, as a benchmark's
        warm-up does, so that the run measures the steady state and not the first fill of a
        20 MiB LLC (which a short run would count as misses). Each template at least 4 times,
        drawn with the workload's weights; the counts are then cleared. Nothing for cold caches
        (every request starts empty) or the simple model (kept as it was)."""
        if self.hierarchy is None or self.cold:
            return
        wl = self.workload
        rng = np.random.default_rng([self.seed, self.node, 0x7761726D])  # "warm"
        n = max(4 * wl.n_templates, int(fetches // float(wl.lengths.mean())))
        templates = rng.choice(wl.n_templates, n, p=wl.weights)
        self.hierarchy.run(wl.gather(templates), wl.lengths[templates], self.base, self.home, self.page_kind, False)
        self.hierarchy.counts.clear()

    def _path(self, template: int) -> _Path:
        path = self._paths.get(template)
        if path is not None:
            return path
        vlines = self.workload.template(template)
        pages, glines = self._translate(vlines)
        reads, counts = np.unique(glines, return_counts=True)
        fp = self.cache.footprint(vlines)
        homes = self.home[pages]
        later = np.ones(len(vlines), dtype=bool)
        later[fp.first_at] = False
        self._inner_hits[template] = np.count_nonzero(fp.inner_hit)
        self._inner_misses[template] = np.bincount(homes[later & ~fp.inner_hit], minlength=self.n_nodes)
        many = counts > 1
        first_home = homes[fp.first_at].astype(np.intp)  # bincount takes intp without a copy
        path = _Path(reads[~many], reads[many], counts[many].astype(np.uint64)[:, None], fp, first_home)
        self._paths[template] = path
        return path

    def _run_direct(self, templates: Ints, lens: I64) -> tuple[U64, int, I64]:
        """Steps 1-3 fetch by fetch, for the whole batch at once: (checksums, hits, misses by home)."""
        vlines = self.workload.gather(templates)
        pages, glines = self._translate(vlines)
        # Read every line for real; one checksum per request.
        checksums = _per_request_sums(self.lines.take(glines, axis=0), lens)
        if self.cold:
            epochs = np.repeat(np.arange(self.counters.requests, self.counters.requests + len(templates)) & _EPOCH_MASK, lens)
            hit = self.cache.access(vlines, epochs)
        else:
            hit = self.cache.access(vlines)
        misses = np.bincount(self.home[pages[~hit]], minlength=self.n_nodes)
        return checksums, int(np.count_nonzero(hit)), misses

    def _path_checksums(self, paths: list[_Path]) -> U64:
        """Step 2 through each template's `_Path`: the same checksums as reading every fetch."""
        k = len(paths)
        # Each distinct line of a request is read once and weighted by how often the request
        # fetches it (uint64 products and sums wrap mod 2**64); only the lines fetched more than
        # once need the multiply.
        once = self.lines.take(np.concatenate([p.once for p in paths]), axis=0)
        checksums = _per_request_sums(once, np.fromiter((len(p.once) for p in paths), dtype=np.int64, count=k))
        many = self.lines.take(np.concatenate([p.many for p in paths]), axis=0)
        many *= np.concatenate([p.times for p in paths])
        checksums += _per_request_sums(many, np.fromiter((len(p.many) for p in paths), dtype=np.int64, count=k))
        return checksums

    def _run_paths(self, templates: Ints) -> tuple[U64, int, I64]:
        """Steps 1-3 through each template's `_Path`: the same results as `_run_direct`."""
        k = len(templates)
        paths = [self._path(t) for t in templates.tolist()]
        checksums = self._path_checksums(paths)
        epochs = None
        if self.cold:
            epochs = np.arange(self.counters.requests, self.counters.requests + k) & _EPOCH_MASK
        hit = self.cache.replay([p.footprint for p in paths], epochs)
        first_hits = int(np.count_nonzero(hit))
        misses = self._inner_misses[templates].sum(axis=0)
        if self._sole_home >= 0:  # every frame on one node (replicate, single): no need to look
            misses[self._sole_home] += len(hit) - first_hits
        else:
            misses += np.bincount(np.concatenate([p.first_home for p in paths])[~hit], minlength=self.n_nodes)
        return checksums, int(self._inner_hits[templates].sum()) + first_hits, misses

    def _run_hierarchy(self, templates: Ints, lens: I64) -> tuple[U64, float]:
        """Steps 1-4 with a hardware profile: (checksums, kernel ns). The reads are those of
        `_run_direct` (or `_path_checksums` for long requests); the caches and TLBs are
        simulated access by access (hierarchy.py) on this node's physical lines."""
        assert self.hierarchy is not None and self.charges is not None
        vlines = self.workload.gather(templates)
        if len(lens) and int(lens.sum()) >= PATH_MIN_FETCHES * len(lens):
            checksums = self._path_checksums([self._path(t) for t in templates.tolist()])
        else:
            _, glines = self._translate(vlines)
            checksums = _per_request_sums(self.lines.take(glines, axis=0), lens)
        counts = self.hierarchy.run(vlines, lens, self.base, self.home, self.page_kind, self.cold)
        kernel_ns, queue_ns = self.charges.cost(counts)
        c = self.counters
        c.cache_hits += int(counts.served[:, :3].sum())
        c.text_fetches += counts.memory_by_home.sum(axis=0)
        c.walks += float(counts.tlb[2])
        c.queue_ns += queue_ns
        if self.process is not None:
            forks, process_ns = self.process.charge(kernel_ns)
            c.forks += forks
            c.process_ns += process_ns
            kernel_ns += process_ns
        return checksums, kernel_ns

    def run(self, templates: Ints) -> BatchResult:
        """Run one request of each template in `templates`, in order."""
        wl = self.workload
        k = len(templates)
        lens = wl.lengths[templates]
        if self.hierarchy is not None:
            checksums, kernel_ns = self._run_hierarchy(templates, lens)
            return self._finish(templates, k, checksums, kernel_ns, 0, None)
        if k and int(lens.sum()) >= PATH_MIN_FETCHES * k:
            checksums, n_hits, misses = self._run_paths(templates)
        else:
            checksums, n_hits, misses = self._run_direct(templates, lens)
        kernel_ns = n_hits * HIT_NS + float(misses @ self.lat)
        if self.walks is not None:
            n_walks = float(self.walks[templates].sum())
            self.counters.walks += n_walks
            self.counters.walk_ns += n_walks * self.walk_ns
            kernel_ns += n_walks * self.walk_ns
        return self._finish(templates, k, checksums, kernel_ns, n_hits, misses)

    def _finish(self, templates: Ints, k: int, checksums: U64, kernel_ns: float, n_hits: int, misses: I64 | None) -> BatchResult:
        """The user work of the batch's requests, and the counters."""
        wl = self.workload
        user_ns = k * wl.compute_ns
        n_user = k * wl.user_accesses
        if n_user:
            if self.user_local:  # every read at home: skip drawing and counting homes
                ulines = self.rng.integers(0, self.user_lines, n_user)
                ulines += self.user_first[self.user_home]
                ucount = np.zeros(self.n_nodes, dtype=np.int64)
                ucount[self.user_home] = n_user
            else:
                homes = self.user_homes[self.rng.integers(0, len(self.user_homes), n_user)]
                ulines = self.user_first[homes] + self.rng.integers(0, self.user_lines, n_user)
                ucount = np.bincount(homes, minlength=self.n_nodes)
            self.user_sink = (self.user_sink + int(self.lines.take(ulines, axis=0).sum(dtype=np.uint64))) & _MASK64
            # User data reads are data misses: with a hardware profile they overlap by its MLP.
            mlp = 1.0 if self.charges is None else self.charges.mlp
            user_ns += float(ucount @ (self.lat if self.charges is None else self.charges.memory_ns)) / mlp
            self.counters.user_fetches += ucount

        c = self.counters
        c.requests += k
        c.cache_hits += n_hits
        if misses is not None:
            c.text_fetches += misses
        c.kernel_ns += kernel_ns
        c.user_ns += user_ns
        return BatchResult(kernel_ns + user_ns, checksums)


def _per_request_sums(lines: U64, n_lines: I64) -> U64:
    """Sum (mod 2**64) of the 64-bit words of `lines` (rows of 8), request by request, where
    request i has the next n_lines[i] rows."""
    sums = np.zeros(len(n_lines), dtype=np.uint64)
    some = n_lines > 0  # reduceat would give an empty request its neighbour's first row
    if lines.size:
        sums[some] = np.add.reduceat(lines.reshape(-1), ((np.cumsum(n_lines) - n_lines) * _LINE_WORDS)[some])
    return sums
