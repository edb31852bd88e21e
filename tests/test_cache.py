"""Tests for numaemu.model.cache: the batched direct-mapped cache against a scalar reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numaemu.model.cache
from numaemu.model.cache import DEFAULT_CACHE_BYTES, DirectMappedCache


class ScalarCache:
    """The obvious direct-mapped cache: one access at a time, a dict of tags per set."""

    def __init__(self, n_sets: int) -> None:
        self.n_sets = n_sets
        self.tags: dict[int, tuple[int, int]] = {}

    def access(self, line: int, epoch: int = 0) -> bool:
        s = line % self.n_sets
        key = (epoch, line)
        hit = self.tags.get(s) == key
        self.tags[s] = key
        return hit


def _reference(n_sets: int, lines: list[int], epochs: list[int] | None) -> list[bool]:
    ref = ScalarCache(n_sets)
    if epochs is None:
        return [ref.access(x) for x in lines]
    return [ref.access(x, e) for x, e in zip(lines, epochs, strict=True)]


def _split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({0, n, *(c % (n + 1) for c in cuts)})
    return list(zip(points[:-1], points[1:], strict=True))


@st.composite
def streams(draw, cold: bool):
    n_sets = draw(st.sampled_from([1, 2, 4, 16, 64]))
    # Few distinct lines relative to the sets, so that hits and conflicts both happen.
    span = draw(st.integers(1, 4 * n_sets + 4))
    n = draw(st.integers(0, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lines = rng.integers(0, span, n).tolist()
    epochs = None
    if cold:
        # Epochs are request numbers: non-decreasing, each request a run of accesses.
        new_request = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
        epochs = np.cumsum(rng.random(n) < new_request).tolist()
    cuts = draw(st.lists(st.integers(0, 400), max_size=8))
    return n_sets, lines, epochs, cuts


def _run_batched(n_sets: int, lines: list[int], epochs: list[int] | None, cuts: list[int]) -> list[bool]:
    cache = DirectMappedCache(n_sets * 64)
    assert cache.n_sets == n_sets
    out: list[bool] = []
    for lo, hi in _split(len(lines), cuts):
        batch = np.array(lines[lo:hi], dtype=np.int64)
        ep = None if epochs is None else np.array(epochs[lo:hi], dtype=np.int64)
        hit = cache.access(batch, ep)
        assert hit.dtype == bool and len(hit) == hi - lo
        out += hit.tolist()
    return out


@settings(max_examples=100, deadline=None)
@given(streams(cold=False))
def test_hot_matches_scalar_reference(stream) -> None:
    n_sets, lines, epochs, cuts = stream
    assert _run_batched(n_sets, lines, epochs, cuts) == _reference(n_sets, lines, None)


@settings(max_examples=100, deadline=None)
@given(streams(cold=True))
def test_cold_matches_scalar_reference(stream) -> None:
    n_sets, lines, epochs, cuts = stream
    assert _run_batched(n_sets, lines, epochs, cuts) == _reference(n_sets, lines, epochs)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5000))
def test_large_random_stream_with_default_size(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    # Kernel-like line numbers: up to ~300,000 lines (18 MiB of text and rodata).
    lines = rng.integers(0, 300_000, n).tolist()
    lines += lines[: n // 2]  # repeats, so that some accesses hit
    n_sets = DEFAULT_CACHE_BYTES // 64
    cache = DirectMappedCache()
    assert cache.n_sets == n_sets == 16384
    half = len(lines) // 2
    got = cache.access(np.array(lines[:half], dtype=np.int64)).tolist()
    got += cache.access(np.array(lines[half:], dtype=np.int64)).tolist()
    assert got == _reference(n_sets, lines, None)


def test_same_line_twice_hits() -> None:
    cache = DirectMappedCache(1024)  # 16 sets
    assert cache.access(np.array([5, 5])).tolist() == [False, True]
    # And across batches.
    assert cache.access(np.array([5])).tolist() == [True]


def test_conflicting_lines_evict() -> None:
    cache = DirectMappedCache(1024)  # 16 sets: lines 3 and 19 share set 3
    assert cache.access(np.array([3, 19, 3, 19])).tolist() == [False, False, False, False]
    assert cache.access(np.array([19, 4, 20, 4])).tolist() == [True, False, False, False]
    # Lines in different sets do not disturb each other.
    assert cache.access(np.array([1, 2, 1, 2])).tolist() == [False, False, True, True]


def test_cold_line_from_previous_epoch_misses() -> None:
    cache = DirectMappedCache(1024)
    hit = cache.access(np.array([7, 7, 8, 7, 8]), np.array([0, 0, 0, 1, 1]))
    assert hit.tolist() == [False, True, False, False, False]
    # Across batches: a line left by epoch 1 misses in epoch 2, hits in epoch 1 again.
    assert cache.access(np.array([7]), np.array([2])).tolist() == [False]
    assert cache.access(np.array([8]), np.array([1])).tolist() == [True]


def test_empty_batch() -> None:
    cache = DirectMappedCache(1024)
    hit = cache.access(np.zeros(0, dtype=np.int64))
    assert hit.dtype == bool and hit.shape == (0,)
    assert np.all(cache.tags == -1)


def test_clear_forgets_everything() -> None:
    cache = DirectMappedCache(1024)
    cache.access(np.arange(16))
    cache.clear()
    assert not cache.access(np.arange(16)).any()


def test_largest_cache() -> None:
    cache = DirectMappedCache(65536 * 64)
    assert cache.n_sets == 65536
    lines = np.array([65535, 65535 + 65536, 65535, 0, 0], dtype=np.int64)
    assert cache.access(lines).tolist() == [False, False, False, False, True]


@pytest.mark.parametrize(
    ("size", "line"),
    [(0, 64), (32, 64), (64 * 3, 64), (1000 * 64, 64), (65536 * 64 * 2, 64), (64, 128)],
)
def test_invalid_sizes_raise(size: int, line: int) -> None:
    with pytest.raises(ValueError, match=r"^cache size / line size must be a power of two in 1\.\.65536$"):
        DirectMappedCache(size, line)


@pytest.mark.parametrize(("size", "line", "sets"), [(64, 64, 1), (1 << 20, 64, 16384), (4096, 32, 128)])
def test_valid_sizes(size: int, line: int, sets: int) -> None:
    assert DirectMappedCache(size, line).n_sets == sets


@pytest.mark.parametrize("loop_min", [0, 10**9], ids=["loop", "sort"])
@settings(max_examples=60, deadline=None)
@given(stream=streams(cold=True), cold=st.booleans())
def test_replayed_footprints_match_access(loop_min: int, stream, cold: bool) -> None:
    """Requests reduced to footprints and replayed hit exactly where their lines hit, by either
    way `replay` takes (a loop per sequence, or one sort over the batch)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(numaemu.model.cache, "REPLAY_LOOP_MIN", loop_min)
        _check_replay(stream, cold)


