"""Tests for numaemu.patching.kernel.NodeKernel: every protocol in one process with one node (so syncs
and stop_machine rounds complete at once), over a replicated image with two copies."""

from __future__ import annotations

import itertools
import multiprocessing as mp

import numpy as np
import pytest

from numaemu.host.segments import MemoryLayout, Segment, list_segments, new_token, segment_name
from numaemu.model.image import PAGE_SIZE, KernelImage, synthetic_image, with_module_area
from numaemu.model.placement import place
from numaemu.model.sites import SiteTable, site_table
from numaemu.patching.copies import TextCopies, byte_ranges
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.protocols import Locks
from numaemu.patching.textmem import MAX_BATCH, TextState, text_segment_size
from numaemu.runtime.worker import fill_partition

N_COPIES = 2
N_TASKS = 2


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[KernelImage, SiteTable]]:
    out = {}
    for arch in ("x86_64", "arm64"):
        image = with_module_area(synthetic_image(0.05, arch=arch))
        out[arch] = (image, site_table(image))
    # An image with a jump-label site that crosses a page boundary (seed 2 at 0.1 has one).
    image = with_module_area(synthetic_image(0.1, seed=2))
    out["x86_64-crossing"] = (image, site_table(image))
    return out


class Rig:
    def __init__(self, image: KernelImage, t: SiteTable, protocol: str, **kw) -> None:
        self.image, self.t = image, t
        pl = place(image, N_COPIES, "replicate")
        lay = MemoryLayout.for_nodes(tuple(pl.image_bytes(h) for h in range(N_COPIES)), user_bytes=4096)
        self.mem = np.zeros(lay.size, dtype=np.uint8)
        for h in range(N_COPIES):
            fill_partition(self.mem, image.data, lay, h, pl.hosted[h], 0)
        self.master = image.data.copy()
        self.copies = TextCopies.build(pl, lay, image.n_pages)
        self.mapped = image.mapped_pages()
        self.seg = Segment.create(segment_name("txt", new_token()), text_segment_size(1, len(t), image.n_keys, N_TASKS))
        self.st = TextState(self.seg, 1, len(t), image.n_keys, N_TASKS)
        self.locks = Locks(*(mp.Lock() for _ in range(7)))
        self.k = NodeKernel(0, 1, self.st, self.copies, self.master, self.mem, t, self.locks, protocol=protocol, bug=None, shared_core=False, flush=lambda: None, **kw)

    def close(self) -> None:
        self.st.release()
        self.seg.close()
        self.seg.unlink()

    def master_bytes(self, site: int) -> bytes:
        o, L = int(self.t.offset[site]), int(self.t.length[site])
        return bytes(self.master[o : o + L])

    def site_in_copies(self, site: int) -> list[bytes]:
        """Each copy's bytes of `site`, byte by byte through the copies (handles page crossings)."""
        o, L = int(self.t.offset[site]), int(self.t.length[site])
        per_byte = [self.copies.targets_of(o + i) for i in range(L)]
        return [bytes(int(self.mem[per_byte[i][c]]) for i in range(L)) for c in range(N_COPIES)]

    def all_equal(self) -> bool:
        return self.copies.mismatches(self.master, self.mem, self.mapped) == []


@pytest.fixture
def rig(images, request):
    made: list[Rig] = []

    def make(arch: str, protocol: str, **kw) -> Rig:
        kw = {"ipi_delay_ns": 0, "text_poke_ns": 0} | kw
        r = Rig(*images[arch], protocol, **kw)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()
        for r in made:
            assert r.seg.name not in list_segments()


CASES = [("x86_64", "stop_machine"), ("x86_64", "text_poke_bp"), ("arm64", "nosync"), ("arm64", "stop_machine")]
IDS = [f"{a}-{p}" for a, p in CASES]


def expected_stats(protocol: str, batches: int) -> tuple[int, int]:
    """(syncs, stop_rounds) for `batches` batches."""
    return {"stop_machine": (0, batches), "text_poke_bp": (3 * batches, 0), "nosync": (batches, 0)}[protocol]


