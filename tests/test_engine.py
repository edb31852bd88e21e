"""Tests for numaemu.model.engine: one node's execution of requests, on plain numpy arrays.

The memory array is laid out and filled exactly as the worker does it (`worker_main`'s ``fill``
phase), without processes or shared memory.
"""

from __future__ import annotations

import numpy as np
import pytest

import numaemu.model.engine
from numaemu.host.segments import MemoryLayout
from numaemu.model.cache import DEFAULT_CACHE_BYTES, DirectMappedCache
from numaemu.model.engine import HIT_NS, NodeEngine, line_bases
from numaemu.model.image import (
    LINE_SIZE,
    LINES_PER_PAGE,
    PAGE_SIZE,
    KernelImage,
    synthetic_image,
)
from numaemu.model.placement import Placement, place
from numaemu.model.workloads import Workload, build_workload
from numaemu.runtime.worker import fill_partition

USER_BYTES = 64 << 10
SEED = 0
# Integer latencies (ns) so that float sums are exact; every entry differs, so a miss charged
# to the wrong home shows. Row n is node n's view.
LATENCY = np.array([[90.0, 310.0], [290.0, 110.0]])
POLICIES = [("single", "text+rodata"), ("interleave", "text+rodata"), ("replicate", "text+rodata"), ("replicate", "text")]
TEXT_PAGES = 29  # synthetic_image(0.01)


@pytest.fixture(autouse=True, params=["direct", "paths"])
def way(request, monkeypatch) -> str:
    """Every test runs both ways a batch can go (engine.py): fetch by fetch, and through each
    template's precomputed path; both must give exactly the same results."""
    monkeypatch.setattr(numaemu.model.engine, "PATH_MIN_FETCHES", 10**9 if request.param == "direct" else 0)
    return request.param


@pytest.fixture(scope="module")
def image() -> KernelImage:
    return synthetic_image(0.01)


@pytest.fixture(scope="module")
def db(image) -> Workload:
    return build_workload("synthetic-db", image)


@pytest.fixture(scope="module")
def getpid(image) -> Workload:
    return build_workload("synthetic-getpid", image)


def fill_memory(image: KernelImage, placement: Placement, user_bytes: int = USER_BYTES, seed: int = SEED) -> tuple[np.ndarray, MemoryLayout]:
    """The ``mem`` segment as the workers leave it after their ``fill`` phase (worker.py)."""
    lay = MemoryLayout.for_nodes(tuple(placement.image_bytes(n) for n in range(placement.n_nodes)), user_bytes)
    mem = np.zeros(lay.size, dtype=np.uint8)
    for node in range(placement.n_nodes):
        fill_partition(mem, image.data, lay, node, placement.hosted[node], seed)
    return mem, lay


def make_engine(mem, lay, placement, node, workload, *, cold=False, user_local=True) -> NodeEngine:
    return NodeEngine(
        node,
        mem,
        placement.tables[node],
        lay.part_offset,
        tuple(lay.user_offset(n) for n in range(placement.n_nodes)),
        lay.user_bytes,
        LATENCY[node],
        workload,
        cold=cold,
        user_local=user_local,
        cache=DirectMappedCache(),
        seed=SEED,
    )


def reference_checksums(image: KernelImage, workload: Workload, templates: np.ndarray) -> list[int]:
    """Straight from the image: the sum (mod 2**64) of the 64-bit words of every line read."""
    words = image.data.view(np.uint64).reshape(-1, 8)
    return [int(words.take(workload.template(int(t)), axis=0).sum(dtype=np.uint64)) for t in templates]


def reference_hits(workload: Workload, templates: np.ndarray, *, cold: bool, first_request: int = 0, tags: dict | None = None) -> list[bool]:
    """A scalar direct-mapped cache of the default size, one access at a time."""
    n_sets = DEFAULT_CACHE_BYTES // LINE_SIZE
    tags = {} if tags is None else tags
    hits = []
    for r, t in enumerate(templates):
        for line in workload.template(int(t)).tolist():
            key = (first_request + r if cold else 0, line)
            hits.append(tags.get(line % n_sets) == key)
            tags[line % n_sets] = key
    return hits


