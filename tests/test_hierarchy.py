"""The compiled cache/TLB hierarchy against a plain-Python reference, and the models around it:
charges, queueing, the x86 design's per-process costs, profiles and their file form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numaemu.errors import UsageError
from numaemu.model.contention import Traffic, solve
from numaemu.model.hardware import SIMPLE, describe, hierarchy_levels
from numaemu.model.hardware_presets import PROFILES, resolve_hardware
from numaemu.model.hierarchy import DATA, TEXT, Hierarchy, HierarchyCounts
from numaemu.model.node_hardware import llc_copies
from numaemu.model.timing import KERNEL_PGD_PTRS, Charges, process_costs
from numaemu.model.topology_parse import from_mapping

ORDER = ("l1i", "l1d", "l2", "llc", "itlb", "dtlb", "stlb_i", "stlb_d", "pwc")


class RefLevel:
    """LRU by lists: each set's keys, most recent first."""

    def __init__(self, sets: int, ways: int) -> None:
        self.sets, self.ways = sets, ways
        self.data: list[list[int]] = [[] for _ in range(sets)]

    def lookup(self, key: int, line: int) -> bool:
        if self.ways == 0:
            return False
        s = self.data[line % self.sets]
        hit = key in s
        if hit:
            s.remove(key)
        elif len(s) == self.ways:
            s.pop()
        s.insert(0, key)
        return hit


def reference(levels, vlines, lens, base, home, kind, shift, cold, n_nodes, walk_key):
    """What hierarchy._simulate computes, access by access, in plain Python (cold: a fresh
    hierarchy for every request)."""
    out = HierarchyCounts(n_nodes)
    lv = None
    i = 0
    for n in lens:
        if lv is None or cold:
            lv = {k: RefLevel(*levels[k]) for k in ORDER}
            lv["stlb_d"] = lv["stlb_i"]
        last = [-1, -1]
        for _ in range(n):
            v = int(vlines[i])
            i += 1
            page = v >> 6
            k = int(kind[page])
            vpage = page >> shift
            if vpage != last[k]:
                last[k] = vpage
                l1 = lv["itlb" if k == TEXT else "dtlb"]
                if not l1.lookup(vpage, vpage):
                    out.tlb[k] += 1
                    if not lv["stlb_i"].lookup(vpage, vpage):
                        out.tlb[2] += 1
                        reads = 1
                        if not lv["pwc"].lookup(page >> 18, page >> 18):
                            out.tlb[3] += 1
                            reads = 2
                        for j in range(reads):
                            key = walk_key + (j << 28) + ((vpage >> (9 * j)) >> 3)
                            at = 1 if lv["l2"].lookup(key, key) else 2 if lv["llc"].lookup(key, key) else 3
                            out.walk_served[at] += 1
            line = int(base[page]) + (v & 63)
            l1 = lv["l1i" if k == TEXT else "l1d"]
            at = 0 if l1.lookup(line, line) else 1 if lv["l2"].lookup(line, line) else 2 if lv["llc"].lookup(line, line) else 3
            out.served[k, at] += 1
            if at == 3:
                out.memory_by_home[k, home[page]] += 1
    return out


SMALL = {"l1i": (4, 2), "l1d": (2, 2), "l2": (8, 2), "llc": (16, 4), "itlb": (1, 2), "dtlb": (2, 1), "stlb_i": (2, 2), "stlb_d": (2, 2), "pwc": (1, 1)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 8 * 64 - 1), min_size=1, max_size=300), st.booleans(), st.integers(0, 3), st.sampled_from([0, 3]))
def test_hierarchy_matches_reference(vl: list[int], cold: bool, seed: int, shift: int) -> None:
    rng = np.random.default_rng(seed)
    vlines = np.array(vl, dtype=np.int64)
    cuts = np.sort(rng.choice(len(vl) + 1, size=min(4, len(vl)), replace=False))
    lens = np.diff(np.concatenate([[0], cuts[cuts > 0], [len(vl)]]))
    lens = lens[lens > 0]
    base = rng.permutation(8).astype(np.int64) * 64 + 1000  # physical frames in another order
    home = rng.integers(0, 2, 8)
    kind = np.array([TEXT] * 5 + [DATA] * 3, dtype=np.int8)
    h = Hierarchy(SMALL, n_nodes=2, page_shift=12 + shift, walk_home=1, walk_table=1)
    got = h.run(vlines, lens, base, home, kind, cold)
    want = reference(SMALL, vlines, lens, base, home, kind, shift, cold, 2, h.walk_key)
    assert got.served.tolist() == want.served.tolist()
    assert got.memory_by_home.tolist() == want.memory_by_home.tolist()
    assert got.tlb.tolist() == want.tlb.tolist()
    assert got.walk_served.tolist() == want.walk_served.tolist()