def _check_replay(stream, cold: bool) -> None:
    n_sets, lines, epochs, cuts = stream
    # The epochs mark requests (runs of equal epochs); without cold, they only cut requests.
    if not lines:
        assert DirectMappedCache(n_sets * 64).replay([]).shape == (0,)
        return
    bounds = [0] + [i for i in range(1, len(lines)) if epochs[i] != epochs[i - 1]] + [len(lines)]
    requests = [np.array(lines[lo:hi], dtype=np.int64) for lo, hi in itertools.pairwise(bounds)]
    request_epochs = np.array([epochs[lo] for lo in bounds[:-1]], dtype=np.int64)
    direct, replayed = DirectMappedCache(n_sets * 64), DirectMappedCache(n_sets * 64)
    expected = direct.access(np.array(lines, dtype=np.int64), np.array(epochs, dtype=np.int64) if cold else None).tolist()
    fps = [replayed.footprint(r) for r in requests]
    got: list[bool] = []
    done = 0
    for lo, hi in _split(len(fps), cuts):  # several batches, so tags carry over between them
        first_hits = replayed.replay(fps[lo:hi], request_epochs[lo:hi] if cold else None)
        for fp in fps[lo:hi]:
            hit = fp.inner_hit.copy()
            hit[fp.first_at] = first_hits[: len(fp.sets)]
            first_hits = first_hits[len(fp.sets) :]
            got += hit.tolist()
        assert len(first_hits) == 0
        done = hi
    assert done == len(fps)
    assert got == expected
    assert np.array_equal(replayed.tags, direct.tags)


def test_footprint_of_a_sequence() -> None:
    cache = DirectMappedCache(1024)  # 16 sets: 3 and 19 share set 3
    fp = cache.footprint(np.array([3, 19, 3, 5, 5, 19], dtype=np.int64))
    assert fp.inner_hit.tolist() == [False, False, False, False, True, False]
    assert fp.sets.tolist() == [3, 5]
    assert fp.first.tolist() == [3, 5] and fp.last.tolist() == [19, 5]
    assert fp.first_at.tolist() == [0, 3]
    assert np.all(cache.tags == -1)  # a footprint does not touch the cache