def _templates(workload: Workload, k: int = 12, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, workload.n_templates, k)


def test_fill_memory_layout(image) -> None:
    p = place(image, 2, "replicate")
    mem, lay = fill_memory(image, p)
    assert lay.part_offset == (0, 2 << 20, 4 << 20)
    assert lay.image_bytes == (44 * PAGE_SIZE, 44 * PAGE_SIZE)
    # Node 1's copy begins with page 0 of the image.
    assert np.array_equal(mem[2 << 20 : (2 << 20) + PAGE_SIZE], image.data[:PAGE_SIZE])
    base = line_bases(p.tables[1], lay.part_offset)
    assert base[0] == (2 << 20) // LINE_SIZE
    assert base[512] == ((2 << 20) + TEXT_PAGES * PAGE_SIZE) // LINE_SIZE  # first .rodata page
    assert base[TEXT_PAGES] == -1  # the gap


@pytest.mark.parametrize(("policy", "scope"), POLICIES)
@pytest.mark.parametrize("name", ["synthetic-getpid", "synthetic-db", "db"])
def test_same_checksums_on_every_node(image, policy, scope, name) -> None:
    workload = build_workload(name, image)
    p = place(image, 2, policy, scope)
    mem, lay = fill_memory(image, p)
    templates = _templates(workload)
    expected = reference_checksums(image, workload, templates)
    for node in (0, 1):
        result = make_engine(mem, lay, p, node, workload).run(templates)
        assert result.checksums.dtype == np.uint64
        assert result.checksums.tolist() == expected


@pytest.mark.parametrize(("policy", "scope"), POLICIES)
def test_checksums_do_not_depend_on_batching(image, db, policy, scope) -> None:
    p = place(image, 2, policy, scope)
    mem, lay = fill_memory(image, p)
    templates = _templates(db, 10)
    engine = make_engine(mem, lay, p, 1, db)
    parts = [engine.run(templates[:3]), engine.run(templates[3:4]), engine.run(templates[4:])]
    assert np.concatenate([r.checksums for r in parts]).tolist() == reference_checksums(image, db, templates)
    assert engine.counters.requests == 10