def test_hierarchy_keys_by_physical_line() -> None:
    """The same virtual path on two nodes whose frames differ conflicts differently: with a
    direct-mapped 1-set-per-line LLC, two frames that share sets thrash, two that do not fit."""
    levels = dict(SMALL, l1i=(1, 1), l2=(1, 1), llc=(64, 1))
    vlines = np.tile(np.array([0, 64], dtype=np.int64), 50)  # line 0 of pages 0 and 1, alternately
    kind = np.zeros(2, dtype=np.int8)
    home = np.zeros(2, dtype=np.int64)
    apart = Hierarchy(levels, n_nodes=1, page_shift=21, walk_home=0).run(vlines, [100], np.array([0, 1], dtype=np.int64) * 64 + np.array([0, 1]), home, kind, False)
    clash = Hierarchy(levels, n_nodes=1, page_shift=21, walk_home=0).run(vlines, [100], np.array([0, 64], dtype=np.int64), home, kind, False)
    assert apart.served[0, 3] == 2 and apart.served[0, 2] == 98
    assert clash.served[0, 3] == 100


def test_cold_requests_start_empty_and_hot_ones_do_not() -> None:
    vlines = np.tile(np.arange(10, dtype=np.int64), 3)
    args = (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8))
    cold = Hierarchy(SMALL, n_nodes=1, page_shift=12, walk_home=0).run(vlines, [10, 10, 10], *args, True)
    hot = Hierarchy(SMALL, n_nodes=1, page_shift=12, walk_home=0).run(vlines, [10, 10, 10], *args, False)
    assert cold.served[0, 3] == 30 and cold.tlb[2] == 3  # every line and the page, once a request
    assert hot.served[0, 3] == 10 and hot.tlb[2] == 1


def test_a_tlb_without_entries_for_the_page_size_always_misses() -> None:
    # Sandy Bridge's STLB holds no 2 MiB entries (CPUID descriptor 0xCA): with 2 MiB pages every
    # iTLB miss is a walk.
    levels = hierarchy_levels(PROFILES["e5-2690"], 21)
    assert levels["stlb_i"] == (1, 0) and levels["itlb"] == (1, 8)
    h = Hierarchy(levels, n_nodes=1, page_shift=21, walk_home=0)
    pages = np.arange(12, dtype=np.int64) * 512 * 64  # twelve 2 MiB pages, more than 8 iTLB entries
    c = h.run(np.tile(pages, 4), [48], np.arange(12 * 512, dtype=np.int64) * 64, np.zeros(12 * 512, dtype=np.int64), np.zeros(12 * 512, dtype=np.int8), False)
    assert c.tlb[0] == 48 and c.tlb[2] == 48


def test_charges_price_each_level() -> None:
    p = PROFILES["e5-2690"]
    ch = Charges.of(p, [80.0, 120.0], [1.0, 5.0], walk_home=1)
    c = HierarchyCounts(2)
    c.served[:] = [[10, 2, 1, 3], [0, 4, 0, 2]]
    c.memory_by_home[:] = [[1, 2], [2, 0]]
    c.tlb[:] = [1, 1, 1, 0]
    c.walk_served[:] = [0, 0, 0, 1]
    ns, queue = ch.cost(c)
    fetch, l2, llc = 4 / 2.9, 12 / 2.9, 30 / 2.9
    text = 16 * fetch + 2 * l2 + llc + (81 + 2 * 125)
    data = (4 * l2 + 2 * 81) / 1.5
    walks = 2 * 7 / 2.9 + 125
    assert ns == pytest.approx(text + data + walks)
    assert queue == pytest.approx(1 + 2 * 5 + 2 * 1 / 1.5 + 5)


def test_queueing_single_copy_waits_grow_with_nodes() -> None:
    """All nodes reading node 0 (single) make node 0's queue grow with their number; each node
    reading its own (replicate) keeps every queue at one node's load."""
    def waits(n: int, single: bool) -> tuple[float, float]:
        lines = np.zeros((n, n))
        for j in range(n):
            lines[j, 0 if single else j] = 100.0
        q = solve(Traffic(np.full(n, 10_000.0), lines, lines), np.full(n, 8), np.full(n, 51.2), 32.0, np.arange(n))
        return float(q.memory_wait_ns.max()), float(q.memory_rho.max())
    single = [waits(n, True) for n in (2, 4, 8)]
    repl = [waits(n, False) for n in (2, 4, 8)]
    assert single[0][0] < single[1][0] < single[2][0]
    assert all(r[0] == pytest.approx(repl[0][0]) for r in repl)
    assert all(rho < 1 for _, rho in single)


def test_queueing_is_a_fixed_point() -> None:
    lines = np.array([[300.0, 0.0], [300.0, 0.0]])
    cores, gbs = np.array([16, 16]), np.array([20.0, 20.0])
    q = solve(Traffic(np.array([20_000.0, 20_000.0]), lines, lines), cores, gbs, 10.0, np.array([0, 1]))
    t = 20_000.0 + (lines * q.wait_ns).sum(axis=1)
    rho = (cores[:, None] * lines / t[:, None]).sum(axis=0) * 64 / gbs
    assert rho[0] == pytest.approx(q.memory_rho[0], rel=1e-6)
    assert q.memory_wait_ns[0] == pytest.approx(rho[0] * (64 / 20.0) / (2 * (1 - rho[0])), rel=1e-6)
    assert q.link_wait_ns[0] > 0 and q.wait_ns[1, 0] == pytest.approx(q.memory_wait_ns[0] + q.link_wait_ns[0])


