"""Tests for numaemu.model.tasks: counter-based request plans and migration destinations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numaemu.model.tasks import (
    TASKS_PER_NODE,
    RequestPlan,
    choose_destination,
    plan_requests,
    plan_tasks,
    splitmix64,
)


def _plan(first: int, count: int, *, seed: int = 7, task: int = 3, n_templates: int = 48, node: int = 0, n_nodes: int = 4, rate: float = 0.0) -> RequestPlan:
    return plan_requests(seed, task, first, count, n_templates, node, n_nodes, rate)


def test_splitmix64_known_values() -> None:
    # The reference generator (Vigna's splitmix64.c) seeded with 0 yields 0xe220a8397b1dcdaf,
    # then 0x6e789e6aa1b965f4: its n-th output is mix(n * golden), and this function adds the
    # golden ratio itself, so it maps (n - 1) * golden to the n-th output.
    out = splitmix64(np.array([0, 0x9E3779B97F4A7C15], dtype=np.uint64))
    assert int(out[0]) == 0xE220A8397B1DCDAF
    assert int(out[1]) == 0x6E789E6AA1B965F4
    assert out.dtype == np.uint64


def test_plan_is_deterministic() -> None:
    a, b = _plan(0, 100, rate=0.05), _plan(0, 100, rate=0.05)
    assert np.array_equal(a.templates, b.templates)
    assert a.migrate_to == b.migrate_to
    assert a.templates.dtype == np.int64


def test_plan_depends_on_seed_and_task() -> None:
    base = _plan(0, 64).templates
    assert not np.array_equal(base, _plan(0, 64, seed=8).templates)
    assert not np.array_equal(base, _plan(0, 64, task=4).templates)


@pytest.mark.parametrize("n_templates", [1, 2, 7, 48])
def test_templates_in_range(n_templates: int) -> None:
    t = _plan(0, 2000, n_templates=n_templates).templates
    assert len(t) == 2000
    assert t.min() >= 0 and t.max() < n_templates
    # Every template gets chosen, roughly uniformly.
    counts = np.bincount(t, minlength=n_templates)
    assert counts.min() > 2000 / n_templates / 2


def test_plan_does_not_depend_on_the_node_without_migration() -> None:
    a = _plan(0, 50, node=0)
    b = _plan(0, 50, node=3)
    assert np.array_equal(a.templates, b.templates)


def test_chunking_does_not_change_requests() -> None:
    whole = _plan(0, 10)
    parts = [_plan(0, 4), _plan(4, 6)]
    assert whole.migrate_to == -1 and all(p.migrate_to == -1 for p in parts)
    assert np.array_equal(whole.templates, np.concatenate([p.templates for p in parts]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=8), st.integers(0, 2**31 - 1), st.integers(0, 1000))
def test_chunking_invariance_property(sizes: list[int], seed: int, task: int) -> None:
    whole = plan_requests(seed, task, 0, sum(sizes), 13, 0, 1, 0.0).templates
    parts, first = [], 0
    for size in sizes:
        parts.append(plan_requests(seed, task, first, size, 13, 0, 1, 0.0).templates)
        first += size
    assert np.array_equal(whole, np.concatenate(parts))


def test_migration_keeps_the_requests_before_the_cut() -> None:
    whole = _plan(0, 200)
    cut = _plan(0, 200, rate=0.05)
    k = len(cut.templates)
    assert 1 <= k < 200  # with 200 requests at 5 % a migration is (almost) sure; pinned by seed
    assert cut.migrate_to >= 0
    assert np.array_equal(cut.templates, whole.templates[:k])
    # Resuming after the cut continues the same sequence.
    rest = _plan(k, 200 - k)
    assert np.array_equal(np.concatenate([cut.templates, rest.templates]), whole.templates)


@pytest.mark.parametrize("n_nodes", [2, 3, 4, 8])
def test_migrate_rate_one_moves_after_one_request(n_nodes: int) -> None:
    dests = set()
    for task in range(40):
        for node in range(n_nodes):
            p = plan_requests(1, task, 5, 10, 48, node, n_nodes, 1.0)
            assert len(p.templates) == 1
            assert p.templates[0] == plan_requests(1, task, 5, 1, 48, node, n_nodes, 0.0).templates[0]
            assert p.migrate_to != node
            assert 0 <= p.migrate_to < n_nodes
            dests.add((node, p.migrate_to))
    # Every other node is reached from every node.
    assert dests == {(a, b) for a in range(n_nodes) for b in range(n_nodes) if a != b}


def test_migrate_rate_zero_never_migrates() -> None:
    p = _plan(0, 1000, rate=0.0)
    assert p.migrate_to == -1 and len(p.templates) == 1000


def test_single_node_never_migrates() -> None:
    p = _plan(0, 100, rate=1.0, n_nodes=1)
    assert p.migrate_to == -1 and len(p.templates) == 100


def test_empty_plan() -> None:
    p = _plan(0, 0, rate=0.5)
    assert p.migrate_to == -1 and len(p.templates) == 0


def test_migration_rate_is_respected() -> None:
    # Mean run length before a migration is about 1 / rate.
    runs = [len(plan_requests(2, task, 0, 10_000, 8, 0, 2, 0.1).templates) for task in range(300)]
    assert 8 < np.mean(runs) < 12


@pytest.mark.parametrize(
    ("owned", "src", "preferred", "expected"),
    [
        # Balanced: 4 each; src may give (it has 4), the preferred node may take (it has 4).
        ([4, 4, 4, 4], 0, 2, 2),
        ([4, 4], 1, 0, 0),
        # src below per_node: giving a task away would drop it under per_node - 1.
        ([3, 5, 4, 4], 0, 1, -1),
        ([0, 8], 0, 1, -1),
        # Preferred full (5 > 4): the next nodes in order are tried, wrapping around.
        ([4, 5, 4, 3], 0, 1, 2),
        ([5, 4, 5, 5], 2, 3, 1),
        ([4, 5, 5, 5], 3, 1, 0),
        # Nobody can take it.
        ([4, 5, 5, 5], 0, 1, -1),
        ([5, 5], 0, 1, -1),
        # preferred == src is skipped.
        ([5, 4, 4], 0, 0, 1),
        # A node at per_node - 1 or less is fine as a destination.
        ([5, 3, 4], 0, 1, 1),
    ],
)
def test_choose_destination_table(owned, src, preferred, expected) -> None:
    assert choose_destination(np.array(owned), src, preferred) == expected


def test_choose_destination_per_node() -> None:
    assert choose_destination(np.array([2, 2]), 0, 1, per_node=2) == 1
    assert choose_destination(np.array([1, 3]), 0, 1, per_node=2) == -1
    assert choose_destination(np.array([2, 3]), 0, 1, per_node=2) == -1


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.integers(1, 200))
def test_moves_keep_counts_in_band(n_nodes: int, seed: int, steps: int) -> None:
    """Starting balanced, any sequence of allowed moves keeps every node within per_node +- 1
    and never empties a node."""
    rng = np.random.default_rng(seed)
    owned = np.full(n_nodes, TASKS_PER_NODE)
    for _ in range(steps):
        src, preferred = (int(x) for x in rng.integers(0, n_nodes, 2))
        dest = choose_destination(owned, src, preferred)
        if dest < 0:
            continue
        assert dest != src
        owned[src] -= 1
        owned[dest] += 1
        assert owned.min() >= TASKS_PER_NODE - 1 > 0
        assert owned.max() <= TASKS_PER_NODE + 1
    assert owned.sum() == n_nodes * TASKS_PER_NODE


def test_plans_pinned() -> None:
    # Values from the per-task implementation that plan_tasks replaced: plans must not change,
    # or recorded runs and --verify replays would disagree.
    assert _plan(0, 8).templates.tolist() == [28, 3, 3, 17, 42, 37, 44, 3]
    got = [(len(p.templates), p.migrate_to, p.templates[-3:].tolist()) for p in plan_tasks(7, range(9), [10] * 9, [200] * 9, 48, 1, 4, 0.05)]
    assert got == [
        (4, 0, [19, 19, 18]), (90, 0, [28, 8, 3]), (20, 0, [25, 46, 3]), (57, 0, [13, 22, 36]), (4, 0, [25, 37, 1]),
        (2, 3, [1, 35]), (24, 0, [29, 13, 18]), (4, 0, [9, 22, 3]), (26, 2, [42, 21, 11]),
    ]


def _reference_plan(seed: int, task: int, first: int, count: int, n_templates: int, node: int, n_nodes: int, rate: float) -> tuple[list[int], int]:
    """One task at a time, element by element, with Python integers."""
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        return int(splitmix64(np.array([x & mask], dtype=np.uint64))[0])

    def h(i: int, salt: int) -> int:
        return mix((mix(seed ^ (task << 32)) ^ salt) + i)

    out = []
    for i in range(first, first + count):
        out.append(h(i, 0) % n_templates)
        if rate > 0 and n_nodes > 1:
            hm = h(i, 0xD1B54A32D192ED03)
            if (hm >> 11) / float(1 << 53) < rate:
                return out, (node + 1 + hm % (n_nodes - 1)) % n_nodes
    return out, -1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(0, 60)), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.02, 0.3, 1.0]),
    st.integers(1, 5),
)
def test_plan_tasks_matches_a_per_task_reference(specs, seed: int, rate: float, n_nodes: int) -> None:
    tasks, firsts, counts = (list(x) for x in zip(*specs, strict=True))
    plans = plan_tasks(seed, tasks, firsts, counts, 13, 0, n_nodes, rate)
    assert len(plans) == len(specs)
    for plan, (task, first, count) in zip(plans, specs, strict=True):
        templates, dest = _reference_plan(seed, task, first, count, 13, 0, n_nodes, rate)
        assert plan.templates.tolist() == templates
        assert plan.migrate_to == dest