def test_corrupted_copy_changes_that_nodes_checksum(image, db) -> None:
    p = place(image, 2, "replicate")
    mem, lay = fill_memory(image, p)
    templates = np.array([0, 1, 0])
    line = int(db.template(0)[5])
    page = line // LINES_PER_PAGE
    _, offset = p.tables[1].translate(line * LINE_SIZE)
    mem[lay.part_offset[1] + offset + 17] ^= 0x5A  # one byte of node 1's copy of that line
    good = reference_checksums(image, db, templates)
    on0 = make_engine(mem, lay, p, 0, db).run(templates).checksums.tolist()
    on1 = make_engine(mem, lay, p, 1, db).run(templates).checksums.tolist()
    assert on0 == good
    assert on1[0] != good[0] and on1[2] != good[2]
    assert on1[0] == on1[2]
    if page not in {int(v) // LINES_PER_PAGE for v in db.template(1)}:
        assert on1[1] == good[1]


def test_corrupted_single_copy_shows_on_both_nodes(image, getpid) -> None:
    p = place(image, 2, "single")
    mem, lay = fill_memory(image, p)
    line = int(getpid.template(0)[0])
    mem[lay.part_offset[0] + line * LINE_SIZE] ^= 1  # the single copy is node 0's, in page order
    good = reference_checksums(image, getpid, np.array([0]))
    for node in (0, 1):
        assert make_engine(mem, lay, p, node, getpid).run(np.array([0])).checksums.tolist() != good


def test_unmapped_fetch_raises(image) -> None:
    p = place(image, 2, "single")
    mem, lay = fill_memory(image, p)
    gap_line = TEXT_PAGES * LINES_PER_PAGE  # first line after .text's last page
    bad = Workload("bad", np.array([0, gap_line], dtype=np.int64), np.array([0]), np.array([2]), 0, 0.0)
    with pytest.raises(ValueError, match=r"^a kernel path fetched an unmapped page$"):
        make_engine(mem, lay, p, 0, bad).run(np.array([0]))


def _misses_by_home(p: Placement, node: int, workload: Workload, templates: np.ndarray, hits: list[bool]) -> np.ndarray:
    lines = np.concatenate([workload.template(int(t)) for t in templates])
    missed = lines[~np.array(hits, dtype=bool)]
    return np.bincount(p.tables[node].home[missed // LINES_PER_PAGE], minlength=p.n_nodes)


@pytest.mark.parametrize(("policy", "scope"), POLICIES)
@pytest.mark.parametrize("cold", [False, True])
def test_counters_and_emulated_ns_exact(image, db, policy, scope, cold) -> None:
    p = place(image, 2, policy, scope)
    mem, lay = fill_memory(image, p)
    templates = _templates(db, 8)
    for node in (0, 1):
        engine = make_engine(mem, lay, p, node, db, cold=cold, user_local=True)
        result = engine.run(templates)
        hits = reference_hits(db, templates, cold=cold)
        misses = _misses_by_home(p, node, db, templates, hits)
        k = len(templates)
        kernel_ns = sum(hits) * HIT_NS + sum(int(m) * LATENCY[node][h] for h, m in enumerate(misses))
        user_ns = k * db.compute_ns + k * db.user_accesses * LATENCY[node][node]
        c = engine.counters
        assert c.requests == k
        assert c.cache_hits == sum(hits)
        assert c.text_fetches.tolist() == misses.tolist()
        assert c.user_fetches.tolist() == [k * 1400 if h == node else 0 for h in (0, 1)]
        assert c.kernel_ns == kernel_ns
        assert c.user_ns == user_ns
        assert result.emulated_ns == c.emulated_ns == kernel_ns + user_ns


def test_emulated_ns_accumulates_over_batches(image, getpid) -> None:
    p = place(image, 2, "interleave")
    mem, lay = fill_memory(image, p)
    engine = make_engine(mem, lay, p, 1, getpid)
    tags: dict = {}
    total = 0.0
    for batch in (np.array([0, 0]), np.array([0]), np.array([0, 0, 0])):
        hits = reference_hits(getpid, batch, cold=False, tags=tags)  # the cache carries over
        misses = _misses_by_home(p, 1, getpid, batch, hits)
        expected = sum(hits) * HIT_NS + float(misses @ LATENCY[1])
        assert engine.run(batch).emulated_ns == expected
        total += expected
    assert engine.counters.emulated_ns == total
    assert engine.counters.requests == 6


def test_user_data_remote_reads(image, db) -> None:
    """Interleaved user data: reads are spread over both homes and charged by home."""
    p = place(image, 2, "replicate")
    mem, lay = fill_memory(image, p)
    engine = make_engine(mem, lay, p, 0, db, user_local=False)
    templates = _templates(db, 4)
    engine.run(templates)
    c = engine.counters
    assert int(c.user_fetches.sum()) == 4 * 1400
    assert c.user_fetches.min() > 1000  # about half each
    assert c.user_ns == 4 * db.compute_ns + float(c.user_fetches @ LATENCY[0])
    assert 0 <= engine.user_sink < 2**64 and engine.user_sink != 0


def test_replicate_misses_are_all_local(image, db) -> None:
    p = place(image, 2, "replicate", "text+rodata")
    mem, lay = fill_memory(image, p)
    for node in (0, 1):
        engine = make_engine(mem, lay, p, node, db, cold=True)
        engine.run(_templates(db))
        fetches = engine.counters.text_fetches
        assert fetches[node] > 0
        assert fetches[1 - node] == 0


def test_replicate_text_reads_rodata_remotely(image, db) -> None:
    p = place(image, 2, "replicate", "text")
    mem, lay = fill_memory(image, p)
    templates = _templates(db)
    engine = make_engine(mem, lay, p, 1, db, cold=True)
    engine.run(templates)
    hits = np.array(reference_hits(db, templates, cold=True))
    lines = np.concatenate([db.template(int(t)) for t in templates])
    rodata_misses = int(np.count_nonzero(~hits & (lines >= 512 * LINES_PER_PAGE)))
    assert rodata_misses > 0
    assert engine.counters.text_fetches.tolist() == [rodata_misses, int(np.count_nonzero(~hits)) - rodata_misses]


def test_single_node1_misses_all_go_to_node0(image, db) -> None:
    p = place(image, 2, "single")
    mem, lay = fill_memory(image, p)
    engine = make_engine(mem, lay, p, 1, db, cold=True)
    engine.run(_templates(db))
    fetches = engine.counters.text_fetches
    assert fetches[0] > 0 and fetches[1] == 0


def test_interleave_misses_go_to_both_nodes(image, db) -> None:
    p = place(image, 2, "interleave")
    mem, lay = fill_memory(image, p)
    engine = make_engine(mem, lay, p, 0, db, cold=True)
    engine.run(_templates(db))
    assert engine.counters.text_fetches.min() > 0


@pytest.mark.parametrize("name", ["synthetic-getpid", "synthetic-db", "db"])
def test_cold_cache_misses_more_than_hot(image, name) -> None:
    workload = build_workload(name, image)
    p = place(image, 2, "single")
    mem, lay = fill_memory(image, p)
    repeated = np.zeros(10, dtype=np.int64)  # the same request ten times
    hot = make_engine(mem, lay, p, 0, workload, cold=False)
    cold = make_engine(mem, lay, p, 0, workload, cold=True)
    r_hot, r_cold = hot.run(repeated), cold.run(repeated)
    hot_misses = int(hot.counters.text_fetches.sum())
    cold_misses = int(cold.counters.text_fetches.sum())
    # Hot: later requests miss only where .rodata and .text lines share a set (the small image's
    # .rodata at 2 MiB aliases .text's first lines in a 16,384-set cache).
    assert cold_misses > 2 * hot_misses
    assert r_cold.emulated_ns > r_hot.emulated_ns
    assert np.array_equal(r_hot.checksums, r_cold.checksums)
    # Cold: every request misses what the first one missed.
    first = make_engine(mem, lay, p, 0, workload, cold=True)
    first.run(repeated[:1])
    assert cold_misses == 10 * int(first.counters.text_fetches.sum())


@pytest.mark.parametrize("cold", [False, True])
@pytest.mark.parametrize("user_local", [False, True])
def test_both_ways_agree_batch_after_batch(image, db, cold, user_local) -> None:
    """Mixed batches (long and short requests, repeats) on an interleaved image: every result
    and every cache tag the same, whichever way each batch went."""
    p = place(image, 2, "interleave")
    mem, lay = fill_memory(image, p)
    batches = [np.array([0, 0, 5]), np.array([7]), np.array([5, 0, 1, 1, 2, 40]), np.array([], dtype=np.int64), np.array([3])]
    results = {}
    for way in ("direct", "paths"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(numaemu.model.engine, "PATH_MIN_FETCHES", 10**9 if way == "direct" else 0)
            engine = make_engine(mem, lay, p, 1, db, cold=cold, user_local=user_local)
            out = [(r.emulated_ns, r.checksums.tolist()) for r in map(engine.run, batches)]
            c = engine.counters
            results[way] = (out, c.requests, c.cache_hits, c.text_fetches.tolist(), c.user_fetches.tolist(), c.kernel_ns, c.user_ns, engine.user_sink, engine.cache.tags.tolist())
    assert results["direct"] == results["paths"]
    assert results["direct"][1] == 11