def test_process_costs_only_for_extra_pgds() -> None:
    p = PROFILES["e5-2690"]
    one = process_costs(p, [78.3, 116.3], [0], 1 / 40_000, pti=False)
    assert one.copies == 1 and one.fork_ns == 0.0
    two = process_costs(p, [78.3, 116.3], [0, 1], 1 / 40_000, pti=False)
    lines = 4096 // 64 + (KERNEL_PGD_PTRS * 8 + 63) // 64
    assert two.fork_ns == pytest.approx(185 / 2.9 + lines * 116.3 / 10)
    pti = process_costs(p, [78.3, 116.3], [0, 1], 1 / 40_000, pti=True)
    assert pti.fork_ns == pytest.approx(185 / 2.9 + 2 * lines * 116.3 / 10)
    # Charged at the measured rate: 80 us of kernel work at one fork per 40 us is 2 forks.
    forks, ns = two.charge(80_000.0)
    assert forks == pytest.approx(2.0) and ns == pytest.approx(2 * two.fork_ns)


def test_fork_rates_are_measured_for_the_fork_workloads() -> None:
    from numaemu.model.workloads import fork_rate
    assert fork_rate("fork") and fork_rate("fork1024") and fork_rate("fork") > fork_rate("fork1024")
    assert fork_rate("getpid") == 0.0 and fork_rate("nosuch") is None


def test_llc_copies_under_a_shared_llc() -> None:
    quad = PROFILES["altra-quadrant"]
    assert llc_copies(quad, 5, tuple(range(8))) == 4  # replicate: 4 nodes, 4 copies in socket 1's SLC
    assert llc_copies(quad, 5, (0,) * 8) == 1  # single
    assert llc_copies(PROFILES["e5-2690"], 1, (0, 1)) == 1
    assert hierarchy_levels(quad, 21, 4)["llc"] == (32768, 4)


def test_profiles_cite_their_parameters_and_describe_every_level() -> None:
    for p in PROFILES.values():
        if p.simple:
            continue
        for field in ("ghz", "l1i", "l1d", "l2", "llc", "itlb", "dtlb", "stlb_i", "stlb_d", "pwc_entries", "dram_local_ns", "memory_gbs", "link_gbs",
                      "mlp", "store_mlp", "page_alloc_cycles", "rob_entries"):
            assert p.sources.get(field), (p.name, field)
        text = "\n".join(describe(p))
        for label in ("L1i", "L1d", "L2", "LLC", "iTLB", "dTLB", "STLB", "PWC"):
            assert label in text
        assert all(lv.sets * lv.ways * 64 == lv.size_bytes for lv in (p.l1i, p.l1d, p.l2, p.llc))


def test_resolve_hardware() -> None:
    assert resolve_hardware(None, None).name == "e5-2690"
    assert resolve_hardware("simple", PROFILES["altra"]) is SIMPLE
    assert resolve_hardware(None, PROFILES["altra"]).name == "altra"
    with pytest.raises(UsageError, match="--hardware: 'nope' is not a profile"):
        resolve_hardware("nope", None)


def test_profile_in_a_topology_file() -> None:
    topo = from_mapping({"distance": [[10, 21], [21, 10]], "hardware": {"base": "e5-2690", "name": "mine", "llc": {"size_bytes": 31457280}, "mlp": 2}}, name="f")
    hw = topo.hardware
    assert hw is not None and hw.name == "mine" and hw.llc.size_bytes == 31457280 and hw.llc.ways == 20 and hw.mlp == 2.0
    assert hw.sources["llc"] == "the topology file"
    assert from_mapping({"distance": [[10]], "hardware": "altra"}, name="f").hardware is PROFILES["altra"]
    for bad, rule in (("nope", "not a profile"), ({"base": "x"}, "hardware.base must name"), ({"base": "altra", "l9": 1}, "hardware.l9 is not a profile field"),
                      ({"base": "altra", "llc": {"size_bytes": 1000}}, "positive multiple"), ({"base": "altra", "mlp": "x"}, "need a number")):
        with pytest.raises(UsageError, match=rule):
            from_mapping({"distance": [[10]], "hardware": bad}, name="f")


def test_cold_epochs_wrap_by_starting_empty() -> None:
    """Epochs are a key's top bits; near their limit the hierarchy starts again from empty caches
    (what every cold request starts from), so no old epoch number can match."""
    vlines = np.tile(np.arange(10, dtype=np.int64), 2)
    args = (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8))
    h = Hierarchy(SMALL, n_nodes=1, page_shift=12, walk_home=0)
    h.next_epoch = (1 << 23) - 2  # the next batch would pass the last epoch
    c = h.run(vlines, [10, 10], *args, True)
    assert h.next_epoch == 3 and c.served[0, 3] == 20