def toggle_and_check(r: Rig, protocol: str, sites: np.ndarray) -> None:
    t, st, k = r.t, r.st, r.k
    n = len(sites)
    batches = -(-n // MAX_BATCH)
    zero = np.zeros(n, dtype=np.int64)
    one = np.ones(n, dtype=np.int64)
    seq0 = st.site_seq[sites].copy()
    base_stats = (k.stats.calls, k.stats.sites, k.stats.syncs, k.stats.stop_rounds)
    base_lat = len(k.stats.latencies_ns)
    base = {f: st.get(f) for f in ("patch_calls", "sync_seq", "stop_seq", "stop_released", "desc_gen")}
    untouched = np.ones(len(r.master), dtype=bool)
    for s in sites:
        untouched[t.offset[s] : t.offset[s] + t.length[s]] = False
    for step, (old, new) in enumerate([(zero, one), (one, zero)], start=1):
        assert k.patch(sites, old, new) == n
        assert r.all_equal()
        for s in sites:
            assert r.master_bytes(int(s)) == t.encoding(int(s), int(new[0]))
        assert np.all(st.site_state[sites] == new[0])
        assert np.array_equal(st.site_seq[sites], seq0 + 2 * step)
        assert np.all(st.site_seq % 2 == 0)
        assert np.array_equal(r.master[untouched], r.image.data[untouched])
        syncs, rounds = expected_stats(protocol, batches)
        got = (k.stats.calls, k.stats.sites, k.stats.syncs, k.stats.stop_rounds)
        assert tuple(g - b for g, b in zip(got, base_stats, strict=True)) == (step, step * n, step * syncs, step * rounds)
        assert len(k.stats.latencies_ns) == base_lat + step
        assert st.get("patch_calls") == base["patch_calls"] + step
        assert st.get("sync_seq") == base["sync_seq"] + step * syncs
        assert st.get("stop_seq") == base["stop_seq"] + step * rounds
        assert st.get("stop_released") == base["stop_released"] + step * rounds
        assert st.get("stop_arrived") == 0 and st.get("desc_live") == 0
        # publish (odd, then even); text_poke_bp also poisons the descriptor at release
        per_batch = {"nosync": 0, "stop_machine": 2, "text_poke_bp": 4}[protocol]
        assert st.get("desc_gen") == base["desc_gen"] + per_batch * step * batches
        assert k.unexpected == 0 and st.get("failures") == 0
    assert np.array_equal(r.master, r.image.data)
    assert r.locks.text_mutex.acquire(False)  # released after every call
    r.locks.text_mutex.release()


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
def test_toggle_one_site(rig, arch: str, protocol: str) -> None:
    r = rig(arch, protocol)
    two_byte = np.flatnonzero(r.t.length[: r.t.n_jump] == (4 if arch == "arm64" else 2))[0]
    toggle_and_check(r, protocol, np.array([two_byte]))
    toggle_and_check(r, protocol, np.array([r.t.n_jump - 1]))  # a separate call
    assert r.k.stats.calls == 2 * 2


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
def test_toggle_small_batch(rig, arch: str, protocol: str) -> None:
    r = rig(arch, protocol)
    toggle_and_check(r, protocol, np.arange(3, 10))  # the scalar path (<= 8 sites)


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
def test_toggle_300_sites_two_batches(rig, arch: str, protocol: str) -> None:
    r = rig(arch, protocol)
    # jump labels and ftrace entries (state 1: call ftrace_caller), shuffled: patch sorts them
    sites = np.random.default_rng(1).permutation(np.arange(r.t.n_jump - 150, r.t.n_jump + 150))
    toggle_and_check(r, protocol, sites)


@pytest.mark.parametrize("protocol", ["stop_machine", "text_poke_bp"])
def test_page_crossing_site(rig, protocol: str) -> None:
    r = rig("x86_64-crossing", protocol)
    t = r.t
    cross = np.flatnonzero((t.offset[: t.n_core] % PAGE_SIZE) + t.length[: t.n_core] > PAGE_SIZE)
    assert len(cross) == 1  # regression pin for synthetic_image(0.1, seed=2)
    s = int(cross[0])
    for old, new in ((0, 1), (1, 0)):
        assert r.k.patch(np.array([s]), [old], [new]) == 1
        assert r.master_bytes(s) == t.encoding(s, new)
        assert r.site_in_copies(s) == [t.encoding(s, new)] * N_COPIES
        assert r.all_equal() and r.st.get("failures") == 0
    # and inside a vectorised batch
    sites = np.arange(s - 10, s + 10)
    assert r.k.patch(sites, np.zeros(20, np.int64), np.ones(20, np.int64)) == 20
    assert r.site_in_copies(s) == [t.encoding(s, 1)] * N_COPIES
    assert r.all_equal() and r.st.get("failures") == 0


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
def test_ftrace_states(rig, arch: str, protocol: str) -> None:
    r = rig(arch, protocol)
    f = np.array([r.t.ftrace_site(i) for i in (4, 9, 40)])
    path = [0, 1, 2, 3, 1, 0]
    for old, new in itertools.pairwise(path):
        assert r.k.patch(f, [old] * 3, [new] * 3) == 3
        assert [r.master_bytes(int(s)) for s in f] == [r.t.encoding(int(s), new) for s in f]
        assert r.all_equal()
    assert np.all(r.st.site_seq[f] == 2 * (len(path) - 1))
    assert r.k.unexpected == 0


@pytest.mark.parametrize("protocol", ["stop_machine", "text_poke_bp"])
def test_default_costs(rig, protocol: str) -> None:
    """The modeled IPI delay and text_poke cost: same result, only slower."""
    r = rig("x86_64", protocol, ipi_delay_ns=100_000, text_poke_ns=1_000)
    assert r.k.ipi_delay_ns == 100_000 and r.k.text_poke_ns == 1_000
    sites = np.arange(0, 300)
    toggle_and_check(r, protocol, sites)
    # each call writes 300 sites x 2 copies at >= 1 us each (x3 phases for text_poke_bp)
    phases = 3 if protocol == "text_poke_bp" else 1
    assert min(r.k.stats.latencies_ns) >= 300 * N_COPIES * 1_000 * phases
    toggle_and_check(r, protocol, np.array([5]))


def test_default_costs_nosync(rig) -> None:
    r = rig("arm64", "nosync", ipi_delay_ns=100_000, text_poke_ns=1_000)
    toggle_and_check(r, "nosync", np.arange(0, 300))


# -- unexpected ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
def test_unexpected_op_one_site(rig, arch: str, protocol: str) -> None:
    r = rig(arch, protocol)
    t, st, k = r.t, r.st, r.k
    s = int(np.flatnonzero(t.length[: t.n_jump] == (4 if arch == "arm64" else 5))[0])
    before_mem = r.mem.copy()
    assert k.patch(np.array([s]), [1], [0]) == 0  # it is in state 0, not 1
    assert np.array_equal(r.master, r.image.data) and np.array_equal(r.mem, before_mem)
    assert k.unexpected == 1
    assert st.get("failures") == 1
    rec = st.failure_log[0]
    L = int(t.length[s])
    assert (int(rec["node"]), int(rec["site"])) == (0, s)
    assert bytes(rec["expected"][:L]) == t.encoding(s, 1)
    assert bytes(rec["found"][:L]) == t.encoding(s, 0)
    assert int(st.site_seq[s]) == 0 and int(st.site_state[s]) == 0
    assert st.get("patch_calls") == 0 and st.get("sync_seq") == 0 and st.get("stop_seq") == 0
    assert (k.stats.calls, k.stats.sites, k.stats.syncs, k.stats.stop_rounds) == (1, 0, 0, 0)
    assert r.locks.text_mutex.acquire(False)
    r.locks.text_mutex.release()


@pytest.mark.parametrize("arch,protocol", CASES, ids=IDS)
@pytest.mark.parametrize("n", [6, 40, 300])
def test_mixed_good_and_bad_sites(rig, arch: str, protocol: str, n: int) -> None:
    r = rig(arch, protocol)
    t, st, k = r.t, r.st, r.k
    sites = np.arange(10, 10 + n)
    bad = sites[1::5]  # asked to leave state 1, but they are in state 0
    good = np.setdiff1d(sites, bad)
    old = np.where(np.isin(sites, bad), 1, 0)
    assert k.patch(sites, old, np.ones(n, dtype=np.int64)) == len(good)
    assert k.unexpected == len(bad)
    # every one is counted; the scalar check (<= 8 sites) logs every one, the vectorised the first 8
    logged = len(bad) if n <= 8 else min(len(bad), 8)
    assert st.get("failures") == len(bad)
    recs = st.failure_log[:logged]
    assert recs["site"].tolist() == bad[:logged].tolist()
    for rec in recs:
        s = int(rec["site"])
        L = int(t.length[s])
        assert bytes(rec["expected"][:L]) == t.encoding(s, 1) and bytes(rec["found"][:L]) == t.encoding(s, 0)
    for s in good:
        assert r.master_bytes(int(s)) == t.encoding(int(s), 1)
    for s in bad:
        assert r.master_bytes(int(s)) == t.encoding(int(s), 0)
    assert np.all(st.site_state[good] == 1) and np.all(st.site_state[bad] == 0)
    assert np.all(st.site_seq[good] == 2) and np.all(st.site_seq[bad] == 0)
    assert r.all_equal()
    batches = -(-len(good) // MAX_BATCH)
    syncs, rounds = expected_stats(protocol, batches)
    assert (k.stats.syncs, k.stats.stop_rounds, k.stats.sites) == (syncs, rounds, len(good))


def test_all_bad_writes_nothing(rig) -> None:
    r = rig("x86_64", "text_poke_bp")
    sites = np.arange(0, 20)
    assert r.k.patch(sites, np.ones(20, np.int64), np.zeros(20, np.int64)) == 0
    assert r.k.unexpected == 20 and r.st.get("failures") == 20  # all counted, the first 8 logged
    assert r.st.failure_log["site"][:8].tolist() == list(range(8))
    assert np.array_equal(r.master, r.image.data)
    assert r.k.stats.syncs == 0 and r.st.get("desc_gen") == 0


def test_patch_nothing(rig) -> None:
    r = rig("x86_64", "stop_machine")
    assert r.k.patch(np.array([], dtype=np.int64), [], []) == 0
    assert r.k.stats.calls == 0 and r.st.get("patch_calls") == 0


# -- byte_ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lens,want",
    [
        ([], []),
        ([1], [0]),
        ([5], [0, 1, 2, 3, 4]),
        ([2, 5], [0, 1, 0, 1, 2, 3, 4]),
        ([3, 1, 2], [0, 1, 2, 0, 0, 1]),
        ([0, 2, 0, 1], [0, 1, 0]),
        ([4, 4], [0, 1, 2, 3, 0, 1, 2, 3]),
    ],
)
def test_ranges(lens: list[int], want: list[int]) -> None:
    got = byte_ranges(np.array(lens, dtype=np.int8))
    assert got.dtype == np.int64
    assert got.tolist() == want
