"""Tests for numaemu.model.pagetables, partial replication and memoryless nodes: the memory and latency
figures each design and each placement should give, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.host.segments import MemoryLayout
from numaemu.model.engine import NodeEngine
from numaemu.model.image import PAGE_SIZE, synthetic_image, with_module_area
from numaemu.model.pagetables import (
    KERNEL_IMAGE_SIZE,
    PMD_SIZE,
    START_KERNEL_MAP,
    TLB_ENTRIES,
    kaslr_base,
    page_table_cost,
    walk_profile,
    with_base,
)
from numaemu.model.placement import UNMAPPED, place, place_for, serving_nodes
from numaemu.model.topology import Node, Topology, derive_latency, validate_distance
from numaemu.model.topology_parse import PRESETS
from numaemu.model.workloads import build_workload

KUNPENG = PRESETS["kunpeng920"]()  # 10 12 20 22 / 12 10 22 24 / 20 22 10 12 / 22 24 12 10


@pytest.fixture(scope="module")
def image():
    # .text 29 pages at 0xffffffff81000000, .rodata 15 pages at +2 MiB (test_placement.py)
    return synthetic_image(0.01)


# --- partial replication and memoryless nodes -------------------------------------------------


def test_every_node_serves_itself_by_default():
    assert serving_nodes(KUNPENG.distance, [True] * 4) == (0, 1, 2, 3)


def test_replicas_every_two_on_kunpeng_map_the_nearest_copy():
    # Copies on 0 and 2; node 1 is 12 from node 0 and 22 from node 2; node 3 is 12 from node 2.
    assert serving_nodes(KUNPENG.distance, [True] * 4, every=2) == (0, 0, 2, 2)


def test_replicas_every_larger_than_the_machine_leaves_the_master_copy_only():
    assert serving_nodes(KUNPENG.distance, [True] * 4, every=9) == (0, 0, 0, 0)


def test_ties_go_to_the_lower_node():
    d = validate_distance([[10, 20, 20], [20, 10, 20], [20, 20, 10]])
    assert serving_nodes(d, [True, False, True]) == (0, 0, 2)


def test_memoryless_node_maps_the_nearest_node_with_memory():
    # Node 0 has no memory: the master copy is on node 1, the first node with memory.
    assert serving_nodes(KUNPENG.distance, [False, True, True, True]) == (1, 1, 2, 3)
    assert serving_nodes(KUNPENG.distance, [True, True, False, True]) == (0, 1, 3, 3)
    with pytest.raises(ValueError):
        serving_nodes(KUNPENG.distance, [False] * 4)


def test_partial_placement_hosts_copies_only_where_asked(image):
    serving = serving_nodes(KUNPENG.distance, [True] * 4, every=2)
    p = place(image, 4, "replicate", serving=serving)
    mapped = image.mapped_pages()
    assert [len(h) for h in p.hosted] == [len(mapped), 0, len(mapped), 0]
    assert p.copy_nodes == (0, 2)
    for node, copy in enumerate(serving):
        assert set(p.tables[node].home[mapped]) == {copy}
    # Every node still reads the same bytes at the same offset: only the frames differ.
    assert p.tables[1].translate(5000) == p.tables[0].translate(5000)
    assert p.extra_bytes == len(mapped) * PAGE_SIZE


def test_memoryless_nodes_hold_nothing_under_any_policy(image):
    nodes = tuple(Node(i, (i,), 0 if i == 1 else 1 << 30) for i in range(4))
    topo = Topology("m", nodes, KUNPENG.distance, KUNPENG.latency_ns)
    for policy in ("single", "interleave", "replicate"):
        p, mem_serving = place_for(topo, image, policy)
        assert mem_serving == (0, 0, 2, 3)
        assert len(p.hosted[1]) == 0, policy
        home1 = p.tables[1].home
        assert 1 not in set(home1[home1 != UNMAPPED].tolist())
    p, _ = place_for(topo, image, "interleave")
    assert [len(h) for h in p.hosted] == [15, 0, 15, 14]


def test_a_topology_without_memory_is_refused(image):
    from numaemu.errors import UsageError

    nodes = tuple(Node(i, (i,), 0) for i in range(2))
    d = validate_distance([[10, 20], [20, 10]])
    with pytest.raises(UsageError, match="no node has memory"):
        place_for(Topology("m", nodes, d, derive_latency(d)), image, "single")


# --- the page-table designs: memory -------------------------------------------------------------


def test_x86_tables_are_pgd_pud_and_the_two_pmd_pages_of_the_top_2g_per_copy(image):
    cost = page_table_cost(image, "x86", "replicate", 4, (0, 1, 2, 3), "text+rodata")
    assert cost.table_pages == (4, 4, 4, 4)
    assert cost.granule == PMD_SIZE
    # 2 MiB mappings take whole frames: 36 text pages and 10 rodata pages round up to 2 MiB each.
    assert cost.padding_bytes == ((2 * 512 - 44) * PAGE_SIZE,) * 4
    assert cost.per_process_bytes == 3 * PAGE_SIZE  # one more PGD per extra node, every process


def test_x86_module_area_adds_its_pte_pages(image):
    cost = page_table_cost(with_module_area(image), "x86", "replicate", 2, (0, 1), "text+rodata")
    assert cost.table_pages == (5, 5)


def test_arm64_tables_are_l0_l1_one_l2_and_an_l3_per_2m_region(image):
    cost = page_table_cost(image, "arm64", "replicate", 2, (0, 1), "text+rodata")
    assert cost.table_pages == (1 + 1 + 1 + 2,) * 2
    assert cost.granule == PAGE_SIZE and cost.padding_bytes == (0, 0) and cost.per_process_bytes == 0


def test_partial_replication_pays_tables_on_copy_nodes_only(image):
    cost = page_table_cost(image, "x86", "replicate", 4, (0, 0, 2, 2), "text+rodata")
    assert cost.table_pages == (4, 0, 4, 0)
    assert cost.per_process_bytes == PAGE_SIZE


def test_single_has_one_set_of_tables_on_the_master(image):
    cost = page_table_cost(image, "arm64", "single", 3, (1, 1, 2), "text+rodata")
    assert cost.table_pages == (0, 5, 0)
    assert page_table_cost(image, "none", "single", 3, (0, 1, 2), "text+rodata") is None


def test_x86_text_only_copies_pad_text_alone_outside_the_master(image):
    cost = page_table_cost(image, "x86", "replicate", 2, (0, 1), "text")
    assert cost.padding_bytes == ((1024 - 44) * PAGE_SIZE, (512 - 29) * PAGE_SIZE)


# --- KASLR ----------------------------------------------------------------------------------------


def test_kaslr_base_is_a_2m_slot_below_kernel_image_size_and_follows_the_seed(image):
    bases = {kaslr_base(image, seed) for seed in range(50)}
    assert len(bases) > 40
    for b in bases:
        assert b % PMD_SIZE == 0
        assert b >= START_KERNEL_MAP + (16 << 20) and b + len(image.data) <= START_KERNEL_MAP + KERNEL_IMAGE_SIZE
    assert kaslr_base(image, 7) == kaslr_base(image, 7)


def test_moving_the_image_keeps_every_offset_and_moves_every_address(image):
    base = kaslr_base(image, 3)
    moved = with_base(image, base)
    assert moved.base == base
    for a, b in zip(image.sections, moved.sections, strict=True):
        assert b.vaddr - base == a.vaddr - image.base and b.offset == a.offset and b.size == a.size
    assert np.array_equal(moved.mapped_pages(), image.mapped_pages())
    p0, p1 = place(image, 2, "replicate"), place(moved, 2, "replicate")
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(p0.tables, p1.tables, strict=True))


# --- the page-table designs: latency ------------------------------------------------------------


def test_walk_profile_counts_translations_per_request(image):
    wl = build_workload("db", image, 0, None)
    x86 = walk_profile(image, wl.lines, wl.starts, wl.lengths, PMD_SIZE, cold=False)
    arm = walk_profile(image, wl.lines, wl.starts, wl.lengths, PAGE_SIZE, cold=True)
    # The whole image is two 2 MiB regions: a hot TLB holds them; 4 KiB pages: one walk per
    # distinct page a request touches, on a cold TLB.
    assert x86.footprint <= 2 and x86.miss_share == 0.0
    t = wl.template(0)
    assert arm.per_template[0] == len(np.unique(t * 64 // PAGE_SIZE))
    assert arm.miss_share == 1.0
    full = synthetic_image(1.0)
    wl_full = build_workload("synthetic-db", full, 0, None)  # (the recorded db touches 180 pages: under the TLB)
    hot = walk_profile(full, wl_full.lines, wl_full.starts, wl_full.lengths, PAGE_SIZE, cold=False)
    assert hot.footprint > TLB_ENTRIES and hot.miss_share == pytest.approx(1 - TLB_ENTRIES / hot.footprint)


def _engine(image, node, table, walks, walk_home, lat):
    wl = build_workload("db", image, 0, None)
    p = place(image, 2, "replicate")
    lay = MemoryLayout.for_nodes(tuple(p.image_bytes(i) for i in range(2)))
    mem = np.zeros(lay.size, dtype=np.uint8)
    e = NodeEngine(node, mem, table, lay.part_offset, tuple(lay.user_offset(n) for n in range(2)), lay.user_bytes,
                   np.array(lat), wl, cold=True, user_local=True, walks=walks, walk_share=1.0, walk_home=walk_home)
    return e, wl


def test_walks_cost_a_leaf_read_from_the_tables_node_when_cold(image):
    p = place(image, 2, "replicate")
    wl = build_workload("db", image, 0, None)
    per = walk_profile(image, wl.lines, wl.starts, wl.lengths, PAGE_SIZE, cold=True).per_template
    lat = [140.0, 80.0]  # node 1's row: node 0 is remote
    base, _ = _engine(image, 1, p.tables[1], None, None, lat)
    local, _ = _engine(image, 1, p.tables[1], per, 1, lat)
    remote, _ = _engine(image, 1, p.tables[1], per, 0, lat)
    req = np.arange(8) % wl.n_templates
    t0 = base.run(req).emulated_ns
    t_local, t_remote = local.run(req).emulated_ns, remote.run(req).emulated_ns
    walks = float(per[req].sum())
    assert t_local - t0 == pytest.approx(walks * 80.0)
    assert t_remote - t0 == pytest.approx(walks * 140.0)
    assert local.counters.walks == walks and local.counters.walk_ns == pytest.approx(walks * 80.0)


def test_hot_walks_cost_a_cache_hit(image):
    from numaemu.model.engine import HIT_NS

    p = place(image, 2, "replicate")
    wl = build_workload("db", image, 0, None)
    lay = MemoryLayout.for_nodes(tuple(p.image_bytes(i) for i in range(2)))
    mem = np.zeros(lay.size, dtype=np.uint8)
    per = np.full(wl.n_templates, 10)
    kw = dict(cold=False, user_local=True)
    args = (1, mem, p.tables[1], lay.part_offset, tuple(lay.user_offset(n) for n in range(2)), lay.user_bytes, np.array([80.0, 140.0]), wl)
    base = NodeEngine(*args, **kw).run(np.arange(4)).emulated_ns
    walked = NodeEngine(*args, **kw, walks=per, walk_share=0.5, walk_home=0).run(np.arange(4)).emulated_ns
    assert walked - base == pytest.approx(4 * 10 * 0.5 * HIT_NS)
